"""Scale-out behind a load balancer: nginx in front of two ``zeus serve`` instances, one of
them drained with TERM under load and started again, with every request counted.

    make scaleout                                   # the default scenario, about 20 s
    .venv/bin/python scripts/scaleout.py --phase 10 --clients 16
    .venv/bin/python scripts/scaleout.py --method POST   # the non-idempotent caveat

The scenario (``run_scenario``, also run by ``tests/e2e/test_scaleout.py`` with short phases):

1. start instances A and B (``zeus serve scaleout_app:app``) and nginx in front of them
   (``scripts/nginx_proxy.py``: unprivileged, temporary prefix, keep-alive upstreams,
   ``proxy_next_upstream``); closed-loop clients send ``/work?MS`` requests through nginx;
2. *before*: both instances answer;
3. *drain*: once a request is in flight on A (the app marks it), A gets TERM; A stops
   accepting, finishes what it has, closes its idle keep-alive connections and exits 0;
4. *down*: A is gone, B answers everything;
5. *back*: A starts again on the same port; nginx sends it traffic again once
   ``fail_timeout`` has passed since A last failed.

A request fails when the client gets anything but a 200 from the app (an nginx 502/504 or
an error).  The report gives, per phase, the requests each instance answered, the failures,
the requests nginx retried on the other instance (its access log), what its error log says,
and the drain time (TERM to exit).  Exit status: 0 when nothing failed and each phase saw
what it should.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

if str(Path(__file__).resolve().parent) not in sys.path:  # nginx_proxy sits beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from nginx_proxy import NginxProxy, NginxUnavailable, find_nginx

SCRIPTS: Final = Path(__file__).resolve().parent
PHASES: Final = ("before", "drain", "down", "back")
ERROR_KINDS: Final = {  # error-log phrase -> what it means
    "connect() failed": "connection refused (listener closed)",
    "prematurely closed": "upstream closed a connection before answering",
    "reset by peer": "upstream reset a connection",
    "temporarily disabled": "instance marked down (max_fails)",
    "no live upstreams": "no instance available",
    "timed out": "upstream timeout",
}


_STALE: Final = (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- instances


class Instance:
    """One ``zeus serve`` process on a fixed loopback port (it keeps the port across a
    restart, as a host behind a load balancer does)."""

    def __init__(self, name: str, workdir: Path, *, workers: int, graceful_timeout: float,
                 keep_alive: float) -> None:
        self.name = name
        self.port = free_port()
        self.state = workdir / f"state-{name}"
        self.state.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"zeus-{name}.log"
        self.argv = [sys.executable, "-m", "zeus", "serve", "scaleout_app:app",
                     "--chdir", str(SCRIPTS), "--bind", f"127.0.0.1:{self.port}",
                     "--workers", str(workers), "--graceful-timeout", f"{graceful_timeout:g}",
                     "--keep-alive", f"{keep_alive:g}"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for stale in self.state.glob("busy-*"):
            stale.unlink()
        env = {**os.environ, "SCALEOUT_STATE_DIR": str(self.state)}
        if os.geteuid() == 0:  # a CI machine: root workers are meant here, zeus wants it said
            env.setdefault("ZEUS_ALLOW_ROOT", "1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)

    def answers(self) -> bool:
        """True once the instance answers a request directly (not through nginx)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"zeus {self.name} exited with {self.proc.returncode}:\n"
                               f"{self.log()[-3000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def busy(self) -> bool:
        """A request is running in one of its workers right now."""
        return any(self.state.glob("busy-*"))

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """TERM and wait; SIGKILL the front if it will not go (its workers follow it)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --------------------------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request as the client saw it."""

    sent: float  # monotonic time the request was sent
    done: float  # monotonic time the response (or error) arrived
    ok: bool
    upstream: str  # the instance that answered, "127.0.0.1:PORT" ("" if none)
    tried: int  # instances nginx tried (X-Upstream)
    detail: str  # status and body, or the error, for a failure


