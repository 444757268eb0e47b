"""The gateway's IRC door over real sockets, against a real cluster: a
conformance suite of the commands IRC clients use, IRC and line users
seeing each other across gateways, the door's limits, and a real irssi."""

from __future__ import annotations

import contextlib
import itertools
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stack.children import Child, stop
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import start_gateway
from tests.e2e.doors import DOOR_ARGS, DoorCluster, IrcClient, door_port

_names = itertools.count(1)


@pytest.fixture
def u() -> str:
    """A fresh suffix for nicks and rooms."""
    return f"i{next(_names)}"


@pytest.fixture
def irc(doors: DoorCluster) -> Iterator[Callable[..., IrcClient]]:
    clients: list[IrcClient] = []

    def _connect(gateway: int = 0) -> IrcClient:
        clients.append(IrcClient(doors.irc_ports[gateway]))
        return clients[-1]

    yield _connect
    for client in clients:
        client.close()


def registered(irc: Callable[..., IrcClient], nick: str, gateway: int = 0) -> IrcClient:
    client = irc(gateway)
    client.register(nick)
    return client


def codes(lines: list[str]) -> list[str]:
    return [ln.split()[1] for ln in lines if ln.startswith(":irc.test ")]


# --- registration ---------------------------------------------------------------------


def test_registration_burst_is_001_to_005_then_motd_or_422(irc: Callable[..., IrcClient], u: str) -> None:
    client = irc()
    client.send("CAP LS 302")
    assert re.search(r"CAP \* LS :.*server-time", client.expect(" CAP "))
    client.send("CAP REQ :multi-prefix")
    assert " NAK " in client.expect(" CAP ")
    client.send("CAP REQ :echo-message", "CAP END")
    assert " ACK " in client.expect(" CAP ")
    burst = client.register(f"a{u}")
    assert codes(burst)[:5] == ["001", "002", "003", "004", "005"]
    assert codes(burst)[-1] in ("376", "422")
    isupport = next(ln for ln in burst if " 005 " in ln)
    for token in ("CHANTYPES=#", "NICKLEN=32", "CHANNELLEN=", "CASEMAPPING=ascii", "CHANLIMIT=#:"):
        assert token in isupport
    assert re.fullmatch(rf":irc\.test 004 a{u} irc\.test \S+ \w+ :?\w+", next(ln for ln in burst if " 004 " in ln))


def test_a_taken_or_erroneous_nick_gets_433_or_432_and_the_client_tries_again(
        irc: Callable[..., IrcClient], u: str) -> None:
    registered(irc, f"t{u}")
    late = irc(1)
    late.send("NICK 9bad!", "USER x 0 * :x")
    assert " 432 * " in late.expect(" 432 ")
    late.send(f"NICK t{u}")
    assert f" 433 * t{u} " in late.expect(" 433 ")
    late.send(f"NICK t{u}_")
    assert f" 001 t{u}_ " in late.expect(" 001 ")


def test_commands_before_registration_get_451_and_user_again_462(irc: Callable[..., IrcClient], u: str) -> None:
    client = irc()
    client.send("JOIN #x")
    assert " 451 " in client.expect(" 451 ")
    client.register(f"r{u}")
    client.send("USER again 0 * :x")
    assert " 462 " in client.expect(" 462 ")


# --- the commands -----------------------------------------------------------------------


def test_pong_comes_after_the_replies_of_earlier_lines(irc: Callable[..., IrcClient], u: str) -> None:
    client = registered(irc, f"p{u}")
    client.send(f"JOIN #p{u}", "PING :one", f"TOPIC #p{u}", "PING :two")
    got = client.lines_until(r"PONG \S+ :two$")
    order = [i for i, ln in enumerate(got) if re.search(r" (366|PONG|331|332) ", ln)]
    kinds = [got[i].split()[1] for i in order]
    assert kinds == ["366", "PONG", kinds[2], "PONG"] and kinds[2] in ("331", "332"), got


