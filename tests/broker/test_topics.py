"""Which pub-out subscriptions the broker accepts: exactly one gateway's topic."""

from __future__ import annotations

from protocol.messages import is_gateway_topic, topic_of


def test_a_gateway_topic_is_accepted() -> None:
    assert is_gateway_topic(topic_of("gw1.7b8193"))
    assert is_gateway_topic(topic_of("gw-host_1.abc-def"))


def test_prefixes_that_match_other_topics_are_refused() -> None:
    for topic in (b"", b":", b"gw1", b"gw1.7b8193", b"g", b"gw1.7b8193:extra", b"gw1:gw2:"):
        assert not is_gateway_topic(topic), topic


def test_odd_bytes_and_huge_names_are_refused() -> None:
    for topic in (b"gw 1:", b"gw\x00:", "gw\u00e9:".encode(), b"gw1:\n", b"x" * 129 + b":"):
        assert not is_gateway_topic(topic), topic
    assert is_gateway_topic(b"x" * 128 + b":")
