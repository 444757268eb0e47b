"""`chat-stack`: the whole system on one machine, for trying it out.

Starts the embedded Valkey (unless --redis-url), the broker on ipc://
endpoints in a private temporary directory, `chat-worker -n N`, and G
gateways on consecutive ports (and consecutive TLS, IRC and web ports:
--tls-port, --irc-port, --web-port).
Every part serves its metrics on 127.0.0.1 (free ports by default, or
consecutive ones from --metrics-port) and the ready line says where; the
parts' environment loses CHAT_METRICS_LISTEN, CHAT_TLS_LISTEN,
CHAT_IRC_LISTEN and CHAT_WS_LISTEN, which would give them all one port. Ctrl-C or SIGTERM stops them in order
(gateways first, so clients hear why) and removes the directory. If a part
dies, the stack stops the rest and exits non-zero. If the stack itself is
killed (even `kill -9`), every part gets SIGTERM from the kernel
(PR_SET_PDEATHSIG), and the next stack removes the directory left behind.

`--brokers 2` runs a broker pair on the stack's Redis (the lease decides which
one is active; the other stands by): workers and gateways get both brokers'
endpoints, and a broker that dies is not the end of the stack while the other
one lives.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from stack.children import Child, ChildFailed, python_module, start, stop
from stack.curve import make_stack_keys
from stack.process import LOG_FORMATS, Stopping
from stack.rundir import make_run_dir, sweep_stale_run_dirs
from stack.valkey import parse_memory, start_valkey

STRIPPED_ENV = ("CHAT_METRICS_LISTEN", "CHAT_TLS_LISTEN", "CHAT_IRC_LISTEN", "CHAT_WS_LISTEN")  # one port for all


@dataclass(frozen=True, slots=True)
class PartOptions:
    """What chat-stack passes on to its parts."""

    port: int = 7000
    host: str = "0.0.0.0"
    gateways: int = 1
    workers: int = 1
    reuse_port: bool = False
    metrics: int | None = None  # None: off; 0: any free ports; else the first of consecutive ports
    log_format: str = "text"
    tls_port: int | None = None  # the first gateway's TLS port (None: no TLS)
    tls_cert: str = ""
    tls_key: str = ""
    irc_port: int | None = None  # the first gateway's IRC port (None: no IRC)
    web_port: int | None = None  # the first gateway's web client and WebSocket port (None: none)
    irc_server_name: str = ""  # '': each gateway's host name
    brokers: int = 1  # 2: a pair, on a lease in the stack's Redis


@dataclass
class Parts:
    children: list[Child] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)  # part -> HOST:PORT of its metrics


def gateway_ports(port: int, gateways: int, reuse_port: bool) -> list[int]:
    return [port] * gateways if reuse_port else [port + i for i in range(gateways)]


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}


def metrics_args(options: PartOptions, index: int) -> tuple[str, ...]:
    """--metrics-listen for the part at `index` (broker 0, workers 1, gateways 2...)."""
    if options.metrics is None:
        return ()
    port = options.metrics + index if options.metrics else 0
    return ("--metrics-listen", f"127.0.0.1:{port}")


def _field(line: str, name: str) -> str:
    match = re.search(rf"(?:^| ){name}=(\S+)", line)
    return match.group(1) if match else "?"


def start_parts(run_dir: Path, data_dir: Path, options: PartOptions, redis_url: str | None,
                extra_gateway_args: tuple[str, ...] = (), valkey_maxmemory: int = 0) -> Parts:
    parts = Parts()
    children = parts.children
    env = child_env()
    logs = ("--log-format", options.log_format)
    try:
        if redis_url is None:
            valkey, redis_url = start_valkey(data_dir, maxmemory=valkey_maxmemory, die_with_parent=True)
            children.append(valkey)
        eps = [{name: f"ipc://{run_dir}/{name}{'-' + str(b + 1) if b else ''}"
                for name in ("frontend", "backend", "pub-in", "pub-out")} for b in range(options.brokers)]
        ep = {name: ",".join(e[name] for e in eps) for name in ("frontend", "backend", "pub-out")}
        keys = make_stack_keys(run_dir)
        server = ("--curve-server", str(keys.broker_public))
        pair = ("--redis-url", redis_url) if options.brokers > 1 else ()
        for b, own in enumerate(eps):  # a pair shares the broker's keys: one --curve-server for both
            name = f"broker-{b + 1}" if b else "broker"
            broker = start(name, python_module(
                "broker.cli", "--frontend", own["frontend"], "--backend", own["backend"], "--pub-in", own["pub-in"],
                "--pub-out", own["pub-out"], "--curve-secret", str(keys.broker_secret),
                "--curve-clients", str(keys.clients), *pair, *logs,
                *metrics_args(options, 2 + options.gateways + b - 1 if b else 0)), "chat-broker ready",
                env=env, die_with_parent=True)
            children.append(broker)
            if options.metrics is not None:
                parts.metrics[name] = _field(broker.ready_line, "metrics")
        workers = start("workers", python_module(
            "workers.cli", "-n", str(options.workers), "--backend", ep["backend"], "--redis-url", redis_url, *logs,
            "--curve-secret", str(keys.worker_secret), *server, *metrics_args(options, 1)),
            "chat-worker started" if options.metrics is None else "chat-worker metrics on",
            env=env, die_with_parent=True)
        children.append(workers)
        if options.metrics is not None:  # the pool says where before it says it started
            parts.metrics["workers"] = workers.ready_line.split()[-1]
        for i, args in enumerate(gateway_args(options)):
            name = f"gw{i + 1}"
            gateway = start(f"gateway-{i + 1}", python_module(
                "gateway.cli", "--frontend", ep["frontend"], "--pub-out", ep["pub-out"], "--id", name, *args, *logs,
                "--curve-secret", str(keys.gateway_secret), *server,
                *metrics_args(options, 2 + i), *extra_gateway_args), f"chat-gateway {name}.",
                env=env, die_with_parent=True)
            children.append(gateway)
            if options.metrics is not None:
                parts.metrics[name] = _field(gateway.ready_line, "metrics")
    except BaseException:
        stop_all(children)
        raise
    return parts


def gateway_args(options: PartOptions) -> list[tuple[str, ...]]:
    """Each gateway's listeners and what they share."""
    shared = ("--reuse-port",) if options.reuse_port else ()
    plain = gateway_ports(options.port, options.gateways, options.reuse_port)
    out = []
    for i, port in enumerate(plain):
        args: tuple[str, ...] = ("--listen", f"{options.host}:{port}", *shared)
        if options.tls_port is not None:
            tls_port = gateway_ports(options.tls_port, options.gateways, options.reuse_port)[i]
            args += ("--tls-listen", f"{options.host}:{tls_port}", "--tls-cert", options.tls_cert,
                     "--tls-key", options.tls_key)
        if options.irc_port is not None:
            irc_port = gateway_ports(options.irc_port, options.gateways, options.reuse_port)[i]
            args += ("--irc-listen", f"{options.host}:{irc_port}")
            if options.irc_server_name:
                args += ("--irc-server-name", options.irc_server_name)
        if options.web_port is not None:
            web_port = gateway_ports(options.web_port, options.gateways, options.reuse_port)[i]
            args += ("--ws-listen", f"{options.host}:{web_port}")
        out.append(args)
    return out


