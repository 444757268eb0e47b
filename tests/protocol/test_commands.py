"""Tests for protocol.commands: a client's text line -> a Command value."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.commands import (
    HELP_LINES,
    HISTORY_DEFAULT,
    HISTORY_MAX,
    Help,
    History,
    Join,
    Json,
    Me,
    Msg,
    Nick,
    Part,
    Ping,
    Quit,
    Rooms,
    Say,
    Who,
    check_nick,
    check_room,
    clean_text,
    parse_line,
    quoted,
    shown,
)
from protocol.errors import CommandError, ProtocolError

FAST = settings(max_examples=200, deadline=None, database=None)

COMMAND_NAMES = [
    "nick", "join", "part", "msg", "me", "who", "rooms", "history", "ping", "json", "quit", "help"
]
NICK_SPEC = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
ROOM_SPEC = re.compile(r"#[a-z0-9_.-]{1,64}")  # canonical: lower case
# the list of characters no client may show another, written out independently of UNSAFE
UNSAFE_RANGES = [
    (0x00, 0x08), (0x0A, 0x1F), (0x7F, 0x9F),  # C0 but TAB, DEL, C1
    (0x2028, 0x2029),  # line and paragraph separators
    (0x202A, 0x202E), (0x2066, 0x2069), (0x200E, 0x200F), (0x061C, 0x061C),  # bidi
    (0x200B, 0x200B), (0x2060, 0x2064), (0xFEFF, 0xFEFF),  # zero-width, invisible
    (0x206A, 0x206F), (0xFFF9, 0xFFFB),  # deprecated format controls, annotation
    (0xD800, 0xDFFF),  # lone surrogates
]
UNSAFE_CHARS = [chr(c) for lo, hi in UNSAFE_RANGES for c in range(lo, hi + 1)]
CONTROL = re.compile("[" + "".join(re.escape(c) for c in UNSAFE_CHARS) + "]")
# what the issue names, one by one: each must go
ATTACKS = {
    "CSI (8-bit)": "\x9b",
    "NEL": "\x85",
    "OSC (8-bit)": "\x9d",
    "ESC": "\x1b",
    "CR": "\r",
    "LINE SEPARATOR": "\u2028",
    "PARAGRAPH SEPARATOR": "\u2029",
    "RLO": "\u202e",
    "LRE": "\u202a",
    "RLI": "\u2067",
    "PDI": "\u2069",
    "LRM": "\u200e",
    "RLM": "\u200f",
    "ALM": "\u061c",
    "ZWSP": "\u200b",
    "WORD JOINER": "\u2060",
    "BOM": "\ufeff",
}


def error_of(line: str) -> str:
    with pytest.raises(CommandError) as info:
        parse_line(line)
    return str(info.value)


def nick_error(name: str) -> str:
    return f"invalid nickname {name!r}: 1-32 letters, digits, _ or -, starting with a letter"


def room_error(name: str) -> str:
    return f"invalid room name {name!r}: # then 1-64 letters, digits, _, - or ."


# --- every command -------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/nick bob", Nick("bob")),
        ("/nick Bob_2-x", Nick("Bob_2-x")),
        ("/join #chat", Join("#chat")),
        ("/part", Part(None)),
        ("/part #chat", Part("#chat")),
        ("/msg bob hello there", Msg("bob", "hello there")),
        ("/msg #chat hello there", Msg("#chat", "hello there")),
        ("/me waves", Me("waves")),
        ("/who", Who(None)),
        ("/who #chat", Who("#chat")),
        ("/rooms", Rooms()),
        ("/history", History(None, HISTORY_DEFAULT)),
        ("/history #chat", History("#chat", 20)),
        ("/history 5", History(None, 5)),
        ("/history #chat 7", History("#chat", 7)),
        ("/ping", Ping()),
        ("/json", Json()),
        ("/quit", Quit("")),
        ("/quit see you later", Quit("see you later")),
        ("/help", Help()),
        ("hello everyone", Say("hello everyone")),
    ],
)
def test_every_command(line: str, command: object) -> None:
    assert parse_line(line) == command


def test_history_default_is_20() -> None:
    assert HISTORY_DEFAULT == 20
    assert HISTORY_MAX == 100


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_help_lists_every_command(name: str) -> None:
    assert any(line.startswith(f"/{name} ") for line in HELP_LINES)


# --- names are case-insensitive ----------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/NICK bob", Nick("bob")),
        ("/Join #chat", Join("#chat")),
        ("/PART", Part(None)),
        ("/mSg bob hi", Msg("bob", "hi")),
        ("/ME waves", Me("waves")),
        ("/WHO", Who(None)),
        ("/Rooms", Rooms()),
        ("/HISTORY 3", History(None, 3)),
        ("/PING", Ping()),
        ("/JSON", Json()),
        ("/QUIT bye", Quit("bye")),
        ("/HeLp", Help()),
    ],
)
def test_command_names_are_case_insensitive(line: str, command: object) -> None:
    assert parse_line(line) == command


def test_usage_error_of_an_upper_case_command_names_it_in_lower_case() -> None:
    assert error_of("/PING now") == "usage: /ping"


# --- rooms: validated and canonicalised ----------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/join #Chat", Join("#chat")),
        ("/join #CHAT.Dev-1_x", Join("#chat.dev-1_x")),
        ("/part #Chat", Part("#chat")),
        ("/who #ChAt", Who("#chat")),
        ("/history #Chat 2", History("#chat", 2)),
        ("/msg #Chat Hi There", Msg("#chat", "Hi There")),
    ],
)
def test_room_names_are_lower_cased(line: str, command: object) -> None:
    assert parse_line(line) == command


@pytest.mark.parametrize(
    "room", ["#a", "#9", "#_", "#-", "#.", "#a.b-c_d9", "#" + "x" * 64, "#" + "X" * 64]
)
def test_valid_rooms(room: str) -> None:
    assert check_room(room) == room.lower()
    assert parse_line(f"/join {room}") == Join(room.lower())


@pytest.mark.parametrize(
    "room",
    ["#", "chat", "##", "##chat", "#" + "x" * 65, "#a!", "#a,b", "#a/b", "#é", "#chat\x00", "#\u212a"],
)
def test_invalid_rooms(room: str) -> None:
    with pytest.raises(CommandError) as info:
        check_room(room)
    assert str(info.value) == room_error(room)
    assert error_of(f"/join {room}") == room_error(room)


@pytest.mark.parametrize("line", ["/part chat", "/who chat", "/history #", "/msg # hi"])
def test_invalid_room_in_other_commands(line: str) -> None:
    assert error_of(line).startswith("invalid room name ")


# --- nicks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "nick", ["a", "Z", "bob", "Bob", "a1", "a_", "a-", "a-b_c9", "x" * 32, "A" + "0" * 31]
)
def test_valid_nicks(nick: str) -> None:
    assert check_nick(nick) == nick
    assert parse_line(f"/nick {nick}") == Nick(nick)
    assert parse_line(f"/msg {nick} hi") == Msg(nick, "hi")


def test_nick_keeps_its_case() -> None:
    assert parse_line("/nick BoB") == Nick("BoB")


@pytest.mark.parametrize(
    "nick",
    ["9a", "_a", "-a", "x" * 33, "a.b", "a!", "é", "aé", "bob\x00", "a/b", "*bob*", "<bob>", "bob:"],
)
def test_invalid_nicks(nick: str) -> None:
    with pytest.raises(CommandError) as info:
        check_nick(nick)
    assert str(info.value) == nick_error(nick)
    assert error_of(f"/nick {nick}") == nick_error(nick)


def test_invalid_nick_as_msg_target() -> None:
    assert error_of("/msg 9bob hi") == nick_error("9bob")


def test_nick_error_text_is_exact() -> None:
    assert error_of("/nick 1abc") == (
        "invalid nickname '1abc': 1-32 letters, digits, _ or -, starting with a letter"
    )


# --- plain text, //, blank lines -------------------------------------------------------


def test_double_slash_sends_the_text_from_the_second_slash() -> None:
    assert parse_line("//text") == Say("/text")
    assert parse_line("//nick bob") == Say("/nick bob")
    assert parse_line("///x") == Say("//x")
    assert parse_line("//") == Say("/")


@pytest.mark.parametrize("line", ["", " ", "   ", "\t", "\t \t", "\x00", "\x07\x1b", "\x7f"])
def test_blank_lines_give_none(line: str) -> None:
    assert parse_line(line) is None


def test_plain_text_is_stripped() -> None:
    assert parse_line("  hello  ") == Say("hello")


def test_a_slash_inside_text_is_text() -> None:
    assert parse_line("a/b") == Say("a/b")
    assert parse_line(" /nick bob") == Say("/nick bob")


def test_unicode_text_is_kept() -> None:
    assert parse_line("héllo wörld ☕ 你好") == Say("héllo wörld ☕ 你好")


# --- unknown commands ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("/x", "unknown command /x (try /help)"),
        ("/frobnicate now", "unknown command /frobnicate (try /help)"),
        ("/FOO", "unknown command /FOO (try /help)"),
        ("/", "unknown command / (try /help)"),
        ("/ nick bob", "unknown command / (try /help)"),
        ("/nicks bob", "unknown command /nicks (try /help)"),
        ("/x\x1b[2J", "unknown command /x[2J (try /help)"),
    ],
)
def test_unknown_commands(line: str, error: str) -> None:
    assert error_of(line) == error


def test_shown_strips_and_shortens() -> None:
    assert shown("a\x9b\u202eb" + "c" * 100) == "ab" + "c" * 38


@pytest.mark.parametrize("char", ATTACKS.values())
def test_quoted_names_escape_every_unsafe_character(char: str) -> None:
    text = quoted(f"evil{char}")
    assert not CONTROL.search(text)
    assert text.startswith("'evil\\")


def test_quoted_names_are_shortened() -> None:
    assert quoted("x" * 81) == repr("x" * 80) + "..."
    assert quoted("x" * 80) == repr("x" * 80)
    assert error_of("/nick " + "y" * 4000) == nick_error("y" * 80).replace("': ", "'...: ")


@pytest.mark.parametrize("char", ["\x85", "\u2028", "\u2029", "\x1c", "\x1d", "\x1e", "\x0b", "\x0c", "\u3000", "\xa0"])
def test_arguments_split_only_on_ascii_blanks(char: str) -> None:
    # str.split() splits on these: `/nick evil<NEL>` passed as `evil`
    assert error_of(f"/nick evil{char}") == nick_error(f"evil{char}")
    assert error_of(f"/nick evil{char}x") == nick_error(f"evil{char}x")
    assert error_of(f"/join #r{char}") == room_error(f"#r{char}")
    assert error_of(f"/msg bob{char} hi") == nick_error(f"bob{char}")
    assert error_of(f"/who #r{char}") == room_error(f"#r{char}")


def test_tabs_separate_arguments_and_the_command_name() -> None:
    assert parse_line("/nick\tbob") == Nick("bob")
    assert parse_line("/msg\tbob\thi there") == Msg("bob", "hi there")
    assert parse_line("/history\t#a\t5") == History("#a", 5)
    assert parse_line("/ping\t") == Ping()


def test_unknown_command_name_is_shortened() -> None:
    error = error_of("/" + "y" * 1000)
    assert error == f"unknown command /{'y' * 40} (try /help)"


# --- usage errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("/nick", "usage: /nick NAME"),
        ("/nick   ", "usage: /nick NAME"),
        ("/nick a b", "usage: /nick NAME"),
        ("/join", "usage: /join #ROOM"),
        ("/join #a #b", "usage: /join #ROOM"),
        ("/part #a #b", "usage: /part [#ROOM]"),
        ("/who #a #b", "usage: /who [#ROOM]"),
        ("/msg", "usage: /msg TARGET TEXT"),
        ("/msg bob", "usage: /msg TARGET TEXT"),
        ("/msg bob    ", "usage: /msg TARGET TEXT"),
        ("/msg bob \x00\x07", "usage: /msg TARGET TEXT"),
        ("/me", "usage: /me TEXT"),
        ("/me    ", "usage: /me TEXT"),
        ("/me \x1b", "usage: /me TEXT"),
        ("/rooms all", "usage: /rooms"),
        ("/ping pong", "usage: /ping"),
        ("/json please", "usage: /json"),
        ("/help me", "usage: /help"),
    ],
)
def test_usage_errors(line: str, error: str) -> None:
    assert error_of(line) == error


def test_extra_blanks_between_arguments_are_fine() -> None:
    assert parse_line("/nick   bob  ") == Nick("bob")
    assert parse_line("/join  #a ") == Join("#a")
    assert parse_line("/msg  bob   hi  there ") == Msg("bob", "hi  there")
    assert parse_line("/ping   ") == Ping()


# --- /history bounds ---------------------------------------------------------------

HISTORY_USAGE = "usage: /history [#ROOM] [N]  (N from 1 to 100)"


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/history 1", History(None, 1)),
        ("/history 100", History(None, 100)),
        ("/history #a 1", History("#a", 1)),
        ("/history #a 100", History("#a", 100)),
        ("/history 050", History(None, 50)),
    ],
)
def test_history_bounds_accepted(line: str, command: History) -> None:
    assert parse_line(line) == command


@pytest.mark.parametrize(
    "line",
    [
        "/history 0",
        "/history 101",
        "/history 1000",
        "/history 99999999999999999999",
        "/history -1",
        "/history +5",
        "/history 1.5",
        "/history five",
        "/history #a 0",
        "/history #a 101",
        "/history #a 5 6",
        "/history 5 6",
        "/history 5 #a",
        "/history \u0665",  # ARABIC-INDIC DIGIT FIVE: a digit, but not ASCII
    ],
)
def test_history_bounds_rejected(line: str) -> None:
    assert error_of(line) == HISTORY_USAGE


# --- control characters ------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hi\x1b[31mred", Say("hi[31mred")),
        ("a\x00b\x07c\x08d\x7fe", Say("abcde")),
        ("line\rbreak\nhere", Say("linebreakhere")),
        ("tab\tkept", Say("tab\tkept")),
        ("/me \x1b[2Jwaves", Me("[2Jwaves")),
        ("/msg bob \x07ding\x07", Msg("bob", "ding")),
        ("/quit \x1b]0;pwned\x07bye", Quit("]0;pwnedbye")),
        ("//\x1b[2J", Say("/[2J")),
    ],
)
def test_control_characters_are_stripped_from_text(line: str, command: object) -> None:
    assert parse_line(line) == command


@pytest.mark.parametrize("char", UNSAFE_CHARS[::7] + list(ATTACKS.values()))
def test_every_unsafe_character_is_stripped_everywhere_text_goes(char: str) -> None:
    text = f"a{char}b"
    assert clean_text(text) == "ab"
    assert parse_line(text) == Say("ab")
    assert parse_line(f"//{text}") == Say("/ab")
    assert parse_line(f"/me {text}") == Me("ab")
    assert parse_line(f"/msg bob {text}") == Msg("bob", "ab")
    assert parse_line(f"/msg #r {text}") == Msg("#r", "ab")
    assert parse_line(f"/quit {text}") == Quit("ab")
    assert error_of(f"/{text}") == "unknown command /ab (try /help)"


def test_every_unsafe_character_is_unprintable() -> None:
    # strip_unsafe and render_json skip printable text: that is only right while this holds
    assert not any(char.isprintable() for char in UNSAFE_CHARS)


def test_all_unsafe_characters_together_leave_nothing() -> None:
    assert clean_text("".join(UNSAFE_CHARS)) == ""
    assert parse_line("".join(UNSAFE_CHARS)) is None


def test_the_8bit_csi_prefix_spoof_is_defused() -> None:
    # CSI 2K erases the line, CSI G returns the cursor: "<alice>" would vanish
    line = "\x9b2K\x9bG* alice is now known as admin"
    assert parse_line(line) == Say("2KG* alice is now known as admin")


@pytest.mark.parametrize(
    "text", ["👨\u200d👩\u200d👧", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "soft\xadhyphen", "☃\ufe0f", "\U0001f3f4\U000e0067\U000e007f"]
)
def test_joiners_and_other_harmless_format_characters_are_kept(text: str) -> None:
    assert clean_text(text) == text


def test_clean_text() -> None:
    assert clean_text("  a\x01b\x1fc\x7f  ") == "abc"
    assert clean_text("\t a \t") == "a"
    assert clean_text("a\tb") == "a\tb"
    assert clean_text("".join(chr(c) for c in range(32)) + "\x7f") == ""


# --- errors --------------------------------------------------------------------------


def test_command_error_is_a_protocol_error() -> None:
    assert issubclass(CommandError, ProtocolError)


# --- properties ------------------------------------------------------------------------

nicks = st.from_regex(NICK_SPEC, fullmatch=True)
room_names = st.from_regex(r"#[A-Za-z0-9_.-]{1,64}", fullmatch=True)
texts = st.text(max_size=40)
command_words = st.sampled_from(COMMAND_NAMES).flatmap(
    lambda n: st.sampled_from([n, n.upper(), n.capitalize()])
)
argument = st.one_of(
    texts, nicks, room_names, st.integers(-5, 200).map(str), st.sampled_from(["#", "", " ", "//"])
)
command_lines = st.builds(
    lambda word, args, sep: "/" + word + sep + " ".join(args),
    command_words,
    st.lists(argument, max_size=4),
    st.sampled_from([" ", "  ", "", "\t"]),
)
any_lines = st.one_of(st.text(), command_lines, st.text().map(lambda s: "/" + s))


def check_well_formed(result: object) -> None:
    """Invariants of every parsed command: workers rely on them."""
    if result is None:
        return
    for field in ("room",):
        room = getattr(result, field, None)
        if room is not None:
            assert ROOM_SPEC.fullmatch(room), room
    if isinstance(result, Nick):
        assert NICK_SPEC.fullmatch(result.nick)
    if isinstance(result, Msg):
        assert ROOM_SPEC.fullmatch(result.target) or NICK_SPEC.fullmatch(result.target)
    if isinstance(result, History):
        assert 1 <= result.count <= HISTORY_MAX
    text = getattr(result, "text", None)
    if text is not None:
        assert text, "an empty text never reaches the workers"
    if isinstance(result, (Say, Me, Msg, Quit)):
        value = result.reason if isinstance(result, Quit) else result.text
        assert not CONTROL.search(value)
        assert value == value.strip()


@FAST
@given(any_lines)
def test_property_parse_line_raises_only_command_error(line: str) -> None:
    try:
        result = parse_line(line)
    except CommandError as exc:
        assert str(exc)
        return
    check_well_formed(result)


@FAST
@given(st.sampled_from(COMMAND_NAMES), st.lists(argument, max_size=4))
def test_property_command_names_are_case_insensitive(name: str, args: list[str]) -> None:
    rest = " ".join(args)
    outcomes: list[object] = []
    for variant in (name, name.upper(), name.title()):
        try:
            outcomes.append(parse_line(f"/{variant} {rest}"))
        except CommandError as exc:
            outcomes.append(("error", str(exc)))
    assert outcomes[0] == outcomes[1] == outcomes[2]


@FAST
@given(nicks)
def test_property_valid_nicks_are_accepted_as_is(nick: str) -> None:
    assert parse_line(f"/nick {nick}") == Nick(nick)


@FAST
@given(room_names)
def test_property_valid_rooms_are_accepted_in_lower_case(room: str) -> None:
    assert parse_line(f"/join {room}") == Join(room.lower())
    assert parse_line(f"/who {room.upper()}") == Who(room.lower())


@FAST
@given(st.text(min_size=1, max_size=40))
def test_property_nick_validation_follows_the_spec(name: str) -> None:
    if NICK_SPEC.fullmatch(name):
        assert check_nick(name) == name
    else:
        with pytest.raises(CommandError):
            check_nick(name)


@FAST
@given(st.text(max_size=70).map(lambda s: "#" + s))
def test_property_room_validation_follows_the_spec(name: str) -> None:
    if re.fullmatch(r"#[A-Za-z0-9_.-]{1,64}", name):
        assert check_room(name) == name.lower()
    else:
        with pytest.raises(CommandError):
            check_room(name)


@FAST
@given(st.text(max_size=60))
def test_property_plain_text_is_said_cleaned(text: str) -> None:
    line = "x" + text  # never a command
    cleaned = CONTROL.sub("", line).strip()
    assert parse_line(line) == Say(cleaned)


@FAST
@given(st.text(max_size=60))
def test_property_double_slash_says_the_rest(text: str) -> None:
    expected = CONTROL.sub("", "/" + text).strip()
    assert parse_line("//" + text) == Say(expected)


@FAST
@given(st.integers(-1000, 1000))
def test_property_history_count_bounds(n: int) -> None:
    if 1 <= n <= HISTORY_MAX:
        assert parse_line(f"/history {n}") == History(None, n)
    else:
        assert error_of(f"/history {n}") == HISTORY_USAGE


@FAST
@given(st.text(min_size=1, max_size=40).filter(lambda s: not set(s) & {" ", "\t"}))
def test_property_a_nick_argument_is_taken_whole(name: str) -> None:
    # one word without ASCII blanks is one argument, whatever other whitespace it holds
    if NICK_SPEC.fullmatch(name):
        assert parse_line(f"/nick {name}") == Nick(name)
    else:
        assert error_of(f"/nick {name}") == nick_error(name)


# --- /topic and /history after ID ------------------------------------------------


def test_topic_parses() -> None:
    from protocol.commands import TOPIC_MAX, History, Topic
    assert parse_line("/topic") == Topic(None, None)
    assert parse_line("/topic #A") == Topic("#a", None)
    assert parse_line("/topic #a  hello\x1b world ") == Topic("#a", "hello world")
    assert parse_line("/topic hello world") == Topic(None, "hello world")
    assert parse_line("/topic #a \x07") == Topic("#a", None)  # nothing left after filtering: show it
    assert parse_line("/topic " + "x" * TOPIC_MAX) == Topic(None, "x" * TOPIC_MAX)
    with pytest.raises(CommandError, match="topic too long"):
        parse_line("/topic " + "x" * (TOPIC_MAX + 1))
    with pytest.raises(CommandError, match="invalid room name"):
        parse_line("/topic #bad! text")
    assert parse_line("/history #a after gw.x:1/42") == History("#a", 100, "gw.x:1/42")
    assert parse_line("/history AFTER gw.x:1/42") == History(None, 100, "gw.x:1/42")


@pytest.mark.parametrize("line", ["/history after", "/history after x", "/history after a/b",
                                  "/history after a/1 2", "/history #a after " + "a" * 161 + "/1",
                                  "/history after a\u2028/1"])
def test_history_after_needs_one_plain_id(line: str) -> None:
    with pytest.raises(CommandError, match="usage: /history"):
        parse_line(line)


def test_action_names_its_room() -> None:
    from protocol.commands import Me
    assert parse_line("/action #A waves \x1b hi") == Me("waves  hi", "#a")
    for line in ("/action", "/action #a", "/action #a \x07"):
        with pytest.raises(CommandError, match="usage: /action"):
            parse_line(line)
    with pytest.raises(CommandError, match="invalid room name"):
        parse_line("/action bob waves")
