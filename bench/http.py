"""Zeus against the usual Python HTTP servers, side by side, in one run, under wrk.

Run ``.venv/bin/python bench/http.py [--quick] [--json] [--duration SECONDS] [--only NAMES]``.

Theory of operation
-------------------
The script first makes sure it has what it needs: ``wrk`` (``apt-get install -y wrk``, after
``apt-get update`` if the first try fails) and the peers, installed from PyPI into their own
virtualenv ``bench/.peers-venv`` made with this same Python: gunicorn, ``uvicorn[standard]``
(uvloop + httptools) and granian.  A peer that cannot be installed is reported and skipped.

Then, one server at a time, each with 2 worker processes on a free 127.0.0.1 port, with the
apps of ``bench/apps.py`` (no framework):

================  ==============================================================================
zeus-wsgi         ``zeus serve bench.apps:wsgi_app --interface wsgi --workers 2``
zeus-native       ``zeus serve bench.apps:native_app --interface native --workers 2``
gunicorn-sync     ``gunicorn -w 2 -k sync bench.apps:wsgi_app``
gunicorn-gthread  ``gunicorn -w 2 -k gthread --threads 4 bench.apps:wsgi_app``
uvicorn           ``uvicorn bench.apps:asgi_app --workers 2 --loop uvloop --http httptools``
granian-wsgi      ``granian --interface wsgi --workers 2 bench.apps:wsgi_app``
granian-asgi      ``granian --interface asgi --workers 2 bench.apps:asgi_app``
================  ==============================================================================

Access logs are off and log levels at ``warning`` everywhere (Zeus's default has no access log
either).  For each server: start it in a session of its own, wait (with a deadline) until
``GET /hello`` answers, check that all three endpoints answer correctly, and for each case
(``GET /hello`` 12 bytes, ``GET /1m`` 1 MiB, ``POST /upload`` 1 MiB) run wrk for 1 s to warm
up, then ``wrk -t1 -c64 -d10s --latency`` (a Lua script makes the upload's POST with a 1 MiB
body).  Then TERM the server, KILL it after a deadline, and KILL anything of its session that
is still alive, so no process is left behind.

Figures: requests/s, latency p50 and p99 (from ``--latency``), and the server's CPU time per
request: utime + stime of the whole server process tree (the root and every descendant,
found through ``/proc/PID/task/*/children``), read before and after the measured run, divided
by the requests wrk completed.  The CPU that wrk itself used (from ``getrusage`` of reaped
children) is shown too: on a 2-core machine wrk takes about one core, so the servers share the
other one, and the figures compare servers rather than measure the machine.

The table prints Zeus's throughput ratio (Zeus req/s / peer req/s) to every peer in every
case, for both Zeus apps, and checks the targets.  ``--json`` prints one JSON object instead
(progress goes to stderr).  Every wait has a deadline; on Ctrl-C or TERM the script stops the
server and wrk it started and exits 130.  Exit status 1 when a Zeus figure is missing.
"""

from __future__ import annotations

import os
import sys

# This file is named http.py: with its directory first on sys.path it would shadow the standard
# library's ``http`` package (and break http.client).  Drop that directory before any import.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from types import FrameType  # noqa: E402
from typing import Any, Final  # noqa: E402

ROOT: Final = os.path.dirname(_HERE)
PEERS_VENV: Final = os.path.join(_HERE, ".peers-venv")
PEERS_BIN: Final = os.path.join(PEERS_VENV, "bin")
ZEUS_BIN: Final = os.path.join(os.path.dirname(sys.executable), "zeus")

WORKERS: Final = 2
THREADS: Final = 1  # wrk -t
CONNECTIONS: Final = 64  # wrk -c
WARMUP_S: Final = 1
READY_DEADLINE_S: Final = 60.0
STOP_DEADLINE_S: Final = 20.0
INSTALL_TIMEOUT_S: Final = 900.0
MIB: Final = 1 << 20
HELLO: Final = b"Hello world!"
TICK: Final = os.sysconf("SC_CLK_TCK")

