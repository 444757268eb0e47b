"""CURVE on the links between the parts: the calls each part makes.

Every link to the broker is encrypted and authenticated with CURVE when the
parts get keys (`chat-keys` makes them; files as in `stack.certs`):

- the broker loads its keys once at start-up (`server_curve` from its
  options, or `load_server_keys`: clear errors), starts the process's one
  `Authenticator` (`ServerKeys.open_authenticator(ctx)`, see `stack.zap`) that
  admits the keys of `--curve-clients DIR` by role, and makes each of its four
  sockets a CURVE server of its domain before it binds (`ServerKeys.apply`,
  or `serve_curve` with the file name);
- gateways, workers and outside publishers load their keys once at start-up
  (`client_curve` from their options, or `load_client_keys`) and call
  `ClientKeys.apply(sock)` on every socket before it connects (or
  `connect_curve` with the file names);
- `make_stack_keys` makes a one-machine stack's keys in its temporary directory.

A peer without CURVE, with an unknown key or with a key of the wrong role
never completes the handshake, so not one message passes either way.
`endpoint_is_local` and `plaintext_warning` let a part that runs without keys
say so once at start-up when an endpoint leaves the host.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq

from stack.certs import (
    KeyFileError,
    KeyPair,
    PublicKey,
    load_key_pair,
    load_public_key,
    public_key_files,
    too_open,
    write_key_pair,
)
from stack.zap import DOMAIN_ROLES, Authenticator, Context, Socket

__all__ = [
    "Authenticator", "ClientKeys", "KeyFileError", "ServerKeys", "StackKeys", "client_curve", "connect_curve",
    "endpoint_is_local", "load_client_keys", "load_clients", "load_server_keys", "make_stack_keys",
    "open_authenticator", "plaintext_warning", "serve_curve", "server_curve",
]

log = logging.getLogger("chat.curve")

LOCAL_SCHEMES = ("ipc", "inproc")


# --- the client side ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """What a connecting socket needs: its own key pair and the broker's public key."""

    own: KeyPair
    server_public: bytes

    def apply(self, sock: Socket) -> None:
        """Make `sock` a CURVE client. Call before `connect`."""
        sock.curve_secretkey = self.own.secret
        sock.curve_publickey = self.own.public
        sock.curve_serverkey = self.server_public


def load_client_keys(secret_file: str | os.PathLike[str], server_public_file: str | os.PathLike[str],
                     role: str | None = None) -> ClientKeys:
    """Read both files, with clear errors; `role` (if given) must match the own key's role."""
    own = load_key_pair(secret_file)
    warn_if_too_open(secret_file)
    if role is not None and own.role and own.role != role:
        raise KeyFileError(f"{secret_file}: is a {own.role} key; this part needs a {role} key")
    server = load_public_key(server_public_file)
    if _has_secret(server_public_file):
        raise KeyFileError(f"{server_public_file}: holds a secret key; give the broker's public file (NAME.key)")
    if server.role and server.role != "broker":
        raise KeyFileError(f"{server_public_file}: is a {server.role} key, not the broker's")
    return ClientKeys(own, server.public)


def connect_curve(sock: Socket, secret_file: str | os.PathLike[str],
                  server_public_file: str | os.PathLike[str]) -> None:
    """Make a connecting socket a CURVE client of the broker. Call before `connect`."""
    load_client_keys(secret_file, server_public_file).apply(sock)


def _has_secret(path: str | os.PathLike[str]) -> bool:
    try:
        load_key_pair(path)
    except KeyFileError:
        return False
    return True


def warn_if_too_open(secret_file: str | os.PathLike[str]) -> None:
    if too_open(secret_file):
        log.warning("secret key file %s is readable by group or others: chmod 600 it", secret_file)


# --- the server side ---------------------------------------------------------


def load_clients(directory: str | os.PathLike[str]) -> dict[bytes, PublicKey]:
    """The admitted client keys: public key (Z85) -> its name and role."""
    clients: dict[bytes, PublicKey] = {}
    for path in public_key_files(directory):
        key = load_public_key(path)
        if not key.role:
            raise KeyFileError(f"{path}: has no role; make keys with `chat-keys new --role ROLE` "
                               f"or add `role = \"gateway\"` (or worker, publisher) under metadata")
        if key.role == "broker":
            log.info("%s: a broker key, not a client: ignored", path)
            continue
        known = clients.get(key.public)
        if known is not None and known.role != key.role:
            raise KeyFileError(f"{path}: the same key as {known.name} with another role ({known.role})")
        clients[key.public] = key
    if not clients:
        raise KeyFileError(f"{directory}: no client keys (NAME.key files of gateways, workers or publishers)")
    if any(name.endswith(".key_secret") for name in os.listdir(directory)):
        log.warning("%s holds secret key files: only public NAME.key files belong there", directory)
    return clients


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """What the broker needs: its own key pair and the admitted client keys."""

    own: KeyPair
    clients: Mapping[bytes, PublicKey]

    def open_authenticator(self, ctx: Context) -> Authenticator:
        """Start the process's ZAP handler (one per context; close it before ctx.term())."""
        return Authenticator(ctx, self.clients).start()

    def apply(self, sock: Socket, domain: str, authenticator: Authenticator) -> None:
        """Make `sock` a CURVE server of `domain` whose clients `authenticator` checks. Call before `bind`."""
        if domain not in DOMAIN_ROLES:
            raise ValueError(f"unknown ZAP domain {domain!r} (one of {', '.join(DOMAIN_ROLES)})")
        if not authenticator.running or authenticator.context is not sock.context:
            raise RuntimeError("serve_curve needs the running authenticator of the socket's context")
        sock.curve_server = True
        sock.curve_secretkey = self.own.secret
        sock.curve_publickey = self.own.public
        sock.zap_domain = domain.encode()
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler answering: refuse, never admit


