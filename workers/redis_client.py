"""Redis links across machines: a URL -> a `RedisAddress` (pure) -> a client.

The URL forms (user names and passwords percent-encoded, as in any URL):

    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]          plain TCP; USER for an ACL user
    rediss://[[USER]:PASSWORD@]HOST[:PORT][/DB]         TLS, the server's certificate
                                                         verified (against `ca_file` if given)
    unix://[[USER]:PASSWORD@]/PATH[?db=DB]              a Unix socket
    redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB]
                                                         the master that the Sentinels name,
                                                         followed across failovers; the
                                                         credentials are used for the
                                                         Sentinels and the master alike

PORT defaults to 6379 (26379 for a Sentinel), DB to 0. HOST is a name, an
IPv4 address or an IPv6 address in brackets. Anything else (another scheme,
query parameters, a user name without a password) is refused with a
`RedisUrlError` that says what is wrong and never repeats the password.

The client fails every call within `timeout` and does not retry on its own:
redis-py would otherwise retry with backoff, seconds in which a worker
stalls; the worker's breaker is the retry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

Kind = Literal["tcp", "tls", "unix", "sentinel"]

SCHEMES: dict[str, Kind] = {"redis": "tcp", "rediss": "tls", "unix": "unix", "redis+sentinel": "sentinel"}
REDIS_PORT = 6379
SENTINEL_PORT = 26379
MAX_URL = 4096
MAX_SENTINELS = 16
MAX_DB = 1_000_000
USAGE = "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://..., unix://[[USER]:PASSWORD@]/PATH[?db=DB] " \
        "or redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB]"

_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})?")
_IPV6_RE = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]")
_MASTER_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class RedisUrlError(ValueError):
    """A Redis URL that cannot be used; the message says why (without the password)."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where the chat's Redis is and how to log in; `password` is kept out of repr."""

    kind: Kind
    hosts: tuple[tuple[str, int], ...] = ()  # one for tcp and tls, the Sentinels for sentinel
    path: str = ""  # unix
    master: str = ""  # sentinel
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_redis_url(url: str) -> RedisAddress:
    """A Redis URL -> its `RedisAddress`, or RedisUrlError."""
    if len(url) > MAX_URL:
        raise RedisUrlError(f"Redis URL longer than {MAX_URL} characters")
    scheme, sep, rest = url.strip().partition("://")
    kind = SCHEMES.get(scheme.lower())
    if not sep:
        raise RedisUrlError(f"not a Redis URL (no scheme://): use {USAGE}")
    if kind is None:
        raise RedisUrlError(f"unsupported Redis URL scheme {scheme!r}: use {USAGE}")
    if "#" in rest:
        raise RedisUrlError("a Redis URL has no #fragment")
    rest, _, query = rest.partition("?")
    userinfo, at, rest = rest.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    if kind == "unix":
        return RedisAddress("unix", path=_unix_path(rest), db=_unix_db(query), username=username, password=password)
    if query:
        raise RedisUrlError(f"query parameters are not supported in a {scheme}:// URL (only unix:// takes ?db=N)")
    netloc, _, path = rest.partition("/")
    if kind == "sentinel":
        master, _, db = path.partition("/")
        if not _MASTER_RE.fullmatch(master):
            raise RedisUrlError(f"a Sentinel URL names its master: {USAGE}")
        hosts = tuple(_host_port(h, SENTINEL_PORT) for h in _split_hosts(netloc))
        return RedisAddress("sentinel", hosts, master=master, db=_db(db), username=username, password=password)
    if "," in netloc:
        raise RedisUrlError(f"several hosts in a {scheme}:// URL: only redis+sentinel:// takes several")
    return RedisAddress(kind, (_host_port(netloc, REDIS_PORT),), db=_db(path), username=username, password=password)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    if not colon:
        raise RedisUrlError("a user name without a password: write USER:PASSWORD@ (or :PASSWORD@)")
    if not password:
        raise RedisUrlError("an empty password: write USER:PASSWORD@ (or leave out the credentials)")
    return (unquote(user) or None), unquote(password)


def _split_hosts(netloc: str) -> list[str]:
    hosts = netloc.split(",")
    if len(hosts) > MAX_SENTINELS:
        raise RedisUrlError(f"more than {MAX_SENTINELS} Sentinels in a Redis URL")
    return hosts


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:PORT
        host, bracket, after = text.partition("]")
        host += bracket
        if after and not after.startswith(":"):
            raise RedisUrlError(f"invalid host {text!r} in a Redis URL")
        port = after[1:]
    else:
        host, _, port = text.partition(":")
    if not host:
        raise RedisUrlError(f"no host in a Redis URL: {USAGE}")
    if not (_HOST_RE.fullmatch(host) or _IPV6_RE.fullmatch(host)):
        raise RedisUrlError(f"invalid host {host!r} in a Redis URL")
    return host.strip("[]"), _port(port, default_port)


def _port(text: str, default: int) -> int:
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise RedisUrlError(f"invalid port {text!r} in a Redis URL: 1-65535")
    return int(text)


def _db(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit() or int(text) >= MAX_DB:
        raise RedisUrlError(f"invalid database {text!r} in a Redis URL: a number from 0")
    return int(text)


def _unix_path(text: str) -> str:
    if not text.startswith("/") or text == "/":
        raise RedisUrlError("a unix:// URL needs an absolute socket path: unix:///path/to/redis.sock")
    return unquote(text)


def _unix_db(query: str) -> int:
    if not query:
        return 0
    name, eq, value = query.partition("=")
    if name != "db" or not eq or "&" in value:
        raise RedisUrlError("a unix:// URL takes only ?db=N")
    return _db(value)


def open_redis(url: str, *, timeout: float, ca_file: str | None = None) -> redis.Redis:
    """A client for `url` (see the module docstring) whose calls fail within `timeout`.

    `ca_file`: the CA that signed a rediss:// server's certificate (default:
    the system's); RedisUrlError for any other scheme. It connects lazily: a wrong password or an unreachable
    server shows at the first call (`redis.AuthenticationError`,
    `redis.ConnectionError`).
    """
    address = parse_redis_url(url)
    if ca_file is not None and address.kind != "tls":
        raise RedisUrlError("a CA file is only for rediss:// URLs")
    common: dict[str, Any] = {
        "decode_responses": True, "socket_timeout": timeout, "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0), "username": address.username, "password": address.password,
        "db": address.db,
    }
    if address.kind == "unix":
        return redis.Redis(unix_socket_path=address.path, **common)
    if address.kind == "sentinel":
        return _sentinel_master(address, common)
    host, port = address.hosts[0]
    if address.kind == "tls":
        common.update(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True, ssl_ca_certs=ca_file)
    return redis.Redis(host=host, port=port, **common)


def _sentinel_master(address: RedisAddress, common: dict[str, Any]) -> redis.Redis:
    on_sentinels = {key: common[key] for key in
                    ("socket_timeout", "socket_connect_timeout", "retry", "username", "password")}
    sentinel = Sentinel(list(address.hosts), sentinel_kwargs=on_sentinels, **common)
    return sentinel.master_for(address.master)