class Load:
    """Closed-loop clients: each sends a request through nginx on its keep-alive connection,
    waits for the answer, and sends the next, until stopped."""

    def __init__(self, port: int, *, clients: int, method: str, max_ms: int,
                 body_size: int) -> None:
        self.port = port
        self.method = method
        self.max_ms = max_ms
        self.body = b"x" * body_size if method in ("POST", "PUT", "PATCH") else None
        self.outcomes: list[Outcome] = []  # list.append is atomic: the threads share it
        self.stale_retries: list[float] = []  # resent after a stale keep-alive connection
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(clients)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        conn: http.client.HTTPConnection | None = None
        used = 0  # requests ``conn`` has carried

        def exchange(target: str) -> tuple[http.client.HTTPResponse, bytes]:
            nonlocal conn, used
            for attempt in (0, 1):
                if conn is None:
                    conn, used = http.client.HTTPConnection("127.0.0.1", self.port, 30), 0
                try:
                    conn.request(self.method, target, body=self.body)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = None
                    # A keep-alive connection the server closed while idle (nginx does on a
                    # reload) fails before any byte of a response: the request was not
                    # processed, and a browser resends it once on a new connection.  Anything
                    # else, or a second failure, is a failed request.
                    if attempt == 0 and used and isinstance(exc, _STALE):
                        self.stale_retries.append(time.monotonic())
                        continue
                    raise
                used += 1
                if resp.will_close:
                    conn.close()
                    conn = None
                return resp, data
            raise AssertionError("unreachable: the second attempt returns or raises")

        while not self._stop.is_set():
            target = f"/work?{rng.randint(0, self.max_ms)}"
            sent = time.monotonic()
            try:
                resp, data = exchange(target)
            except (OSError, http.client.HTTPException) as exc:
                self.outcomes.append(Outcome(sent, time.monotonic(), False, "", 0, repr(exc)))
                continue
            tried = [p.strip() for p in (resp.getheader("x-upstream") or "").split(",")]
            ok = resp.status == 200 and data.startswith(b"ok ")
            detail = "" if ok else f"{resp.status} {data[:200]!r}"
            self.outcomes.append(Outcome(sent, time.monotonic(), ok, tried[-1], len(tried),
                                         detail))
        if conn is not None:
            conn.close()


# ----------------------------------------------------------------------------- scenario


@dataclass(slots=True)
class Options:
    phase: float = 5.0  # seconds of load in each of before / down / back
    clients: int = 8
    method: str = "GET"
    max_ms: int = 30  # each request waits 0..max_ms ms in the app
    body_size: int = 1024  # for POST
    workers: int = 2
    graceful_timeout: float = 10.0
    keep_alive: float = 5.0
    fail_timeout: float = 2.0
    remove_first: bool = False  # take A out of nginx's rotation (reload) before its TERM


@dataclass(slots=True)
class Report:
    """What the scenario measured."""

    options: Options
    requests: int = 0
    failures: list[Outcome] = field(default_factory=list)
    per_phase: dict[str, Counter[str]] = field(default_factory=dict)  # phase -> name -> n
    failed_per_phase: Counter[str] = field(default_factory=Counter)
    drain_seconds: float = 0.0
    drain_status: int | None = None
    back_after: float = 0.0  # A ready -> first request A answered through nginx
    finished_after_term: int = 0  # requests A answered after its TERM (in flight then)
    seconds: float = 0.0
    logged: int = 0  # requests in nginx's access log
    logged_non_200: int = 0
    retried: int = 0  # logged requests that nginx sent to more than one instance
    stale_retries: int = 0  # client resent after nginx closed its idle keep-alive connection
    retried_per_phase: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # error-log kind -> lines

    def render(self) -> str:
        o = self.options
        lines = [
            f"scale-out: nginx + 2 zeus instances ({o.workers} workers each), {o.clients} "
            f"clients, {o.method} /work?0..{o.max_ms}ms, {o.phase:g} s per phase, "
            + ("A taken out of rotation before TERM" if o.remove_first
               else "TERM with A in rotation"),
            f"requests {self.requests} ({self.requests / self.seconds:.0f}/s), "
            f"failed {len(self.failures)}, logged by nginx {self.logged} "
            f"(non-200: {self.logged_non_200}), retried by nginx {self.retried}, resent by "
            f"clients after nginx closed an idle connection {self.stale_retries}",
            f"drain: TERM to exit {self.drain_seconds:.2f} s, exit status {self.drain_status}, "
            f"{self.finished_after_term} requests in flight on A finished after TERM; "
            f"back: first request through nginx {self.back_after:.2f} s after A was ready",
            "phase (by when a request was sent)",
            "          A       B  failed  retried",
        ]
        for phase in PHASES:
            c = self.per_phase.get(phase, Counter())
            lines.append(f"{phase:<7}{c['A']:>5}{c['B']:>8}{self.failed_per_phase[phase]:>8}"
                         f"{self.retried_per_phase[phase]:>9}")
        if self.errors:
            lines.append("nginx error log: " + ", ".join(
                f"{n} x {ERROR_KINDS[k]}" for k, n in self.errors.most_common()))
        for f in self.failures[:10]:
            lines.append(f"FAILED: {f.detail}")
        return "\n".join(lines)


