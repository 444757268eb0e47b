"""The delivery micro-benchmark still delivers: its hand-made pub-out frames follow the wire."""

from __future__ import annotations

import pytest
import trio

from bench.deliver_micro import run


@pytest.mark.parametrize("view", ["text", "json", "ws", "irc"])
def test_every_delivery_reaches_every_client(view: str) -> None:
    _, delivered = trio.run(run, 5, 20, view)
    assert delivered == 5 * 20
