"""JSON log lines: one object a line, with the fields an operator filters on."""

from __future__ import annotations

import json
import logging

from stack.process import JsonFormatter


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("chat.gateway", logging.WARNING, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_one_object_with_part_instance_level_event() -> None:
    line = JsonFormatter("chat-gateway", "gw1.abc123").format(record("closing %s: %s", "gw1:7", "flooding"))
    obj = json.loads(line)
    assert obj["part"] == "chat-gateway"
    assert obj["instance"] == "gw1.abc123"
    assert obj["level"] == "warning"
    assert obj["event"] == "closing gw1:7: flooding"
    assert obj["logger"] == "chat.gateway"
    assert isinstance(obj["ts"], float) and isinstance(obj["pid"], int)


def test_fields_are_merged_but_never_replace_the_fixed_keys() -> None:
    obj = json.loads(JsonFormatter("chat-broker").format(
        record("dropped", fields={"cause": "hwm", "count": 3, "level": "spoofed"})))
    assert obj["cause"] == "hwm" and obj["count"] == 3
    assert obj["level"] == "warning"


def test_hostile_text_stays_on_one_line() -> None:
    line = JsonFormatter("chat-gateway").format(record("refused %s", "a\nb\u2028c\u2029d\x1b[2J"))
    assert "\n" not in line and "\u2028" not in line and "\u2029" not in line and "\x1b" not in line
    assert json.loads(line)["event"] == "refused a\nb\u2028c\u2029d\x1b[2J"


def test_exceptions_are_one_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("chat.worker", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    obj = json.loads(JsonFormatter("chat-worker").format(rec))
    assert "ValueError: boom" in obj["exception"]
