"""The gateway process collects cycles as the broker and the workers do (`stack.process.tune_gc`): what
start-up made is frozen, and a young collection waits for GC_YOUNG allocations, not Python's 700 (with
thousands of clients, the default scans them again and again while they register)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from stack.process import GC_YOUNG

_CHILD = textwrap.dedent("""
    import gc, sys
    import trio
    from gateway import cli
    from gateway.server import GatewayConfig

    async def main() -> None:
        before = gc.get_threshold()[0]
        config = GatewayConfig(host="127.0.0.1", port=0, frontend="inproc://gc-front", pub_out="inproc://gc-pub")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cli.run, config)
            with trio.move_on_after(20):
                while gc.get_threshold()[0] == before:  # set once the gateway serves
                    await trio.sleep(0.01)
            print(before, gc.get_threshold()[0], gc.get_freeze_count() > 0, flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)
""")


def test_the_gateway_process_tunes_its_garbage_collector() -> None:
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, frozen = done.stdout.splitlines()[-1].split()  # after the ready line
    assert int(before) != GC_YOUNG
    assert int(after) == GC_YOUNG
    assert frozen == "True"
