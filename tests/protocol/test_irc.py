"""Conformance of the IRC dialect (protocol.irc, irc_render, irc_wire), on the pure state machine.

Every client line is fed as bytes; what goes to the chat (`ToChat`) and what
is written back at once (`Reply`) is checked, and chat deliveries are
rendered as the gateway would. Feeding whole or byte by byte gives the same
actions (once consecutive chat lines are merged).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.irc import Action, IrcConnection, IrcSettings, Reply, ToChat
from protocol.irc_wire import IrcLineBuffer, IrcMessage, IrcProblem, line, parse
from protocol.messages import ChatEvent, EventType
from protocol.replies import ReplyCode as R

ME = "gw.1:1"
OTHER = "gw.1:2"
FAST = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def new(motd: tuple[str, ...] = ("be nice",)) -> IrcConnection:
    return IrcConnection(IrcSettings("irc.test", motd=motd))


def info(code: R, *args: str, text: str = "x") -> ChatEvent:
    return ChatEvent(EventType.INFO, text, code=code, args=args)


def error(code: R, *args: str, text: str = "x") -> ChatEvent:
    return ChatEvent(EventType.ERROR, text, code=code, args=args)


def replies(actions: list[Action]) -> list[str]:
    return [ln for a in actions if isinstance(a, Reply) for ln in a.data.decode().split("\r\n") if ln]


def chat_lines(actions: list[Action]) -> list[str]:
    return [ln for a in actions if isinstance(a, ToChat) for ln in a.lines]


def shown(conn: IrcConnection, event: ChatEvent, cid: str = ME) -> list[str]:
    return [ln for ln in conn.render(event, cid).decode().split("\r\n") if ln]


def registered(nick: str = "alice", caps: str = "") -> IrcConnection:
    conn = new()
    if caps:
        conn.feed(f"CAP LS 302\r\nCAP REQ :{caps}\r\nCAP END\r\n".encode())
    conn.feed(f"NICK {nick}\r\nUSER {nick} 0 * :Real Name\r\n".encode())
    conn.render(info(R.NICK_SET, nick), ME)
    return conn


def joined(room: str = "#a", caps: str = "") -> IrcConnection:
    conn = registered(caps=caps)
    conn.feed(f"JOIN {room}\r\n".encode())
    conn.render(info(R.JOINED, room, "", "alice"), ME)
    return conn


# --- the wire -------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "msg"), [
    (b"PRIVMSG #a :hello there", IrcMessage("PRIVMSG", ("#a", "hello there"))),
    (b"privmsg #a hi", IrcMessage("PRIVMSG", ("#a", "hi"))),
    (b":alice!a@h JOIN #a,#b", IrcMessage("JOIN", ("#a,#b",))),
    (b"@time=x;+y :p TOPIC #a :", IrcMessage("TOPIC", ("#a", ""), "time=x;+y")),
    (b"  NICK   bob  ", IrcMessage("NICK", ("bob",))),
    (b"CMD " + b" ".join(b"p%d" % i for i in range(20)), IrcMessage(
        "CMD", (*(f"p{i}" for i in range(14)), " ".join(f"p{i}" for i in range(14, 20))))),
])
def test_parse(raw: bytes, msg: IrcMessage) -> None:
    assert parse(raw) == msg


def test_parse_blank_and_bad() -> None:
    assert parse(b"") is None and parse(b"   ") is None and parse(b":prefix") is None
    assert parse(b"PRIVMSG #a :\xff\xfe") is IrcProblem.INVALID_UTF8


def test_line_buffer_splits_on_cr_lf_and_crlf_and_caps_lines() -> None:
    buf = IrcLineBuffer(10)
    assert buf.feed(b"a\r\nb\nc\rd") == [b"a", b"b", b"c"]
    assert buf.feed(b"\n") == [b"d"]
    assert buf.feed(b"x" * 11) == [IrcProblem.TOO_LONG]
    assert buf.feed(b"y" * 10_000) == []  # the rest of that line: dropped, not held
    assert buf.feed(b"\r\nok\r\n") == [b"ok"]
    assert buf.feed(b"x" * 10 + b"\n") == [b"x" * 10]


def test_outgoing_lines_cannot_be_split_or_forged() -> None:
    out = line("srv", "PRIVMSG", "#a b\r\n", "hi\r\nQUIT :x\x00\x1b[2J\u202e")
    assert out == b":srv PRIVMSG #ab :hiQUIT :x[2J\r\n"
    assert line("srv", "NOTICE", ":x", "") == b":srv NOTICE x :\r\n"
    long = line("srv", "PRIVMSG", "#a", "é" * 600)
    assert len(long) <= 512 and long.endswith(b"\r\n") and long[:-2].decode()


# --- registration -------------------------------------------------------------------


def test_registration_with_cap_negotiation() -> None:
    conn = new()
    acts = conn.feed(b"CAP LS 302\r\nNICK alice\r\nUSER alice 0 * :Alice A\r\n")
    assert replies(acts) == [":irc.test CAP * LS :server-time message-tags echo-message"]
    assert chat_lines(acts) == []  # CAP not ended yet
    acts = conn.feed(b"CAP REQ :server-time echo-message\r\nCAP REQ :multi-prefix\r\nCAP END\r\n")
    assert replies(acts) == [":irc.test CAP * ACK :server-time echo-message", ":irc.test CAP * NAK :multi-prefix"]
    assert chat_lines(acts) == ["/nick alice"]
    assert conn.caps == {"server-time", "echo-message"}
    burst = shown(conn, info(R.NICK_SET, "alice"))
    assert [ln.split()[1] for ln in burst] == ["001", "002", "003", "004", "005", "375", "372", "376"]
    assert burst[3] == ":irc.test 004 alice irc.test chat-1 i :n"
    for token in ("CHANTYPES=#", "NICKLEN=32", "CHANNELLEN=65", "CASEMAPPING=ascii", "CHANLIMIT=#:50"):
        assert token in burst[4].split()
    assert conn.registered and conn.nick == "alice"
    assert replies(conn.feed(b"CAP LIST\r\n")) == [":irc.test CAP alice LIST :echo-message server-time"]


def test_registration_without_cap_and_no_motd() -> None:
    conn = new(motd=())
    assert chat_lines(conn.feed(b"USER a 0 * :A\r\nNICK alice\r\n")) == ["/nick alice"]
    assert shown(conn, info(R.NICK_SET, "alice"))[-1] == ":irc.test 422 alice :MOTD File is missing"


def test_a_taken_nick_gets_433_and_the_client_tries_again() -> None:
    conn = new()
    conn.feed(b"NICK alice\r\nUSER a 0 * :A\r\n")
    assert shown(conn, error(R.NICK_TAKEN, "alice")) == [":irc.test 433 * alice :Nickname is already in use"]
    assert not conn.registered
    assert chat_lines(conn.feed(b"NICK alice2\r\n")) == ["/nick alice2"]
    assert shown(conn, info(R.NICK_SET, "alice2"))[0].startswith(":irc.test 001 alice2 ")


def test_the_greeting_of_the_chat_is_not_shown_before_registration() -> None:
    assert shown(new(), info(R.WELCOME, "guest-1")) == []


@pytest.mark.parametrize(("raw", "expected"), [
    (b"NICK\r\n", ":irc.test 431 * :No nickname given"),
    (b"NICK 9lives\r\n", ":irc.test 432 * 9lives :Erroneous nickname"),
    (b"NICK a[b]\r\n", ":irc.test 432 * a[b] :Erroneous nickname"),
    (b"NICK " + b"a" * 33 + b"\r\n", f":irc.test 432 * {'a' * 33} :Erroneous nickname"),
    (b"USER a\r\n", ":irc.test 461 * USER :Not enough parameters"),
    (b"JOIN #a\r\n", ":irc.test 451 * :You have not registered"),
    (b"PRIVMSG #a :hi\r\n", ":irc.test 451 * :You have not registered"),
    (b"FROB\r\n", ":irc.test 421 * FROB :Unknown command"),
    (b"CAP FROB\r\n", ":irc.test 410 * FROB :Invalid CAP command"),
    (b"PING\r\n", ":irc.test 409 * :No origin specified"),
])
def test_local_errors_before_registration(raw: bytes, expected: str) -> None:
    conn = new()
    acts = conn.feed(raw)
    assert replies(acts) == [expected] and chat_lines(acts) == []


def test_user_after_registration_is_462() -> None:
    conn = registered()
    assert replies(conn.feed(b"USER a 0 * :A\r\n")) == [":irc.test 462 alice :You may not reregister"]


# --- PING / PONG, in order -------------------------------------------------------


def test_ping_before_anything_is_answered_at_once() -> None:
    assert replies(new().feed(b"PING :tok\r\n")) == [":irc.test PONG irc.test :tok"]


def test_ping_after_chat_lines_goes_through_the_chat_in_order() -> None:
    conn = joined()
    acts = conn.feed(b"PRIVMSG #a :one\r\nPING :t1\r\nPING t2\r\n")
    assert acts == [ToChat(("/msg #a one", "/ping", "/ping"))]
    assert shown(conn, info(R.PONG)) == [":irc.test PONG irc.test :t1"]
    assert shown(conn, info(R.PONG)) == [":irc.test PONG irc.test :t2"]
    assert conn.feed(b"PONG :irc.test\r\n") == []
    assert conn.ping("abc") == b"PING :abc\r\n"


# --- channels ------------------------------------------------------------------------


def test_join_several_and_the_join_reply() -> None:
    conn = registered()
    acts = conn.feed(b"JOIN #a,#B,bad\r\n")
    assert chat_lines(acts) == ["/join #a", "/join #B"]
    assert replies(acts) == [":irc.test 403 alice bad :No such channel"]
    names = tuple(f"n{i}" for i in range(25))
    assert shown(conn, info(R.JOINED, "#b", "the topic", "alice", *names)) == [
        ":alice!alice@irc.test JOIN :#b",
        ":irc.test 332 alice #b :the topic",
        ":irc.test 353 alice = #b :" + " ".join(("alice", *names[:19])),
        ":irc.test 353 alice = #b :" + " ".join(names[19:]),
        ":irc.test 366 alice #b :End of /NAMES list",
    ]
    assert shown(conn, info(R.JOIN_TOPIC, "#b", "the topic")) == []
    assert "#b" in conn.channels


def test_join_refused_too_many_rooms() -> None:
    conn = registered()
    conn.feed(b"JOIN #z\r\n")
    assert shown(conn, error(R.TOO_MANY_ROOMS, "50", "#z")) == [
        ":irc.test 405 alice #z :You have joined too many channels"]
    assert "#z" not in conn.joining


def test_part_and_others_joining_parting_quitting() -> None:
    conn = joined()
    assert chat_lines(conn.feed(b"PART #a :see you\r\n")) == ["/part #a"]
    assert shown(conn, info(R.PARTED, "#a", "")) == [":alice!alice@irc.test PART :#a"]
    assert "#a" not in conn.channels
    assert shown(conn, ChatEvent(EventType.JOIN, "bob joined #a", room="#a", sender="bob")) == [
        ":bob!bob@irc.test JOIN :#a"]
    assert shown(conn, ChatEvent(EventType.PART, "bob left #a", room="#a", sender="bob")) == [
        ":bob!bob@irc.test PART :#a"]
    assert shown(conn, ChatEvent(EventType.QUIT, "bob quit (zzz)", sender="bob", code=R.QUIT, args=("zzz",))) == [
        ":bob!bob@irc.test QUIT :Quit: zzz"]
    assert shown(conn, ChatEvent(EventType.NICK, "bob is now known as rob", sender="bob", to="rob")) == [
        ":bob!bob@irc.test NICK :rob"]
    assert replies(conn.feed(b"PART\r\n")) == [":irc.test 461 alice PART :Not enough parameters"]
    assert chat_lines(conn.feed(b"JOIN 0\r\n")) == []


def test_join_then_message_in_the_same_read_is_not_refused() -> None:
    conn = registered()
    assert conn.feed(b"JOIN #new\r\nPRIVMSG #new :first\r\n") == [ToChat(("/join #new", "/msg #new first"))]


def test_not_in_room_and_no_such_nick() -> None:
    conn = joined()
    assert replies(conn.feed(b"PRIVMSG #elsewhere :hi\r\n")) == [":irc.test 404 alice #elsewhere :Cannot send to channel"]
    assert shown(conn, error(R.NOT_IN_ROOM, "#x")) == [":irc.test 442 alice #x :You're not on that channel"]
    assert shown(conn, error(R.NO_SUCH_NICK, "carol")) == [":irc.test 401 alice carol :No such nick/channel"]
    assert replies(conn.feed(b"PRIVMSG bad[nick] :hi\r\n")) == [":irc.test 401 alice bad[nick] :No such nick/channel"]
    assert replies(conn.feed(b"NOTICE bad[nick] :hi\r\n")) == []  # NOTICE is never answered with an error


# --- messages ------------------------------------------------------------------------


def test_privmsg_notice_and_actions_to_the_chat() -> None:
    conn = joined()
    acts = conn.feed(b"PRIVMSG #a,bob :hi \x1b[31mall\r\nNOTICE #a :note\r\n"
                     b"PRIVMSG #a :\x01ACTION waves\x01\r\nPRIVMSG bob :\x01ACTION winks\x01\r\n"
                     b"PRIVMSG bob :\x01VERSION\x01\r\nPRIVMSG #a :/json\r\nPRIVMSG #a :\x07\r\n")
    assert chat_lines(acts) == ["/msg #a hi [31mall", "/msg bob hi [31mall", "/msg #a note", "/action #a waves",
                                "/msg bob * winks", "/msg #a /json"]
    assert replies(conn.feed(b"PRIVMSG\r\nPRIVMSG #a\r\n")) == [
        ":irc.test 411 alice :No recipient given (PRIVMSG)", ":irc.test 412 alice :No text to send"]


def test_messages_are_rendered_natively() -> None:
    conn = joined()
    msg = ChatEvent(EventType.MESSAGE, "hi", room="#a", sender="bob", id="g:2/5", ts=1.5, origin=OTHER)
    assert shown(conn, msg) == [":bob!bob@irc.test PRIVMSG #a :hi"]
    act = ChatEvent(EventType.ACTION, "waves", room="#a", sender="bob", origin=OTHER)
    assert shown(conn, act) == [":bob!bob@irc.test PRIVMSG #a :\x01ACTION waves\x01"]
    priv = ChatEvent(EventType.PRIVATE, "psst", sender="bob", to="alice", origin=OTHER)
    assert shown(conn, priv) == [":bob!bob@irc.test PRIVMSG alice :psst"]
    old = ChatEvent(EventType.HISTORY, "earlier", room="#a", sender="bob", of="action", ts=2.0)
    assert shown(conn, old) == [":bob!bob@irc.test PRIVMSG #a :\x01ACTION earlier\x01"]
    topic = ChatEvent(EventType.TOPIC, "bob set the topic of #a: t", room="#a", sender="bob",
                      code=R.TOPIC_SET, args=("#a", "t"))
    assert shown(conn, topic) == [":bob!bob@irc.test TOPIC #a :t"]


def test_own_messages_come_back_only_with_echo_message_and_tags_with_caps() -> None:
    mine = ChatEvent(EventType.MESSAGE, "hi", room="#a", sender="alice", id="g:1/3", ts=1.25, origin=ME)
    assert shown(joined(), mine) == []
    conn = joined(caps="echo-message server-time message-tags")
    assert shown(conn, mine) == ["@time=1970-01-01T00:00:01.250Z;msgid=g:1/3 :alice!alice@irc.test PRIVMSG #a :hi"]


def test_a_reply_missing_its_args_is_shown_as_its_text() -> None:
    conn = joined()
    assert shown(conn, info(R.JOINED, "#a", text="you joined")) == [":irc.test NOTICE alice :you joined"]
    assert shown(conn, info(R.TOPIC_IS, "#a", text="topic")) == [":irc.test NOTICE alice :topic"]


def test_info_without_a_code_is_a_notice() -> None:
    conn = joined()
    assert shown(conn, ChatEvent(EventType.INFO, "some text")) == [":irc.test NOTICE alice :some text"]
    assert shown(conn, ChatEvent(EventType.ERROR, "internal error", code="from_the_future")) == [
        ":irc.test NOTICE alice :internal error"]


# --- queries -------------------------------------------------------------------------


def test_who_and_names_share_the_chat_reply_but_render_their_own() -> None:
    conn = joined()
    assert chat_lines(conn.feed(b"WHO #a\r\nNAMES #A\r\nNAMES\r\n")) == ["/who #a", "/who #A", "/who"]
    assert shown(conn, info(R.MEMBERS, "#a", "alice", "bob")) == [
        ":irc.test 352 alice #a alice irc.test irc.test alice H :0 alice",
        ":irc.test 352 alice #a bob irc.test irc.test bob H :0 bob",
        ":irc.test 315 alice #a :End of /WHO list",
    ]
    assert shown(conn, info(R.MEMBERS, "#a", "alice")) == [
        ":irc.test 353 alice = #a :alice", ":irc.test 366 alice #a :End of /NAMES list"]
    assert shown(conn, info(R.MEMBERS, "#b")) == [":irc.test 366 alice #b :End of /NAMES list"]
    assert replies(conn.feed(b"WHO bob\r\n")) == [":irc.test 315 alice bob :End of /WHO list"]


def test_list_and_topic() -> None:
    conn = joined()
    assert chat_lines(conn.feed(b"LIST\r\n")) == ["/rooms"]
    assert shown(conn, info(R.ROOMS, "3", "#a", "2", "#b", "1")) == [
        ":irc.test 321 alice Channel :Users  Name", ":irc.test 322 alice #a 2 :", ":irc.test 322 alice #b 1 :",
        ":irc.test NOTICE alice :... and 3 more rooms", ":irc.test 323 alice :End of /LIST"]
    acts = conn.feed(b"TOPIC #a\r\nTOPIC #a :new \x02topic\r\nTOPIC #a :\r\nTOPIC\r\nTOPIC nohash\r\n")
    assert chat_lines(acts) == ["/topic #a", "/topic #a new topic"]
    assert replies(acts) == [":irc.test NOTICE alice :clearing a topic is not supported",
                             ":irc.test 461 alice TOPIC :Not enough parameters",
                             ":irc.test 403 alice nohash :No such channel"]
    assert shown(conn, info(R.TOPIC_IS, "#a", "t", "bob", "1700000000.5")) == [
        ":irc.test 332 alice #a :t", ":irc.test 333 alice #a bob!bob@irc.test :1700000000"]
    assert shown(conn, info(R.TOPIC_IS, "#a", "", "", "0.0")) == [":irc.test 331 alice #a :No topic is set"]


def test_motd_away_mode() -> None:
    conn = joined()
    assert [ln.split()[1] for ln in replies(conn.feed(b"MOTD\r\n"))] == ["375", "372", "376"]
    assert replies(conn.feed(b"AWAY :lunch\r\nAWAY\r\n")) == [
        ":irc.test 306 alice :You have been marked as being away",
        ":irc.test 305 alice :You are no longer marked as being away"]
    assert replies(conn.feed(b"MODE #a\r\nMODE #a b\r\nMODE #a +o bob\r\nMODE alice\r\nMODE bob\r\n")) == [
        ":irc.test 324 alice #a :+n", ":irc.test 368 alice #a :End of channel ban list",
        ":irc.test 482 alice #a :Channel modes cannot be changed here", ":irc.test 221 alice :+i",
        ":irc.test 502 alice :Cannot change mode for other users"]


def test_chathistory_maps_to_history() -> None:
    conn = joined()
    acts = conn.feed(b"CHATHISTORY LATEST #a * 50\r\nCHATHISTORY AFTER #a msgid=gw.x:1/7 100\r\n"
                     b"CHATHISTORY LATEST #a msgid=gw.x:1/7 10\r\n")
    assert chat_lines(acts) == ["/history #a 50", "/history #a after gw.x:1/7", "/history #a after gw.x:1/7"]
    bad = conn.feed(b"CHATHISTORY BEFORE #a * 5\r\nCHATHISTORY LATEST #a * 500\r\n"
                    b"CHATHISTORY AFTER #a timestamp=2020 5\r\nCHATHISTORY LATEST nohash * 5\r\n")
    assert [ln.split()[1:5] for ln in replies(bad)] == [["FAIL", "CHATHISTORY", "INVALID_PARAMS", "BEFORE"],
                                                       ["FAIL", "CHATHISTORY", "INVALID_PARAMS", "LATEST"],
                                                       ["FAIL", "CHATHISTORY", "INVALID_PARAMS", "AFTER"],
                                                       ["FAIL", "CHATHISTORY", "INVALID_PARAMS", "LATEST"]]
    assert shown(conn, info(R.HISTORY, "#a", "2")) == []
    assert shown(conn, info(R.HISTORY_GAP, "#a", "gw.x:1/7", text="gap!")) == [":irc.test NOTICE alice :gap!"]


def test_nick_change_session_lost_quit() -> None:
    conn = joined()
    assert chat_lines(conn.feed(b"NICK bob\r\n")) == ["/nick bob"]
    assert shown(conn, info(R.NICK_SET, "bob")) == [":alice!alice@irc.test NICK :bob"]
    assert conn.nick == "bob"
    assert shown(conn, error(R.NICK_TAKEN, "carol")) == [":irc.test 433 bob carol :Nickname is already in use"]
    lost = shown(conn, info(R.SESSION_LOST, "guest-9", text="lost"))
    assert lost == [":bob!bob@irc.test PART #a :session lost", ":bob!bob@irc.test NICK :guest-9",
                    ":irc.test NOTICE guest-9 :lost"]
    assert chat_lines(conn.feed(b"QUIT :bye \x1b all\r\n")) == ["/quit bye  all"]
    assert shown(conn, info(R.BYE)) == ["ERROR :Closing Link: bye"]
    assert chat_lines(new().feed(b"QUIT\r\n")) == ["/quit"]


@pytest.mark.parametrize(("code", "args", "numeric"), [
    (R.UNKNOWN_COMMAND, ("frob",), "421"), (R.USAGE, ("join",), "461"), (R.BAD_NICK, ("x!",), "432"),
    (R.BAD_ROOM, ("nohash",), "403"), (R.LINE_TOO_LONG, ("4096",), "417"),
])
def test_chat_errors_become_numerics(code: R, args: tuple[str, ...], numeric: str) -> None:
    [out] = shown(joined(), error(code, *args))
    assert out.split()[1] == numeric


# --- limits ------------------------------------------------------------------------


def test_line_limits() -> None:
    conn = joined()
    assert replies(conn.feed(b"PRIVMSG #a :" + b"x" * 600 + b"\r\n")) == [
        ":irc.test 417 alice :Input line was too long"]
    assert chat_lines(conn.feed(b"PRIVMSG #a :" + b"x" * 490 + b"\r\n")) == ["/msg #a " + "x" * 490]
    tags = b"@+x=" + b"y" * 2000 + b" "
    assert replies(conn.feed(tags + b"PRIVMSG #a :hi\r\n")) == [":irc.test 417 alice :Input line was too long"]
    tagged = joined(caps="message-tags")
    assert chat_lines(tagged.feed(tags + b"PRIVMSG #a :hi\r\n")) == ["/msg #a hi"]
    assert replies(tagged.feed(b"@+x=" + b"y" * 9000 + b" PRIVMSG #a :hi\r\n")) == [
        ":irc.test 417 alice :Input line was too long"]
    assert replies(tagged.feed(b"PRIVMSG #a :" + b"x" * 600 + b"\r\n")) == [  # tags allowed, not a longer body
        ":irc.test 417 alice :Input line was too long"]
    assert chat_lines(tagged.feed(b"@" + b"t" * 8189 + b" PRIVMSG #a :" + b"x" * 498 + b"\r\n")) == [
        "/msg #a " + "x" * 498]


def test_invalid_utf8_is_answered_and_the_connection_goes_on() -> None:
    conn = joined()
    acts = conn.feed(b"PRIVMSG #a :\xc3\x28\r\nPRIVMSG #a :ok\r\n")
    assert replies(acts) == [":irc.test NOTICE alice :invalid UTF-8: line dropped"]
    assert chat_lines(acts) == ["/msg #a ok"]


def test_lines_seen_counts_every_line_for_flood_control() -> None:
    conn = new()
    conn.feed(b"PING a\r\n\r\nPING b\r\nFROB\r\n" + b"x" * 600 + b"\n")
    assert conn.lines_seen == 4  # blank lines are not lines; the too long one is


# --- whole or byte by byte; fuzz --------------------------------------------------------

SESSION = (b"CAP LS 302\r\nNICK alice\r\nUSER a 0 * :A\r\nCAP REQ :echo-message\r\nCAP END\r\n"
           b"PING :x\r\nJOIN #a,#b\nPRIVMSG #a :h\xc3\xa9llo\r\nPRIVMSG #a :\x01ACTION w\x01\r\n"
           b"WHO #a\r\nNAMES #b\rLIST\r\nTOPIC #a :t\r\nCHATHISTORY LATEST #a * 5\r\n"
           b"PRIVMSG #a :" + b"x" * 700 + b"\r\nAWAY\r\nFROB\r\nQUIT :bye\r\n")


def _feed_all(conn: IrcConnection, chunks: list[bytes]) -> list[Action]:
    acts: list[Action] = []
    for chunk in chunks:
        acts.extend(conn.feed(chunk))
    return acts


def _flat(actions: list[Action]) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for a in actions:
        out.extend(("chat", ln) for ln in a.lines) if isinstance(a, ToChat) else out.append(("reply", a.data))
    return out


def test_feeding_whole_or_byte_by_byte_gives_the_same_actions() -> None:
    whole = _flat(registered().feed(SESSION))
    assert whole == _flat(_feed_all(registered(), [SESSION[i:i + 1] for i in range(len(SESSION))]))
    assert ("chat", "/msg #a héllo") in whole


@FAST
@given(st.lists(st.integers(min_value=1, max_value=len(SESSION)), max_size=12))
def test_property_any_split_gives_the_same_actions(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [SESSION[a:b] for a, b in zip([0, *points], [*points, len(SESSION)], strict=True)]
    assert _flat(_feed_all(registered(), chunks)) == _flat(registered().feed(SESSION))


irc_words = st.sampled_from(["CAP", "LS", "REQ", "END", "NICK", "USER", "JOIN", "PART", "PRIVMSG", "NOTICE",
                             "PING", "PONG", "WHO", "NAMES", "LIST", "TOPIC", "MODE", "AWAY", "MOTD", "QUIT",
                             "CHATHISTORY", "LATEST", "AFTER", "*", "#a", ":", "\x01ACTION", "msgid=a:1/2", "0"])
irc_lines = st.lists(st.one_of(irc_words, st.text(max_size=8)), max_size=8).map(" ".join)


@FAST
@given(st.lists(st.one_of(irc_lines.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=40)),
                max_size=12))
def test_property_no_input_crashes_and_every_output_is_clean(raw_lines: list[bytes]) -> None:
    conn = new()
    for raw in raw_lines:
        for action in conn.feed(raw + b"\r\n"):
            if isinstance(action, Reply):
                body = action.data[:-2]
                assert action.data.endswith(b"\r\n") and b"\r" not in body and b"\n" not in body
                assert len(action.data) <= 512 or body.startswith(b"@")
            else:
                assert all("\n" not in ln and "\r" not in ln for ln in action.lines)
    for code in R:
        conn.render(ChatEvent(EventType.INFO, "t\r\nx", code=code, args=("#a\r\n", "b c", "", "1")), ME)


@FAST
@given(st.sampled_from(list(R)), st.lists(st.text(max_size=10), max_size=5), st.sampled_from(list(EventType)),
       st.text(max_size=20))
def test_property_rendering_any_event_is_safe(code: R, args: list[str], kind: EventType, text: str) -> None:
    for conn in (new(), joined(caps="echo-message server-time message-tags")):
        out = conn.render(ChatEvent(kind, text, room="#a", sender=text[:5], to=text[:3], id=text, ts=1.0,
                                    code=code, args=tuple(args)), ME)
        for ln in out.split(b"\r\n")[:-1]:
            assert b"\n" not in ln and b"\r" not in ln and b"\x00" not in ln and b"\x1b" not in ln
