"""The ZAP decision and the refusal log, as pure code."""

from __future__ import annotations

import struct

import pytest
import zmq
from zmq.utils import z85

from stack.certs import PublicKey
from stack.zap import DOMAIN_ROLES, RefusalLog, decide, zmtp_properties

KEYS = {role: zmq.curve_keypair()[0] for role in ("gateway", "worker", "publisher")}
CLIENTS = {public: PublicKey(public, f"{role}-1", role) for role, public in KEYS.items()}


def raw(role: str) -> list[bytes]:
    return [z85.decode(KEYS[role])]


@pytest.mark.parametrize("domain", sorted(DOMAIN_ROLES))
@pytest.mark.parametrize("role", sorted(KEYS))
def test_each_domain_admits_only_its_roles(domain: str, role: str) -> None:
    verdict = decide(domain, b"CURVE", raw(role), CLIENTS)
    if role in DOMAIN_ROLES[domain]:
        assert (verdict.status, verdict.user_id, verdict.role) == (b"200", f"{role}-1", role)
    else:
        assert verdict.status == b"400" and verdict.text == f"a {role} key may not use {domain}"


def test_the_role_table() -> None:
    assert {"frontend": {"gateway"}, "pub-out": {"gateway"}, "backend": {"worker"},
                            "pub-in": {"publisher"}} == DOMAIN_ROLES


@pytest.mark.parametrize(("domain", "mechanism", "credentials", "text"), [
    ("frontend", b"NULL", [], "not CURVE"),
    ("frontend", b"PLAIN", [b"user", b"pass"], "not CURVE"),
    ("frontend", b"CURVE", [b"short"], "malformed CURVE credentials"),
    ("frontend", b"CURVE", [], "malformed CURVE credentials"),
    ("frontend", b"CURVE", [b"\x00" * 32] * 2, "malformed CURVE credentials"),
    ("frontend", b"CURVE", [b"\x00" * 32], "unknown key"),
    ("", b"CURVE", [b"\x00" * 32], "unknown domain"),
    ("global", b"CURVE", [b"\x00" * 32], "unknown domain"),
])
def test_everything_else_is_refused(domain: str, mechanism: bytes, credentials: list[bytes], text: str) -> None:
    verdict = decide(domain, mechanism, credentials, CLIENTS)
    assert (verdict.status, verdict.text, verdict.user_id) == (b"400", text, "")


def test_refusal_log_says_once_per_peer_and_interval() -> None:
    log = RefusalLog(interval=60.0)
    a, b = ("backend", "10.0.0.1", "K1"), ("backend", "10.0.0.2", "K1")
    assert log.note(a, 100.0) == 0
    assert [log.note(a, 100.0 + i) for i in range(1, 6)] == [None] * 5
    assert log.note(b, 101.0) == 0  # another peer has its own line
    assert log.note(a, 160.0) == 5  # the next line tells how many went unsaid
    assert log.note(a, 161.0) is None


def test_refusal_log_memory_is_bounded() -> None:
    log = RefusalLog(interval=60.0, capacity=3)
    for i in range(1000):
        log.note(("backend", f"10.0.{i // 256}.{i % 256}", "K"), float(i))
    assert len(log._peers) == 3


def test_zmtp_properties() -> None:
    assert zmtp_properties({"Role": "gateway"}) == b"\x04Role" + struct.pack(">I", 7) + b"gateway"
    assert zmtp_properties({}) == b""
