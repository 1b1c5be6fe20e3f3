"""How long the README main job takes on this CPU: `atlas demo` end to end in a fresh folder (it
picks bf16 where the processor runs it natively, else fp32), then the same facts indexed again in
fp32 into a copy of that atlas (a new run), for the ratio. The processor is recorded with each
line in bench/results.jsonl (`device`).

    python bench/demo_time.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from atlas.jobs.demo import DEMO_FACTS_PER_RELATION, DEMO_RELATIONS
from atlas.model.cpu import fastest_cpu_precision
from bench.results import append_result

ATLAS = [sys.executable, "-c", "from atlas.cli import main; main()"]


def timed(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run([*ATLAS, *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        demo_s = timed(["demo", "--db", f"duckdb:///{folder / 'atlas.duckdb'}"], folder)
        shutil.copy(folder / "atlas.duckdb", folder / "fp32.duckdb")
        selection = ["--relations", ",".join(DEMO_RELATIONS), "--limit-per-relation", str(DEMO_FACTS_PER_RELATION)]
        fp32_s = timed(
            ["index", "--db", f"duckdb:///{folder / 'fp32.duckdb'}", "--model", "smollm2", "--dataset", "kn-paper",
             *selection, "--precision", "fp32"],
            folder,
        )  # fmt: skip
    precision, why = fastest_cpu_precision()
    append_result("demo_time", {"command": "atlas demo", "precision": precision}, demo_s, 63, reason=why)
    append_result("demo_time", {"command": "atlas index (demo facts)", "precision": "fp32"}, fp32_s, 63)
    print(f"atlas demo ({precision}: {why}): {demo_s:.1f} s; the same 63 prompts indexed in fp32: {fp32_s:.1f} s")


if __name__ == "__main__":
    main()
