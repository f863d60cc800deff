"""The benchmark harness runs end to end with tiny numbers (no speed is asserted, ever)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_run_writes_a_table_and_results_for_every_system(tmp_path: Path) -> None:
    """`bench/run.py --quick` with a few entries: every system and phase gets a positive rate,
    the worker's latency and memory cases report numbers, latest.json and latest.md are written."""
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "run.py"), "--quick",
            "--only", "transport,latency,memory",
            "--records", "2000", "--reps", "1",
            "--latency-s", "0.3", "--batches-per-s", "200",
            "--memory-entries", "20,40",
            "--out", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "aam-dcl / FastStream" in done.stdout
    results = json.loads((tmp_path / "latest.json").read_text())
    transport = results["cases"]["transport"]
    for system in ("aam-dcl", "faststream", "redis-py", "limit"):
        rates = transport["records_per_s"][system]
        assert set(rates) == {"publish", "consume", "end_to_end"}
        assert all(rate > 0 for rate in rates.values()), (system, rates)
    latency = results["cases"]["latency"]
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert set(results["cases"]["memory"]["runs"]) == {"20", "40"}
    assert "aam-dcl / limit" in (tmp_path / "latest.md").read_text()
