"""A `ChatEvent` -> the line a client receives, in text or JSON mode.

Text mode follows the protocol's table (README, "The protocol in brief"); JSON mode sends one object a line
with the fields that apply. Both return bytes ending in LF, ready to write.
`is_own_echo` holds the rule that a text-mode sender does not get its own
room and private messages back.
"""

from __future__ import annotations

import json

from protocol.messages import ChatEvent, EventType

_ECHOED = frozenset({EventType.MESSAGE, EventType.ACTION, EventType.PRIVATE})


def is_own_echo(event: ChatEvent, cid: str) -> bool:
    """True if `cid` sent this message itself (text mode then skips it)."""
    return event.origin == cid and event.type in _ECHOED


def _message_text(kind: str, room: str, sender: str, text: str) -> str:
    if kind == EventType.ACTION:
        return f"{room} * {sender} {text}"
    return f"{room} <{sender}> {text}"


def render_text(event: ChatEvent) -> bytes:
    kind = event.type
    if kind is EventType.MESSAGE or kind is EventType.ACTION:
        line = _message_text(kind, event.room, event.sender, event.text)
    elif kind is EventType.PRIVATE:
        line = f"*{event.sender}* {event.text}"
    elif kind is EventType.HISTORY:
        line = _message_text(event.of, event.room, event.sender, event.text)
    elif kind is EventType.ERROR:
        line = f"! {event.text}"
    else:
        line = f"* {event.text}"
    return (line + "\n").encode()


def to_json_object(event: ChatEvent) -> dict[str, object]:
    obj: dict[str, object] = {"type": event.type.value}
    for key, value in (
        ("room", event.room),
        ("from", event.sender),
        ("to", event.to),
        ("text", event.text),
        ("id", event.id),
        ("of", event.of),
    ):
        if value:
            obj[key] = value
    if event.ts:
        obj["ts"] = event.ts
    return obj


def render_json(event: ChatEvent) -> bytes:
    return (json.dumps(to_json_object(event), ensure_ascii=False) + "\n").encode()
