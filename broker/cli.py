"""`chat-broker`: options -> BrokerConfig -> run."""

from __future__ import annotations

import click
import zmq

from broker.config import MAX_MESSAGE, BrokerConfig
from broker.lease import Lease, LeaseConfig
from broker.server import Broker
from stack.curve import KeyFileError, server_curve
from stack.metrics import parse_listen, serve_metrics
from stack.process import LOG_FORMATS, Stopping, set_log_instance, setup_logging, tune_gc
from workers.redis_client import RedisUrlError


def run(config: BrokerConfig, metrics_listen: tuple[str, int] | None = None,
        lease: LeaseConfig | None = None) -> None:
    opened = _open_lease(config, lease)  # a wrong URL stops us before anything is bound
    stopping = Stopping().install()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    broker = Broker(config, ctx, opened)
    set_log_instance(broker.name)
    try:
        bound = " ".join(f"{k}={v}" for k, v in broker.endpoints().items())
        if metrics_listen is not None:
            metrics = _serve(broker, *metrics_listen)
            print(f"chat-broker metrics on {metrics}", flush=True)
            bound += f" metrics={metrics}"
        print(f"chat-broker ready {bound}", flush=True)
        tune_gc()
        broker.run(stopping)
    finally:
        broker.close()
        ctx.term()


def _open_lease(config: BrokerConfig, lease: LeaseConfig | None) -> Lease | None:
    """HA mode: the lease in Redis; a call to Redis may take a third of a heartbeat."""
    if lease is None:
        return None
    try:
        return Lease(lease, config.heartbeat * config.liveness, timeout=config.heartbeat / 3)
    except RedisUrlError as exc:
        raise click.ClickException(f"--redis-url: {exc}") from None


def _serve(broker: Broker, host: str, port: int) -> str:
    """Serve the broker's metrics -> the HOST:PORT bound."""
    try:
        host, port = serve_metrics(broker.metrics.registry(), host, port)
    except OSError as exc:
        raise click.ClickException(f"--metrics-listen: cannot listen on {host}:{port}: {exc}") from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"show_default": True})
@click.option("--frontend", default="tcp://127.0.0.1:5555", envvar="CHAT_FRONTEND", show_envvar=True,
              help="Endpoint to bind for gateways (tcp://HOST:* picks a free port).")
@click.option("--backend", default="tcp://127.0.0.1:5556", envvar="CHAT_BACKEND", show_envvar=True,
              help="Endpoint to bind for workers.")
@click.option("--pub-in", default="tcp://127.0.0.1:5557", envvar="CHAT_PUB_IN", show_envvar=True,
              help="Endpoint to bind for outside publishers; forwarded to pub-out.")
@click.option("--pub-out", default="tcp://127.0.0.1:5558", envvar="CHAT_PUB_OUT", show_envvar=True,
              help="Endpoint to bind where gateways subscribe to their replies.")
@click.option("--heartbeat", default=1.0, envvar="CHAT_HEARTBEAT", show_envvar=True, type=click.FloatRange(0.05),
              help="Seconds between heartbeats.")
@click.option("--liveness", default=3, envvar="CHAT_LIVENESS", show_envvar=True, type=click.IntRange(1),
              help="Missed heartbeats before a worker or gateway is taken for dead.")
@click.option("--hwm", default=100_000, envvar="CHAT_HWM", show_envvar=True, type=click.IntRange(1),
              help="ZeroMQ high-water mark of every socket, in messages.")
@click.option("--max-message", default=MAX_MESSAGE, envvar="CHAT_MAX_MESSAGE", show_envvar=True,
              type=click.IntRange(1 << 16), help="Largest frame a peer may send, in bytes; larger: dropped.")
@click.option("--metrics-listen", default=None, envvar="CHAT_METRICS_LISTEN", show_envvar=True,
              callback=_listen, help="Serve Prometheus metrics on HOST:PORT (port 0: any free one). Default: off.")
@click.option("--curve-secret", default=None, envvar="CHAT_CURVE_SECRET", show_envvar=True,
              type=click.Path(dir_okay=False), help="The broker's secret key file (NAME.key_secret): CURVE on.")
@click.option("--curve-clients", default=None, envvar="CHAT_CURVE_CLIENTS", show_envvar=True,
              type=click.Path(file_okay=False), help="Directory of the admitted public keys (NAME.key, with roles).")
@click.option("--redis-url", default=None, envvar="CHAT_BROKER_REDIS_URL", show_envvar=True,
              help="Run as one of a broker pair: the lease in this Redis (redis://, rediss://, unix://, "
                   "redis+sentinel://) says which one is active. Default: off (one broker, always active).")
@click.option("--redis-ca", default=None, envvar="CHAT_REDIS_CA", show_envvar=True,
              type=click.Path(exists=True, dir_okay=False), help="CA of a rediss:// server (default: the system's).")
@click.option("--prefix", default="chat:", envvar="CHAT_PREFIX", show_envvar=True,
              help="Key prefix of the lease (the workers' prefix: their scripts check its epoch).")
@click.option("--log-level", default="info", envvar="CHAT_LOG_LEVEL", show_envvar=True)
@click.option("--log-format", default="text", envvar="CHAT_LOG_FORMAT", show_envvar=True,
              type=click.Choice(LOG_FORMATS), help="Log lines as text or one JSON object a line.")
def main(frontend: str, backend: str, pub_in: str, pub_out: str, heartbeat: float, liveness: int,
         hwm: int, max_message: int, metrics_listen: tuple[str, int] | None, curve_secret: str | None,
         curve_clients: str | None, redis_url: str | None, redis_ca: str | None, prefix: str,
         log_level: str, log_format: str) -> None:
    """Balance client events over workers and route their replies to gateways."""
    setup_logging("chat-broker", log_level, log_format)
    try:
        curve = server_curve("chat-broker", curve_secret, curve_clients, [frontend, backend, pub_in, pub_out])
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    run(BrokerConfig(frontend, backend, pub_in, pub_out, heartbeat, liveness, hwm, max_message, curve),
        metrics_listen, None if redis_url is None else LeaseConfig(redis_url, prefix, redis_ca))


if __name__ == "__main__":
    main()
