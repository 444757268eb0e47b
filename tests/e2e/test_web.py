"""The gateway's WebSocket door and its web client, against a real cluster:
two browser users (headless Chromium) and an nc user across two gateways,
a browser catching up after its gateway connection drops, and the door's
limits over real sockets."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from wsproto.events import BytesMessage, CloseConnection

from stack.children import Child, python_module, start, stop
from tests.e2e.browser import browser, open_page, screenshot  # noqa: F401 (fixtures)
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import GATEWAY_ARGS, start_gateway
from tests.e2e.doors import DOOR_ARGS, DoorCluster, WsClient, door_port, http_get
from tests.e2e.load import wait_until

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "web-client.png"
_names = itertools.count(1)


@pytest.fixture
def u() -> str:
    return f"w{next(_names)}"


@pytest.fixture
def ws(doors: DoorCluster) -> Iterator[Callable[..., WsClient]]:
    clients: list[WsClient] = []

    def _connect(port: int | None = None, origin: str | None = None) -> WsClient:
        clients.append(WsClient(port or doors.ws_ports[0], origin))
        return clients[-1]

    yield _connect
    for client in clients:
        client.close()


def as_nc(line: Callable[..., ChatClient], nick: str, room: str) -> ChatClient:
    client = line()
    client.send(f"/nick {nick}")
    client.expect(lambda ln: ln.startswith("* you are now"))
    client.join(room)
    return client


def enter(page: Any, nick: str, room: str) -> None:
    expect = pytest.importorskip("playwright.sync_api").expect
    expect(page.locator("#status")).to_have_text("connected")
    page.fill("#nick", nick)
    page.click("#nick-form button")
    expect(page.locator("#log")).to_contain_text(f"you are now {nick}")
    page.fill("#room", room)
    page.click("#join-form button")
    expect(page.locator("#title")).to_have_text(room)


def say(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


# --- browsers ----------------------------------------------------------------------------------


def test_two_browsers_and_nc_chat_across_two_gateways(
        doors: DoorCluster, line: Callable[..., ChatClient], open_page: Callable[[str], Any],  # noqa: F811
        tmp_path: Path) -> None:
    expect = pytest.importorskip("playwright.sync_api").expect
    u = ""  # the first test of a fresh cluster: plain names, for the README's screenshot
    room = "#lobby"
    nc = as_nc(line, "nc", room)
    nc.send(f"/topic {room} Welcome to the lobby", f"/msg {room} said before anyone came")
    nc.sync()

    alice = open_page(f"http://127.0.0.1:{doors.ws_ports[0]}/")
    problems: list[str] = []
    alice.on("pageerror", lambda exc: problems.append(str(exc)))
    enter(alice, f"alice{u}", room)
    log_a = alice.locator("#log")
    expect(log_a).to_contain_text("said before anyone came")  # history on join
    expect(alice.locator("#topic")).to_have_text("Welcome to the lobby")

    bob = open_page(f"http://127.0.0.1:{doors.ws_ports[1]}/")
    enter(bob, f"bob{u}", room)
    log_b = bob.locator("#log")
    expect(bob.locator("#members")).to_contain_text(f"alice{u}")
    expect(alice.locator("#members")).to_contain_text(f"bob{u}")

    say(alice, "hello from alice <b>bold</b>")
    expect(log_b).to_contain_text("hello from alice <b>bold</b>")
    assert nc.expect(lambda ln: "hello from alice" in ln) == f"{room} <alice{u}> hello from alice <b>bold</b>"
    assert bob.locator("#log b").count() == 0
    say(bob, "/me waves")
    expect(log_a).to_contain_text(f"* bob{u} waves")
    assert nc.expect(lambda ln: "waves" in ln) == f"{room} * bob{u} waves"
    nc.send(f"/msg {room} hi browsers")
    expect(log_a).to_contain_text("hi browsers")
    expect(log_b).to_contain_text("hi browsers")

    say(alice, f"/msg bob{u} a secret for bob")
    bob.locator("#rooms li", has_text=f"@alice{u}").click()
    expect(log_b).to_contain_text("a secret for bob")
    bob.locator("#rooms li", has_text=room).click()

    nc.send(f"/topic {room} Chatting across doors")
    expect(alice.locator("#topic")).to_have_text("Chatting across doors")
    expect(bob.locator("#topic")).to_have_text("Chatting across doors")
    say(alice, "everyone is here")
    expect(log_b).to_contain_text("everyone is here")

    screenshot(bob, tmp_path / "bob.png")
    shot = screenshot(alice, tmp_path / "alice.png")
    if os.environ.get("CHAT_UPDATE_SCREENSHOT"):  # the README's picture: refreshed on demand, not on every run
        shutil.copyfile(shot, DOCS_SCREENSHOT)
    assert not problems, problems


def test_a_browser_catches_up_after_its_connection_drops_without_gap_or_duplicate(
        doors: DoorCluster, line: Callable[..., ChatClient], open_page: Callable[[str], Any],  # noqa: F811
        tmp_path: Path, u: str) -> None:
    expect = pytest.importorskip("playwright.sync_api").expect
    room = f"#again{u}"
    gateway = lambda port: start_gateway(doors.cluster.endpoints, f"gw-web{u}", *GATEWAY_ARGS,  # noqa: E731
                                         "--irc-listen", "", "--ws-listen", f"127.0.0.1:{port}")[0]
    child: Child = gateway(0)
    try:
        port = door_port(child.ready_line, "ws")
        nc = as_nc(line, f"nc{u}", room)
        page = open_page(f"http://127.0.0.1:{port}/")
        enter(page, f"carol{u}", room)
        nc.send(f"/msg {room} one")
        expect(page.locator("#log")).to_contain_text("one")
        stop(child)  # the browser's connection drops
        expect(page.locator("#status")).to_have_text("disconnected")
        nc.send(*(f"/msg {room} missed {n}" for n in range(3)))
        nc.sync()
        child = gateway(port)
        expect(page.locator("#status")).to_have_text("connected", timeout=30_000)
        nc.send(f"/msg {room} after the drop")
        expect(page.locator("#log")).to_contain_text("after the drop")
        texts = page.locator("#log li .text").all_text_contents()
        said = [t for t in texts if t in ("one", "missed 0", "missed 1", "missed 2", "after the drop")]
        assert said == ["one", "missed 0", "missed 1", "missed 2", "after the drop"], texts
        screenshot(page, tmp_path / "after-reconnect.png")
    finally:
        stop(child)


# --- the door's limits over real sockets ----------------------------------------------------------


def test_the_page_is_served_and_a_websocket_chats_in_json_with_its_own_echoes(
        doors: DoorCluster, ws: Callable[..., WsClient], u: str) -> None:
    page = http_get(doors.ws_ports[0], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert page.startswith(b"HTTP/1.1 200 ") and b"/app.js" in page
    client = ws()
    client.expect(lambda o: o.get("code") == "welcome")
    client.send(f"/nick ws{u}", f"/join #ws{u}", f"/msg #ws{u} my own words")
    echo = client.expect(lambda o: o.get("type") == "message")
    assert echo["from"] == f"ws{u}" and echo["text"] == "my own words" and echo["id"]


def test_a_foreign_origin_is_refused(doors: DoorCluster) -> None:
    request = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               b"Origin: http://evil.example\r\n\r\n")
    assert http_get(doors.ws_ports[0], request).startswith(b"HTTP/1.1 403 ")


def test_an_oversize_message_is_closed_1009_and_a_binary_frame_1003(
        doors: DoorCluster, ws: Callable[..., WsClient]) -> None:
    big = ws()
    big.expect(lambda o: o.get("code") == "welcome")
    big.send("x" * 9000)
    close = big.expect_event(CloseConnection)
    assert close.code == 1009  # type: ignore[attr-defined]
    big.wait_closed()
    binary = ws()
    binary.expect(lambda o: o.get("code") == "welcome")
    binary.send_frame(BytesMessage(b"\x00\x01"))
    assert binary.expect_event(CloseConnection).code == 1003  # type: ignore[attr-defined]
    binary.wait_closed()


@pytest.fixture(scope="module")
def strict(doors: DoorCluster) -> Iterator[int]:
    """A gateway with the default rate limit and a 1 s ready deadline -> its WebSocket port."""
    child, _ = start_gateway(doors.cluster.endpoints, "gw-web-strict", *DOOR_ARGS, "--ready-timeout", "1")
    try:
        yield door_port(child.ready_line, "ws")
    finally:
        stop(child)


def test_a_client_that_never_upgrades_is_cut(strict: int) -> None:
    answer = http_get(strict, b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n", timeout=10)  # the head never ends
    assert answer.startswith(b"HTTP/1.1 503 ") and b"registration timeout" in answer


def test_a_flooder_is_cut(strict: int, ws: Callable[..., WsClient]) -> None:
    client = ws(strict)
    client.expect(lambda o: o.get("code") == "welcome")
    with contextlib.suppress(OSError):  # once cut off, writing on may fail
        for _ in range(40):
            client.send_raw(b"".join(client.frame("\n".join(["/ping"] * 50)) for _ in range(100)))
    close = client.expect_event(CloseConnection)
    assert close.code == 1008 and "flooding" in close.reason  # type: ignore[attr-defined]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # caught in the listen queue as the port closed: look again
    return False


def test_every_door_closes_while_the_gateway_cannot_serve(tmp_path: Path) -> None:
    """No broker answers: the line, IRC and WebSocket ports all close (a balancer sees it down)."""
    child = start("gw-alone", python_module(
        "gateway.cli", "--listen", "127.0.0.1:0", "--frontend", "tcp://127.0.0.1:1", "--pub-out", "tcp://127.0.0.1:1",
        "--id", "gw-alone", "--heartbeat", "0.1", "--liveness", "2", *DOOR_ARGS), "chat-gateway")
    try:
        line = child.ready_line
        ports = [int(line.split(" listening on ")[1].split()[0].rsplit(":", 1)[1]),
                 door_port(line, "irc"), door_port(line, "ws")]
        wait_until(lambda: all(map(_refused, ports)), 10, "every door to close")
    finally:
        stop(child)