NOTE: Final = (
    "wrk runs on this same machine and competes with the server for its cores (up to a whole "
    "core: see 'wrk cores'), so on 2 cores the server under test has one to two cores: the "
    "figures compare servers, they do not measure the machine."
)


# ------------------------------------------------------------------------------ the matrix


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    method: str
    path: str
    expect: bytes | int  # the exact body, or its length


CASES: Final = [
    Case("hello", "hello world (GET /hello, 12-byte body)", "GET", "/hello", HELLO),
    Case("1m", "1 MiB response (GET /1m)", "GET", "/1m", MIB),
    Case("upload", "1 MiB upload (POST /upload, body read and discarded)", "POST", "/upload",
         str(MIB).encode()),
]


@dataclass(frozen=True)
class Server:
    name: str
    label: str
    package: str | None  # the peers-venv package it needs; None: Zeus from this venv
    argv: tuple[str, ...]  # {port} and {bin} are filled in


SERVERS: Final = [
    Server("zeus-wsgi", "Zeus, WSGI adapter", None,
           ("{zeus}", "serve", "bench.apps:wsgi_app", "--interface", "wsgi", "--workers", "2",
            "--bind", "127.0.0.1:{port}", "--log-level", "warning")),
    Server("zeus-native", "Zeus, native handler", None,
           ("{zeus}", "serve", "bench.apps:native_app", "--interface", "native", "--workers",
            "2", "--bind", "127.0.0.1:{port}", "--log-level", "warning")),
    Server("gunicorn-sync", "gunicorn, sync workers", "gunicorn",
           ("{bin}/gunicorn", "--workers", "2", "--worker-class", "sync",
            "--bind", "127.0.0.1:{port}", "--log-level", "warning", "bench.apps:wsgi_app")),
    Server("gunicorn-gthread", "gunicorn, gthread workers, 4 threads", "gunicorn",
           ("{bin}/gunicorn", "--workers", "2", "--worker-class", "gthread", "--threads", "4",
            "--bind", "127.0.0.1:{port}", "--log-level", "warning", "bench.apps:wsgi_app")),
    Server("uvicorn", "uvicorn, uvloop + httptools, ASGI", "uvicorn",
           ("{bin}/uvicorn", "bench.apps:asgi_app", "--workers", "2", "--loop", "uvloop",
            "--http", "httptools", "--host", "127.0.0.1", "--port", "{port}",
            "--log-level", "warning", "--no-access-log")),
    Server("granian-wsgi", "granian, WSGI", "granian",
           ("{bin}/granian", "--interface", "wsgi", "--workers", "2", "--host", "127.0.0.1",
            "--port", "{port}", "--log-level", "warning", "--no-access-log",
            "bench.apps:wsgi_app")),
    Server("granian-asgi", "granian, ASGI", "granian",
           ("{bin}/granian", "--interface", "asgi", "--workers", "2", "--host", "127.0.0.1",
            "--port", "{port}", "--log-level", "warning", "--no-access-log",
            "bench.apps:asgi_app")),
]
ZEUS_NAMES: Final = [s.name for s in SERVERS if s.package is None]

# (case, minimum ratio of Zeus req/s to the peer's, peer)
TARGETS: Final = [
    ("hello", 1.5, "uvicorn"),
    ("hello", 1.0, "granian-wsgi"),
    ("1m", 1.5, "uvicorn"),
]

PEER_PACKAGES: Final = {
    "gunicorn": (["gunicorn"], "import gunicorn"),
    "uvicorn": (["uvicorn[standard]"], "import uvicorn, uvloop, httptools"),
    "granian": (["granian"], "import granian"),
}
VERSIONED: Final = ["gunicorn", "uvicorn", "uvloop", "httptools", "granian"]