def run_scenario(nginx: str, options: Options, workdir: Path,
                 say: Callable[[str], None] = lambda _: None) -> Report:
    """Run the whole scenario (see the module docstring) and measure it."""
    o = options
    instances = [Instance(name, workdir, workers=o.workers,
                          graceful_timeout=o.graceful_timeout, keep_alive=o.keep_alive)
                 for name in ("A", "B")]
    a, b = instances
    names = {f"127.0.0.1:{i.port}": i.name for i in instances}
    report = Report(o)
    try:
        for inst in instances:
            inst.start()
        for inst in instances:
            wait_until(inst.answers, 60, f"zeus {inst.name} to answer")
        with NginxProxy(nginx, [a.port, b.port], fail_timeout=o.fail_timeout,
                        upstream_keepalive_timeout=max(1.0, o.keep_alive - 1)) as proxy:
            proxy.start()
            say(f"nginx on 127.0.0.1:{proxy.port} -> A :{a.port}, B :{b.port}")
            load = Load(proxy.port, clients=o.clients, method=o.method, max_ms=o.max_ms,
                        body_size=o.body_size)
            start = time.monotonic()
            load.start()
            try:
                marks = _drive(a, proxy, load, names, o, say)
            finally:
                load.stop()
            report.seconds = time.monotonic() - start
            proxy.stop()
            _tally(report, load.outcomes, names, marks, proxy)
            report.stale_retries = len(load.stale_retries)
            for name in ("nginx.conf", "access.log", "error.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(proxy.prefix / name, workdir / f"nginx-{name}")
    finally:
        for inst in instances:
            inst.stop()
    return report


def _served(load: Load, names: dict[str, str], name: str, after: float) -> int:
    """Requests sent after ``after`` that instance ``name`` answered."""
    return sum(1 for x in list(load.outcomes) if x.sent > after and names.get(x.upstream) == name)


def _drive(a: Instance, proxy: NginxProxy, load: Load, names: dict[str, str], o: Options,
           say: Callable[[str], None]) -> dict[str, float]:
    """Steer instance A through drain and restart while the load runs; the phase marks."""
    stop = threading.Event()  # never set: Event.wait is the load's clock, not a handshake
    wait_until(lambda: _served(load, names, "A", 0) and _served(load, names, "B", 0), 30,
               "both instances to answer through nginx")
    stop.wait(o.phase)
    leave = time.monotonic()
    if o.remove_first:
        proxy.set_down([a.port])
        say(f"A taken out of rotation (reload) in {time.monotonic() - leave:.2f} s")
    else:
        wait_until(a.busy, 10, "a request in flight on A")
    term = time.monotonic()
    a.terminate()
    say("TERM sent to A")
    status = a.wait(o.graceful_timeout + 30)
    down = time.monotonic()
    say(f"A exited with {status} after {down - term:.2f} s")
    stop.wait(o.phase)
    restart = time.monotonic()  # from here A may answer (nginx can reach it before our poll)
    a.start()
    wait_until(a.answers, 60, "zeus A to answer again")
    ready = time.monotonic()
    if o.remove_first:
        proxy.set_down([])
        say("A back in rotation (reload)")
    wait_until(lambda: _served(load, names, "A", ready), o.fail_timeout + 30,
               "nginx to send traffic to A again")
    first = min(x.done for x in list(load.outcomes)
                if x.sent > ready and names.get(x.upstream) == "A")
    say(f"A is back: first request {first - ready:.2f} s after it was ready")
    stop.wait(o.phase)
    return {"leave": leave, "term": term, "down": down, "restart": restart, "ready": ready,
            "first": first,
            "status": float(status)}


def _phase(t: float, marks: dict[str, float]) -> str:
    if t < marks["leave"]:
        return "before"
    if t < marks["down"]:
        return "drain"
    if t < marks["restart"]:
        return "down"
    return "back"


def _tally(report: Report, outcomes: list[Outcome], names: dict[str, str],
           marks: dict[str, float], proxy: NginxProxy) -> None:
    report.requests = len(outcomes)
    report.drain_seconds = marks["down"] - marks["term"]
    report.drain_status = int(marks["status"])
    report.back_after = marks["first"] - marks["ready"]
    report.per_phase = {p: Counter() for p in PHASES}
    report.finished_after_term = sum(
        1 for x in outcomes
        if x.sent < marks["term"] < x.done and names.get(x.upstream) == "A")
    for x in outcomes:
        phase = _phase(x.sent, marks)  # by when it was sent: A cannot answer what came later
        if x.ok:
            report.per_phase[phase][names.get(x.upstream, "?")] += 1
        else:
            report.failures.append(x)
            report.failed_per_phase[phase] += 1
    records = proxy.access_log()
    report.logged = len(records)
    report.logged_non_200 = sum(1 for r in records if r.status != 200)
    # nginx stamps wall-clock time; map it onto the monotonic marks through the offset now.
    offset = time.time() - time.monotonic()
    for r in records:
        if r.retried:
            report.retried += 1
            report.retried_per_phase[_phase(r.msec - r.request_time - offset, marks)] += 1
    text = proxy.error_log()
    for line in text.splitlines():
        for phrase in ERROR_KINDS:
            if phrase in line:
                report.errors[phrase] += 1
                break


def succeeded(report: Report) -> list[str]:
    """What the scenario promises, as a list of broken promises (empty: all kept)."""
    broken = []
    pp = report.per_phase
    if report.failures:
        broken.append(f"{len(report.failures)} requests failed")
    if report.drain_status != 0:
        broken.append(f"A exited with {report.drain_status} after TERM")
    if not (pp["before"]["A"] and pp["before"]["B"]):
        broken.append("both instances should answer before the drain")
    if report.options.remove_first:
        if report.retried:
            broken.append("nginx should never retry when A leaves the rotation before TERM")
    elif report.finished_after_term == 0:
        broken.append("A should finish the requests in flight when TERM arrived")
    if pp["down"]["A"] or not pp["down"]["B"]:
        broken.append("only B should answer while A is down")
    if not pp["back"]["A"]:
        broken.append("A should answer again once restarted")
    if report.logged != report.requests:
        broken.append(f"nginx logged {report.logged} requests, the clients sent "
                      f"{report.requests}")
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", type=float, default=5.0, help="seconds of load per phase")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--method", default="GET", choices=("GET", "POST"),
                        help="POST shows the non-idempotent caveat (docs/scale-out.md)")
    parser.add_argument("--max-ms", type=int, default=30, help="longest app wait per request")
    parser.add_argument("--workers", type=int, default=2, help="workers per instance")
    parser.add_argument("--remove-first", action="store_true",
                        help="take A out of nginx's rotation (reload) before TERM: the safe "
                             "procedure for non-idempotent requests")
    parser.add_argument("--no-install", action="store_true",
                        help="fail instead of installing nginx with apt-get")
    parser.add_argument("--keep", action="store_true", help="keep the logs directory")
    args = parser.parse_args(argv)
    try:
        nginx = find_nginx(install=not args.no_install)
    except NginxUnavailable as exc:
        print(f"scaleout: {exc}", file=sys.stderr)
        return 2
    options = Options(phase=args.phase, clients=args.clients, method=args.method,
                      max_ms=args.max_ms, workers=args.workers,
                      remove_first=args.remove_first)
    workdir = Path(tempfile.mkdtemp(prefix="zeus-scaleout-"))
    try:
        report = run_scenario(nginx, options, workdir, say=lambda s: print(f"  {s}",
                                                                              flush=True))
        print(report.render())
        broken = succeeded(report)
        for b in broken:
            print(f"NOT OK: {b}")
        print("OK" if not broken else "FAILED")
        return 1 if broken else 0
    finally:
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)


if __name__ == "__main__":
    sys.exit(main())
