"""Drain (TERM) and rolling reload (HUP) under continuous load: no request may fail.

``zeus serve`` runs 4 workers of ``tests.apps.chaos_app``.  Two groups of clients send requests
back to back: ``--connections`` keep-alive connections and as many opening a new connection per
request (``Connection: close``); 10 % of the requests are GET /sleep?0.05, so requests are
always in flight, mid-handler, when the signal lands.

* ``term``: after ``--before`` seconds, SIGTERM; the clients keep going until zeus has exited.
  Every request sent before the TERM must get a 200.  After it, the listener closes: a new
  connection is refused (counted, expected: a load balancer sends it elsewhere), and a request
  the server never read, on a keep-alive connection it closed while idle, ends with a clean EOF
  before any byte of a response (``keep-alive closed``: counted; the server never saw it, and
  HTTP clients retry it on a new connection, RFC 9112 §9.3.1).  A new connection that was
  accepted must be answered.
  A reset, a cut response, a timeout or any non-200 is a failure.  zeus must exit 0.
* ``hup``: after ``--before`` seconds, SIGHUP; the clients keep going until every worker has
  been replaced and ``--after`` more seconds have passed.  Every request must get a 200.

    .venv/bin/python reliability/drain.py                  # both, 16 + 16 connections
    .venv/bin/python reliability/drain.py --scenario hup --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reliability.common import Load, Zeus, log, request_bytes, run_scenarios, table

WORKERS = 4
_HELLO = request_bytes("GET", "/hello")
_SLEEP = request_bytes("GET", "/sleep?0.05")
_ECHO = request_bytes("POST", "/echo", b"d" * 2048)


def mix(rng: random.Random) -> tuple[str, bytes]:
    """60 % GET /hello, 30 % POST /echo of 2 KiB, 10 % GET /sleep?0.05."""
    x = rng.random()
    return ("req", _HELLO if x < 0.6 else _ECHO if x < 0.9 else _SLEEP)


@dataclass
class Result:
    scenario: str
    requests: int = 0
    before: dict[str, int] = field(default_factory=dict)  # outcomes of requests sent before
    after: dict[str, int] = field(default_factory=dict)  # ... and after the signal
    in_flight_at_signal: int = 0
    refused: int = 0
    signal_to_exit_s: float = 0.0
    exit_status: int | None = None
    broken: list[str] = field(default_factory=list)


async def run(name: str, *, before: float, after: float, connections: int,
              seed: int) -> Result:
    result = Result(name)
    loop = asyncio.get_running_loop()
    with Zeus("--log-level", "info", "--graceful-timeout", "10", workers=WORKERS) as zeus:
        loads = [Load(zeus.port, mix, connections=connections, events=True, seed=seed),
                 Load(zeus.port, mix, connections=connections, events=True, keep_alive=False,
                      seed=seed + 1)]
        for load in loads:
            load.run()
        await asyncio.sleep(before)
        old = zeus.workers()
        t_signal = loop.time()
        zeus.proc.send_signal(signal.SIGTERM if name == "term" else signal.SIGHUP)
        if name == "term":
            while zeus.proc.poll() is None and loop.time() - t_signal < 30:
                await asyncio.sleep(0.01)
            result.signal_to_exit_s = round(loop.time() - t_signal, 3)
            await asyncio.sleep(0.2)  # the clients see the closed port
        else:
            deadline = loop.time() + 30
            while loop.time() < deadline and (
                    zeus.workers() & old or len(zeus.ready_workers()) < WORKERS):
                await asyncio.sleep(0.02)
            result.signal_to_exit_s = round(loop.time() - t_signal, 3)  # here: reload time
            if zeus.workers() & old:
                result.broken.append("the old workers were not all replaced in 30 s")
            await asyncio.sleep(after)
        for load in loads:
            await load.stop()
        result.exit_status = zeus.stop(signal.SIGTERM) if zeus.proc.poll() is None else \
            zeus.proc.returncode
        for load in loads:
            result.refused += load.refused
            group = "keep-alive" if load.keep_alive else "new-connection"
            for t in load.tallies.values():
                for sent, done, status in t.events:
                    outcome = status if status == "200" else f"{group} {status}"
                    side = result.before if sent < t_signal else result.after
                    side[outcome] = side.get(outcome, 0) + 1
                    result.in_flight_at_signal += sent < t_signal < done
                result.requests += t.total
        if result.broken or check(result):
            log(f"{name}: zeus log kept in {zeus.log_path}")
        else:
            zeus.log_path.unlink()
    return result


def check(r: Result) -> list[str]:
    """The invariants; appends what broke to ``r.broken`` and returns it."""
    bad_before = {k: v for k, v in r.before.items() if k != "200"}
    if bad_before:
        r.broken.append(f"requests sent before the signal failed: {bad_before}")
    allowed_after = {"200", "keep-alive closed"} if r.scenario == "term" else {"200"}
    bad_after = {k: v for k, v in r.after.items() if k not in allowed_after}
    if bad_after:
        r.broken.append(f"requests sent after the signal failed: {bad_after}")
    if r.exit_status != 0:
        r.broken.append(f"zeus exited {r.exit_status}")
    if r.in_flight_at_signal == 0:
        r.broken.append("no request was in flight at the signal: nothing was proven")
    return r.broken


def fmt(outcomes: dict[str, int]) -> str:
    return ", ".join(f"{v:,} x {k}" for k, v in sorted(outcomes.items())) or "0"


def render(results: list[Result]) -> str:
    rows = []
    for r in results:
        rows.append([r.scenario, f"{r.requests:,}", r.in_flight_at_signal, fmt(r.before),
                     fmt(r.after), r.refused, r.signal_to_exit_s,
                     "ok" if not r.broken else "BROKEN: " + "; ".join(r.broken)])
    return table(rows, ["signal", "requests", "in flight at the signal", "sent before: outcomes",
                        "sent after: outcomes", "connections refused after",
                        "signal to exit (term) / all replaced (hup), s", "verdict"])


async def main_async(args: argparse.Namespace) -> list[Result]:
    results = []
    for i in range(args.repeat):
        for name in args.scenario or ("term", "hup"):
            r = await run(name, before=args.before, after=args.after,
                          connections=args.connections, seed=args.seed + i)
            log(f"{name}: {'ok' if not r.broken else 'BROKEN'} {asdict(r)}")
            results.append(r)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", choices=("term", "hup"))
    parser.add_argument("--before", type=float, default=3.0, help="seconds of load first")
    parser.add_argument("--after", type=float, default=2.0, help="hup: seconds after reload")
    parser.add_argument("--connections", type=int, default=16, help="per client group")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    return run_scenarios(main_async(args), render, args.json)


if __name__ == "__main__":
    sys.exit(main())
