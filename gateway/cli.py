"""`chat-gateway`: options -> GatewayConfig -> run."""

from __future__ import annotations

import logging
import re
import signal
import socket
import ssl

import click
import trio
import zmq

from gateway.client import ClientLimits
from gateway.server import Gateway, GatewayConfig, IrcDoorConfig, WebDoorConfig
from gateway.tls import TlsConfig, server_context
from protocol import proxy
from protocol.hops import MAX_HOP_SAMPLE
from stack.curve import KeyFileError, client_curve
from stack.metrics import parse_listen as parse_metrics_listen
from stack.metrics import serve_metrics
from stack.process import LOG_FORMATS, set_log_instance, setup_logging

log = logging.getLogger("chat.gateway")

SHUTDOWN_NOTICE = "server shutting down, please reconnect"


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_trusted_proxies(proxy_protocol: bool, text: str) -> tuple[proxy.Network, ...]:
    """The PROXY protocol without a list of trusted balancers would let any host claim
    any address: refuse to start rather than guess."""
    if not proxy_protocol:
        if text.strip():
            raise click.UsageError("--trusted-proxies is only for --proxy-protocol")
        return ()
    if not text.strip():
        raise click.UsageError("--proxy-protocol needs --trusted-proxies CIDR[,CIDR...] (CHAT_TRUSTED_PROXIES): "
                               "the balancers whose PROXY headers are believed")
    try:
        return proxy.parse_networks(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trusted-proxies") from None


def show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listeners_shown(bound: dict[str, tuple[str, int]]) -> str:
    """The plain listener as HOST:PORT first (what scripts parse), then tls=HOST:PORT."""
    parts = [show(*bound["plain"])] if "plain" in bound else []
    for door in ("tls", "irc", "ws"):
        if door in bound:
            parts.append(f"{door}=" + show(*bound[door]))
    return " ".join(parts)


def door_configs(irc_listen: str | None, irc_server_name: str, ws_listen: str | None,
                 ws_origins: str) -> tuple[IrcDoorConfig | None, WebDoorConfig | None]:
    """The IRC and WebSocket doors' options, checked -> their configs (None: off)."""
    irc = None
    if irc_listen and irc_listen.strip():
        name = irc_server_name or socket.gethostname()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", name):
            raise click.BadParameter("a host name: letters, digits, . and -", param_hint="--irc-server-name")
        irc = IrcDoorConfig(*parse_listen(irc_listen), name)
    web = None
    origins = frozenset(o.strip().rstrip("/") for o in ws_origins.split(",") if o.strip())
    if ws_listen and ws_listen.strip():
        bad = [o for o in origins if not re.fullmatch(r"https?://[^\s/]+", o)]
        if bad:
            raise click.BadParameter(f"expected SCHEME://HOST[:PORT], got {bad[0]!r}", param_hint="--ws-origins")
        web = WebDoorConfig(*parse_listen(ws_listen), origins)
    elif origins:
        raise click.UsageError("--ws-origins is for --ws-listen")
    return irc, web


def tls_config(listen: str | None, cert: str | None, key: str | None, timeout: float) -> TlsConfig | None:
    """The TLS listener's options, checked (the files load) -> its config, or None."""
    if listen is None or not listen.strip():  # '' as for --listen: none
        if cert or key:
            raise click.UsageError("--tls-cert and --tls-key are for --tls-listen")
        return None
    if not cert or not key:
        raise click.UsageError("--tls-listen needs --tls-cert FILE and --tls-key FILE (CHAT_TLS_CERT, CHAT_TLS_KEY)")
    host, port = parse_listen(listen)
    try:
        server_context(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise click.ClickException(f"--tls-cert/--tls-key: cannot load {cert} and {key}: {exc}") from None
    return TlsConfig(host, port, cert, key, timeout)


def serve_gateway_metrics(gateway: Gateway, host: str, port: int) -> str:
    """Serve the gateway's metrics -> the HOST:PORT bound."""
    try:
        return show(*serve_metrics(gateway.metrics.registry(), host, port))
    except OSError as exc:
        raise click.ClickException(f"--metrics-listen: cannot listen on {host}:{port}: {exc}") from None


async def run(config: GatewayConfig, metrics_listen: tuple[str, int] | None = None) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gateway = Gateway(config, ctx)
    set_log_instance(gateway.instance)
    try:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(gateway.serve)
            ready = f"chat-gateway {gateway.instance} listening on " + listeners_shown(bound)
            if metrics_listen is not None:
                metrics = serve_gateway_metrics(gateway, *metrics_listen)
                print(f"chat-gateway metrics on {metrics}", flush=True)
                ready += f" metrics={metrics}"
            print(ready, flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("%s: closing %d clients", signal.Signals(signum).name, len(gateway.clients))
                    await shut_down(gateway)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        gateway.close()
        ctx.term()


async def shut_down(gateway: Gateway, grace: float = 3.0) -> None:
    """Tell every client, let the writers flush, and give the broker our goodbyes."""
    for client in list(gateway.clients.values()):
        client.close_after(client.door.end(SHUTDOWN_NOTICE, error=False), "server shutting down")
    with trio.move_on_after(grace):
        while (gateway.clients or gateway.sessions) and not gateway.broker_down:
            await trio.sleep(0.05)  # the sessions' goodbyes are being answered


def _metrics_listen(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return parse_metrics_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"show_default": True})
@click.option("--listen", default="0.0.0.0:7000", envvar="CHAT_LISTEN", show_envvar=True,
              help="HOST:PORT for plain TCP clients (port 0: any free port; '': none, TLS only).")
@click.option("--tls-listen", default=None, envvar="CHAT_TLS_LISTEN", show_envvar=True,
              help="HOST:PORT for TLS clients (TLS 1.2+; port 0: any free port). Default: off.")
@click.option("--tls-cert", default=None, envvar="CHAT_TLS_CERT", show_envvar=True,
              type=click.Path(exists=True, dir_okay=False), help="PEM certificate chain for --tls-listen.")
@click.option("--tls-key", default=None, envvar="CHAT_TLS_KEY", show_envvar=True,
              type=click.Path(exists=True, dir_okay=False), help="PEM private key for --tls-listen.")
@click.option("--tls-handshake-timeout", default=10.0, envvar="CHAT_TLS_HANDSHAKE_TIMEOUT", show_envvar=True,
              type=click.FloatRange(0.1), help="Seconds a TLS client has to finish its handshake.")
@click.option("--irc-listen", default=None, envvar="CHAT_IRC_LISTEN", show_envvar=True,
              help="HOST:PORT for IRC clients (port 0: any free port). Default: off.")
@click.option("--irc-server-name", default="", envvar="CHAT_IRC_SERVER_NAME", show_envvar=True,
              help="The server name IRC clients see. Default: the host name.")
@click.option("--ws-listen", default=None, envvar="CHAT_WS_LISTEN", show_envvar=True,
              help="HOST:PORT for browsers: the web client at /, WebSocket at /ws (port 0: any free port). "
                   "Default: off.")
@click.option("--ws-origins", default="", envvar="CHAT_WS_ORIGINS", show_envvar=True, metavar="ORIGIN[,ORIGIN...]",
              help="Origins (https://chat.example) whose pages may open /ws, besides the page's own host.")
@click.option("--ready-timeout", default=30.0, envvar="CHAT_READY_TIMEOUT", show_envvar=True,
              type=click.FloatRange(0.1),
              help="Seconds an IRC client has to register, a browser to open its WebSocket, before it is cut.")
@click.option("--frontend", default="tcp://127.0.0.1:5555", envvar="CHAT_FRONTEND", show_envvar=True,
              help="The broker's frontend endpoint; a broker pair's: both, comma-separated.")
@click.option("--pub-out", default="tcp://127.0.0.1:5558", envvar="CHAT_PUB_OUT", show_envvar=True,
              help="The broker's pub-out endpoint; a broker pair's: both, comma-separated.")
@click.option("--id", "name", default="", envvar="CHAT_GATEWAY_ID", show_envvar=True,
              help="Gateway name (letters, digits, _ . -); a random tag is added per run. Default: gw-HOST-PID.")
@click.option("--max-line", default=4096, envvar="CHAT_MAX_LINE", show_envvar=True, type=click.IntRange(16, 1 << 20),
              help="Longest line a client may send, in bytes.")
@click.option("--max-queue-lines", default=1000, envvar="CHAT_MAX_QUEUE_LINES", show_envvar=True,
              type=click.IntRange(1), help="Lines queued for a client before it is disconnected as too slow.")
@click.option("--max-queue-bytes", default=1 << 20, envvar="CHAT_MAX_QUEUE_BYTES", show_envvar=True,
              type=click.IntRange(1024), help="Bytes queued for a client before it is disconnected as too slow.")
@click.option("--rate-limit", default=20.0, envvar="CHAT_RATE_LIMIT", show_envvar=True, type=click.FloatRange(0),
              help="Lines a second a client may send; more wait (0: no limit, for benchmarks).")
@click.option("--rate-burst", default=100, envvar="CHAT_RATE_BURST", show_envvar=True, type=click.IntRange(1),
              help="Lines a client may send at once before the rate limit applies.")
@click.option("--max-waiting-lines", default=1000, envvar="CHAT_MAX_WAITING_LINES", show_envvar=True,
              type=click.IntRange(1), help="Lines held back by the rate limit before a flooder is disconnected.")
@click.option("--max-bad-lines", default=20, envvar="CHAT_MAX_BAD_LINES", show_envvar=True,
              type=click.IntRange(1), help="Bad lines (invalid UTF-8, too long, or 32 telnet commands each) a client "
              "may send at once, then one a second, before it is disconnected as a flooder (off with rate limit 0).")
@click.option("--half-close-wait", default=10.0, envvar="CHAT_HALF_CLOSE_WAIT", show_envvar=True,
              type=click.FloatRange(0), help="Seconds a client that closed its sending side still gets its replies.")
@click.option("--max-connections", default=20_000, envvar="CHAT_MAX_CONNECTIONS", show_envvar=True,
              type=click.IntRange(0),
              help="Clients this gateway accepts at once (0: no limit); lowered to fit the open-file limit.")
@click.option("--max-per-address", default=256, envvar="CHAT_MAX_PER_ADDRESS", show_envvar=True,
              type=click.IntRange(0), help="Clients from one IP address at once (0: no limit).")
@click.option("--proxy-protocol", is_flag=True, envvar="CHAT_PROXY_PROTOCOL", show_envvar=True,
              help="Expect a PROXY v1 or v2 header (HAProxy send-proxy, send-proxy-v2) with the client's "
                   "real address; needs --trusted-proxies.")
@click.option("--trusted-proxies", default="", envvar="CHAT_TRUSTED_PROXIES", show_envvar=True,
              metavar="CIDR[,CIDR...]",
              help="With --proxy-protocol: the balancers' addresses; every other peer is refused.")
@click.option("--reuse-port", is_flag=True, envvar="CHAT_REUSE_PORT", show_envvar=True,
              help="SO_REUSEPORT: run several gateways on one port; the kernel spreads the clients.")
@click.option("--heartbeat", default=1.0, envvar="CHAT_HEARTBEAT", show_envvar=True, type=click.FloatRange(0.05),
              help="Seconds between heartbeats to the broker.")
@click.option("--liveness", default=3, envvar="CHAT_LIVENESS", show_envvar=True, type=click.IntRange(1),
              help="Missed broker heartbeats before the broker is taken for down.")
@click.option("--resend-after", default=5.0, envvar="CHAT_RESEND_AFTER", show_envvar=True,
              type=click.FloatRange(0.1), help="Seconds an unanswered event waits before it is sent again.")
@click.option("--metrics-listen", default=None, envvar="CHAT_METRICS_LISTEN", show_envvar=True,
              callback=_metrics_listen,
              help="Serve Prometheus metrics on HOST:PORT (port 0: any free one). Default: off.")
@click.option("--hop-sample", default=0, envvar="CHAT_HOP_SAMPLE", show_envvar=True,
              type=click.IntRange(0, MAX_HOP_SAMPLE),
              help="Time one client event in N at every hop (the chat_*_hop_seconds metrics); 0: off.")
@click.option("--curve-secret", default=None, envvar="CHAT_CURVE_SECRET", show_envvar=True,
              type=click.Path(dir_okay=False), help="This part's secret key file (NAME.key_secret): CURVE on.")
@click.option("--curve-server", default=None, envvar="CHAT_CURVE_SERVER", show_envvar=True,
              type=click.Path(dir_okay=False), help="The broker's public key file (NAME.key).")
@click.option("--log-level", default="info", envvar="CHAT_LOG_LEVEL", show_envvar=True)
@click.option("--log-format", default="text", envvar="CHAT_LOG_FORMAT", show_envvar=True,
              type=click.Choice(LOG_FORMATS), help="Log lines as text or one JSON object a line.")
def main(listen: str, tls_listen: str | None, tls_cert: str | None, tls_key: str | None,
         tls_handshake_timeout: float, irc_listen: str | None, irc_server_name: str, ws_listen: str | None,
         ws_origins: str, ready_timeout: float, frontend: str, pub_out: str, name: str, max_line: int,
         max_queue_lines: int, max_queue_bytes: int, rate_limit: float, rate_burst: int, max_waiting_lines: int,
         max_bad_lines: int, half_close_wait: float,
         max_connections: int, max_per_address: int, proxy_protocol: bool, trusted_proxies: str,
         reuse_port: bool, heartbeat: float, liveness: int,
         resend_after: float, metrics_listen: tuple[str, int] | None, hop_sample: int, curve_secret: str | None,
         curve_server: str | None, log_level: str, log_format: str) -> None:
    """Accept chat clients over TCP and bridge them to the broker."""
    if name and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise click.BadParameter("letters, digits, _ . - only", param_hint="--id")
    trusted = parse_trusted_proxies(proxy_protocol, trusted_proxies)
    tls = tls_config(tls_listen, tls_cert, tls_key, tls_handshake_timeout)
    irc, web = door_configs(irc_listen, irc_server_name, ws_listen, ws_origins)
    plain = bool(listen.strip())
    if not plain and tls is None and irc is None and web is None:
        raise click.UsageError("no listener: give --listen, --tls-listen, --irc-listen or --ws-listen HOST:PORT")
    setup_logging("chat-gateway", log_level, log_format)
    host, port = parse_listen(listen) if plain else ("", 0)
    try:
        curve = client_curve("chat-gateway", "gateway", curve_secret, curve_server,
                             [*frontend.split(","), *pub_out.split(",")])
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    limits = ClientLimits(max_line=max_line, max_queue_lines=max_queue_lines, max_queue_bytes=max_queue_bytes,
                          rate=rate_limit, burst=rate_burst, max_waiting_lines=max_waiting_lines,
                          max_bad_lines=max_bad_lines)
    config = GatewayConfig(host=host, port=port, frontend=frontend, pub_out=pub_out, name=name,
                           heartbeat=heartbeat, liveness=liveness, resend_after=resend_after, hop_sample=hop_sample,
                           max_connections=max_connections,
                           max_per_address=max_per_address, proxy_protocol=proxy_protocol,
                           trusted_proxies=trusted,
                           reuse_port=reuse_port, half_close_wait=half_close_wait, limits=limits,
                           plain=plain, tls=tls, irc=irc, web=web, ready_timeout=ready_timeout, curve=curve)
    trio.run(run, config, metrics_listen)


if __name__ == "__main__":
    main()
