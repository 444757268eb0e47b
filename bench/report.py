"""Results -> results.json, results.md (tables), results.png (when matplotlib is there).

The Markdown has one row per (workload, server) and, when a baseline ran,
a table of ratios stack / baseline (above 1 means the stack has more of
it: good for rates, bad for latency, CPU and memory).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import hops
from bench.measure import HIST_EDGES_MS, Result

COLUMNS = ("workload", "server", "deliveries/s", "msgs/s", "p50 ms", "p99 ms", "max ms", "lost", "reord.",
           "dup.", "CPU-s/100k deliv.", "load-gen CPU", "RSS/idle conn", "notes")


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _rss(result: Result) -> str:
    rss = result.rss_per_conn_kib
    if not rss:
        return "-"
    gateway = rss.get("gateway")
    whole = rss.get("all", 0.0)
    return f"{whole:.1f} KiB" + (f" (gw {gateway:.1f})" if gateway is not None else "")


def _notes(result: Result) -> str:
    if result.error:
        return f"**error**: {result.error}"
    notes = []
    extra = result.extra
    if result.connect_s is not None:
        notes.append(f"connected all in {result.connect_s:.1f} s ({_num(extra.get('registrations_per_s'))}/s)")
    if "probe_members" in extra:
        notes.append(f"a room message reached {extra['probe_received']:,} of {extra['probe_members'] - 1:,} "
                     f"members, the last after {_num(extra['probe_all_in_ms'], 1)} ms; "
                     f"{extra['loadgen_processes']} load-generator processes")
    if "cycles" in extra:
        notes.append(f"{extra['cycles']:,} cycles, {extra['failed']} failed; latency = one cycle")
    if result.cpu_ms_per_op is not None:
        per = "cycle" if "cycles" in extra else "registration"
        notes.append(f"server CPU {result.cpu_ms_per_op:.2f} ms per {per}")
    if "offered_msgs_per_s" in extra:
        notes.append(f"offered {_num(extra['offered_msgs_per_s'])} msgs/s")
    if extra.get("quickack_p99_ms") is not None:
        notes.append(f"QUICKACK receivers p50/p99 {extra['quickack_p50_ms']:.2f}/{extra['quickack_p99_ms']:.2f} ms")
    if extra.get("receivers_closed"):
        notes.append(f"{extra['receivers_closed']} clients closed: {extra.get('closed_because')}")
    if extra.get("server_errors"):
        notes.append(f"errors: {extra['server_errors'][0]!r}")
    if extra.get("skipped_backlog"):
        notes.append(f"{extra['skipped_backlog']:,} sends skipped (backlog)")
    return "; ".join(notes)


def _row(result: Result) -> list[str]:
    loadgen = "-" if result.loadgen_cpu_share is None else f"{result.loadgen_cpu_share:.0%}"
    if result.loadgen_saturated:
        loadgen += " SATURATED"
    return [result.workload, result.server, _num(result.deliveries_per_s), _num(result.msgs_per_s),
            _num(result.p50_ms, 2), _num(result.p99_ms, 2), _num(result.max_ms, 1), _num(result.lost),
            _num(result.reordered), _num(result.duplicated), _num(result.cpu_per_100k, 3), loadgen,
            _rss(result), _notes(result)]


def table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def _cpu_ratio(a: Result, b: Result) -> str:
    if a.cpu_per_100k is not None and b.cpu_per_100k is not None:
        return _ratio(a.cpu_per_100k, b.cpu_per_100k)
    return _ratio(a.cpu_ms_per_op, b.cpu_ms_per_op)


def ratios(results: list[Result], of: str = "stack", to: str = "baseline") -> list[list[str]]:
    by_key = {(r.workload, r.server): r for r in results if r.error is None}
    rows = []
    for workload in dict.fromkeys(r.workload for r in results):
        a, b = by_key.get((workload, of)), by_key.get((workload, to))
        if a is None or b is None:
            continue
        rows.append([workload, _ratio(a.deliveries_per_s, b.deliveries_per_s), _ratio(a.msgs_per_s, b.msgs_per_s),
                     _ratio(a.p99_ms, b.p99_ms), _cpu_ratio(a, b),
                     _ratio(a.rss_per_conn_kib.get("all"), b.rss_per_conn_kib.get("all"))])
    return rows


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a:.2f} / {b:.2f}"


def _side_row(server: str, by_key: dict[tuple[str, str], Result]) -> list[str]:
    def get(workload: str) -> Result | None:
        return by_key.get((workload, server))

    w1, w2, w2_hi, w3, w4, w5 = (get(w) for w in ("W1", "W2-30%", "W2-70%", "W3", "W4", "W5"))

    def quick(r: Result | None) -> str:
        return "-" if r is None else _pair(r.extra.get("quickack_p50_ms"), r.extra.get("quickack_p99_ms"))

    return [server,
            _num(w1.deliveries_per_s) if w1 else "-",
            _num(w1.cpu_per_100k, 3) if w1 else "-",
            _pair(w2.p50_ms, w2.p99_ms) if w2 else "-", quick(w2), quick(w2_hi),
            _rss(w3) if w3 else "-",
            f"{w3.connect_s:.1f} s" if w3 and w3.connect_s is not None else "-",
            _num(w4.msgs_per_s) if w4 else "-",
            f"{_num(w5.msgs_per_s)} ({_num(w5.cpu_ms_per_op, 2)} ms CPU)" if w5 else "-"]


SIDE_COLUMNS = ("server", "W1 deliveries/s", "W1 CPU-s/100k", "W2-30% p50 / p99 ms", "W2-30% QUICKACK p50 / p99",
                "W2-70% QUICKACK p50 / p99", "W3 RSS/conn", "W3 connect", "W4 msgs/s", "W5 cycles/s (CPU/cycle)")


def side_by_side(results: list[Result]) -> list[list[str]]:
    """One row a server, the figures the README's performance table shows."""
    by_key = {(r.workload, r.server): r for r in results if r.error is None}
    servers = list(dict.fromkeys(r.server for r in results))
    return [_side_row(server, by_key) for server in servers if any(key[1] == server for key in by_key)]


