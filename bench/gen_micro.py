"""The load generator's receive path alone: its CPU per delivery at a fixed, repeatable load.

Under `chat-bench` the generator's CPU per delivery depends on the server: a
faster server fills each read with more lines, and the cost of a read is
shared by them. Here a feeder process (not measured) accepts `--conns`
connections of the generator's own `Loop`/`Conn` on 127.0.0.1 and writes to
each, `--rate` times a second, `--burst` benchmark lines of `--senders`
senders (`#room nick <sid> <seq> <t_ns>`, text mode), so every run reads the
same lines in reads of the same size (in the message format of the generator
it measures). The generator checks them with its
real receivers (`Flow`, half of them re-arming TCP_QUICKACK as in W2), and
the figure is its own CPU (getrusage) per line received and per read.

    python -m bench.gen_micro --conns 100 --burst 10 --rate 200 --seconds 5

It uses only what every version of `bench.loadgen`/`bench.flows` has, so
an older checkout can be measured with the same script (PYTHONPATH).
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import socket
import time
from array import array
from multiprocessing.connection import Connection

import click

from bench.flows import Flow
from bench.loadgen import Conn, Loop

READY_TIMEOUT = 20.0
LINGER = 5.0  # seconds the generator keeps reading after the feeder's last write, at most


def feed(pipe: Connection, conns: int, burst: int, rate: float, seconds: float, senders: int) -> None:
    """The feeder process: accept `conns` connections, then write bursts of lines to each, at `rate` a second."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=conns)
    pipe.send(listener.getsockname()[1])
    socks = []
    for _ in range(conns):
        sock, _addr = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(sock)
    listener.close()
    epoch = pipe.recv()  # the reader's flow's (None: an older generator, with absolute decimal ns times)
    seqs = [0] * senders
    interval, start, sent = 1.0 / rate, time.monotonic(), 0
    deadline = start + seconds
    while time.monotonic() < deadline:
        lines = []
        for k in range(burst):
            sid = k % senders
            if epoch is None:
                lines.append(b"#genmicro gm%d %d %d %d\n" % (sid, sid, seqs[sid], time.perf_counter_ns()))
            else:
                stamp = (time.perf_counter_ns() - epoch) // 1000
                lines.append(b"#genmicro gm%d %04x %08x %08x\n" % (sid, sid, seqs[sid], stamp))
            seqs[sid] += 1
        data = b"".join(lines)
        for sock in socks:
            sock.sendall(data)
        sent += 1
        pause = start + sent * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # the feeder's pace, not a synchronisation: the reader waits on the line count
    pipe.send(sum(seqs) * conns)
    pipe.recv()  # the reader is done
    for sock in socks:
        sock.close()


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(conns: int, burst: int, rate: float, seconds: float, senders: int) -> dict[str, float]:
    ours, theirs = multiprocessing.Pipe()
    feeder = multiprocessing.Process(target=feed, args=(theirs, conns, burst, rate, seconds, senders), daemon=True)
    feeder.start()
    loop = Loop()
    try:
        if not ours.poll(READY_TIMEOUT):
            raise RuntimeError("the feeder did not start")
        port = ours.recv()
        clients = [Conn(loop, ("127.0.0.1", port)) for _ in range(conns)]
        for i, conn in enumerate(clients):
            conn.quickack = i % 2 == 1
        flow = Flow(loop, [], clients, {}, "gen-micro")
        ours.send(getattr(flow, "epoch", None))
        began, cpu0 = time.monotonic(), cpu_s()
        loop.run(ours.poll, began + seconds + READY_TIMEOUT)
        total = ours.recv() if ours.poll() else -1
        loop.run(lambda: flow.stats.received + flow.stats.other_lines >= total, time.monotonic() + LINGER)
        cpu, wall = cpu_s() - cpu0, time.monotonic() - began
        ours.send("done")
        stats = flow.stats
        received = stats.received
        return {"lines_written": total, "received": received, "other_lines": stats.other_lines,
                "lost_or_dup": total - received, "reordered": stats.reordered, "duplicated": stats.duplicated,
                "cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "cpu_share": round(cpu / wall, 3),
                "us_per_line": round(cpu / max(received, 1) * 1e6, 3),
                "p50_ms": median_ms(stats.latencies + stats.latencies_quickack, getattr(flow, "epoch", None))}
    finally:
        loop.close()
        feeder.join(timeout=READY_TIMEOUT)
        if feeder.is_alive():
            feeder.kill()
            feeder.join()


def median_ms(latencies: array, epoch: int | None) -> float:
    """The median in ms of latencies in us (ns from a generator without a flow epoch)."""
    unit = 1e3 if epoch is not None else 1e6
    return round(sorted(latencies)[len(latencies) // 2] / unit, 3) if latencies else -1.0


@click.command()
@click.option("--conns", default=100, show_default=True, help="receiving connections")
@click.option("--burst", default=10, show_default=True, help="lines a write, to each connection")
@click.option("--rate", default=200.0, show_default=True, help="writes a second, to each connection")
@click.option("--seconds", default=5.0, show_default=True)
@click.option("--senders", default=5, show_default=True, help="distinct senders in the lines")
def main(conns: int, burst: int, rate: float, seconds: float, senders: int) -> None:
    print(json.dumps(measure(conns, burst, rate, seconds, senders)))


if __name__ == "__main__":
    main()
