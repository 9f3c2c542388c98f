"""Channel demo: the front sends messages to a worker process through shared memory.

The worker uppercases each message in place in its own arena and sends it back.  Run with
``make run``; it prints what crossed and the channel's statistics, then exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from zeus import Channel, Region


def worker() -> None:
    """Attach to the region the demo prepared and echo messages, uppercased, until closed."""
    region = Region.from_environment()
    with Channel(region) as channel:
        for msg in channel:
            with msg:
                out = channel.reserve(len(msg.data))
                out.buffer[:] = bytes(msg.data).upper()
                out.commit(msg.id)
    region.close()


def main() -> None:
    """Start a worker, exchange a few messages and a 100 MiB payload, print figures."""
    region = Region.create()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker"],
        pass_fds=region.pass_fds,
        env={**os.environ, **region.child_env()},
    )
    with Channel(region, peer_pid=proc.pid) as channel:
        for i, word in enumerate([b"hello", b"from", b"zeus"]):
            channel.send(i, word)
            with channel.recv(timeout=10) as reply:
                print(f"sent {word!r:10} got {bytes(reply.data)!r}")
        payload = b"z" * (100 * 1024 * 1024)
        start = time.perf_counter()
        channel.send(99, payload[: channel.max_chunk])
        with channel.recv(timeout=10) as reply:
            assert bytes(reply.data) == payload[: channel.max_chunk].upper()
        took = time.perf_counter() - start
        print(f"{channel.max_chunk / 2**20:.0f} MiB round trip in {took * 1000:.1f} ms")
        print(channel.statistics())
    proc.wait(timeout=10)
    region.close()


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    else:
        main()
