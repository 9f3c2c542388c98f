"""The floor under any Python front: what one uvloop process pays per request when it does
nothing but read the request and write a canned response.

A front that owns the network does at least this much for every request (a read, a write, its
share of epoll), so this is the most one front process can serve on one core, and the CPU per
request it can never go below.  ``bench/http.py`` measures Zeus against its peers; this puts
Zeus's front figure ("CPU/req split ... front") in proportion: the part above the floor is
Zeus's own work (parse, dispatch to a worker, drain, frame).

Usage: ``python bench/floor.py [--duration S]`` (needs wrk, as bench/http.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 12\r\n"
            b"server: floor\r\nconnection: keep-alive\r\n\r\nHello world!")


class _Canned(asyncio.Protocol):
    """Answers every read with the canned response (wrk sends one request per read)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(RESPONSE)


def serve(port: int) -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Canned, "127.0.0.1", port,
                                                                backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def _cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    print("the floor server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/hello"
        subprocess.run(["wrk", "-t1", "-c64", "-d1s", url], capture_output=True, check=True)
        before = _cpu(server.pid)
        out = subprocess.run(["wrk", "-t1", "-c64", f"-d{args.duration}s", url],
                             capture_output=True, text=True, check=True).stdout
        used = _cpu(server.pid) - before
    finally:
        server.terminate()
        server.wait(timeout=10)
    requests = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
    print(f"floor (one uvloop process, canned response): {requests / args.duration:,.0f} req/s, "
          f"{used / requests * 1e6:.1f} µs CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
