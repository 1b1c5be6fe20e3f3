/* AtlasPlots: the plots of `atlas serve`, with no libraries and no network (the atlas may be
 * browsed offline). Data never goes through innerHTML: every label is set with textContent or
 * setAttribute, so a subject like "<script>" shows as text. One global, no modules, ES2017. */
(function (global) {
  "use strict";
  const SVGNS = "http://www.w3.org/2000/svg";
  const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif';
  const VIRIDIS = [[68, 1, 84], [70, 50, 126], [54, 92, 141], [39, 127, 142],
    [31, 161, 135], [74, 193, 109], [160, 218, 57], [253, 231, 37]];
  const DIVERGING = [[33, 102, 172], [247, 247, 247], [178, 24, 43]];  // blue, white, red
  const PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2",
    "#b279a2", "#eeca3b", "#ff9da6", "#9d755d", "#79706e"];
  const NULL_RGB = [228, 228, 228];

  // 256-entry lookup tables of [r, g, b]: a 200x200 heatmap then costs no colour maths per cell.
  function lut(stops) {
    const out = [];
    for (let k = 0; k < 256; k++) {
      const t = k / 255 * (stops.length - 1), i = Math.min(Math.floor(t), stops.length - 2), f = t - i;
      const c = stops[i].map((v, n) => Math.round(v + (stops[i + 1][n] - v) * f));
      out.push(c);
    }
    return out;
  }
  const css = (c) => "rgb(" + c.join(",") + ")";
  const SEQ_LUT = lut(VIRIDIS), DIV_LUT = lut(DIVERGING);

  // 4 significant digits; exponent form only where plain digits would mislead or overflow.
  function fmt(v) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) return "n/a";
    if (typeof v !== "number") return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-4)) return v.toExponential(3);
    return String(Number(v.toPrecision(4)));
  }
  const finite = (v) => typeof v === "number" && isFinite(v);
  // [min, max] of the finite numbers (no spread: long arrays would overflow the argument stack).
  function extent(arr) {
    let lo = Infinity, hi = -Infinity;
    arr.forEach((v) => { if (finite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } });
    return [lo, hi];
  }

  const measureCtx = document.createElement("canvas").getContext("2d");
  function textWidth(text, font) { measureCtx.font = font; return measureCtx.measureText(text).width; }
  // Shortens text to maxW pixels with an ellipsis (binary search on the length).
  function truncate(text, maxW, font) {
    text = String(text);
    if (textWidth(text, font) <= maxW) return text;
    let lo = 0, hi = text.length;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (textWidth(text.slice(0, mid) + "\u2026", font) <= maxW) lo = mid; else hi = mid - 1;
    }
    return text.slice(0, lo) + "\u2026";
  }
  const maxWidth = (labels, font) => labels.reduce((m, s) => Math.max(m, textWidth(String(s), font)), 0);

  // Round axis ticks covering [lo, hi]; the domain widens to the outer ticks.
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
    let step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    const err = n / (hi - lo) * step;
    if (err <= 0.15) step *= 10; else if (err <= 0.35) step *= 5; else if (err <= 0.75) step *= 2;
    const a = Math.floor(lo / step) * step, b = Math.ceil(hi / step) * step, ticks = [];
    for (let t = a; t <= b + step / 2; t += step) ticks.push(Math.abs(t) < step / 1e6 ? 0 : t);
    return { lo: a, hi: b, ticks: ticks };
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    if (getComputedStyle(el).position === "static") el.style.position = "relative";  // tooltip anchor
  }
  const widthOf = (el) => Math.max(200, Math.floor(el.clientWidth || 600));  // hidden: a default
  function isArr(v, what) { if (!Array.isArray(v)) throw new Error(what + " must be an array"); return v; }

  // The hover box: one absolutely positioned div per plot, kept inside the plot's width.
  function makeTip(el) {
    const tip = document.createElement("div");
    tip.className = "plot-tip";
    Object.assign(tip.style, { position: "absolute", pointerEvents: "none", display: "none", zIndex: 10 });
    el.appendChild(tip);
    return {
      show(text, ev) {
        tip.textContent = text;
        tip.style.display = "block";
        const r = el.getBoundingClientRect();
        let x = ev.clientX - r.left + 14;
        const y = ev.clientY - r.top + 14;
        if (x + tip.offsetWidth > el.clientWidth) x = Math.max(0, ev.clientX - r.left - tip.offsetWidth - 10);
        tip.style.left = x + "px";
        tip.style.top = y + "px";
      },
      hide() { tip.style.display = "none"; },
    };
  }

  // Only links the page itself could hold: a URL from data must not run script.
  function safeUrl(link) {
    if (typeof link !== "string" || !link) return null;
    try {
      const u = new URL(link, global.location.href);
      return ["http:", "https:", "file:"].indexOf(u.protocol) >= 0 ? u.href : null;
    } catch (e) { return null; }
  }

  /* ---------------------------------------------------------------- heatmap (canvas) */
  function heatmap(el, spec) {
    const rows = isArr(spec.rows, "rows").map(String), cols = isArr(spec.cols, "cols").map(String);
    const values = isArr(spec.values, "values"), links = spec.links || null;
    if (values.length !== rows.length) throw new Error("values has " + values.length + " rows, rows has " + rows.length);
    values.forEach((r, i) => {
      if (!Array.isArray(r) || r.length !== cols.length) throw new Error("values row " + i + " does not have " + cols.length + " columns");
    });
    clear(el);
    if (!rows.length || !cols.length) { el.appendChild(document.createTextNode("no data")); return register(el, () => heatmap(el, spec)); }

    // The colour range is the whole matrix's, so colours stay put while zooming.
    let [lo, hi] = extent([].concat(...values));
    const diverging = spec.scale === "diverging", table = diverging ? DIV_LUT : SEQ_LUT;
    if (lo > hi) { lo = 0; hi = 1; }  // all null
    if (diverging) { const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1; lo = -m; hi = m; }
    const colour = (v) => finite(v) ? table[hi > lo ? Math.round((v - lo) / (hi - lo) * 255) : 128] : NULL_RGB;
    const cells = document.createElement("canvas");  // one pixel per cell, scaled up when drawn

    const canvas = document.createElement("canvas");
    canvas.style.display = "block";
    canvas.style.maxWidth = "100%";
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", (spec.title || "heatmap") + " (drag to zoom, double-click to reset)");
    const sel = document.createElement("div");  // the zoom rectangle while dragging
    Object.assign(sel.style, { position: "absolute", display: "none", pointerEvents: "none",
      border: "1px dashed #222", background: "rgba(0,0,0,0.08)" });
    const reset = document.createElement("button");
    reset.type = "button";
    reset.className = "plot-reset";
    reset.textContent = "reset zoom";
    Object.assign(reset.style, { position: "absolute", top: "2px", right: "2px", display: "none" });
    el.appendChild(canvas); el.appendChild(sel); el.appendChild(reset);
    const tip = makeTip(el);

    const view = { r0: 0, r1: rows.length, c0: 0, c1: cols.length };  // half-open window
    let L = null;  // the layout of the last draw, for hit testing

    function draw() {
      const W = widthOf(el), font = "11px " + FONT;
      const vr = rows.slice(view.r0, view.r1), vc = cols.slice(view.c0, view.c1);
      const rowLab = Math.min(maxWidth(vr, font), Math.min(160, W * 0.25));
      const top = spec.title ? 28 : 10, left = 8 + (spec.yLabel ? 18 : 0) + rowLab + 6, legendW = 72;
      // Height from all rows (not the window): zooming enlarges cells instead of reshaping the plot.
      const ph = Math.min(600, Math.max(48, rows.length * 16));
      const pw = Math.max(40, Math.min(W - left - legendW - 8, Math.max(120, cols.length * 60)));
      const cw = pw / vc.length, ch = ph / vr.length;
      const colFit = maxWidth(vc, font) + 6 <= cw;  // horizontal column labels when they fit
      const colLab = colFit ? 14 : Math.min(maxWidth(vc, font), 110);
      const H = top + ph + 8 + colLab + (spec.xLabel ? 22 : 4);
      const dpr = global.devicePixelRatio || 1;
      canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
      canvas.style.width = W + "px"; canvas.style.height = H + "px";
      const ctx = canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, W, H);
      L = { W: W, H: H, left: left, top: top, pw: pw, ph: ph, cw: cw, ch: ch };

      // Cells as an image of one pixel each, stretched without smoothing: far faster than a
      // fillRect per cell (40,000 at 200x200), and no hairline seams between neighbours.
      const img = new ImageData(vc.length, vr.length), px = img.data;
      for (let i = 0, k = 0; i < vr.length; i++) {
        const row = values[view.r0 + i];
        for (let j = 0; j < vc.length; j++, k += 4) {
          const c = colour(row[view.c0 + j]);
          px[k] = c[0]; px[k + 1] = c[1]; px[k + 2] = c[2]; px[k + 3] = 255;
        }
      }
      cells.width = vc.length; cells.height = vr.length;
      cells.getContext("2d").putImageData(img, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(cells, left, top, pw, ph);
      ctx.fillStyle = "#333"; ctx.font = font;
      // Tick labels: every k-th one when cells are thinner than the text.
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      const rStep = Math.ceil(13 / ch);
      for (let i = 0; i < vr.length; i += rStep) ctx.fillText(truncate(vr[i], rowLab, font), left - 4, top + (i + 0.5) * ch);
      const cStep = colFit ? 1 : Math.ceil(13 / cw);
      for (let j = 0; j < vc.length; j += cStep) {
        const x = left + (j + 0.5) * cw;
        if (colFit) { ctx.textAlign = "center"; ctx.textBaseline = "top"; ctx.fillText(vc[j], x, top + ph + 4); continue; }
        ctx.save(); ctx.translate(x, top + ph + 4); ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "right"; ctx.fillText(truncate(vc[j], colLab, font), 0, 0); ctx.restore();
      }
      ctx.textAlign = "center"; ctx.textBaseline = "alphabetic";
      if (spec.title) { ctx.font = "bold 13px " + FONT; ctx.textAlign = "left"; ctx.fillText(truncate(spec.title, W - 90, ctx.font), 8, 18); }
      ctx.font = "12px " + FONT; ctx.textAlign = "center";
      if (spec.xLabel) ctx.fillText(truncate(spec.xLabel, pw, ctx.font), left + pw / 2, H - 6);
      if (spec.yLabel) {
        ctx.save(); ctx.translate(14, top + ph / 2); ctx.rotate(-Math.PI / 2);
        ctx.fillText(truncate(spec.yLabel, ph, ctx.font), 0, 0); ctx.restore();
      }
      // Legend: a vertical ramp, max at the top, min at the bottom (0 in the middle if diverging).
      const lx = left + pw + 12;
      for (let k = 0; k < ph; k++) { ctx.fillStyle = css(table[Math.round((1 - k / ph) * 255)]); ctx.fillRect(lx, top + k, 12, 1.5); }
      ctx.strokeStyle = "#999"; ctx.strokeRect(lx + 0.5, top + 0.5, 11, ph - 1);
      ctx.fillStyle = "#333"; ctx.font = font; ctx.textAlign = "left";
      ctx.textBaseline = "top"; ctx.fillText(fmt(hi), lx + 16, top);
      ctx.textBaseline = "bottom"; ctx.fillText(fmt(lo), lx + 16, top + ph);
      if (diverging && ph > 60) { ctx.textBaseline = "middle"; ctx.fillText("0", lx + 16, top + ph / 2); }
      reset.style.display = zoomed() ? "block" : "none";
    }

    const zoomed = () => view.r0 > 0 || view.c0 > 0 || view.r1 < rows.length || view.c1 < cols.length;
    // Canvas CSS pixels of a mouse event (the canvas may be scaled down by max-width).
    function pos(ev) {
      const r = canvas.getBoundingClientRect();
      return { x: (ev.clientX - r.left) * L.W / r.width, y: (ev.clientY - r.top) * L.H / r.height };
    }
    function cellAt(p) {
      const j = Math.floor((p.x - L.left) / L.cw), i = Math.floor((p.y - L.top) / L.ch);
      if (p.x < L.left || p.y < L.top || i >= view.r1 - view.r0 || j >= view.c1 - view.c0) return null;
      return { i: view.r0 + i, j: view.c0 + j };
    }
    const clampX = (x) => Math.max(L.left, Math.min(L.left + L.pw - 0.01, x));
    const clampY = (y) => Math.max(L.top, Math.min(L.top + L.ph - 0.01, y));
    const linkOf = (c) => c && links && links[c.i] ? safeUrl(links[c.i][c.j]) : null;

    let drag = null, pending = null;
    canvas.addEventListener("mousemove", (ev) => {
      if (drag) return;
      const c = cellAt(pos(ev));
      if (!c) { tip.hide(); canvas.style.cursor = ""; return; }
      tip.show(rows[c.i] + " / " + cols[c.j] + ": " + fmt(values[c.i][c.j]), ev);
      canvas.style.cursor = linkOf(c) ? "pointer" : "crosshair";
    });
    canvas.addEventListener("mouseleave", () => { if (!drag) tip.hide(); });
    canvas.addEventListener("mousedown", (ev) => {
      if (ev.button !== 0 || !cellAt(pos(ev))) return;
      ev.preventDefault();  // no text selection while dragging
      drag = { a: pos(ev), ev: ev };
      tip.hide();
      global.addEventListener("mousemove", onDrag);
      global.addEventListener("mouseup", onUp);
    });
    function onDrag(ev) {
      const b = pos(ev), r = canvas.getBoundingClientRect(), sx = r.width / L.W, sy = r.height / L.H;
      const x0 = clampX(Math.min(drag.a.x, b.x)), x1 = clampX(Math.max(drag.a.x, b.x));
      const y0 = clampY(Math.min(drag.a.y, b.y)), y1 = clampY(Math.max(drag.a.y, b.y));
      Object.assign(sel.style, { display: "block", left: canvas.offsetLeft + x0 * sx + "px",
        top: canvas.offsetTop + y0 * sy + "px", width: (x1 - x0) * sx + "px", height: (y1 - y0) * sy + "px" });
    }
    function onUp(ev) {
      global.removeEventListener("mousemove", onDrag);
      global.removeEventListener("mouseup", onUp);
      sel.style.display = "none";
      const a = drag.a, b = pos(ev);
      drag = null;
      if (Math.abs(a.x - b.x) < 4 && Math.abs(a.y - b.y) < 4) return click(cellAt(a), ev);
      const c0 = cellAt({ x: clampX(Math.min(a.x, b.x)), y: clampY(Math.min(a.y, b.y)) });
      const c1 = cellAt({ x: clampX(Math.max(a.x, b.x)), y: clampY(Math.max(a.y, b.y)) });
      if (!c0 || !c1) return;
      Object.assign(view, { r0: c0.i, r1: c1.i + 1, c0: c0.j, c1: c1.j + 1 });
      draw();
    }
    // A click follows the cell's link; while zoomed it waits a moment, as it may be a double-click.
    function click(c, ev) {
      const url = linkOf(c);
      if (!url) return;
      if (ev.ctrlKey || ev.metaKey) { global.open(url, "_blank"); return; }
      if (!zoomed()) { global.location.href = url; return; }
      clearTimeout(pending);
      pending = setTimeout(() => { global.location.href = url; }, 300);
    }
    function unzoom() {
      clearTimeout(pending);
      Object.assign(view, { r0: 0, r1: rows.length, c0: 0, c1: cols.length });
      draw();
    }
    canvas.addEventListener("dblclick", unzoom);
    reset.addEventListener("click", unzoom);
    draw();
    register(el, draw);  // a resize redraws the same zoom window
  }

  /* ---------------------------------------------------------------- SVG helpers */
  function svg(tag, attrs, parent) {
    const n = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach((k) => n.setAttribute(k, attrs[k]));
    if (parent) parent.appendChild(n);
    return n;
  }
  function svgText(parent, text, attrs) { const t = svg("text", attrs, parent); t.textContent = text; return t; }
  const scale = (d0, d1, r0, r1) => (v) => r0 + (v - d0) / (d1 - d0) * (r1 - r0);

  // The frame both SVG charts share: svg, title, y grid and ticks, axis names.
  function frame(el, spec, W, H, m, yt) {
    const root = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H,
      "font-family": FONT, "font-size": 11, role: "img" }, el);
    root.style.display = "block";
    root.style.maxWidth = "100%";
    if (spec.title) {
      svgText(root, truncate(spec.title, W - 16, "bold 13px " + FONT), { x: 8, y: 18, "font-weight": "bold", "font-size": 13 });
      root.setAttribute("aria-label", String(spec.title));
    }
    const ys = scale(yt.lo, yt.hi, H - m.b, m.t);
    yt.ticks.forEach((t) => {
      svg("line", { x1: m.l, x2: W - m.r, y1: ys(t), y2: ys(t), stroke: t === 0 ? "#888" : "#e6e6e6" }, root);
      svgText(root, fmt(t), { x: m.l - 6, y: ys(t) + 4, "text-anchor": "end", fill: "#444" });
    });
    svg("line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, stroke: "#888" }, root);
    if (spec.xLabel) svgText(root, String(spec.xLabel), { x: m.l + (W - m.l - m.r) / 2, y: H - 6, "text-anchor": "middle", "font-size": 12 });
    if (spec.yLabel) {
      const cy = m.t + (H - m.t - m.b) / 2;
      svgText(root, String(spec.yLabel), { x: 14, y: cy, "text-anchor": "middle", "font-size": 12, transform: "rotate(-90 14 " + cy + ")" });
    }
    return { root: root, ys: ys };
  }
  // Hover: the shared tooltip plus an SVG <title> (read by screen readers and without script).
  function hover(node, tip, text) {
    svg("title", {}, node).textContent = text;
    node.addEventListener("mousemove", (ev) => tip.show(text, ev));
    node.addEventListener("mouseleave", () => tip.hide());
  }

  /* ---------------------------------------------------------------- bars (SVG) */
  function bars(el, spec) {
    const labels = isArr(spec.labels, "labels").map(String), values = isArr(spec.values, "values");
    if (labels.length !== values.length) throw new Error("labels and values differ in length");
    clear(el);
    if (!labels.length) { el.appendChild(document.createTextNode("no data")); return register(el, () => bars(el, spec)); }
    const W = widthOf(el), H = 320, font = "11px " + FONT, ext = extent(values);
    const yt = niceTicks(Math.min(0, ext[0]), Math.max(0, ext[1]), 5);
    const m = { t: spec.title ? 30 : 12, r: 12, l: 8 + (spec.yLabel ? 18 : 0) + Math.max(...yt.ticks.map((t) => textWidth(fmt(t), font))) + 8 };
    const bw = (W - m.l - m.r) / labels.length, lw = Math.min(maxWidth(labels, font), 120);
    const rotate = lw + 4 > bw;  // slanted labels when they do not fit under their bar
    m.b = (rotate ? lw * 0.72 + 16 : 20) + (spec.xLabel ? 20 : 0);
    const tip = makeTip(el), f = frame(el, spec, W, H, m, yt), ys = f.ys;
    const step = rotate ? Math.ceil(14 / bw) : 1;
    labels.forEach((lab, i) => {
      const v = values[i], x = m.l + i * bw;
      if (finite(v)) {
        const r = svg("rect", { x: x + bw * 0.1, width: Math.max(1, bw * 0.8), y: Math.min(ys(v), ys(0)),
          height: Math.max(0.5, Math.abs(ys(v) - ys(0))), fill: v < 0 ? PALETTE[3] : PALETTE[0], class: "bar" }, f.root);
        hover(r, tip, lab + ": " + fmt(v));
      }
      if (i % step) return;
      const cx = x + bw / 2, ty = H - m.b + 14, t = truncate(lab, lw, font);
      if (rotate) svgText(f.root, t, { x: cx, y: ty, "text-anchor": "end", transform: "rotate(-45 " + cx + " " + ty + ")" });
      else svgText(f.root, t, { x: cx, y: ty, "text-anchor": "middle" });
    });
    el.dataset.rendered = "1";
    register(el, () => bars(el, spec));
  }

  /* ---------------------------------------------------------------- scatter (SVG) */
  function scatter(el, spec) {
    const xs = isArr(spec.x, "x"), ys0 = isArr(spec.y, "y"), labels = spec.labels || [], groups = spec.groups || null;
    if (xs.length !== ys0.length) throw new Error("x and y differ in length");
    const pts = [];
    xs.forEach((x, i) => { if (finite(x) && finite(ys0[i])) pts.push(i); });  // skip null / NaN points
    clear(el);
    if (!pts.length) { el.appendChild(document.createTextNode("no data")); return register(el, () => scatter(el, spec)); }
    const W = widthOf(el), H = Math.round(Math.min(420, Math.max(260, W * 0.5))), font = "11px " + FONT;
    let [xmin, xmax] = extent(pts.map((i) => xs[i])), [ymin, ymax] = extent(pts.map((i) => ys0[i]));
    // With y = x drawn, both axes share one domain so the line runs corner to corner.
    if (spec.diagonal) { xmin = ymin = Math.min(xmin, ymin); xmax = ymax = Math.max(xmax, ymax); }
    const xt = niceTicks(xmin, xmax, 6), yt = niceTicks(ymin, ymax, 5);
    const names = groups ? [...new Set(pts.map((i) => String(groups[i])))] : [];
    const legendW = names.length ? Math.min(160, maxWidth(names, font) + 28) : 0;
    const m = { t: spec.title ? 30 : 12, r: 12 + legendW, b: 24 + (spec.xLabel ? 20 : 0),
      l: 8 + (spec.yLabel ? 18 : 0) + Math.max(...yt.ticks.map((t) => textWidth(fmt(t), font))) + 8 };
    const tip = makeTip(el), f = frame(el, spec, W, H, m, yt), ys = f.ys;
    const xsc = scale(xt.lo, xt.hi, m.l, W - m.r);
    xt.ticks.forEach((t) => {
      svg("line", { x1: xsc(t), x2: xsc(t), y1: m.t, y2: H - m.b, stroke: "#f0f0f0" }, f.root);
      svgText(f.root, fmt(t), { x: xsc(t), y: H - m.b + 14, "text-anchor": "middle", fill: "#444" });
    });
    svg("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, stroke: "#888" }, f.root);
    if (spec.diagonal) {
      svg("line", { x1: xsc(xt.lo), y1: ys(xt.lo), x2: xsc(xt.hi), y2: ys(xt.hi),
        stroke: "#999", "stroke-dasharray": "4 3", class: "diagonal" }, f.root);
    }
    const colourOf = (i) => groups ? PALETTE[names.indexOf(String(groups[i])) % PALETTE.length] : PALETTE[0];
    pts.forEach((i) => {
      const c = svg("circle", { cx: xsc(xs[i]), cy: ys(ys0[i]), r: 3.5, fill: colourOf(i),
        "fill-opacity": 0.75, stroke: "#fff", "stroke-width": 0.5, class: "point" }, f.root);
      const name = labels[i] !== undefined && labels[i] !== null ? String(labels[i]) + "\n" : "";
      const grp = groups ? " [" + String(groups[i]) + "]" : "";
      hover(c, tip, name + "x: " + fmt(xs[i]) + ", y: " + fmt(ys0[i]) + grp);
      c.addEventListener("mouseenter", () => c.setAttribute("r", 5.5));
      c.addEventListener("mouseleave", () => c.setAttribute("r", 3.5));
    });
    names.forEach((g, k) => {
      const lx = W - legendW + 4, ly = m.t + 8 + k * 16;
      svg("circle", { cx: lx + 5, cy: ly - 4, r: 4.5, fill: PALETTE[k % PALETTE.length] }, f.root);
      svgText(f.root, truncate(g, legendW - 24, font), { x: lx + 16, y: ly });
    });
    el.dataset.rendered = "1";
    register(el, () => scatter(el, spec));
  }

  /* ---------------------------------------------------------------- resize and renderAll */
  let plotted = [], timer = null;
  function register(el, redraw) {
    el._atlasRedraw = redraw;
    el._atlasWidth = el.clientWidth;
    el.dataset.rendered = "1";
    if (plotted.indexOf(el) < 0) {
      plotted.push(el);
      // Also catches width changes without a window resize (a scrollbar appearing, a grid reflowing).
      if (global.ResizeObserver) new global.ResizeObserver(schedule).observe(el);
    }
  }
  function schedule() { clearTimeout(timer); timer = setTimeout(redrawAll, 150); }
  function redrawAll() {
    plotted = plotted.filter((el) => el.isConnected);
    plotted.forEach((el) => {
      if (el.clientWidth === el._atlasWidth) return;  // height changes are our own redraws
      el._atlasWidth = el.clientWidth;
      try { el._atlasRedraw(); } catch (e) { showError(el, e); }
    });
  }
  global.addEventListener("resize", schedule);

  function showError(el, e) {
    while (el.firstChild) el.removeChild(el.firstChild);
    const d = document.createElement("div");
    d.className = "plot-error";
    d.textContent = "Plot error: " + (e && e.message ? e.message : String(e));
    el.appendChild(d);
    el.dataset.rendered = "error";
    if (global.console) console.warn("AtlasPlots:", e);
  }

  const KINDS = { heatmap: heatmap, bars: bars, scatter: scatter };
  // Every <div class="plot" data-kind=.. data-spec=ID>, its spec in <script type="application/json" id=ID>.
  function renderAll(root) {
    root = root || document;
    root.querySelectorAll("div.plot[data-kind]").forEach((el) => {
      try {
        const fn = KINDS[el.dataset.kind];
        if (!fn) throw new Error("unknown plot kind " + JSON.stringify(el.dataset.kind));
        const node = (el.ownerDocument || document).getElementById(el.dataset.spec || "");
        if (!node) throw new Error("no spec element " + JSON.stringify(el.dataset.spec || ""));
        const spec = JSON.parse(node.textContent);
        if (!spec || typeof spec !== "object") throw new Error("spec is not an object");
        fn(el, spec);
        el.dataset.rendered = "1";
      } catch (e) { showError(el, e); }
    });
  }

  global.AtlasPlots = { heatmap: heatmap, bars: bars, scatter: scatter, renderAll: renderAll, format: fmt };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", () => renderAll(document));
  else renderAll(document);
})(window);
