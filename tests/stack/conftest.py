"""Key files for the CURVE tests: a broker, one key per role, and a stranger."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack.certs import write_key_pair


@dataclass(frozen=True)
class Keys:
    dir: Path
    clients: Path

    def secret(self, name: str) -> Path:
        return self.dir / f"{name}.key_secret"

    def public(self, name: str) -> Path:
        return self.dir / f"{name}.key"


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """broker, other-broker; gw, w, pub admitted; stranger (a gateway key nobody admitted)."""
    root = tmp_path_factory.mktemp("keys")
    clients = root / "clients"
    clients.mkdir()
    for name, role in [("broker", "broker"), ("other-broker", "broker"), ("gw", "gateway"), ("w", "worker"),
                       ("pub", "publisher"), ("stranger", "gateway")]:
        write_key_pair(root, name, role)
    for name in ("gw", "w", "pub", "broker"):
        shutil.copy(root / f"{name}.key", clients)
    return Keys(root, clients)
