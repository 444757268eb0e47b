"""Which reply a `ChatEvent` is: a fixed set of codes, with the shape of their args.

The text of an info or error line is the line protocol's contract and stays
as it is; `ChatEvent.code` says which reply it is, and `ChatEvent.args`
carries its data, so another dialect (IRC) can render it natively without
parsing English. An event with no code (`""`) is free text. A code this
version does not know (a newer worker) is rendered as free text too.

Args per code (all str; counts in decimal):

    WELCOME          nick
    NICK_SET         nick
    NICK_TAKEN       nick
    JOINED           room, topic ('' if none), member nick, ...
    JOIN_TOPIC       room, topic  (the line after JOINED when the room has a topic)
    PARTED           room, new current room ('' if none)
    NOT_IN_ROOM      room
    NO_ROOM          -            (no current room, none named)
    NO_SUCH_NICK     nick
    TOO_MANY_ROOMS   max, the room refused
    MEMBERS          room, member nick, ...   (none: the room is empty)
    ROOMS            how many more, room, count, room, count, ...
    HISTORY          room, count[, after id]
    HISTORY_GAP      room, after id
    TOPIC_IS         room, topic ('' if none), set by, set at (float seconds)
    TOPIC_SET        room, topic  (on the TOPIC event its members get)
    QUIT             reason       (on QUIT events)
    PONG, BYE, JSON_ON, HELP      -
    LINE_TOO_LONG, TOO_MANY_LINES   max
    UNKNOWN_COMMAND  command name (as shown)
    USAGE            command name
    BAD_NICK         the refused name (raw)
    BAD_ROOM         the refused name (raw)
    BAD_ARGUMENT     command name
    SESSION_LOST     new nick
    GATEWAY_GONE, UNAVAILABLE, INTERNAL_ERROR   -
"""

from __future__ import annotations

import enum


class ReplyCode(enum.StrEnum):
    WELCOME = "welcome"
    NICK_SET = "nick_set"
    NICK_TAKEN = "nick_taken"
    JOINED = "joined"
    JOIN_TOPIC = "join_topic"
    PARTED = "parted"
    NOT_IN_ROOM = "not_in_room"
    NO_ROOM = "no_room"
    NO_SUCH_NICK = "no_such_nick"
    TOO_MANY_ROOMS = "too_many_rooms"
    MEMBERS = "members"
    ROOMS = "rooms"
    HISTORY = "history"
    HISTORY_GAP = "history_gap"
    TOPIC_IS = "topic_is"
    TOPIC_SET = "topic_set"
    QUIT = "quit"
    PONG = "pong"
    BYE = "bye"
    JSON_ON = "json_on"
    HELP = "help"
    LINE_TOO_LONG = "line_too_long"
    TOO_MANY_LINES = "too_many_lines"
    UNKNOWN_COMMAND = "unknown_command"
    USAGE = "usage"
    BAD_NICK = "bad_nick"
    BAD_ROOM = "bad_room"
    BAD_ARGUMENT = "bad_argument"
    SESSION_LOST = "session_lost"
    GATEWAY_GONE = "gateway_gone"
    UNAVAILABLE = "unavailable"
    INTERNAL_ERROR = "internal_error"


def reply_code(code: str) -> ReplyCode | None:
    """The known code `code` names, or None (free text, or a code from a newer version)."""
    try:
        return ReplyCode(code)
    except ValueError:
        return None
