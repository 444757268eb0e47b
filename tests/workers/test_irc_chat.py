"""The IRC dialect against the real chat (workers.logic + Valkey), without a gateway.

An `IrcPeer` does what the gateway will do for an IRC connection: feed the
client's bytes to `IrcConnection`, send its `ToChat` lines to the chat as
the connection's `Lines`, write `Reply` bytes, and render every delivery
addressed to any peer. Here, an IRC user and a line user share a room.
"""

from __future__ import annotations

from protocol.irc import IrcConnection, IrcSettings, Reply, ToChat
from protocol.messages import Connected, Deliver, Lines
from protocol.render import is_own_echo, render_text
from workers.effects import Effects
from workers.logic import Chat

GW = "gwI.abc"


def untagged(irc_line: str) -> str:
    return irc_line.split(" ", 1)[1] if irc_line.startswith("@") else irc_line


class World:
    """The peers of one test, and what each was shown."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.irc: dict[str, IrcConnection] = {}
        self.shown: dict[str, list[str]] = {}
        self.seq: dict[str, int] = {}

    def connect(self, cid: str, irc: bool) -> None:
        if irc:
            self.irc[cid] = IrcConnection(IrcSettings("irc.test", motd=("hi",)))
        self.shown[cid], self.seq[cid] = [], 1
        self.deliver(self.chat.handle(Connected(cid, 0, "127.0.0.1:1"), 1.0))

    def lines(self, cid: str, *lines: str, now: float = 5.0) -> None:
        self.deliver(self.chat.handle(Lines(cid, self.seq[cid], lines), now))
        self.seq[cid] += len(lines)

    def feed(self, cid: str, data: bytes) -> None:
        for action in self.irc[cid].feed(data):
            if isinstance(action, Reply):
                self.shown[cid].extend(action.data.decode().splitlines())
            elif isinstance(action, ToChat):
                self.lines(cid, *action.lines)

    def deliver(self, fx: Effects) -> None:
        for item in fx.items:
            if not isinstance(item, Deliver):
                continue
            for cid in item.cids:
                if cid in self.irc:
                    out = self.irc[cid].render(item.event, cid)
                elif is_own_echo(item.event, cid):
                    continue
                else:
                    out = render_text(item.event)
                self.shown[cid].extend(out.decode().splitlines())

    def take(self, cid: str) -> list[str]:
        out, self.shown[cid] = self.shown[cid], []
        return out


def test_an_irc_user_and_a_line_user_chat(chat: Chat) -> None:
    w = World(chat)
    irc, line = f"{GW}:1", f"{GW}:2"
    w.connect(line, irc=False)
    w.lines(line, "/nick bob", "/join #lobby", "/topic #lobby all welcome")
    w.connect(irc, irc=True)
    w.feed(irc, b"CAP LS 302\r\nNICK bob\r\nUSER a 0 * :A\r\nCAP REQ :echo-message message-tags\r\nCAP END\r\n")
    shown = w.take(irc)
    assert shown[-1] == ":irc.test 433 * bob :Nickname is already in use"
    w.feed(irc, b"NICK alice\r\n")
    assert [ln.split()[1] for ln in w.take(irc)] == ["001", "002", "003", "004", "005", "375", "372", "376"]
    w.take(line)

    w.feed(irc, b"JOIN #Lobby\r\nPRIVMSG #lobby :hi bob\r\nPRIVMSG #lobby :\x01ACTION waves\x01\r\nPING :t\r\n")
    shown = w.take(irc)
    assert shown[:4] == [":alice!alice@irc.test JOIN :#lobby", ":irc.test 332 alice #lobby :all welcome",
                         ":irc.test 353 alice = #lobby :alice bob", ":irc.test 366 alice #lobby :End of /NAMES list"]
    mine = [ln for ln in shown if "PRIVMSG" in ln]  # echo-message: with their ids
    assert len(mine) == 2 and mine[0].startswith(f"@msgid={irc}/") and mine[0].endswith(" :hi bob")
    assert shown[-1] == ":irc.test PONG irc.test :t"
    assert w.take(line) == ["* alice joined #lobby", "#lobby <alice> hi bob", "#lobby * alice waves"]

    w.lines(line, "hello alice", "/me smiles", "/msg alice psst", "/topic #lobby new")
    assert [untagged(ln) for ln in w.take(irc)] == [":bob!bob@irc.test PRIVMSG #lobby :hello alice",
                           ":bob!bob@irc.test PRIVMSG #lobby :\x01ACTION smiles\x01",
                           ":bob!bob@irc.test PRIVMSG alice :psst",
                           ":bob!bob@irc.test TOPIC #lobby :new"]

    w.feed(irc, b"WHO #lobby\r\nNAMES #lobby\r\nLIST\r\nTOPIC #lobby\r\n")
    codes = [ln.split()[1] for ln in w.take(irc)]
    assert codes == ["352", "352", "315", "353", "366", "321", "322", "323", "332", "333"]

    msgid = mine[0].split(";")[0].split("=")[1].split(" ")[0]
    w.feed(irc, f"CHATHISTORY AFTER #lobby msgid={msgid} 10\r\n".encode())
    assert [ln.rsplit(" :", 1)[-1] for ln in w.take(irc)] == ["\x01ACTION waves\x01", "hello alice",
                                                               "\x01ACTION smiles\x01"]

    w.feed(irc, b"NICK bob\r\nNICK al2\r\nPRIVMSG carol :x\r\nPART #nowhere\r\nQUIT :done\r\n")
    assert w.take(irc) == [":irc.test 433 alice bob :Nickname is already in use", ":alice!alice@irc.test NICK :al2",
                           ":irc.test 401 al2 carol :No such nick/channel",
                           ":irc.test 442 al2 #nowhere :You're not on that channel", "ERROR :Closing Link: bye"]
    assert w.take(line) == ["* bob set the topic of #lobby: new", "* alice is now known as al2", "* al2 quit (done)"]
