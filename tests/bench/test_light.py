"""bench.light: a tiny run against a real chat-stack prints sane numbers and loses nothing; its arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from bench.light import LOADGEN, SCHEDSTATS, Usage, per_message, threads_of

RUN_LIMIT = 120.0  # seconds: the stack's start, a second of load, its stop


def run_light(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench.light ARGS --json`; on a hang it gets SIGTERM (which stops its stack) before SIGKILL."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.light", "--out", str(out), "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=RUN_LIMIT)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        raise AssertionError(f"bench.light ran over {RUN_LIMIT} s:\n{stderr[-2000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_a_tiny_run_prints_every_part_and_loses_nothing(tmp_path: Path) -> None:
    done = run_light(tmp_path, "--rate", "100", "--members", "3", "--duration", "1", "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert 80 <= report["sent"] <= 110
    assert report["expected"] == 2 * report["sent"] and report["received"] == report["expected"]
    assert (report["lost"], report["duplicated"], report["reordered"], report["errors"]) == (0, 0, 0, [])
    rows = {row["part"]: row for row in report["rows"]}
    assert {"gateway", "broker", "worker-1", "worker-2", "valkey", LOADGEN, "stack total"} <= set(rows)
    for part in ("gateway", "broker", LOADGEN):  # every message passes through these: it costs something
        assert 0 < rows[part]["cpu_us"] < 1_000_000 and rows[part]["switches"] > 0, rows[part]
    assert 0 < rows["broker"]["zmq_io_us"] < rows["broker"]["cpu_us"]  # its I/O thread carries every message
    assert rows["worker-1"]["cpu_us"] + rows["worker-2"]["cpu_us"] > 0
    stack = [row for row in report["rows"] if row["pid"] is not None and row["part"] != LOADGEN]
    assert abs(rows["stack total"]["cpu_us"] - sum(row["cpu_us"] for row in stack)) < 1
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"] < 5_000
    alive = [row["pid"] for row in stack if psutil.pid_exists(row["pid"])
             and psutil.Process(row["pid"]).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], "the stack's processes outlived the run"
    assert (tmp_path / "chat-light.log").exists()


def test_sigterm_mid_run_stops_the_stack(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "bench.light", "--out", str(tmp_path), "--duration", "60",
                             "--rate", "50", "--members", "2", "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    children: list[psutil.Process] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # bounded: the run ends by itself after its 60 s, and the pytest timeout
            if "light 50/s" in line:  # the measured phase: the whole stack is up
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4  # chat-stack, Valkey, the broker, the pool ...
        proc.terminate()
        assert proc.wait(timeout=60) == 128 + 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _, alive = psutil.wait_procs(children, timeout=30)
        for child in alive:
            child.kill()
    assert alive == [], f"outlived bench.light: {[c.pid for c in alive]}"


def test_bad_options_are_refused_before_anything_starts(tmp_path: Path) -> None:
    done = run_light(tmp_path, "--members", "1")
    assert done.returncode == 2 and "--members" in done.stderr
    assert not (tmp_path / "chat-light.log").exists()


def test_per_message_numbers_the_workers_and_adds_up_the_stack() -> None:
    before = {1: Usage("broker", 1.0, 100, 0.25), 2: Usage("worker", 2.0, 10), 3: Usage("worker", 0.5, 5),
              9: Usage(LOADGEN, 3.0, 50)}
    after = {1: Usage("broker", 1.3, 700, 0.35), 2: Usage("worker", 2.2, 210, 0.05), 3: Usage("worker", 0.6, 105),
             4: Usage("valkey", 0.1, 100), 9: Usage(LOADGEN, 3.5, 150)}  # 4: new, counted from zero
    rows = {row.part: row for row in per_message(before, after, 1000)}
    assert (rows["broker"].cpu_us, rows["broker"].switches, rows["broker"].zmq_io_us) == (300.0, 0.6, 100.0)
    assert (rows["worker-1"].pid, rows["worker-1"].cpu_us) == (2, 200.0)
    assert (rows["worker-2"].pid, rows["worker-2"].cpu_us) == (3, 100.0)
    assert rows["valkey"].cpu_us == 100.0 and rows[LOADGEN].cpu_us == 500.0
    assert rows["stack total"].cpu_us == 700.0 and rows["stack total"].switches == 1.0  # the load generator apart
    assert rows["stack total"].zmq_io_us == 150.0
    assert list(rows)[-2:] == [LOADGEN, "stack total"]


def test_threads_are_read_for_every_thread_and_a_gone_process_is_zero() -> None:
    mine = threads_of(os.getpid())
    assert mine.switches > 0 and threads_of(os.getpid()).switches >= mine.switches
    assert (mine.run or 0) > 0 if SCHEDSTATS else mine.run is None
    gone = threads_of(2**22 + 12345)
    assert (gone.run, gone.zmq_io, gone.switches) == (None, 0.0, 0)