def stop_all(children: list[Child]) -> None:
    """Gateways first (they tell their clients), then workers, broker, Valkey."""
    for child in reversed(children):
        stop(child)


def watch(children: list[Child], stopping: Stopping) -> Child | None:
    """Wait until stopped (-> None) or until a part exits (-> that part); a broker of a
    pair may die while another broker lives (the standby takes over)."""
    while not stopping.requested:
        for child in children:
            if child.proc.poll() is not None:
                if not _spare_broker(children, child):
                    return child
                print(f"chat-stack: {child.name} exited with {child.proc.returncode}; "
                      "the other broker carries on", file=sys.stderr, flush=True)
                children.remove(child)
                break
        time.sleep(0.2)  # a supervisor's poll interval
    return None


def _spare_broker(children: list[Child], dead: Child) -> bool:
    """Whether `dead` is a broker and another broker still runs."""
    brokers = [c for c in children if c.name.startswith("broker")]
    return dead in brokers and any(c.proc.poll() is None for c in brokers if c is not dead)


def _memory_option(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_memory(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _door_port(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    """A door's first port, or 'off' -> None."""
    if value.strip().lower() == "off":
        return None
    if not value.strip().isdigit() or not 1 <= int(value) <= 65535:
        raise click.BadParameter(f"expected 'off' or a port, got {value!r}")
    return int(value)


def _metrics_port(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    if value.strip().lower() == "off":
        return None
    if not value.strip().isdigit() or int(value) > 65535:
        raise click.BadParameter(f"expected 'off', 0 (any free ports) or a first port, got {value!r}")
    return int(value)


def ready_line(options: PartOptions, parts: Parts) -> str:
    ports = ", ".join(str(p) for p in sorted(set(gateway_ports(options.port, options.gateways, options.reuse_port))))
    line = f"chat-stack ready: {options.gateways} gateway(s) on port(s) {ports}"
    connect = f"nc localhost {options.port}"
    if options.tls_port is not None:
        tls = sorted(set(gateway_ports(options.tls_port, options.gateways, options.reuse_port)))
        line += ", TLS on port(s) " + ", ".join(map(str, tls))
        connect += f" or openssl s_client -quiet -connect localhost:{options.tls_port}"
    if options.irc_port is not None:
        irc = sorted(set(gateway_ports(options.irc_port, options.gateways, options.reuse_port)))
        line += ", IRC on port(s) " + ", ".join(map(str, irc))
        connect += f" or irssi -c localhost -p {options.irc_port}"
    if options.web_port is not None:
        web = sorted(set(gateway_ports(options.web_port, options.gateways, options.reuse_port)))
        line += ", web on port(s) " + ", ".join(map(str, web))
        connect += f" or http://localhost:{options.web_port}/"
    line += f", {options.workers} worker(s)"
    line += ", a broker pair." if options.brokers > 1 else "."
    if parts.metrics:
        line += " Metrics: " + " ".join(f"{part}={where}" for part, where in parts.metrics.items()) + "."
    return line + f" Connect with: {connect}   (Ctrl-C stops everything)"


@click.command(context_settings={"show_default": True})
@click.option("--port", default=7000, envvar="CHAT_PORT", show_envvar=True, type=click.IntRange(1, 65535),
              help="Client port of the first gateway; the others take the next ports.")
@click.option("--host", default="0.0.0.0", envvar="CHAT_HOST", show_envvar=True, help="Address the gateways listen on.")
@click.option("--gateways", default=1, envvar="CHAT_GATEWAYS", show_envvar=True, type=click.IntRange(1, 64))
@click.option("--workers", default=os.cpu_count() or 1, envvar="CHAT_WORKERS", show_envvar=True,
              type=click.IntRange(1, 256), help="Worker processes (default: the CPU count).")
@click.option("--brokers", default=1, envvar="CHAT_BROKERS", show_envvar=True, type=click.IntRange(1, 2),
              help="1: one broker; 2: a pair, one active and one standing by (a lease in the stack's Redis).")
@click.option("--redis-url", default=None, envvar="CHAT_REDIS_URL", show_envvar=True,
              help="Use this Redis instead of starting the embedded Valkey.")
@click.option("--rate-limit", default=20.0, envvar="CHAT_RATE_LIMIT", show_envvar=True, type=click.FloatRange(0),
              help="Lines a second a client may send (0: no limit, for benchmarks).")
@click.option("--max-per-address", default=256, envvar="CHAT_MAX_PER_ADDRESS", show_envvar=True,
              type=click.IntRange(0), help="Clients from one IP address per gateway (0: no limit).")
@click.option("--reuse-port", is_flag=True, envvar="CHAT_REUSE_PORT", show_envvar=True,
              help="All gateways on --port (SO_REUSEPORT) instead of consecutive ports.")
@click.option("--metrics-port", default="0", envvar="CHAT_METRICS_PORT", show_envvar=True, callback=_metrics_port,
              help="Prometheus metrics of every part on 127.0.0.1: 0 picks free ports, a number N gives the broker "
              "N, the worker pool N+1 and the gateways N+2...; 'off' serves none. The ready line says where.")
@click.option("--tls-port", default=None, envvar="CHAT_TLS_PORT", show_envvar=True, type=click.IntRange(1, 65535),
              help="TLS client port of the first gateway (the others take the next ports); needs --tls-cert/--tls-key.")
@click.option("--tls-cert", default=None, envvar="CHAT_TLS_CERT", show_envvar=True,
              type=click.Path(exists=True, dir_okay=False), help="PEM certificate chain for the TLS ports.")
@click.option("--tls-key", default=None, envvar="CHAT_TLS_KEY", show_envvar=True,
              type=click.Path(exists=True, dir_okay=False), help="PEM private key for the TLS ports.")
@click.option("--irc-port", default="6667", envvar="CHAT_IRC_PORT", show_envvar=True, callback=_door_port,
              help="IRC port of the first gateway (the others take the next ports); 'off': no IRC.")
@click.option("--irc-server-name", default="", envvar="CHAT_IRC_SERVER_NAME", show_envvar=True,
              help="The server name IRC clients see (default: the host name).")
@click.option("--web-port", default="8080", envvar="CHAT_WEB_PORT", show_envvar=True, callback=_door_port,
              help="Web client and WebSocket (/ws) port of the first gateway (the others take the next ports); "
                   "'off': none.")
@click.option("--log-format", default="text", envvar="CHAT_LOG_FORMAT", show_envvar=True,
              type=click.Choice(LOG_FORMATS), help="Every part's log lines as text or one JSON object a line.")
@click.option("--data-dir", default=None, envvar="CHAT_DATA_DIR", show_envvar=True, type=click.Path(file_okay=False),
              help="Where the embedded Valkey keeps its append-only file (default: a temporary directory).")
@click.option("--valkey-maxmemory", default="256mb", envvar="CHAT_VALKEY_MAXMEMORY", show_envvar=True,
              callback=_memory_option,
              help="Memory limit of the embedded Valkey (at least 1mb). When it is full, writes are refused "
              "(noeviction): lines that change state get '! service temporarily unavailable'.")
def main(port: int, host: str, gateways: int, workers: int, brokers: int, redis_url: str | None, rate_limit: float,
         max_per_address: int, reuse_port: bool, metrics_port: int | None, tls_port: int | None,
         tls_cert: str | None, tls_key: str | None, irc_port: int | None, irc_server_name: str,
         web_port: int | None, log_format: str, data_dir: str | None,
         valkey_maxmemory: int) -> None:
    """Run the whole chat backend on this machine."""
    if (tls_port is None) != (tls_cert is None) or (tls_cert is None) != (tls_key is None):
        raise click.UsageError("TLS needs all of --tls-port, --tls-cert and --tls-key")
    if metrics_port and metrics_port + gateways + brokers > 65535:
        raise click.BadParameter("the parts' ports would go past 65535", param_hint="--metrics-port")
    options = PartOptions(port, host, gateways, workers, reuse_port, metrics_port, log_format, tls_port,
                          os.path.abspath(tls_cert) if tls_cert else "", os.path.abspath(tls_key) if tls_key else "",
                          irc_port, web_port, irc_server_name, brokers)
    stopping = Stopping().install()
    for left in sweep_stale_run_dirs():
        print(f"chat-stack: removed {left}, left behind by a stack that is gone", file=sys.stderr, flush=True)
    run_dir = make_run_dir()
    data = Path(data_dir) if data_dir else run_dir / "valkey"
    try:
        extra = ("--rate-limit", str(rate_limit), "--max-per-address", str(max_per_address))
        parts = start_parts(run_dir, data, options, redis_url, extra, valkey_maxmemory)
    except ChildFailed as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise click.ClickException(str(exc)) from None
    children = parts.children
    print(ready_line(options, parts), flush=True)
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