def test_join_several_part_and_quit(irc: Callable[..., IrcClient], line: Callable[..., ChatClient], u: str) -> None:
    client = registered(irc, f"j{u}")
    client.send(f"JOIN #a{u},#b{u}")
    joined = client.sync()
    assert [ln for ln in joined if " JOIN " in ln] == [f":j{u}!j{u}@irc.test JOIN :#a{u}",
                                                       f":j{u}!j{u}@irc.test JOIN :#b{u}"]
    watcher = line()
    watcher.join(f"#a{u}")
    client.send(f"PART #b{u}")
    assert client.expect(" PART ") == f":j{u}!j{u}@irc.test PART :#b{u}"
    client.send(f"PART #b{u}")
    assert f" 442 j{u} #b{u} " in client.expect(" 442 ")
    client.send("QUIT :gone fishing")
    assert client.wait_closed()[-1].startswith("ERROR :")
    assert "gone fishing" in watcher.expect(lambda ln: f"j{u}" in ln and "quit" in ln)


def test_privmsg_and_notice_to_a_channel_and_a_nick(irc: Callable[..., IrcClient], u: str) -> None:
    alice, bob = registered(irc, f"al{u}"), registered(irc, f"bo{u}", gateway=1)
    for client in (alice, bob):
        client.send(f"JOIN #m{u}")
        client.sync()
    alice.send(f"PRIVMSG #m{u} :hello room", f"NOTICE #m{u} :a notice", f"PRIVMSG bo{u} :psst")
    assert bob.expect("hello room") == f":al{u}!al{u}@irc.test PRIVMSG #m{u} :hello room"
    assert bob.expect("a notice").endswith(f"#m{u} :a notice")
    assert bob.expect("psst") == f":al{u}!al{u}@irc.test PRIVMSG bo{u} :psst"
    alice.send(f"PRIVMSG #m{u} :\x01ACTION waves\x01")
    assert bob.expect("waves") == f":al{u}!al{u}@irc.test PRIVMSG #m{u} :\x01ACTION waves\x01"


def test_names_who_list_topic(irc: Callable[..., IrcClient], u: str) -> None:
    alice, bob = registered(irc, f"na{u}"), registered(irc, f"nb{u}", gateway=1)
    for client in (alice, bob):
        client.send(f"JOIN #n{u}")
        client.sync()
    alice.send(f"NAMES #n{u}")
    names = alice.expect(" 353 ")
    assert set(names.split(":", 2)[2].split()) == {f"na{u}", f"nb{u}"}
    alice.expect(" 366 ")
    alice.send(f"WHO #n{u}")
    who = alice.lines_until(" 315 ")
    assert {ln.split()[7] for ln in who if " 352 " in ln} == {f"na{u}", f"nb{u}"}
    alice.send("LIST")
    listed = alice.lines_until(" 323 ")
    assert any(f" 322 na{u} #n{u} 2 " in ln for ln in listed), listed
    alice.send(f"TOPIC #n{u} :all about {u}")
    assert bob.expect(" TOPIC ") == f":na{u}!na{u}@irc.test TOPIC #n{u} :all about {u}"
    late = registered(irc, f"nc{u}")
    late.send(f"JOIN #n{u}")
    assert late.expect(" 332 ").endswith(f"#n{u} :all about {u}")


def test_chathistory_latest_and_after(irc: Callable[..., IrcClient], line: Callable[..., ChatClient], u: str) -> None:
    speaker = line()
    speaker.join(f"#h{u}")
    speaker.send("/json")
    speaker.expect_json(lambda o: o.get("code") == "json_on")
    ids = []
    for n in range(3):
        speaker.send(f"/msg #h{u} m{n}")
        ids.append(speaker.expect_json(lambda o: o.get("type") == "message")["id"])
    client = registered(irc, f"h{u}")
    client.send("CAP REQ :message-tags server-time")
    client.expect(" ACK ")
    client.send(f"JOIN #h{u}")
    client.sync()
    client.send(f"CHATHISTORY LATEST #h{u} * 10")
    got = [ln for ln in client.sync() if " PRIVMSG " in ln]
    assert [ln.rsplit(":", 1)[1] for ln in got] == ["m0", "m1", "m2"]
    assert all("time=" in ln and "msgid=" in ln for ln in got)
    client.send(f"CHATHISTORY AFTER #h{u} msgid={ids[0]} 10")
    after = [ln.rsplit(":", 1)[1] for ln in client.sync() if " PRIVMSG " in ln]
    assert after == ["m1", "m2"]


