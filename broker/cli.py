"""`chat-broker`: options -> BrokerConfig -> run."""

from __future__ import annotations

import click
import zmq

from broker.server import MAX_MESSAGE, Broker, BrokerConfig
from stack.process import Stopping, setup_logging


def run(config: BrokerConfig) -> None:
    stopping = Stopping().install()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    broker = Broker(config, ctx)
    try:
        bound = " ".join(f"{k}={v}" for k, v in broker.endpoints().items())
        print(f"chat-broker ready {bound}", flush=True)
        broker.run(stopping)
    finally:
        broker.close()
        ctx.term()


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
@click.option("--log-level", default="info", envvar="CHAT_LOG_LEVEL", show_envvar=True)
def main(frontend: str, backend: str, pub_in: str, pub_out: str, heartbeat: float, liveness: int,
         hwm: int, max_message: int, log_level: str) -> None:
    """Balance client events over workers and route their replies to gateways."""
    setup_logging("chat-broker", log_level)
    run(BrokerConfig(frontend, backend, pub_in, pub_out, heartbeat, liveness, hwm, max_message))


if __name__ == "__main__":
    main()
