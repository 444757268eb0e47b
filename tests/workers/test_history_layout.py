"""A room's history entries, in both layouts, against a real Valkey.

A room message is stored as one field (`scripts.HISTORY_FIELD`: id, from, ts, kind, then the text, which
may hold anything), the older entries as five; every reader (/history, /history after ID, and so the IRC
door's CHATHISTORY) reads both, alone and mixed, as a rolling upgrade meets them until they are trimmed.
"""

from __future__ import annotations

import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protocol.messages import ChatEvent, EventType
from tests.workers.conftest import new_prefix
from tests.workers.test_logic import GW_A, GW_B, Conn, connected, events_to
from workers import scripts
from workers.logic import Chat
from workers.store import Store, history_entry

HISTORY = EventType.HISTORY
# the texts the doors let through are `protocol.commands.clean_text`'s (UTF-8, no control characters):
# these are all UTF-8 texts, newlines and NULs too, a superset
TEXTS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


def _history(conn: Conn, command: str) -> list[tuple[str, str, str, float, str]]:
    """The history entries `command` shows `conn`: (id, from, text, ts, kind)."""
    return [(e.id, e.sender, e.text, e.ts, e.of) for e in events_to(conn.send(command), conn.cid) if e.type is HISTORY]


def _infos(conn: Conn, command: str) -> list[ChatEvent]:
    return [e for e in events_to(conn.send(command), conn.cid) if e.type is not HISTORY]


def _old_entry(client: redis.Redis, prefix: str, room: str, entry: tuple[str, str, str, float, str]) -> None:
    """An entry as a worker of the five-field layout wrote it."""
    mid, sender, text, ts, kind = entry
    client.xadd(f"{prefix}room:{room}:history", {"id": mid, "from": sender, "text": text, "ts": repr(ts), "kind": kind})


def _new_entry(client: redis.Redis, prefix: str, room: str, entry: tuple[str, str, str, float, str]) -> None:
    """An entry as a worker of the one-field layout writes it (another worker, in a rolling upgrade)."""
    mid, sender, text, ts, kind = entry
    client.xadd(f"{prefix}room:{room}:history", {scripts.HISTORY_FIELD: f"{mid}\n{sender}\n{ts!r}\n{kind}\n{text}"})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS, min_size=1, max_size=5), kind=st.sampled_from(["message", "action"]))
@example(texts=["a\nb", "\n", "", "x\r\n\x00y", "é" * 2048, "\\n", "m\nalice\n1.0\nmessage\nz"], kind="message")
def test_any_text_reads_back_exactly(client: redis.Redis, texts: list[str], kind: str) -> None:
    prefix = new_prefix()
    store = Store(client, prefix=prefix)
    a = connected(Chat(store), f"{GW_A}:1", "alice", "#r")
    said = store.run([store.say((50, 50 + i), a.cid, None, text, f"{a.cid}/{50 + i}", 7.5, kind)
                      for i, text in enumerate(texts)])
    assert [s[1] for s in said] == ["#r"] * len(texts)
    raw = [fields for _, fields in client.xrange(f"{prefix}room:#r:history")]  # type: ignore[union-attr]
    assert all(list(fields) == [scripts.HISTORY_FIELD] for fields in raw), "one field an entry"
    wanted = [{"id": f"{a.cid}/{50 + i}", "from": "alice", "text": text, "ts": "7.5", "kind": kind}
              for i, text in enumerate(texts)]
    assert [history_entry(fields) for fields in raw] == wanted
    assert store.run_one(store.history((60, 60), a.cid, None, 10))[1] == wanted
    room, after, gap = store.run_one(store.history_after((61, 61), a.cid, None, wanted[0]["id"], 10))
    assert (room, after, gap) == ("#r", wanted[1:], False)


OLD = [(f"{GW_B}:7/1", "bob", "old one", 1.5, "message"), (f"{GW_B}:7/2", "bob", "waves", 2.5, "action")]
NEW = [(f"{GW_B}:8/3", "carol", "new\none", 3.5, "message"), (f"{GW_B}:8/4", "carol", "", 4.5, "action")]


def test_history_reads_old_entries_new_entries_and_a_mix(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#old", "#new", "#mix")
    for entry in OLD:
        _old_entry(client, prefix, "#old", entry)
        _old_entry(client, prefix, "#mix", entry)
    for entry in NEW:
        _new_entry(client, prefix, "#new", entry)
        _new_entry(client, prefix, "#mix", entry)
    assert _history(a, "/history #old") == OLD
    assert _history(a, "/history #new") == NEW
    assert _history(a, "/history #mix") == OLD + NEW
    assert _history(a, "/history #mix 3") == OLD[1:] + NEW


def test_history_after_an_id_of_either_layout(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#mix")
    for entry in OLD:
        _old_entry(client, prefix, "#mix", entry)
    for entry in NEW:
        _new_entry(client, prefix, "#mix", entry)
    a.send("said here")  # written by this worker: the one-field layout
    mine = (f"{a.cid}/{a.seq - 1}", "alice", "said here", 10.0, "message")
    assert _history(a, f"/history #mix after {OLD[0][0]}") == [OLD[1], *NEW, mine]
    assert _history(a, f"/history #mix after {OLD[1][0]}") == [*NEW, mine]
    assert _history(a, f"/history #mix after {NEW[0][0]}") == [NEW[1], mine]
    assert _history(a, f"/history #mix after {NEW[1][0]}") == [mine]
    assert _history(a, f"/history #mix after {mine[0]}") == []
    assert [e.code for e in _infos(a, f"/history #mix after {mine[0]}")] == ["history"]
    gap = _infos(a, f"/history #mix after {GW_B}:8/99")  # not kept: all that is, and a gap
    assert [e.code for e in gap] == ["history", "history_gap"]
    assert _history(a, f"/history #mix after {GW_B}:8/99") == [*OLD, *NEW, mine]


def test_an_entry_of_neither_shape_loses_nothing_else(chat: Chat, client: redis.Redis, prefix: str) -> None:
    """A damaged one-field entry (fewer parts) shows what it has; the entries around it are whole."""
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    _old_entry(client, prefix, "#r", OLD[0])
    client.xadd(f"{prefix}room:#r:history", {scripts.HISTORY_FIELD: f"{GW_B}:9/1"})  # its id alone
    _new_entry(client, prefix, "#r", NEW[0])
    assert _history(a, "/history") == [OLD[0], (f"{GW_B}:9/1", "", "", 0.0, "message"), NEW[0]]
    assert _history(a, f"/history after {GW_B}:9/1") == [NEW[0]]