def _per_100k(result: Result, part: str) -> float:
    return result.cpu_by_part.get(part, 0.0) / (result.deliveries or 1) * 100_000


def costs(results: list[Result]) -> list[list[str]]:
    """W1 of the stack beside its variants: what CURVE (stack vs stack-nocurve) and TLS (stack-tls vs stack) cost."""
    w1 = {r.server: r for r in results if r.workload == "W1" and r.error is None and r.cpu_per_100k is not None}
    rows = []
    for name, variant, reference in (("CURVE between the parts", "stack", "stack-nocurve"),
                                     ("TLS clients", "stack-tls", "stack")):
        a, b = w1.get(variant), w1.get(reference)
        if a is None or b is None or a.cpu_per_100k is None or b.cpu_per_100k is None:
            continue
        per_part = ", ".join(f"{part} {_per_100k(a, part) - _per_100k(b, part):+.3f}"
                             for part in sorted(set(a.cpu_by_part) | set(b.cpu_by_part)))
        rows.append([name, f"{variant} vs {reference}", f"{a.cpu_per_100k:.3f} vs {b.cpu_per_100k:.3f}",
                     f"{a.cpu_per_100k - b.cpu_per_100k:+.3f} ({_ratio(a.cpu_per_100k, b.cpu_per_100k)}x)",
                     f"{_num(a.deliveries_per_s)} vs {_num(b.deliveries_per_s)}", per_part])
    return rows


