"""`chat-bench`: options -> BenchConfig -> run the workloads -> write the report.

By default it starts `chat-stack` itself on free ports of 127.0.0.1 (the
flood limit and the per-address cap lifted), runs the chosen workloads
against it, and stops it by PID. `--target` drives a running stack
instead; `--baseline` runs the same workloads against the naive server of
`bench.baseline` too and prints the ratios; `--peers ngircd,inspircd` runs
them against those C IRC servers (`bench.peers`) through the IRC dialect,
and against the stack's own IRC door (`stack-irc`) when it has one. `--doors irc,ws` runs
them against the stack's IRC door (`stack-irc`) and its WebSocket door (`stack-ws`,
`bench.wsframe`) beside its line protocol. Progress goes to stderr, the
Markdown table to stdout, and results.json / results.md / results.png to
`--out`.
"""

from __future__ import annotations

import random
import shlex
import string
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import click

from bench import churn, idle, massive, report, workloads
from bench.config import ALL_WORKLOADS, DOOR_NAMES, QUICK, BenchConfig, Shape, parse_doors, parse_workloads
from bench.loadgen import raise_file_limit
from bench.measure import Result
from bench.peers import PEERS, parse_peers
from bench.servers import (
    Server,
    attach_target,
    stack_has_option,
    start_baseline,
    start_irc_peer,
    start_stack,
    start_stack_irc,
    start_stack_nocurve,
    start_stack_tls,
    start_stack_ws,
    stop_server,
)

WORKLOADS: dict[str, workloads.Workload] = {
    "W1": workloads.w1, "W2": workloads.w2, "W3": idle.w3, "W4": workloads.w4, "W5": churn.w5, "W6": massive.w6,
}
W6_VALKEY_MEMORY = "2gb"  # 100,000 sessions do not fit the stack's default
VARIANTS = ("nocurve", "tls")  # --variants: the stack without CURVE between its parts, with TLS clients


def parse_variants(spec: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(item.strip().lower() for item in spec.split(",") if item.strip()))
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return names


def run_tag() -> str:
    """A few letters unique to this run: prefixes every nick and room it uses."""
    return "".join(random.choice(string.ascii_lowercase) for _ in range(4))


def open_server(kind: str, config: BenchConfig) -> Server:
    if kind == "baseline":
        return start_baseline(config.out)
    if kind in PEERS:
        return start_irc_peer(kind, config.out)
    if kind == "stack-nocurve":
        memory = 2 << 30 if "W6" in config.workloads else 0
        return start_stack_nocurve(config.workers, stack_gateways(config), config.out, memory)
    if kind == "stack-tls":
        return start_stack_tls(config.workers, stack_gateways(config), config.out, stack_extra(config))
    if kind == "stack-irc":
        return start_stack_irc(config.workers, stack_gateways(config), config.out, stack_extra(config))
    if kind == "stack-ws":
        return start_stack_ws(config.workers, stack_gateways(config), config.out, stack_extra(config))
    if config.target:
        return attach_target(config.target, config.stack_pid)
    return start_stack(config.workers, stack_gateways(config), config.out, stack_extra(config))


def stack_gateways(config: BenchConfig) -> int:
    """--gateways, raised to as many as W6's connections need when it runs."""
    if "W6" not in config.workloads:
        return config.gateways
    return max(config.gateways, massive.gateways_needed(config.shape.w6, config.shape.w6_per_process))


def stack_extra(config: BenchConfig) -> tuple[str, ...]:
    return ("--valkey-maxmemory", W6_VALKEY_MEMORY) if "W6" in config.workloads else ()


def run_server(kind: str, config: BenchConfig, tag: str) -> tuple[list[Result], list[str]]:
    """All workloads against one server -> (rows, notes)."""
    workloads.say(f"== {kind}: starting ==")
    try:
        server = open_server(kind, config)
    except Exception as exc:
        why = f"could not start: {type(exc).__name__}: {exc}"
        return [Result(name, kind, error=why) for name in config.workloads], []
    try:
        ctx = workloads.Context(server, config.shape, tag)
        results: list[Result] = []
        for name in config.workloads:
            results += workloads.run_workload(name, ctx, WORKLOADS)
        return results, server.notes
    finally:
        stop_server(server)
        workloads.say(f"== {server.name}: stopped ==")


