"""Tests for gateway.accept: the accept loop (pause, resume, out of descriptors), on real loopback sockets."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import trio

from gateway import accept


def test_pause_holds_new_clients_back_and_resume_lets_them_in() -> None:
    async def main() -> None:
        listener = accept.listen("127.0.0.1", 0, False)
        got: list[socket.socket] = []
        arrived = trio.Event()
        acceptor = accept.Acceptor(listener, lambda sock, peer: (got.append(sock), arrived.set()))
        clients: list[socket.socket] = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(acceptor.run)
                acceptor.pause()
                assert not acceptor.accepting
                clients.append(socket.create_connection(listener.getsockname()))
                with trio.move_on_after(0.3):
                    await arrived.wait()
                assert got == []  # paused: the client waits in the backlog
                acceptor.resume()
                with trio.fail_after(5):
                    await arrived.wait()
                assert len(got) == 1 and not got[0].getblocking()
                assert got[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                if hasattr(socket, "TCP_NOTSENT_LOWAT"):  # a client that does not read fills our queue
                    assert got[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == accept.NOTSENT_LOWAT
                assert got[0].getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)  # a vanished peer is found
                if hasattr(socket, "TCP_KEEPIDLE"):
                    assert got[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == dict(accept.TCP_KEEPALIVE)[
                        "TCP_KEEPIDLE"]
                nursery.cancel_scope.cancel()
        finally:
            for sock in (*clients, *got, listener):
                sock.close()

    trio.run(main)


OUT_OF_FDS = """
import json, logging, os, resource, sys
import trio
from gateway import accept

logging.basicConfig(level=logging.INFO, stream=sys.stderr)

async def main():
    listener = accept.listen("127.0.0.1", 0, False)
    got = []
    acceptor = accept.Acceptor(listener, lambda sock, peer: got.append(sock))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    hog = []
    try:
        while len(hog) < 100:
            hog.append(os.dup(0))
    except OSError:
        pass
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acceptor.run)
        print(listener.getsockname()[1], flush=True)
        with trio.fail_after(10):
            while not acceptor.failures:
                await trio.sleep(0.01)
        await trio.sleep(1.0)  # a second out of descriptors: how often did it try?
        tries = acceptor.failures
        for fd in hog:
            os.close(fd)
        with trio.fail_after(10):
            while len(got) < 3:
                await trio.sleep(0.01)
        print(json.dumps({"tries": tries, "accepted": len(got)}), flush=True)
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def test_out_of_descriptors_backs_off_logs_once_and_recovers() -> None:
    child = subprocess.Popen([sys.executable, "-c", OUT_OF_FDS], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        out, err = child.communicate(timeout=30)
    finally:
        for sock in clients:
            sock.close()
        if child.poll() is None:
            child.kill()
            child.wait(5)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["accepted"] == 3
    assert 1 <= result["tries"] <= 12  # backing off, not spinning
    assert err.count("cannot accept clients") == 1
    assert "Traceback" not in err
