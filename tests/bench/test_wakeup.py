"""bench.wakeup: the placements it measures, its arithmetic, and a tiny real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.wakeup import cases, per_wakeup

RUN_LIMIT = 60.0  # seconds for a few hundred round trips in three placements


def test_one_cpu_gives_no_two_cpu_case() -> None:
    assert cases({3}) == [("one CPU", (3, 3)), ("scheduler's choice", None)]


def test_two_cpus_are_the_two_lowest_allowed() -> None:
    assert cases({5, 1, 7}) == [("one CPU", (1, 1)), ("two CPUs", (1, 5)), ("scheduler's choice", None)]


def test_a_round_trip_is_two_wakeups() -> None:
    assert per_wakeup(0.004, 100) == pytest.approx(20.0)


def test_a_tiny_run_reports_every_placement() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.wakeup", "--round-trips", "300", "--json"],
                          capture_output=True, text=True, timeout=RUN_LIMIT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    assert [result["case"] for result in results] == [case for case, _ in cases(os.sched_getaffinity(0))]
    for result in results:
        assert 0 < result["round_trip_us"] < 1e6
        assert 0 < result["cpu_us_per_wakeup"] < 1e6