def log_notes(path: Path | None, name: str) -> list[str]:
    """Warnings and errors the server logged during the run, summarised."""
    if path is None or not path.exists():
        return []
    bad = [line for line in path.read_text(errors="replace").splitlines()
           if " WARNING " in line or " ERROR " in line or "Traceback" in line]
    if not bad:
        return []
    return [f"{name} log ({path.name}): {len(bad)} warning/error lines; first: {bad[0][:200]}"]


def describe_server(config: BenchConfig) -> str:
    if config.target:
        return f"running target {config.target}"
    extra = " ".join(stack_extra(config))
    return (f"chat-stack --workers {config.workers} --gateways {stack_gateways(config)} "
            f"--rate-limit 0 --max-per-address 0{' ' + extra if extra else ''} (started by chat-bench)")


def run(config: BenchConfig) -> list[Result]:
    raise_file_limit(1 << 20)  # before any server starts: the gateways inherit it
    config.out.mkdir(parents=True, exist_ok=True)
    logs = ("chat-stack.log", "chat-stack-irc.log", "chat-stack-ws.log", "chat-stack-tls.log", "chat-stack-nocurve.log",
            "chat-baseline.log")
    for stale in (*logs, *(f"{p}.log" for p in PEERS)):
        (config.out / stale).unlink(missing_ok=True)
    notes: list[str] = []
    meta: dict[str, Any] = {"command": shlex.join(["chat-bench", *sys.argv[1:]]), "machine": report.machine(),
                            "stack": describe_server(config), "shape": asdict(config.shape), "notes": notes}
    tag = run_tag()
    results: list[Result] = []
    for i, kind in enumerate(server_kinds(config, notes)):
        rows, server_notes = run_server(kind, config, f"{tag}{i}")
        results += rows
        notes += server_notes
    servers = list(dict.fromkeys(r.server for r in results))
    results.sort(key=lambda r: (servers.index(r.server), r.workload))
    notes += log_notes(config.out / "chat-stack.log", "chat-stack")
    notes += log_notes(config.out / "chat-stack-irc.log", "chat-stack (IRC door)")
    notes += log_notes(config.out / "chat-stack-ws.log", "chat-stack (WebSocket door)")
    notes += log_notes(config.out / "chat-stack-tls.log", "chat-stack (TLS)")
    notes += log_notes(config.out / "chat-baseline.log", "baseline")
    written = report.write(config.out, results, meta)
    print(report.markdown(results, meta))
    for note in meta["notes"]:
        print(f"note: {note}")
    workloads.say("wrote " + ", ".join(str(path) for path in written))
    return results


def server_kinds(config: BenchConfig, notes: list[str]) -> list[str]:
    """The servers of this run, in order: the stack, its other doors, the variants, the baseline, the peers."""
    kinds = ["stack"]
    doors = set(config.doors) | ({"irc"} if config.peers else set())  # the peers compare with the IRC door
    if doors and config.target:
        notes.append("--doors skipped: they start their own stack, not with --target")
    for door in (name for name in DOOR_NAMES if name in doors and not config.target):
        option = "--irc-port" if door == "irc" else "--web-port"
        if stack_has_option(option):
            kinds.append(f"stack-{door}")
        else:
            notes.append(f"stack-{door} skipped: this chat-stack has no such door ({option}) yet")
    if config.target and config.variants:
        notes.append("--variants skipped: they start their own stack, not with --target")
    elif config.variants:
        kinds += [f"stack-{variant}" for variant in config.variants]
    if config.baseline:
        kinds.append("baseline")
    return kinds + list(config.peers)


def make_shape(quick: bool, **given: Any) -> Shape:
    base = QUICK if quick else Shape()
    chosen: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    return replace(base, **chosen).checked()