def test_numeric_errors(irc: Callable[..., IrcClient], u: str) -> None:
    client = registered(irc, f"e{u}")
    cases = [
        (f"PRIVMSG nobody{u} :hi", " 401 "),
        ("JOIN nochannel", " 403 "),
        (f"PRIVMSG #notjoined{u} :hi", " 404 "),
        ("FROBNICATE", " 421 "),
        ("NICK", " 431 "),
        ("NICK 1bad", " 432 "),
        (f"PART #notin{u}", " 442 "),
        ("JOIN", " 461 "),
        ("USER a 0 * :b", " 462 "),
    ]
    for sent, code in cases:
        client.send(sent)
        assert code in client.expect(rf"{code}|\s4\d\d\s"), sent


def test_irc_and_line_users_see_each_other_natively(
        irc: Callable[..., IrcClient], line: Callable[..., ChatClient], u: str) -> None:
    room = f"#x{u}"
    ircer = registered(irc, f"ir{u}")
    ircer.send(f"JOIN {room}")
    ircer.sync()
    nc = line(1)
    nc.send(f"/nick nc{u}")
    nc.expect(lambda ln: ln.startswith("* you are now"))
    nc.join(room)
    assert ircer.expect(" JOIN ") == f":nc{u}!nc{u}@irc.test JOIN :{room}"
    nc.send(f"/msg {room} hi from nc", "/me waves from nc")
    assert ircer.expect("hi from nc") == f":nc{u}!nc{u}@irc.test PRIVMSG {room} :hi from nc"
    assert ircer.expect("waves") == f":nc{u}!nc{u}@irc.test PRIVMSG {room} :\x01ACTION waves from nc\x01"
    ircer.send(f"PRIVMSG {room} :hi from irc", f"PRIVMSG {room} :\x01ACTION bows\x01", f"PRIVMSG nc{u} :private")
    assert nc.expect(lambda ln: "hi from irc" in ln) == f"{room} <ir{u}> hi from irc"
    assert nc.expect(lambda ln: "bows" in ln) == f"{room} * ir{u} bows"
    assert nc.expect(lambda ln: "private" in ln) == f"*ir{u}* private"
    ircer.send(f"NICK ir2{u}")
    assert ircer.expect(" NICK ") == f":ir{u}!ir{u}@irc.test NICK :ir2{u}"
    assert f"ir{u}" in nc.expect(lambda ln: f"ir2{u}" in ln)
    nc.send(f"/nick nc2{u}")
    assert ircer.expect(" NICK ") == f":nc{u}!nc{u}@irc.test NICK :nc2{u}"
    nc.send(f"/part {room}")
    assert ircer.expect(" PART ") == f":nc2{u}!nc2{u}@irc.test PART :{room}"
    nc.join(room)
    ircer.expect(" JOIN ")
    nc.send("/quit see you")
    assert ircer.expect(" QUIT ") == f":nc2{u}!nc2{u}@irc.test QUIT :Quit: see you"
    ircer.send(f"PART {room}")
    ircer.expect(" PART ")


# --- limits ---------------------------------------------------------------------------------


def test_a_line_over_512_bytes_gets_417_and_the_connection_goes_on(irc: Callable[..., IrcClient], u: str) -> None:
    client = registered(irc, f"l{u}")
    client.send("PRIVMSG #x :" + "y" * 600)
    assert " 417 " in client.expect(" 417 ")
    client.sync()


