"""Soak: a million requests of mixed sizes and methods; nothing may grow or leak.

``zeus serve`` runs 4 workers of ``tests.apps.chaos_app``; wrk (installed with apt-get when
missing and root) sends a weighted mix from a Lua script: GET /hello, GET of 1 KiB, 64 KiB and
1 MiB bodies, POST and PUT of 1 KiB, 4 KiB and 64 KiB echoed back, PATCH and DELETE.  The run is
cut in rounds of ``--round`` seconds (each a new wrk, so connections churn too) until
``--requests`` are done; before the first round a warm-up lets lazy allocations settle.

Measured at the start (after the warm-up) and at the end, and the front's RSS after every round:

* RSS of the front and of each worker (the same worker processes throughout: nothing recycles);
* the front's open descriptors, and its memfds (``/proc/PID/fd`` links to ``/memfd:``, one per
  worker region);
* zombie processes: the front's zombie children, and all zombies on the machine.

Invariants (exit status 1 if one breaks): no socket error and no non-2xx response in wrk's
count; the front's anonymous (private) RSS grows by at most ``--rss-slack`` MiB, each worker's
too (the shared regions' pages count in RSS as they are first touched, up to their size: they are
reported, not checked); the front's descriptors and memfds are the same at the end; no zombie
child, no more zombies on the machine.

    .venv/bin/python reliability/soak.py                     # 1,000,000 requests
    .venv/bin/python reliability/soak.py --requests 100000   # a shorter run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reliability.common import (
    Zeus,
    anon_kib,
    children,
    fds,
    log,
    memfds,
    memory_kib,
    table,
    wait_until,
    zombie_count,
)

WORKERS = 4
LUA = r"""
-- A weighted mix of requests, each built once per thread (wrk.format) and picked at random.
local reqs = {}
local function add(weight, method, path, body)
  local headers = {Host = "soak"}  -- wrk.headers has no Host yet at load time
  if body then headers["Content-Type"] = "application/octet-stream" end
  local r = wrk.format(method, path, headers, body)
  for _ = 1, weight do reqs[#reqs + 1] = r end
end
add(40, "GET", "/hello")
add(15, "GET", "/size?1024")
add(6, "GET", "/size?65536")
add(1, "GET", "/size?1048576")
add(15, "POST", "/echo", string.rep("p", 1024))
add(5, "POST", "/echo", string.rep("q", 65536))
add(5, "PUT", "/echo", string.rep("u", 4096))
add(4, "PATCH", "/echo", string.rep("a", 100))
add(4, "DELETE", "/hello")
math.randomseed(os.time())
request = function() return reqs[math.random(#reqs)] end
"""


def ensure_wrk() -> str:
    """The wrk binary; apt-get installs it when missing (as root)."""
    path = shutil.which("wrk")
    if path:
        return path
    log("installing wrk (apt-get install -y wrk) ...")
    for argv in (["apt-get", "install", "-y", "-q", "wrk"], ["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "wrk"]):
        subprocess.run(argv, capture_output=True, timeout=600, check=False)
        path = shutil.which("wrk")
        if path:
            return path
    raise SystemExit("wrk is missing and apt-get could not install it")


@dataclass
class WrkRound:
    requests: int
    seconds: float
    socket_errors: int
    non_2xx: int


def run_wrk(wrk: str, port: int, script: str, seconds: float, connections: int) -> WrkRound:
    """One wrk run; its request count and errors."""
    out = subprocess.run(
        [wrk, "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script,
         f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
        timeout=seconds + 60, check=True).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not m:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    secs = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkRound(int(m.group(1)), secs,
                    sum(int(g) for g in errors.groups()) if errors else 0,
                    int(non2xx.group(1)) if non2xx else 0)


@dataclass
class Snapshot:
    """The processes' figures at one moment.  RSS is split: ``anon`` is private memory (a
    leak shows there); ``shmem`` is the touched part of the shared regions (bounded by
    region size x workers, and not the process's own)."""

    front_rss_kib: int
    front_anon_kib: int
    front_shmem_kib: int
    worker_rss_kib: dict[int, int]
    worker_anon_kib: dict[int, int]
    front_fds: int
    front_memfds: int
    zombie_children: int
    zombies_machine: int

    @classmethod
    def take(cls, zeus: Zeus) -> Snapshot:
        front = memory_kib(zeus.pid)
        workers = {p: memory_kib(p) for p in sorted(zeus.workers())}
        return cls(front["VmRSS"], front["RssAnon"], front["RssShmem"],
                   {p: m["VmRSS"] for p, m in workers.items()},
                   {p: m["RssAnon"] for p, m in workers.items()},
                   len(fds(zeus.pid)), memfds(zeus.pid),
                   len(children(zeus.pid, zombies=True)), zombie_count())


@dataclass
class Result:
    requests: int = 0
    seconds: float = 0.0
    socket_errors: int = 0
    non_2xx: int = 0
    start: Snapshot | None = None
    end: Snapshot | None = None
    front_anon_rounds_kib: list[int] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)


def soak(requests: int, round_s: float, warmup_s: float, connections: int,
         slack_mib: float) -> Result:
    wrk = ensure_wrk()
    result = Result()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA)
        script = f.name
    try:
        with Zeus("--log-level", "info", "--graceful-timeout", "10",
                  workers=WORKERS) as zeus:
            idle_fds = len(fds(zeus.pid))  # before any client
            log(f"warm-up {warmup_s:.0f} s")
            warm = run_wrk(wrk, zeus.port, script, warmup_s, connections)
            settle(zeus, idle_fds)
            result.start = Snapshot.take(zeus)
            log(f"start: {result.start}")
            t0 = time.monotonic()
            while result.requests < requests:
                left = requests - result.requests
                rate = result.requests / max(1e-3, time.monotonic() - t0) if \
                    result.requests else warm.requests / max(1e-3, warm.seconds)
                r = run_wrk(wrk, zeus.port, script, min(round_s, max(1.0, left / rate)),
                            connections)
                result.requests += r.requests
                result.socket_errors += r.socket_errors
                result.non_2xx += r.non_2xx
                result.front_anon_rounds_kib.append(anon_kib(zeus.pid))
                log(f"{result.requests:,} requests, {r.requests / r.seconds:,.0f}/s; front "
                    f"anonymous RSS {result.front_anon_rounds_kib[-1] / 1024:.1f} MiB; errors "
                    f"{result.socket_errors}, non-2xx {result.non_2xx}")
            result.seconds = round(time.monotonic() - t0, 1)
            settle(zeus, idle_fds)
            result.end = Snapshot.take(zeus)
            log(f"end: {result.end}")
            rc = zeus.stop()
            if rc != 0:
                result.broken.append(f"zeus exited {rc} on SIGTERM")
    finally:
        Path(script).unlink()
    check(result, slack_mib, warm.socket_errors + warm.non_2xx)
    return result


def settle(zeus: Zeus, front_fds: int, timeout: float = 5.0) -> None:
    """Wait (up to ``timeout``) until the front is back to ``front_fds`` descriptors: the
    clients' last connections close a moment after the load stops.  A leak never gets there
    (and ``check`` reports it)."""
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: len(fds(zeus.pid)) <= front_fds, timeout, "the front's descriptors")


