"""`chat-broker --redis-url`: a URL it cannot use is a clear error, before anything is bound."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from broker.cli import main


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/0", "redis://127.0.0.1:notaport/0", "nonsense"])
def test_a_wrong_redis_url_is_refused_clearly(url: str) -> None:
    result = CliRunner().invoke(main, ["--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
                                       "--pub-in", "tcp://127.0.0.1:*", "--pub-out", "tcp://127.0.0.1:*",
                                       "--redis-url", url])
    assert result.exit_code == 1, result.output
    assert "--redis-url" in result.output
