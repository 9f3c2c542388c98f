"""Hostile workers, many rounds: the long run of tests/e2e/test_hostile_worker.py.

``zeus run --workers 3 -- python tests/apps/hostile_worker.py`` under continuous load from
several client threads (fresh and keep-alive connections).  Each round arms one worker with one
kind of garbage (every kind of ``tests/apps/hostile_worker.py`` in turn, ``random`` among
them, sometimes after harmless scribbles), after a random number of requests; the round ends
when the front has logged why it killed that worker and a replacement is ready.

Counted: rounds, workers killed, the log lines naming the bad value, requests served, and the
failed requests by kind -- only clean 502s for the requests in flight on the hostile worker are
allowed (at most concurrency + prefetch per round); any other failure, a round whose worker
is not killed, or the front dying fails the run.

    python -m reliability.hostile --rounds 200

Prints one JSON line of figures; exit status 1 on a failure.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.apps.hostile_worker import DETECTABLE, HARMLESS
from tests.e2e.helpers import Hammer, wait_until
from tests.e2e.test_hostile_worker import IN_FLIGHT_MAX, WORKERS, RunServer


def _one_round(server: RunServer, state: Path) -> tuple[Path, int, str, float]:
    """Wait for the armed worker to attack, be killed and replaced: (its arm file, its pid,
    the front's log line, milliseconds from the attack to that line)."""
    wait_until(lambda: any(state.glob("armed-*")), 30, "a worker to take the arm")
    armed = next(state.glob("armed-*"))
    pid = int(armed.name.rsplit("-", 1)[1])
    wait_until((state / f"attack-{pid}").exists, 30, f"worker {pid} to attack")
    attacked = time.monotonic()
    needle = f"(pid {pid}) broke the channel protocol"
    wait_until(lambda: needle in server.log(), 30, f"the front to kill {pid}")
    ms = (time.monotonic() - attacked) * 1000
    wait_until(lambda: pid not in server.workers(), 30, f"{pid} to exit")
    wait_until(lambda: len(server.ready_workers()) == WORKERS
               and pid not in server.ready_workers(), 60, "a replacement")
    line = next(x for x in server.log().splitlines() if needle in x)
    return armed, pid, line, ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--clients", type=int, default=4, help="client threads of load")
    p.add_argument("--seed", type=int, default=int(time.time()))
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    kinds = [*sorted(DETECTABLE), "random"]
    where = Path(tempfile.mkdtemp(prefix="zeus-hostile-"))
    state = where / "state"
    state.mkdir()
    server = RunServer(state, where / "zeus.log")
    problems: list[str] = []
    killed = 0
    by_kind: Counter[str] = Counter()
    detect_ms: list[float] = []
    started = time.monotonic()
    hammers = [Hammer(server, keep_alive=i % 2 == 1) for i in range(args.clients)]
    try:
        server.wait_ready(WORKERS)
        for h in hammers:
            h.__enter__()
        for n in range(args.rounds):
            if server.proc.poll() is not None:
                problems.append(f"round {n}: the front exited with {server.proc.returncode}")
                break
            kind = kinds[n % len(kinds)]
            spec = kind
            if rng.random() < 0.25:
                spec = ",".join([*rng.sample(sorted(HARMLESS), rng.randint(1, 3)), kind])
            failures_before = sum(len(h.failures) for h in hammers)
            tmp = state / "arm.tmp"
            tmp.write_text(f"{spec} {rng.randint(0, 20)}")
            tmp.rename(state / "arm")
            try:
                armed, pid, line, ms = _one_round(server, state)
            except TimeoutError as exc:
                problems.append(f"round {n} ({spec}): {exc}")
                break
            detect_ms.append(ms)
            killed += 1
            attack = state / f"attack-{pid}"
            by_kind[attack.read_text().splitlines()[-1].split()[0]] += 1
            armed.rename(state / f"done-{pid}")
            lost = sum(len(h.failures) for h in hammers) - failures_before
            if lost > IN_FLIGHT_MAX:
                problems.append(f"round {n} ({spec}): {lost} failed requests: {line}")
    finally:
        for h in hammers:
            h.__exit__()
        rc = server.stop() if server.proc.poll() is None else server.proc.returncode
        if rc != 0:
            problems.append(f"the front exited with {rc}")
    failures = Counter(str(f) for h in hammers for f in h.failures)
    total = sum(len(h.statuses) for h in hammers)
    if set(failures) - {"502"}:
        problems.append(f"failures other than 502: {dict(failures)}")
    detect_ms.sort()
    figures = {
        "rounds": args.rounds, "workers_killed": killed, "requests": total,
        "failed": dict(failures), "kills_by_kind": dict(sorted(by_kind.items())),
        "seconds": round(time.monotonic() - started, 1),
        "detect_ms_median": round(detect_ms[len(detect_ms) // 2], 1) if detect_ms else None,
        "detect_ms_max": round(detect_ms[-1], 1) if detect_ms else None,
        "seed": args.seed, "log": str(where / "zeus.log"), "problems": problems,
    }
    print(json.dumps(figures))
    return 1 if problems or killed != args.rounds else 0


if __name__ == "__main__":
    sys.exit(main())
