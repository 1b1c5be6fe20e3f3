"""`atlas serve` in a real headless browser (Debian's chromium, driven by selenium through
chromedriver): the runs page, then a relation, a fact and a neuron reached by clicking links, and a
named query run from its form. Screenshots go to ``$ATLAS_TEST_ARTIFACTS`` (default
``test-artifacts/`` at the repository root). Without chromium the test is skipped on a developer
machine and fails on CI (``.ci/run`` installs it)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from atlas.web.app import create_app
from atlas.web.options import ServeOptions
from tests.web.conftest import Served, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("ATLAS_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
)


def _browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("CI"):
            pytest.fail(f"chromium and chromedriver are required on CI ({CHROMIUM}, {CHROMEDRIVER})")
        pytest.skip("no chromium/chromedriver (Debian packages chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="atlas-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[object]:
    yield from _browser()


@pytest.fixture
def server(served: Served) -> Iterator[str]:
    port = free_port()
    app = create_app(served.store, ServeOptions(port=port, pool=4))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def _shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _click(driver, css: str) -> None:
    from selenium.webdriver.common.by import By

    link = driver.find_element(By.CSS_SELECTOR, css)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    link.click()


def _rendered(driver, plot_id: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, plot_id).get_attribute("data-rendered") == "1")


@pytest.mark.parametrize("backend", ["duckdb"], indirect=True)
def test_click_through_the_atlas_and_run_a_query(served: Served, server: str, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d, w = browser, served.world
    d.get(server + "/")
    assert d.find_element(By.TAG_NAME, "h1").text == "Runs"
    _shot(d, "1-runs")
    _click(d, f'table[data-table="runs"] a[href="/run/{w.run}"]')
    assert d.find_element(By.TAG_NAME, "h1").text.startswith(f"Run {w.run}")
    _rendered(d, "plot-layers")
    _click(d, f'table[data-table="relations"] a[href="/run/{w.run}/relation/P36"]')
    assert d.find_element(By.TAG_NAME, "h1").text.startswith("P36")
    _shot(d, "2-relation")
    _click(d, 'table[data-table="facts"] tbody tr:first-child a[href*="/fact/"]')
    title = d.find_element(By.CSS_SELECTOR, "h1.fact-title").text
    assert "Paris" in title or "→" in title
    _rendered(d, "plot-scores")
    rows = d.find_elements(By.CSS_SELECTOR, 'table[data-table="prompts"] tbody tr')
    assert len(rows) == 3
    _shot(d, "3-fact")
    fact_url = d.current_url
    _click(d, 'table[data-table="neurons"] tbody tr:first-child a[href*="/neuron/"]')
    assert d.find_element(By.TAG_NAME, "h1").text.startswith("Neuron L")
    assert d.find_elements(By.CSS_SELECTOR, 'table[data-table="tokens"] tbody tr')  # projected on demand
    _shot(d, "4-neuron")
    fact_id = fact_url.rsplit("/fact/", 1)[1]
    d.get(server + "/api/runs")
    run_id = json.loads(d.find_element(By.TAG_NAME, "body").text)["tables"]["runs"][0]["id"]
    d.get(server + "/sql")
    _click(d, 'a[href="/sql/fact-neurons"]')
    d.find_element(By.ID, "p-run_id").send_keys(str(run_id))
    d.find_element(By.ID, "p-fact_id").send_keys(fact_id)
    _click(d, "form.query-form button[type=submit]")
    WebDriverWait(d, 10).until(lambda x: x.find_elements(By.CSS_SELECTOR, 'table[data-table="rows"] tbody tr'))
    assert f"fact_id={fact_id}" in d.current_url
    _shot(d, "5-query")
