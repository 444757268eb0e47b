"""A `ChatEvent` -> the line a client receives, in text or JSON mode.

Text mode follows the protocol's table (README, "The protocol in brief"); JSON mode sends one object a line
with the fields that apply. Both return bytes ending in LF, ready to write.
`is_own_echo` holds the rule that a text-mode sender does not get its own
room and private messages back.

Events may come from outside publishers (pub-in), so neither mode trusts
them to be clean: a text line is shown with every character of
`protocol.commands.UNSAFE` removed (no C0/C1 control, line separator or bidi
control reaches a terminal, and the LF is the only line end); a JSON line
keeps the data but writes each such character as a `\\uXXXX` escape, so the
raw line is safe on a terminal too and U+2028/U+2029 never split it. A
non-finite `ts` (not JSON) is left out.
"""

from __future__ import annotations

import json
import math
import re

from protocol.commands import UNSAFE, strip_unsafe
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
    return (strip_unsafe(line) + "\n").encode()


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
    if event.ts and math.isfinite(event.ts):
        obj["ts"] = event.ts
    if event.code:  # which reply this is, and its data (protocol.replies)
        obj["code"] = event.code
    if event.args:
        obj["args"] = list(event.args)
    return obj


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def render_json(event: ChatEvent) -> bytes:
    line = json.dumps(to_json_object(event), ensure_ascii=False)
    if not line.isprintable():  # every UNSAFE character is unprintable
        # only string contents can hold one, where an escape means the same
        line = UNSAFE.sub(_escape, line)
    return (line + "\n").encode()
