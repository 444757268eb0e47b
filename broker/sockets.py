"""The broker's four sockets, bound with one set of options (and CURVE when configured).

Every socket: LINGER 0, the configured high-water marks both ways, and
MAXMSGSIZE (a bound on one frame from any peer). The ROUTERs are
ROUTER_MANDATORY: a send to a peer that is gone fails instead of vanishing.
pub-out (XPUB) is XPUB_NODROP and XPUB_MANUAL (broker.publisher chooses which
subscriptions count); pub-in (XSUB) subscribes to everything at once.
"""

from __future__ import annotations

import zmq

from broker.config import BrokerConfig


class Sockets:
    """frontend, backend, pub-in and pub-out, and the ZAP authenticator of CURVE links."""

    def __init__(self, config: BrokerConfig, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.config = config
        self.auth = config.curve.open_authenticator(ctx) if config.curve else None
        self.frontend = self._bind(ctx, zmq.ROUTER, config.frontend, "frontend")
        self.backend = self._bind(ctx, zmq.ROUTER, config.backend, "backend")
        self.pub_in = self._bind(ctx, zmq.XSUB, config.pub_in, "pub-in")
        self.pub_out = self._bind(ctx, zmq.XPUB, config.pub_out, "pub-out")

    def _bind(self, ctx: zmq.Context[zmq.Socket[bytes]], kind: int, endpoint: str, domain: str) -> zmq.Socket[bytes]:
        sock = ctx.socket(kind)
        if self.config.curve and self.auth:
            self.config.curve.apply(sock, domain, self.auth)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.config.hwm)
        sock.setsockopt(zmq.RCVHWM, self.config.hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message)
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if kind == zmq.XPUB:
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            sock.setsockopt(zmq.XPUB_MANUAL, 1)  # we choose which subscriptions count
        if kind == zmq.XSUB:
            sock.send(b"\x01")  # subscribe to everything
        sock.bind(endpoint)
        return sock

    def endpoints(self) -> dict[str, str]:
        return {
            name: sock.getsockopt_string(zmq.LAST_ENDPOINT)
            for name, sock in (
                ("frontend", self.frontend),
                ("backend", self.backend),
                ("pub-in", self.pub_in),
                ("pub-out", self.pub_out),
            )
        }

    def close(self) -> None:
        for sock in (self.frontend, self.backend, self.pub_in, self.pub_out):
            sock.close()
        if self.auth:
            self.auth.close()