@click.command(context_settings={"show_default": True})
@click.option("--quick", is_flag=True, help="Tiny shapes, about a second a workload (a smoke test).")
@click.option("--workloads", "names", default=",".join(ALL_WORKLOADS),
              help="Which workloads, comma-separated (W6, 100k connections, only when named).")
@click.option("--rooms", type=click.IntRange(1), help="W1/W2 rooms [10].")
@click.option("--members", type=click.IntRange(2), help="W1/W2 members a room [50].")
@click.option("--senders", type=click.IntRange(1), help="W1/W2 senders a room [5].")
@click.option("--window", type=click.IntRange(1), help="W1/W4 messages in flight a sender [32].")
@click.option("--w2-rates", default=None, help="W2 also at these offered msgs/s, comma-separated [1000].")
@click.option("--duration", type=click.FloatRange(0.1), help="Seconds each workload sends [10].")
@click.option("--idle", "idle_count", type=click.IntRange(1), help="W3 idle connections [10000].")
@click.option("--idle-room-size", type=click.IntRange(1), help="W3 members a room [20].")
@click.option("--pairs", type=click.IntRange(1), help="W4 pairs [50].")
@click.option("--churners", type=click.IntRange(1), help="W5 clients cycling at once [32].")
@click.option("--w6-connections", "w6", type=click.IntRange(2), help="W6 idle connections [100000].")
@click.option("--w6-probe", type=click.IntRange(2), help="W6 members of the probe room [1000].")
@click.option("--workers", default=2, type=click.IntRange(1), help="Worker processes of the stack started here.")
@click.option("--gateways", default=1, type=click.IntRange(1), help="Gateways of the stack started here.")
@click.option("--target", default=None, help="HOST:PORT[,HOST:PORT...] gateways of a running stack.")
@click.option("--stack-pid", default=None, type=int, help="With --target: the PID of its chat-stack (for CPU).")
@click.option("--baseline", is_flag=True, help="Also run the naive one-process Trio server, and print ratios.")
@click.option("--peers", "peer_names", default="", help=f"Also run these C IRC servers over IRC ({','.join(PEERS)}), "
              "and the stack's IRC door.")
@click.option("--doors", "door_names", default="",
              help=f"Also run the stack's other doors ({','.join(DOOR_NAMES)}): rows stack-irc and stack-ws.")
@click.option("--variants", "variant_names", default="",
              help=f"Also run the stack as these variants ({','.join(VARIANTS)}): what CURVE and TLS cost.")
@click.option("--out", default="bench-results", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for results.json, results.md, results.png and the servers' logs.")
def main(quick: bool, names: str, rooms: int | None, members: int | None, senders: int | None,
         window: int | None, w2_rates: str | None, duration: float | None, idle_count: int | None,
         idle_room_size: int | None,
         pairs: int | None, churners: int | None, w6: int | None, w6_probe: int | None,
         workers: int, gateways: int, target: str | None,
         stack_pid: int | None, baseline: bool, peer_names: str, door_names: str, variant_names: str,
         out: Path) -> None:
    """Benchmark the chat backend over loopback TCP: fan-out, latency, idle memory, private messages, churn."""
    try:
        rates = tuple(float(r) for r in w2_rates.split(",") if r.strip()) if w2_rates is not None else None
        shape = make_shape(quick, rooms=rooms, members=members, senders=senders, window=window,
                           duration=duration, idle=idle_count, idle_room_size=idle_room_size, pairs=pairs,
                           churners=churners, fixed_rates=rates, w6=w6, w6_probe=w6_probe)
        chosen = parse_workloads(names)
        chosen_peers = parse_peers(peer_names)
        chosen_doors = parse_doors(door_names)
        chosen_variants = parse_variants(variant_names)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    config = BenchConfig(shape=shape, workloads=chosen, workers=workers, gateways=gateways, target=target,
                         stack_pid=stack_pid, baseline=baseline, peers=chosen_peers, doors=chosen_doors,
                         variants=chosen_variants, out=out, quick=quick)
    results = run(config)
    if all(r.error for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
