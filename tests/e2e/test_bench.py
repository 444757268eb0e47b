"""chat-bench runs end to end in its quick mode, and its stack loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys


def test_quick_benchmark_runs_and_loses_nothing(tmp_path) -> None:
    out = tmp_path / "bench"
    run = subprocess.run(
        [sys.executable, "-m", "bench.cli", "--quick", "--workloads", "W1,W4,W5", "--out", str(out)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["results"]
    assert {r["workload"] for r in rows} == {"W1", "W4", "W5"}
    for row in rows:
        assert row["error"] is None, row
        if row["workload"] in ("W1", "W4"):
            assert row["deliveries"] > 0 and row["lost"] == 0 and row["duplicated"] == 0, row
    assert (out / "results.md").read_text().startswith("# chat-bench results")