UPLOAD_LUA: Final = f"""-- POST /upload with a 1 MiB body (wrk adds Content-Length)
wrk.method = "POST"
wrk.body = string.rep("z", {MIB})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ processes we started

_LIVE: dict[int, subprocess.Popen[Any]] = {}  # pid -> process; servers and wrk


class Interrupted(BaseException):
    """Ctrl-C, TERM or HUP: stop what runs, clean up, print what was measured."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _start(argv: list[str], *, new_session: bool, **kw: Any) -> subprocess.Popen[Any]:
    proc = subprocess.Popen(argv, start_new_session=new_session, **kw)
    _LIVE[proc.pid] = proc
    return proc


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is field 3, state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode().split()


def _identity(pid: int) -> tuple[int, int] | None:
    """(session id, start time) of a live, non-zombie process: tells a reused pid apart."""
    st = _stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return None
    return int(st[3]), int(st[19])


def tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc/PID/task/*/children."""
    out: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in out:
            continue
        out.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
            except OSError:
                continue
    return out


def cpu_ticks(root: int) -> dict[int, int]:
    """utime + stime, in clock ticks, of every process in ``root``'s tree."""
    out: dict[int, int] = {}
    for pid in tree(root):
        st = _stat(pid)
        if st is not None:
            out[pid] = int(st[11]) + int(st[12])
    return out


def cpu_delta(before: dict[int, int], after: dict[int, int], root: int) -> tuple[float, float]:
    """(root seconds, descendants seconds) used between two snapshots.  A process that left
    in between counts for nothing after its last snapshot; one that came counts in full."""
    root_s = (after.get(root, before.get(root, 0)) - before.get(root, 0)) / TICK
    rest = 0
    for pid in set(before) | set(after):
        if pid != root:
            rest += after.get(pid, before.get(pid, 0)) - before.get(pid, 0)
    return root_s, rest / TICK


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return "?"


def _session_members(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ident = _identity(int(entry))
            if ident is not None and ident[0] == sid:
                out.append(int(entry))
    return out


def stop_server(proc: subprocess.Popen[Any], deadline: float = STOP_DEADLINE_S) -> dict[str, Any]:
    """TERM the server, KILL it after ``deadline``, then KILL whatever of it is left."""
    known = {pid: _identity(pid) for pid in tree(proc.pid)}
    started = time.monotonic()
    killed = False
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    seconds = time.monotonic() - started
    # Anything of its session (it was started with setsid, so sid == its pid), or a descendant
    # seen before TERM that is still the same process, is a leftover.
    def remaining() -> set[int]:
        out = set(_session_members(proc.pid))
        out |= {pid for pid, ident in known.items() if ident and _identity(pid) == ident}
        out.discard(proc.pid)
        return out

    grace = time.monotonic() + 2.0  # children may still be on their way out
    leftovers = remaining()
    while leftovers and time.monotonic() < grace:
        time.sleep(0.05)
        leftovers = remaining()
    names = {pid: _cmdline(pid) for pid in leftovers}
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    alive = set(leftovers)
    end = time.monotonic() + 5
    while alive and time.monotonic() < end:
        time.sleep(0.05)
        alive = {pid for pid in alive if _identity(pid) is not None}
    _LIVE.pop(proc.pid, None)
    return {
        "seconds": round(seconds, 2),
        "killed": killed,
        "exit": proc.returncode,
        "leftovers_killed": [f"{pid} {names[pid]}" for pid in sorted(leftovers)],
        "still_alive": sorted(alive),
    }


def cleanup() -> None:
    """Kill every process this script started that is still running."""
    for pid, proc in list(_LIVE.items()):
        if proc.poll() is not None:
            _LIVE.pop(pid, None)
            continue
        if isinstance(proc.args, list) and os.path.basename(str(proc.args[0])) == "wrk":
            proc.kill()
            proc.wait()
            _LIVE.pop(pid, None)
        else:
            stop_server(proc, deadline=5.0)


# ------------------------------------------------------------------------------ installing


def _run_quiet(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[
        int, str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                           check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, str(exc)
    return r.returncode, (r.stdout + r.stderr)[-2000:]


def ensure_wrk() -> tuple[str | None, str]:
    """The path of wrk, installing it from Debian's packages if missing; (None, why) if not."""
    path = shutil.which("wrk")
    if path:
        return path, ""
    if os.geteuid() != 0:
        return None, "wrk is not installed and this is not root (apt-get install wrk)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log("installing wrk (apt-get install -y wrk) ...")
    rc, out = _run_quiet(["apt-get", "install", "-y", "-q", "wrk"], INSTALL_TIMEOUT_S, env)
    if rc != 0:
        log("  apt-get update first ...")
        _run_quiet(["apt-get", "update", "-q"], INSTALL_TIMEOUT_S, env)
        rc, out = _run_quiet(["apt-get", "install", "-y", "-q", "wrk"], INSTALL_TIMEOUT_S, env)
    path = shutil.which("wrk")
    return (path, "") if path else (None, f"apt-get install wrk failed: {out.strip()[-300:]}")


def ensure_peers() -> tuple[dict[str, str | None], dict[str, str]]:
    """Install the peers into bench/.peers-venv.  Returns ({package: None or why it is
    unavailable}, {distribution: version})."""
    py = os.path.join(PEERS_BIN, "python")
    status: dict[str, str | None] = {}
    if not os.path.exists(py):
        log(f"creating {os.path.relpath(PEERS_VENV, ROOT)} with {sys.executable} ...")
        rc, out = _run_quiet([sys.executable, "-m", "venv", PEERS_VENV], 300)
        if rc != 0:
            why = f"cannot create the peers' venv: {out.strip()[-300:]}"
            return {name: why for name in PEER_PACKAGES}, {}
    gitignore = os.path.join(PEERS_VENV, ".gitignore")
    if not os.path.exists(gitignore):
        with open(gitignore, "w") as f:
            f.write("# created by bench/http.py\n*\n")

    def importable(name: str) -> bool:
        return _run_quiet([py, "-c", PEER_PACKAGES[name][1]], 60)[0] == 0

    missing = [name for name in PEER_PACKAGES if not importable(name)]
    if missing:
        specs = [s for name in missing for s in PEER_PACKAGES[name][0]]
        log(f"installing {' '.join(specs)} into the peers' venv (pip) ...")
        rc, out = _run_quiet([py, "-m", "pip", "install", "-q", *specs], INSTALL_TIMEOUT_S)
        if rc != 0:  # one at a time, so one failure does not cost the others
            for name in missing:
                rc, out = _run_quiet([py, "-m", "pip", "install", "-q",
                                      *PEER_PACKAGES[name][0]], INSTALL_TIMEOUT_S)
                if rc != 0:
                    status[name] = f"pip install failed: {out.strip()[-300:]}"
    for name in PEER_PACKAGES:
        if name not in status:
            status[name] = None if importable(name) else "installed but cannot be imported"
    code = ("import json, importlib.metadata as m\n"
            "out = {}\n"
            f"for d in {VERSIONED!r}:\n"
            "    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    rc, out = _run_quiet([py, "-c", code], 60)
    versions: dict[str, str] = {}
    if rc == 0:
        with contextlib.suppress(ValueError):
            versions = json.loads(out.strip().splitlines()[-1])
    return status, versions


# --------------------------------------------------------------------------------- serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, method: str, path: str, body: bytes | None = None,
            timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _tail(path: str, n: int = 1200) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def wait_ready(proc: subprocess.Popen[Any], port: int, errlog: str) -> str | None:
    """None once GET /hello answers 200; else why not (exited, or the deadline passed)."""
    deadline = time.monotonic() + READY_DEADLINE_S
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode} before answering: {_tail(errlog)}"
        try:
            status, _ = request(port, "GET", "/hello", timeout=2.0)
            if status == 200:
                return None
            last = f"GET /hello answered {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    return f"not answering after {READY_DEADLINE_S:.0f} s ({last}): {_tail(errlog)}"


def check_case(port: int, case: Case) -> str | None:
    """None if the endpoint answers what it should, else what went wrong."""
    body = bytes(MIB) if case.method == "POST" else None
    try:
        status, got = request(port, case.method, case.path, body)
    except (OSError, http.client.HTTPException) as exc:
        return f"{case.method} {case.path}: {type(exc).__name__}: {exc}"
    if status != 200:
        return f"{case.method} {case.path} answered {status}: {got[:200]!r}"
    if isinstance(case.expect, int):
        if len(got) != case.expect:
            return f"{case.method} {case.path}: {len(got)} bytes, expected {case.expect}"
    elif got != case.expect:
        return f"{case.method} {case.path}: body {got[:100]!r}, expected {case.expect!r}"
    return None


# -------------------------------------------------------------------------------------- wrk

_UNITS: Final = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(out: str) -> dict[str, Any]:
    """Figures from ``wrk --latency`` output."""
    res: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    res["requests"] = int(m.group(1)) if m else 0
    res["seconds"] = round(_ms(m.group(2), m.group(3)) / 1e3, 3) if m else None
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        lat[pct] = round(_ms(value, unit), 4)
    res["latency_ms"] = lat
    res["p50_ms"] = lat.get("50")
    res["p99_ms"] = lat.get("99")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non_2xx_3xx": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        for key, value in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            errors[key] = int(value)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors["non_2xx_3xx"] = int(m.group(1))
    res["errors"] = errors
    m = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", out)
    if m:
        scale = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[m.group(2)]
        res["transfer_mib_s"] = round(float(m.group(1)) * scale / MIB, 2)
    return res


def run_wrk(wrk: str, url: str, seconds: int, script: str | None) -> tuple[dict[str, Any], float]:
    """Run wrk; return its parsed figures and the CPU seconds wrk itself used."""
    argv = [wrk, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
            "--timeout", "10s"]
    if script:
        argv += ["-s", script]
    argv.append(url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = _start(argv, new_session=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  text=True)
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"wrk did not finish within {seconds + 60} s") from None
    except BaseException:  # Ctrl-C, TERM: wrk goes too
        proc.kill()
        proc.wait()
        raise
    finally:
        _LIVE.pop(proc.pid, None)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {(err or out).strip()[-300:]}")
    res = parse_wrk(out)
    if not res["rps"] or not res["requests"]:
        raise RuntimeError(f"cannot read wrk's output: {out.strip()[-300:]}")
    return res, wrk_cpu


# --------------------------------------------------------------------------------- the run


@dataclass
class Outcome:
    server: Server
    argv: list[str] = field(default_factory=list)
    error: str | None = None  # the server as a whole: not installed, did not start
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    case_errors: dict[str, str] = field(default_factory=dict)
    ready_s: float | None = None
    stop: dict[str, Any] | None = None


def bench_server(srv: Server, outcome: Outcome, wrk: str, seconds: int, lua: str,
                 tmp: str) -> None:
    port = free_port()
    argv = [a.format(port=port, bin=PEERS_BIN, zeus=ZEUS_BIN) for a in srv.argv]
    outcome.argv = argv
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    env.pop("WEB_CONCURRENCY", None)
    # The peers run their workers as whoever runs the benchmark (root on a CI machine); so
    # does zeus, which otherwise refuses root workers (security.allow_root).
    env.setdefault("ZEUS_ALLOW_ROOT", "1")
    errlog = os.path.join(tmp, f"{srv.name}.log")
    log(f"[{srv.name}] starting: {' '.join(argv)}")
    started = time.monotonic()
    with open(errlog, "wb") as errf:
        proc = _start(argv, new_session=True, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                      stdout=errf, stderr=subprocess.STDOUT)
    try:
        why = wait_ready(proc, port, errlog)
        if why is not None:
            outcome.error = f"did not start: {why}"
            log(f"[{srv.name}] {outcome.error}")
            return
        outcome.ready_s = round(time.monotonic() - started, 2)
        log(f"[{srv.name}] answering after {outcome.ready_s} s; "
            f"{len(tree(proc.pid))} processes")
        url = f"http://127.0.0.1:{port}"
        for case in CASES:
            bad = check_case(port, case)
            if bad is not None:
                outcome.case_errors[case.name] = f"wrong answer: {bad}"
                log(f"[{srv.name}] {case.name}: {outcome.case_errors[case.name]}")
                continue
            script = lua if case.method == "POST" else None
            try:
                run_wrk(wrk, url + case.path, WARMUP_S, script)
                ticks0 = cpu_ticks(proc.pid)
                res, wrk_cpu = run_wrk(wrk, url + case.path, seconds, script)
                ticks1 = cpu_ticks(proc.pid)
            except RuntimeError as exc:
                outcome.case_errors[case.name] = str(exc)
                log(f"[{srv.name}] {case.name}: {exc}")
                if proc.poll() is not None:
                    outcome.case_errors[case.name] += f"; server exited: {_tail(errlog)}"
                    return
                continue
            root_s, rest_s = cpu_delta(ticks0, ticks1, proc.pid)
            n = res["requests"]
            res["server_cpu_s"] = round(root_s + rest_s, 2)
            res["cpu_us_per_req"] = round((root_s + rest_s) / n * 1e6, 1)
            res["root_cpu_us_per_req"] = round(root_s / n * 1e6, 1)
            res["children_cpu_us_per_req"] = round(rest_s / n * 1e6, 1)
            wall = res["seconds"] or seconds
            res["wrk_cores"] = round(wrk_cpu / wall, 2)
            res["server_cores"] = round((root_s + rest_s) / wall, 2)
            errs = sum(res["errors"].values())
            if res["errors"]["non_2xx_3xx"]:
                outcome.case_errors[case.name] = (
                    f"{res['errors']['non_2xx_3xx']} responses were not 2xx/3xx")
            outcome.cases[case.name] = res
            log(f"[{srv.name}] {case.name}: {res['rps']:,.0f} req/s, p50 "
                f"{_fmt_ms(res['p50_ms'])}, p99 {_fmt_ms(res['p99_ms'])}, "
                f"{res['cpu_us_per_req']:.0f} µs CPU/req, errors {errs}")
        if proc.poll() is not None:
            outcome.error = f"exited with status {proc.returncode} during the run: " \
                            f"{_tail(errlog)}"
    finally:
        outcome.stop = stop_server(proc)
        note = " (KILLED after the deadline)" if outcome.stop["killed"] else ""
        left = outcome.stop["leftovers_killed"]
        log(f"[{srv.name}] stopped in {outcome.stop['seconds']} s{note}"
            + (f"; killed leftover pids {left}" if left else ""))


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1:
        return f"{ms * 1000:.0f}µs"
    if ms < 100:
        return f"{ms:.2f}ms"
    return f"{ms:.0f}ms"


def _rps(outcomes: dict[str, Outcome], server: str, case: str) -> float | None:
    o = outcomes.get(server)
    if o is None or case not in o.cases or case in o.case_errors:
        return None
    return float(o.cases[case]["rps"])


def ratios(outcomes: dict[str, Outcome]) -> dict[str, dict[str, dict[str, float | None]]]:
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for case in CASES:
        out[case.name] = {}
        for zeus in ZEUS_NAMES:
            z = _rps(outcomes, zeus, case.name)
            row: dict[str, float | None] = {}
            for srv in SERVERS:
                p = _rps(outcomes, srv.name, case.name)
                row[srv.name] = round(z / p, 3) if z and p else None
            out[case.name][zeus] = row
    return out


def targets(outcomes: dict[str, Outcome]) -> list[dict[str, Any]]:
    out = []
    for case, minimum, peer in TARGETS:
        for zeus in ZEUS_NAMES:
            z, p = _rps(outcomes, zeus, case), _rps(outcomes, peer, case)
            ratio = round(z / p, 3) if z and p else None
            out.append({"case": case, "zeus": zeus, "peer": peer, "min_ratio": minimum,
                        "ratio": ratio, "met": None if ratio is None else ratio >= minimum})
    return out


def render(result: dict[str, Any], outcomes: dict[str, Outcome]) -> str:
    lines: list[str] = []
    mach = result["machine"]
    lines.append(f"Zeus vs Python HTTP servers -- {mach['cpus']} CPUs, Python {mach['python']}, "
                 f"{WORKERS} workers each, wrk -t{THREADS} -c{CONNECTIONS} "
                 f"-d{result['settings']['duration_s']}s (after {WARMUP_S} s warm-up)")
    if mach["loadavg_1min_at_start"] >= 0.5:
        lines.append(f"WARNING: load average {mach['loadavg_1min_at_start']} at start: other "
                     "processes were competing for the cores; the figures are noisy.")
    if result["settings"]["nice"]:
        lines.append(f"(servers and wrk ran at nice {result['settings']['nice']}, above the "
                     "background load)")
    lines.append(f"NOTE: {NOTE}")
    if result.get("interrupted"):
        lines.append("INTERRUPTED: the figures below are what was measured before the stop.")
    ratio_table = result["ratios"]
    for case in CASES:
        lines.append("")
        lines.append(case.title)
        hdr = (f"  {'server':<17}{'req/s':>10}{'p50':>10}{'p99':>10}{'CPU/req':>10}"
               f"{'srv cores':>10}{'wrk cores':>10}{'errors':>8}")
        for zeus in ZEUS_NAMES:
            hdr += f"{zeus + ' ÷':>14}"
        lines.append(hdr)
        for srv in SERVERS:
            o = outcomes.get(srv.name)
            if o is None:
                continue
            name = f"  {srv.name:<17}"
            if o.error and case.name not in o.cases:
                lines.append(name + f"FAILED: {_short(o.error)}")
                continue
            if case.name not in o.cases:
                lines.append(name + f"FAILED: {_short(o.case_errors.get(case.name, '?'))}")
                continue
            r = o.cases[case.name]
            errs = sum(r["errors"].values())
            row = (name + f"{r['rps']:>10,.0f}{_fmt_ms(r['p50_ms']):>10}"
                   f"{_fmt_ms(r['p99_ms']):>10}{r['cpu_us_per_req']:>8.0f}µs"
                   f"{r['server_cores']:>10.2f}{r['wrk_cores']:>10.2f}{errs:>8}")
            for zeus in ZEUS_NAMES:
                ratio = ratio_table[case.name][zeus].get(srv.name)
                row += f"{'-' if ratio is None else f'{ratio:.2f}':>14}"
            lines.append(row)
            if case.name in o.case_errors:
                lines.append(f"  {'':<17}^ {_short(o.case_errors[case.name])}")
    lines.append("")
    lines.append("  ratio columns: Zeus req/s ÷ that server's req/s (above 1: Zeus is faster). "
                 "CPU/req: server process tree")
    lines.append("  (front/arbiter + workers), CPU µs per request. srv/wrk cores: CPU-seconds "
                 "per second of the run.")
    zeus_split = []
    for zeus in ZEUS_NAMES:
        o = outcomes.get(zeus)
        if o is None:
            continue
        parts = [f"{c}: front {r['root_cpu_us_per_req']:.0f} + workers "
                 f"{r['children_cpu_us_per_req']:.0f} µs" for c, r in o.cases.items()]
        if parts:
            zeus_split.append(f"  {zeus} CPU/req split -- " + "; ".join(parts))
    lines.extend(zeus_split)
    lines.append("")
    lines.append(f"Targets on this {mach['cpus']}-core machine (Zeus req/s ÷ peer req/s)")
    for t in result["targets"]:
        status = "n/a (missing figure)" if t["met"] is None else (
            "met" if t["met"] else "NOT MET")
        ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
        case_title = {"hello": "hello world", "1m": "1 MiB response"}.get(t["case"], t["case"])
        lines.append(f"  {case_title:<15} {t['zeus']:<12} >= {t['min_ratio']:.1f} x "
                     f"{t['peer']:<13} {ratio:>6}  {status}")
    lines.append("")
    stops = []
    survivors = False
    for srv in SERVERS:
        o = outcomes.get(srv.name)
        if o is None or o.stop is None:
            continue
        s = o.stop
        extra = " KILLED" if s["killed"] else ""
        if s["leftovers_killed"]:
            extra += f" leftovers {s['leftovers_killed']}"
        if s["still_alive"]:
            extra += f" STILL ALIVE {s['still_alive']}"
            survivors = True
        stops.append(f"{srv.name} {s['seconds']}s{extra}")
    if stops:
        lines.append("stopped on TERM in: " + ", ".join(stops) + (
            "" if survivors else "; no process left behind."))
    lines.append(f"run time {result['elapsed_s']:.0f} s")
    return "\n".join(lines)


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _zeus_version() -> str | None:
    rc, out = _run_quiet([sys.executable, "-c", "import zeus; print(zeus.__version__)"], 60)
    return out.strip() if rc == 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s per measured run, not 10")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--duration", type=int, default=None,
                        help="seconds per measured run (default 10; 3 with --quick)")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="run this script, the servers and wrk N steps above normal "
                             "priority (needs root), so background load disturbs less")
    parser.add_argument("--only", default="", help="comma-separated server names to run "
                        f"(default all: {','.join(s.name for s in SERVERS)})")
    args = parser.parse_args(argv)
    seconds = args.duration or (3 if args.quick else 10)
    if seconds < 1:
        parser.error("--duration must be at least 1")
    chosen = [s for s in SERVERS if not args.only or s.name in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - {s.name for s in SERVERS}
    if unknown:
        parser.error(f"unknown server(s) {sorted(unknown)}")

    if args.nice:
        try:  # inherited by every server and wrk started from here
            os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) - args.nice)
        except OSError as exc:
            parser.error(f"--nice {args.nice}: {exc.strerror}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    outcomes: dict[str, Outcome] = {}
    interrupted: str | None = None
    versions: dict[str, str] = {}
    tmp = tempfile.mkdtemp(prefix="zeus-bench-http-")
    try:
        wrk, why = ensure_wrk()
        if wrk is None:
            log(f"bench/http.py: {why}")
            return 2
        _, wrk_version = _run_quiet([wrk, "-v"], 10)
        versions["wrk"] = wrk_version.strip().splitlines()[0] if wrk_version.strip() else "?"
        peer_status: dict[str, str | None] = {}
        if any(s.package for s in chosen):
            peer_status, peer_versions = ensure_peers()
            versions.update(peer_versions)
        versions["zeus"] = _zeus_version() or "?"
        lua = os.path.join(tmp, "upload.lua")
        with open(lua, "w") as f:
            f.write(UPLOAD_LUA)
        for srv in chosen:
            outcome = outcomes[srv.name] = Outcome(srv)
            if srv.package and peer_status.get(srv.package):
                outcome.error = f"not installed: {peer_status[srv.package]}"
                log(f"[{srv.name}] {outcome.error}")
                continue
            bench_server(srv, outcome, wrk, seconds, lua, tmp)
    except Interrupted as exc:
        interrupted = str(exc)
        log(f"interrupted ({interrupted}): stopping what runs ...")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "loadavg_1min_at_start": round(load, 2),
        },
        "settings": {
            "duration_s": seconds, "warmup_s": WARMUP_S, "workers": WORKERS,
            "wrk": f"wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s --latency",
            "nice": -args.nice,
        },
        "versions": versions,
        "note": NOTE,
        "servers": {
            name: {
                "label": o.server.label,
                "argv": o.argv,
                "ok": o.error is None and not o.case_errors,
                "error": o.error,
                "case_errors": o.case_errors,
                "ready_s": o.ready_s,
                "stop": o.stop,
                "cases": o.cases,
            } for name, o in outcomes.items()
        },
        "ratios": ratios(outcomes),
        "targets": targets(outcomes),
        "interrupted": interrupted,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result, outcomes))
    if interrupted:
        return 130
    zeus_missing = any(
        name in outcomes and (outcomes[name].error or outcomes[name].case_errors)
        for name in ZEUS_NAMES
    )
    return 1 if zeus_missing else 0


if __name__ == "__main__":
    sys.exit(main())
