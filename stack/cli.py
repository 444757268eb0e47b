"""`chat-stack`: the whole system on one machine, for trying it out.

Starts the embedded Valkey (unless --redis-url), the broker on ipc://
endpoints in a private temporary directory, `chat-worker -n N`, and G
gateways on consecutive ports. Ctrl-C or SIGTERM stops them in order
(gateways first, so clients hear why) and removes the directory. If a part
dies, the stack stops the rest and exits non-zero. If the stack itself is
killed (even `kill -9`), every part gets SIGTERM from the kernel
(PR_SET_PDEATHSIG), and the next stack removes the directory left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import click

from stack.children import Child, ChildFailed, python_module, start, stop
from stack.process import Stopping
from stack.rundir import make_run_dir, sweep_stale_run_dirs
from stack.valkey import parse_memory, start_valkey


def gateway_ports(port: int, gateways: int, reuse_port: bool) -> list[int]:
    return [port] * gateways if reuse_port else [port + i for i in range(gateways)]


def start_parts(run_dir: Path, data_dir: Path, port: int, host: str, gateways: int, workers: int,
                redis_url: str | None, extra_gateway_args: tuple[str, ...] = (),
                reuse_port: bool = False, valkey_maxmemory: int = 0) -> list[Child]:
    children: list[Child] = []
    try:
        if redis_url is None:
            valkey, redis_url = start_valkey(data_dir, maxmemory=valkey_maxmemory, die_with_parent=True)
            children.append(valkey)
        ep = {name: f"ipc://{run_dir}/{name}" for name in ("frontend", "backend", "pub-in", "pub-out")}
        children.append(start("broker", python_module(
            "broker.cli", "--frontend", ep["frontend"], "--backend", ep["backend"],
            "--pub-in", ep["pub-in"], "--pub-out", ep["pub-out"]), "chat-broker ready", die_with_parent=True))
        children.append(start("workers", python_module(
            "workers.cli", "-n", str(workers), "--backend", ep["backend"], "--redis-url", redis_url),
            "chat-worker started", die_with_parent=True))
        shared = ("--reuse-port",) if reuse_port else ()
        for i, gateway_port in enumerate(gateway_ports(port, gateways, reuse_port)):
            children.append(start(f"gateway-{i + 1}", python_module(
                "gateway.cli", "--listen", f"{host}:{gateway_port}", "--frontend", ep["frontend"],
                "--pub-out", ep["pub-out"], "--id", f"gw{i + 1}", *shared, *extra_gateway_args), "chat-gateway",
                die_with_parent=True))
    except BaseException:
        stop_all(children)
        raise
    return children


def stop_all(children: list[Child]) -> None:
    """Gateways first (they tell their clients), then workers, broker, Valkey."""
    for child in reversed(children):
        stop(child)


def watch(children: list[Child], stopping: Stopping) -> Child | None:
    """Wait until stopped (-> None) or until a part exits (-> that part)."""
    while not stopping.requested:
        for child in children:
            if child.proc.poll() is not None:
                return child
        time.sleep(0.2)  # a supervisor's poll interval
    return None


def _memory_option(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_memory(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"show_default": True})
@click.option("--port", default=7000, envvar="CHAT_PORT", show_envvar=True, type=click.IntRange(1, 65535),
              help="Client port of the first gateway; the others take the next ports.")
@click.option("--host", default="0.0.0.0", envvar="CHAT_HOST", show_envvar=True, help="Address the gateways listen on.")
@click.option("--gateways", default=1, envvar="CHAT_GATEWAYS", show_envvar=True, type=click.IntRange(1, 64))
@click.option("--workers", default=os.cpu_count() or 1, envvar="CHAT_WORKERS", show_envvar=True,
              type=click.IntRange(1, 256), help="Worker processes (default: the CPU count).")
@click.option("--redis-url", default=None, envvar="CHAT_REDIS_URL", show_envvar=True,
              help="Use this Redis instead of starting the embedded Valkey.")
@click.option("--rate-limit", default=20.0, envvar="CHAT_RATE_LIMIT", show_envvar=True, type=click.FloatRange(0),
              help="Lines a second a client may send (0: no limit, for benchmarks).")
@click.option("--max-per-address", default=256, envvar="CHAT_MAX_PER_ADDRESS", show_envvar=True,
              type=click.IntRange(0), help="Clients from one IP address per gateway (0: no limit).")
@click.option("--reuse-port", is_flag=True, envvar="CHAT_REUSE_PORT", show_envvar=True,
              help="All gateways on --port (SO_REUSEPORT) instead of consecutive ports.")
@click.option("--data-dir", default=None, envvar="CHAT_DATA_DIR", show_envvar=True, type=click.Path(file_okay=False),
              help="Where the embedded Valkey keeps its append-only file (default: a temporary directory).")
@click.option("--valkey-maxmemory", default="256mb", envvar="CHAT_VALKEY_MAXMEMORY", show_envvar=True,
              callback=_memory_option,
              help="Memory limit of the embedded Valkey (at least 1mb). When it is full, writes are refused "
              "(noeviction): lines that change state get '! service temporarily unavailable'.")
def main(port: int, host: str, gateways: int, workers: int, redis_url: str | None, rate_limit: float,
         max_per_address: int, reuse_port: bool, data_dir: str | None, valkey_maxmemory: int) -> None:
    """Run the whole chat backend on this machine."""
    stopping = Stopping().install()
    for left in sweep_stale_run_dirs():
        print(f"chat-stack: removed {left}, left behind by a stack that is gone", file=sys.stderr, flush=True)
    run_dir = make_run_dir()
    data = Path(data_dir) if data_dir else run_dir / "valkey"
    try:
        gateway_args = ("--rate-limit", str(rate_limit), "--max-per-address", str(max_per_address))
        children = start_parts(run_dir, data, port, host, gateways, workers, redis_url, gateway_args, reuse_port,
                               valkey_maxmemory)
    except ChildFailed as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise click.ClickException(str(exc)) from None
    ports = ", ".join(str(p) for p in sorted(set(gateway_ports(port, gateways, reuse_port))))
    print(f"chat-stack ready: {gateways} gateway(s) on port(s) {ports}, {workers} worker(s). "
          f"Connect with: nc localhost {port}   (Ctrl-C stops everything)", flush=True)
    try:
        died = watch(children, stopping)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        stop_all(children)
        shutil.rmtree(run_dir, ignore_errors=True)
    if died is not None:
        raise click.ClickException(f"{died.name} exited with {died.proc.returncode}; stopped the rest")
    print("chat-stack stopped", flush=True)


if __name__ == "__main__":
    main()