def load_broker_key(secret_file: str | os.PathLike[str]) -> KeyPair:
    keys = load_key_pair(secret_file)
    warn_if_too_open(secret_file)
    if keys.role not in ("", "broker"):
        raise KeyFileError(f"{secret_file}: is a {keys.role} key; the broker needs a broker key")
    return keys


def load_server_keys(secret_file: str | os.PathLike[str], clients_dir: str | os.PathLike[str]) -> ServerKeys:
    """Read the broker's secret file and the clients directory, with clear errors."""
    return ServerKeys(load_broker_key(secret_file), load_clients(clients_dir))


def serve_curve(sock: Socket, secret_file: str | os.PathLike[str], domain: str,
                authenticator: Authenticator) -> None:
    """Make a binding socket a CURVE server whose clients `authenticator` checks. Call before `bind`."""
    ServerKeys(load_broker_key(secret_file), authenticator.clients).apply(sock, domain, authenticator)


def open_authenticator(ctx: Context, clients_dir: str | os.PathLike[str]) -> Authenticator:
    """Read the admitted keys and start the process's ZAP handler (close it before ctx.term())."""
    return Authenticator(ctx, load_clients(clients_dir)).start()


# --- what a command line calls -------------------------------------------------


def client_curve(part: str, role: str, secret_file: str | None, server_public_file: str | None,
                 endpoints: Iterable[str]) -> ClientKeys | None:
    """A part's keys from its options: both files -> loaded keys; neither -> None, after
    one warning if an endpoint leaves the host; only one -> KeyFileError."""
    if secret_file and server_public_file:
        return load_client_keys(secret_file, server_public_file, role=role)
    if secret_file or server_public_file:
        raise KeyFileError(f"{part}: give both --curve-secret and --curve-server, or neither")
    _warn_plaintext(part, endpoints)
    return None


def server_curve(part: str, secret_file: str | None, clients_dir: str | None,
                 endpoints: Iterable[str]) -> ServerKeys | None:
    """The broker's keys from its options, the same way as `client_curve`."""
    if secret_file and clients_dir:
        return load_server_keys(secret_file, clients_dir)
    if secret_file or clients_dir:
        raise KeyFileError(f"{part}: give both --curve-secret and --curve-clients, or neither")
    _warn_plaintext(part, endpoints)
    return None


def _warn_plaintext(part: str, endpoints: Iterable[str]) -> None:
    line = plaintext_warning(part, endpoints)
    if line is not None:
        log.warning("%s", line)


@dataclass(frozen=True, slots=True)
class StackKeys:
    """chat-stack's keys for one run: files in its private temporary directory."""

    broker_secret: Path
    broker_public: Path
    clients: Path
    gateway_secret: Path
    worker_secret: Path


def make_stack_keys(directory: str | os.PathLike[str]) -> StackKeys:
    """New broker, gateway and worker key pairs in `directory/keys`, the clients in `directory/keys/clients`."""
    keys = Path(directory) / "keys"
    clients = keys / "clients"
    clients.mkdir(mode=0o700, parents=True)
    broker_public, broker_secret = write_key_pair(keys, "broker", "broker")
    paths = {role: write_key_pair(keys, role, role) for role in ("gateway", "worker")}
    for public, _ in paths.values():
        (clients / public.name).write_bytes(public.read_bytes())
    return StackKeys(broker_secret, broker_public, clients, paths["gateway"][1], paths["worker"][1])


# --- plain links -------------------------------------------------------------


def endpoint_is_local(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// to a loopback address (or localhost)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if scheme in LOCAL_SCHEMES:
        return True
    if scheme != "tcp":
        return False
    target = rest.rsplit(";", 1)[-1]  # tcp://SOURCE;TARGET: the target is what leaves the host
    host = target.rsplit(":", 1)[0].strip("[]") if ":" in target else target
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a wildcard (*), an interface name or a host name: may leave the host
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def plaintext_warning(part: str, endpoints: Iterable[str]) -> str | None:
    """The one start-up warning of a part that runs without CURVE, or None if all its links are local."""
    exposed = [e for e in endpoints if not endpoint_is_local(e)]
    if not exposed:
        return None
    return (f"{part}: no CURVE keys (--curve-secret) and endpoint(s) that leave this host: {', '.join(exposed)}; "
            f"anyone who reaches them can read and forge chat traffic (see chat-keys)")
