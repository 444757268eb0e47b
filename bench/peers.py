"""The C IRC servers chat-bench compares against (`--peers ngircd,inspircd`).

`start_peer(name, out_dir)` finds the server's binary (PATH, then /usr/sbin),
renders its minimal configuration from `bench/irc_conf/` into a fresh
temporary folder (a port the OS picked, 127.0.0.1 only, flood and connection
limits raised), starts it in the foreground as an unprivileged user (`nobody`
when we are root: setgid/setuid between fork and exec) with its output in a
log of the output folder, and waits until its port accepts a connection.
A peer that cannot be started raises `PeerUnavailable` with the reason, which
becomes the peer's rows in the report. The temporary folder goes with
`stop_peer`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CONF_DIR = Path(__file__).parent / "irc_conf"
SEARCH = (os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/usr/lib/inspircd")
START_TIMEOUT = 20.0
UNPRIVILEGED = "nobody"


class PeerUnavailable(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class PeerKind:
    name: str
    binary: str
    conf: str  # file name in CONF_DIR
    argv: Callable[[str, Path], list[str]]  # (binary, rendered config) -> argv
    oper: bool  # opers up and sets +F on its senders (ngIRCd's throttle)
    connects: int | None = None  # at most this many connections not yet answered by the server (None: no cap)


PEERS: dict[str, PeerKind] = {
    # ngIRCd listens with a backlog of 10: a SYN beyond its accept queue is dropped and retried after 1, 3, 7 s;
    # a connection leaves the queue when ngIRCd accept()s it, which its first reply shows
    "ngircd": PeerKind("ngircd", "ngircd", "ngircd.conf", lambda exe, conf: [exe, "--nodaemon", "--config", str(conf)],
                       oper=True, connects=8),
    "inspircd": PeerKind("inspircd", "inspircd", "inspircd.conf",
                         lambda exe, conf: [exe, "--nofork", "--nopid", f"--config={conf}"], oper=False),
}


@dataclass
class Peer:
    kind: PeerKind
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log: Path
    version: str


def parse_peers(spec: str | None) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(item.strip().lower() for item in (spec or "").split(",") if item.strip()))
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    return names


def find_binary(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join(SEARCH))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def render(kind: PeerKind, workdir: Path, port: int) -> Path:
    text = (CONF_DIR / kind.conf).read_text()
    conf = workdir / kind.conf
    conf.write_text(text.replace("{port}", str(port)).replace("{dir}", str(workdir)))
    (workdir / "motd.txt").write_text("chat-bench\n")
    return conf


def drop_to(user: str) -> tuple[Callable[[], None] | None, int | None]:
    """A preexec hook that becomes `user` when we are root (None when we are not), and its uid."""
    if os.geteuid() != 0:
        return None, None
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise PeerUnavailable(f"we are root and there is no user {user!r} to run it as") from exc
    uid, gid = entry.pw_uid, entry.pw_gid

    def become() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    return become, uid


def version_of(exe: str) -> str:
    try:
        run = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "?"
    lines = (run.stdout or run.stderr).strip().splitlines()
    return lines[0][:80] if lines else "?"


def wait_accepting(proc: subprocess.Popen[bytes], port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise PeerUnavailable(f"exited with {proc.returncode} at start: {' / '.join(tail)[:300]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling a port that is not open yet: nothing to wait on
    raise PeerUnavailable(f"did not accept on 127.0.0.1:{port} within {timeout:.0f}s (see {log})")


def start_peer(name: str, out_dir: Path) -> Peer:
    kind = PEERS[name]
    exe = find_binary(kind.binary)
    if exe is None:
        raise PeerUnavailable(f"{kind.binary} not installed (make bench installs it with apt-get as root)")
    hook, uid = drop_to(UNPRIVILEGED)
    workdir = Path(tempfile.mkdtemp(prefix=f"chat-bench-{name}-"))
    try:
        port = free_port()
        conf = render(kind, workdir, port)
        if uid is not None:
            for path in (workdir, *workdir.iterdir()):
                os.chown(path, uid, -1)
        log = out_dir / f"{name}.log"
        with log.open("ab") as sink:
            proc = subprocess.Popen(kind.argv(exe, conf), stdout=sink, stderr=sink, stdin=subprocess.DEVNULL,
                                    cwd=workdir, start_new_session=True,
                                    preexec_fn=hook)  # noqa: PLW1509 - only setgid/setuid, before exec
        try:
            wait_accepting(proc, port, START_TIMEOUT, log)
        except BaseException:
            stop_process(proc)
            raise
        return Peer(kind, proc, port, workdir, log, version_of(exe))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


def stop_peer(peer: Peer) -> None:
    stop_process(peer.proc)
    shutil.rmtree(peer.workdir, ignore_errors=True)