def markdown(results: list[Result], meta: dict[str, Any]) -> str:
    host = meta["machine"]
    parts = [f"# chat-bench results\n\n`{meta['command']}`\n",
             (f"Machine: {host['cpus']} CPUs, {host['cpu_model']}, Python {host['python']}, "
              f"load average at start {host['load_average']}.\n"),
             f"Stack: {meta['stack']}.\n", table(COLUMNS, [_row(r) for r in results])]
    side = side_by_side(results)
    if len(side) > 1:
        parts += ["\n## Servers side by side\n", table(SIDE_COLUMNS, side)]
    hop_rows = hops.rows(results)
    if hop_rows:
        parts += ["\n## Where the milliseconds go (per hop)\n", table(hops.COLUMNS, hop_rows), "\n" + hops.LEGEND]
    cost_rows = costs(results)
    if cost_rows:
        parts += ["\n## What CURVE and TLS cost (W1)\n",
                  table(("what", "rows", "CPU-s/100k deliv.", "difference", "deliveries/s", "difference by part"),
                        cost_rows)]
    rows = ratios(results)
    if rows:
        parts += ["\n## Ratios stack / baseline\n",
                  table(("workload", "deliveries/s", "msgs/s", "p99", "CPU per delivery (W3: per registration)",
                         "RSS/conn"), rows)]
        if any(row[0].startswith("W2") for row in rows):
            parts.append("\nW2-30% and W2-70%: each server runs at shares of its own W1 rate, so the two p99 "
                         "figures are taken at different offered loads (the msgs/s ratio). W2-N/s rows offer "
                         "both servers the same N messages a second.")
    parts.append("\n" + LEGEND)
    return "\n".join(parts) + "\n"


LEGEND = """Deliveries: benchmark lines received by all clients (text mode: a sender does not get its own).
W3: msgs/s is registrations a second; W5: msgs/s is connect-nick-join-quit cycles a second, latency is a
cycle's duration, deliveries are all lines received. CPU-s/100k: utime+stime of every process of the server
(Valkey included) over the measured phase and its drain, per 100,000 deliveries. Load-gen CPU: the share of
one core this one-process generator used; SATURATED above 90%: it may be what limits the figures.
QUICKACK receivers: in W2 every other receiver that does not send re-arms TCP_QUICKACK after each read, so the
server's delayed-ACK (Nagle) stalls of about 40 ms do not reach them; p50/p99 are theirs, beside the plain ones.
IRC rows (ngircd, inspircd, stack-irc) are driven through IRC: NICK/USER, JOIN, PRIVMSG (ngIRCd senders OPER and
set +F, its relaxed flood protection); W5 there is paced by the servers' own registration timers and penalties.
stack-ws is driven over WebSocket (GET /ws, masked text frames); its door speaks JSON mode, so a sender gets its
own message back and that copy counts among the deliveries (and latencies) too.
Lost/reordered/duplicated are counted per (receiver, sender) after a drain."""


def write(out: Path, results: list[Result], meta: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "histogram_edges_ms": HIST_EDGES_MS, "results": [asdict(r) for r in results]}
    written = [out / "results.json", out / "results.md"]
    written[0].write_text(json.dumps(data, indent=1) + "\n")
    written[1].write_text(markdown(results, meta))
    png = plot(out / "results.png", results)
    if png is not None:
        written.append(png)
    return written


def plot(path: Path, results: list[Result]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(13, 5))
    for r in results:
        if r.histogram_ms and r.workload != "W5":
            total = sum(r.histogram_ms)
            cumulative = [sum(r.histogram_ms[:i + 1]) / total for i in range(len(HIST_EDGES_MS))]
            lat.plot(HIST_EDGES_MS, cumulative, label=f"{r.workload} {r.server}",
                     linestyle="-" if r.server != "baseline" else "--")
    lat.set(xscale="log", xlabel="latency (ms)", ylabel="share of deliveries at or below", title="Latency (CDF)")
    lat.grid(True, which="both", alpha=0.3)
    if lat.get_lines():
        lat.legend(fontsize=7)
    _bars(thr, results)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(ax, results: list[Result]) -> None:  # type: ignore[no-untyped-def]
    workloads = list(dict.fromkeys(r.workload for r in results if r.deliveries_per_s))
    servers = list(dict.fromkeys(r.server for r in results))
    width = 0.8 / max(len(servers), 1)
    for k, server in enumerate(servers):
        values = {r.workload: r.deliveries_per_s or 0 for r in results if r.server == server}
        xs = [i + k * width for i in range(len(workloads))]
        ax.bar(xs, [values.get(w, 0) for w in workloads], width, label=server)
    ax.set_xticks([i + width * (len(servers) - 1) / 2 for i in range(len(workloads))], workloads)
    ax.set(ylabel="deliveries / s", title="Throughput")
    if workloads:
        ax.legend()