@pytest.fixture(scope="module")
def strict(doors: DoorCluster) -> Iterator[int]:
    """A third gateway with the default rate limit and a short ready deadline -> its IRC port."""
    child: Child
    child, _ = start_gateway(doors.cluster.endpoints, "gw-strict", *DOOR_ARGS, "--ready-timeout", "1")
    try:
        yield door_port(child.ready_line, "irc")
    finally:
        stop(child)


def test_a_client_that_never_registers_is_cut(strict: int) -> None:
    client = IrcClient(strict)
    client.send("NICK")  # talks, but never registers
    started = time.monotonic()
    got = client.wait_closed(timeout=10)
    assert got[-1] == "ERROR :Closing Link: registration timeout"
    assert time.monotonic() - started < 8
    client.close()


def test_a_flooder_is_cut(strict: int, u: str) -> None:
    client = IrcClient(strict)
    client.register(f"f{u}")
    with contextlib.suppress(OSError):  # once cut off, writing on may fail
        for _ in range(20):
            client.send_raw(b"FROBNICATE\r\n" * 2000)
    got = client.wait_closed()
    assert any(ln.startswith("ERROR :Closing Link: flooding") for ln in got), got[-3:]
    client.close()


# --- a real IRC client ------------------------------------------------------------------------


def _irssi_missing() -> str | None:
    for tool in ("irssi", "tmux"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (the Makefile's APT_PACKAGES has it)"
    return None


class Tmux:
    """One tmux server of our own (its socket under tmp_path), killed in teardown."""

    def __init__(self, socket_path: Path) -> None:
        self.base = ["tmux", "-S", str(socket_path)]

    def run(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], check=True, capture_output=True, text=True, timeout=10).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-J", "-t", "irc", "-S", "-200")

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)  # a screen gives no event to wait on: poll it, up to the deadline
        raise AssertionError(f"{text!r} not on irssi's screen:\n{screen}")

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "irc", "-l", text)
        self.run("send-keys", "-t", "irc", "Enter")

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], check=False, capture_output=True, timeout=10)


def test_irssi_talks_with_a_line_client_on_the_other_gateway(
        doors: DoorCluster, line: Callable[..., ChatClient], tmp_path: Path, u: str) -> None:
    reason = _irssi_missing()
    if reason:
        pytest.skip(reason)
    home = tmp_path / "irssi"
    home.mkdir()
    (home / "config").write_text('settings = { core = { real_name = "Test"; user_name = "tester"; }; };\n')
    tmux = Tmux(tmp_path / "tmux.sock")
    nick, room = f"irs{u}", f"#irssi{u}"
    command = f"TERM=xterm irssi --home={home} -n {nick} -c 127.0.0.1 -p {doors.irc_ports[0]}"
    try:
        tmux.run("new-session", "-d", "-s", "irc", "-x", "200", "-y", "50", command)
        tmux.wait_for("Welcome to the chat IRC network")
        tmux.type(f"/join {room}")
        tmux.wait_for(f"has joined {room}")
        nc = line(1)
        nc.send(f"/nick nc{u}")
        nc.expect(lambda ln: ln.startswith("* you are now"))
        nc.join(room)
        nc.send(f"/msg {room} hello irssi from nc")
        tmux.wait_for("hello irssi from nc")
        tmux.type("hello nc from irssi")
        assert nc.expect(lambda ln: "hello nc from irssi" in ln) == f"{room} <{nick}> hello nc from irssi"
        tmux.type("/me waves")
        assert nc.expect(lambda ln: "waves" in ln) == f"{room} * {nick} waves"
        (tmp_path / "irssi-screen.txt").write_text(tmux.screen())
    finally:
        tmux.kill()


def test_a_half_closed_client_gets_its_replies_then_the_end(irc: Callable[..., IrcClient], u: str) -> None:
    client = registered(irc, f"hc{u}")
    client.send(f"JOIN #hc{u}")
    client.sock.shutdown(socket.SHUT_WR)  # a FIN: it still reads
    got = client.wait_closed()
    assert f":hc{u}!hc{u}@irc.test JOIN :#hc{u}" in got
    assert any(" 366 " in ln for ln in got), got
