"""`chat-worker -n N`: options -> WorkerConfig -> a supervised pool (and its metrics)."""

from __future__ import annotations

import os
import socket

import click

from protocol.lines import DEFAULT_MAX_LINE
from stack.curve import KeyFileError, client_curve
from stack.metrics import parse_listen, serve_metrics
from stack.process import LOG_FORMATS, Stopping, set_log_instance, setup_logging
from workers.logic import ChatLimits
from workers.metrics import ChildMetrics, PoolMetrics, pool_registry
from workers.pool import Pool, multiprocess_dir
from workers.redis_client import RedisUrlError, parse_redis_url
from workers.worker import WorkerConfig


def _listen(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _redis_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuse here what every child would crash on, again and again."""
    try:
        parse_redis_url(value)
    except RedisUrlError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _serve(children: ChildMetrics, pool: PoolMetrics, listen: tuple[str, int]) -> None:
    """Bind the metrics endpoint and say where, before the ready line."""
    try:
        host, port = serve_metrics(pool_registry(children, pool), *listen)
    except OSError as exc:
        raise click.ClickException(f"cannot serve metrics on {listen[0]}:{listen[1]}: {exc}") from None
    print(f"chat-worker metrics on {host}:{port}", flush=True)


@click.command(context_settings={"show_default": True})
@click.option("-n", "--processes", default=1, envvar="CHAT_WORKERS", show_envvar=True, type=click.IntRange(1, 256),
              help="How many worker processes to run.")
@click.option("--backend", default="tcp://127.0.0.1:5556", envvar="CHAT_BACKEND", show_envvar=True,
              help="The broker's backend endpoint; a broker pair's: both, comma-separated.")
@click.option("--redis-url", default="redis://127.0.0.1:6379/0", envvar="CHAT_REDIS_URL", show_envvar=True,
              callback=_redis_url,
              help="Redis (or Valkey) holding the chat's state: redis://[USER:PASS@]HOST:PORT/DB, rediss://..., "
              "unix:///PATH or redis+sentinel://[USER:PASS@]HOST:PORT[,HOST:PORT...]/MASTER[/DB].")
@click.option("--redis-ca", default=None, envvar="CHAT_REDIS_CA", show_envvar=True,
              type=click.Path(exists=True, dir_okay=False),
              help="CA certificate that signed a rediss:// server's certificate (default: the system's CAs).")
@click.option("--redis-wait-replicas", default=None, envvar="CHAT_REDIS_WAIT_REPLICAS", show_envvar=True,
              type=click.IntRange(0, 16), help="Replicas that must have a nick claim or a departure before it is "
              "answered (Redis WAIT, up to half of --redis-timeout). Default: 1 for redis+sentinel://, else 0.")
@click.option("--prefix", default="chat:", envvar="CHAT_PREFIX", show_envvar=True,
              help="Prefix of every Redis key, so deployments can share one Redis.")
@click.option("--credit", default=16, envvar="CHAT_CREDIT", show_envvar=True, type=click.IntRange(1, 10_000),
              help="Events a worker may hold at once.")
@click.option("--heartbeat", default=1.0, envvar="CHAT_HEARTBEAT", show_envvar=True, type=click.FloatRange(0.05),
              help="Seconds between heartbeats.")
@click.option("--liveness", default=3, envvar="CHAT_LIVENESS", show_envvar=True, type=click.IntRange(1),
              help="Missed heartbeats before the broker is taken for dead and reconnected.")
@click.option("--redis-timeout", default=1.0, envvar="CHAT_REDIS_TIMEOUT", show_envvar=True,
              type=click.FloatRange(0.05), help="Seconds a Redis call may take before the line is answered "
              "'service temporarily unavailable'. Keep it under heartbeat x liveness.")
@click.option("--max-line", default=DEFAULT_MAX_LINE, envvar="CHAT_MAX_LINE", show_envvar=True,
              type=click.IntRange(16, 1 << 20), help="Longest client line, in bytes: a longer one in an event is "
              "refused here too, whoever sent the event. Keep it equal to the gateways'.")
@click.option("--max-rooms", default=50, envvar="CHAT_MAX_ROOMS", show_envvar=True, type=click.IntRange(1, 100_000),
              help="Rooms one connection may be in at once.")
@click.option("--history-ttl", default=86_400, envvar="CHAT_HISTORY_TTL", show_envvar=True,
              type=click.IntRange(1), help="Seconds the history of a room is kept after its last member left.")
@click.option("--curve-secret", default=None, envvar="CHAT_CURVE_SECRET", show_envvar=True,
              type=click.Path(dir_okay=False), help="This part's secret key file (NAME.key_secret): CURVE on.")
@click.option("--curve-server", default=None, envvar="CHAT_CURVE_SERVER", show_envvar=True,
              type=click.Path(dir_okay=False), help="The broker's public key file (NAME.key).")
@click.option("--log-level", default="info", envvar="CHAT_LOG_LEVEL", show_envvar=True)
@click.option("--log-format", default="text", envvar="CHAT_LOG_FORMAT", show_envvar=True,
              type=click.Choice(LOG_FORMATS), help="Log lines on stderr as text or one JSON object a line.")
@click.option("--metrics-listen", default=None, envvar="CHAT_METRICS_LISTEN", show_envvar=True, callback=_listen,
              help="Serve Prometheus metrics of all the worker processes on HOST:PORT (port 0: any free one). "
              "Off unless given.")
def main(processes: int, backend: str, redis_url: str, redis_ca: str | None, redis_wait_replicas: int | None,
         prefix: str, credit: int, heartbeat: float,
         liveness: int, redis_timeout: float, max_line: int, max_rooms: int, history_ttl: int,
         curve_secret: str | None, curve_server: str | None, log_level: str, log_format: str,
         metrics_listen: tuple[str, int] | None) -> None:
    """Run the chat logic: N processes taking events from the broker."""
    if redis_ca is not None and parse_redis_url(redis_url).kind != "tls":
        raise click.BadParameter("a CA file is only for rediss:// URLs", param_hint="'--redis-ca'")
    setup_logging("chat-worker", log_level, log_format)
    set_log_instance(f"pool-{socket.gethostname()}-{os.getpid()}")
    try:
        curve = client_curve("chat-worker", "worker", curve_secret, curve_server, backend.split(","))
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    config = WorkerConfig(backend=backend, redis_url=redis_url, redis_ca=redis_ca,
                          redis_wait_replicas=redis_wait_replicas, prefix=prefix, credit=credit,
                          heartbeat=heartbeat, liveness=liveness, redis_timeout=redis_timeout,
                          limits=ChatLimits(max_line=max_line), max_rooms=max_rooms, history_ttl=history_ttl,
                          curve=curve)
    stopping = Stopping().install()
    with multiprocess_dir(metrics_listen is not None) as metrics_dir:
        metrics = PoolMetrics()
        children = None if metrics_dir is None else ChildMetrics(metrics_dir)
        if children is not None and metrics_listen is not None:
            _serve(children, metrics, metrics_listen)
        pool = Pool(config, processes, log_level, log_format, children, metrics)
        print(f"chat-worker started {processes} worker process(es)", flush=True)
        pool.run(stopping)


if __name__ == "__main__":
    main()
