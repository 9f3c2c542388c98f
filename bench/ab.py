"""Two builds of Zeus against each other, interleaved: A, B, A, B, ...

The A/B tables of BENCHMARKS.md come from this.  On a shared 2-core virtual machine a single
run moves by 15-20%, so one build is never measured against figures of another hour: each
pair runs back to back and the medians are compared.  Per run: ``zeus serve`` from one
checkout with 2 workers, wrk for a second of warm-up, then ``wrk -t1 -c64`` for the measured
seconds; CPU per request of the front and of the workers from ``/proc/PID/stat``.

Usage::

    git worktree add /tmp/base HEAD~1 && (cd /tmp/base && make native)
    python bench/ab.py /tmp/base . --pairs 4

Each directory must be a checkout whose extensions are built (``make native``); both run with
this interpreter, so its environment must have Zeus's dependencies (the project's ``.venv``).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

APPS = {"native": "bench.apps:native_app", "wsgi": "bench.apps:wsgi_app"}


def _ticks(pid: int) -> int:
    """User + system clock ticks of ``pid`` so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int, path: str) -> bool:
    """Whether GET ``path`` answers 200 (a raw socket: this directory's http.py shadows the
    standard library's http package for scripts run from here)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: ab\r\nConnection: close\r\n\r\n".encode())
            return s.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def run_once(src: Path, interface: str, path: str, seconds: int) -> dict[str, float]:
    """One measured run of the build in ``src``: req/s and µs of CPU per request."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=f"{src / 'src'}:{src}", ZEUS_ALLOW_ROOT="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "zeus", "serve", APPS[interface], "--interface", interface,
         "--workers", "2", "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=src, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}{path}"
    try:
        deadline = time.monotonic() + 30
        while not _answers(port, path):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"{src}: zeus did not answer {url}")
            time.sleep(0.05)
        subprocess.run(["wrk", "-t1", "-c64", "-d1s", url], capture_output=True, check=True)
        workers = _children(server.pid)
        front0, workers0 = _ticks(server.pid), sum(_ticks(w) for w in workers)
        out = subprocess.run(["wrk", "-t1", "-c64", f"-d{seconds}s", url], capture_output=True,
                             text=True, check=True).stdout
        front1, workers1 = _ticks(server.pid), sum(_ticks(w) for w in workers)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    requests = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    return {"rps": requests / seconds, "front_us": (front1 - front0) * tick_us / requests,
            "workers_us": (workers1 - workers0) * tick_us / requests}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="checkout A (the base)")
    parser.add_argument("b", type=Path, help="checkout B (the change)")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--duration", type=int, default=6, help="measured seconds per run")
    parser.add_argument("--interface", choices=sorted(APPS), default="native")
    parser.add_argument("--path", default="/hello", help="/hello, /1m")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for i in range(args.pairs):
        for name, src in (("A", args.a), ("B", args.b)):
            r = run_once(src.resolve(), args.interface, args.path, args.duration)
            runs[name].append(r)
            print(f"pair {i + 1} {name}: {r['rps']:,.0f} req/s, front {r['front_us']:.1f} µs, "
                  f"workers {r['workers_us']:.1f} µs", flush=True)
    for name in ("A", "B"):
        med = {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
        print(f"{name} median: {med['rps']:,.0f} req/s, front {med['front_us']:.1f} µs, "
              f"workers {med['workers_us']:.1f} µs per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