def check(r: Result, slack_mib: float, warm_errors: int) -> None:
    s, e = r.start, r.end
    assert s is not None and e is not None
    if r.socket_errors or r.non_2xx or warm_errors:
        r.broken.append(f"{r.socket_errors} socket errors, {r.non_2xx} non-2xx responses "
                        f"({warm_errors} in the warm-up)")
    slack = slack_mib * 1024
    if e.front_anon_kib - s.front_anon_kib > slack:
        r.broken.append(f"front anonymous RSS grew {s.front_anon_kib} -> {e.front_anon_kib} KiB")
    if set(e.worker_anon_kib) != set(s.worker_anon_kib):
        r.broken.append(f"workers changed: {sorted(s.worker_anon_kib)} -> "
                        f"{sorted(e.worker_anon_kib)}")
    for pid, start in s.worker_anon_kib.items():
        end = e.worker_anon_kib.get(pid, 0)
        if end - start > slack:
            r.broken.append(f"worker {pid} anonymous RSS grew {start} -> {end} KiB")
    if (e.front_fds, e.front_memfds) != (s.front_fds, s.front_memfds):
        r.broken.append(f"front descriptors {s.front_fds} -> {e.front_fds}, memfds "
                        f"{s.front_memfds} -> {e.front_memfds}")
    if e.zombie_children or e.zombies_machine > s.zombies_machine:
        r.broken.append(f"zombies: {e.zombie_children} children, machine "
                        f"{s.zombies_machine} -> {e.zombies_machine}")


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def render(r: Result) -> str:
    s, e = r.start, r.end
    assert s is not None and e is not None
    rows = [
        ["requests",
         f"{r.requests:,} in {r.seconds} s ({r.requests / max(r.seconds, 1e-3):,.0f}/s)", ""],
        ["socket errors / non-2xx", f"{r.socket_errors} / {r.non_2xx}", ""],
        ["front RSS MiB (anonymous + shared regions)",
         f"{mib(s.front_rss_kib)} ({mib(s.front_anon_kib)} + {mib(s.front_shmem_kib)})",
         f"{mib(e.front_rss_kib)} ({mib(e.front_anon_kib)} + {mib(e.front_shmem_kib)})"],
        ["front anonymous RSS MiB, min / max over the rounds",
         f"{mib(min(r.front_anon_rounds_kib))} / {mib(max(r.front_anon_rounds_kib))}", ""],
        ["worker RSS MiB (each)", " ".join(mib(v) for v in s.worker_rss_kib.values()),
         " ".join(mib(v) for v in e.worker_rss_kib.values())],
        ["worker anonymous RSS MiB (each)",
         " ".join(mib(v) for v in s.worker_anon_kib.values()),
         " ".join(mib(v) for v in e.worker_anon_kib.values())],
        ["front fds / memfds", f"{s.front_fds} / {s.front_memfds}",
         f"{e.front_fds} / {e.front_memfds}"],
        ["zombies: front's children / machine", f"{s.zombie_children} / {s.zombies_machine}",
         f"{e.zombie_children} / {e.zombies_machine}"],
        ["verdict", "ok" if not r.broken else "BROKEN: " + "; ".join(r.broken), ""],
    ]
    return table(rows, ["figure", "start", "end"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--round", type=float, default=30.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rss-slack", type=float, default=8.0,
                        help="MiB a process's RSS may grow between start and end")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    r = soak(args.requests, args.round, args.warmup, args.connections, args.rss_slack)
    print(render(r))
    if args.json:
        args.json.write_text(json.dumps(asdict(r), indent=2))
    return 1 if r.broken else 0


if __name__ == "__main__":
    sys.exit(main())
