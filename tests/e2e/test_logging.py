"""Logs of the real ``zeus serve``: the access log (gunicorn's atoms, JSON, to stdout or a
file), the error log (``--error-log``), a ``--log-config`` file, and one line for every worker
death saying how and why it died."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from .helpers import APP, ROOT, ZEUS, Server, wait_until

MISBEHAVING = "tests.apps.misbehaving:app"
COMBINED = re.compile(
    r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "(?P<r>[^"]*)" '
    r'(?P<s>\d{3}) (?P<b>\d+|-) "(?P<f>[^"]*)" "(?P<a>[^"]*)"$', re.MULTILINE)


def serve(tmp_path: Path, *args: str, app: str = APP, workers: int = 1,
          name: str = "zeus") -> Server:
    state = tmp_path / name
    state.mkdir()
    server = Server(["--workers", str(workers), "--graceful-timeout", "5", *args], state,
                    tmp_path / f"{name}.log", app=app)
    server.wait_ready(workers)
    return server


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.timeout(60)
def test_access_log_in_the_default_format_one_line_per_request(tmp_path: Path) -> None:
    """``--access-log-file -``: gunicorn's combined format on stdout, one line per request,
    with the body size sent, the referer and the user agent -- and the front's own answers."""
    server = serve(tmp_path, "--access-log-file", "-", "--timeout", "0.5")
    try:
        with server.conn() as conn:
            hello = conn.request("GET", "/hello?x=1", [("User-Agent", "test-agent/1"),
                                                       ("Referer", "http://ref.example/")])
            echo = conn.request("POST", "/echo", body=b"z" * 1000)
            missing = conn.request("GET", "/missing")
            timed_out = conn.request("GET", "/spin?2")
        assert [hello.status, echo.status, missing.status, timed_out.status] == [200, 200, 404,
                                                                                 504]
        wait_until(lambda: len(COMBINED.findall(server.log())) >= 4, 10, "4 access lines")
    finally:
        assert server.stop() == 0
    found = [m.groupdict() for m in COMBINED.finditer(server.log())]
    assert found[:3] == [
        {"r": "GET /hello?x=1 HTTP/1.1", "s": "200", "b": str(len(hello.body)),
         "f": "http://ref.example/", "a": "test-agent/1"},
        {"r": "POST /echo HTTP/1.1", "s": "200", "b": "1000", "f": "-", "a": "-"},
        {"r": "GET /missing HTTP/1.1", "s": "404", "b": str(len(missing.body)), "f": "-",
         "a": "-"},
    ]
    assert found[3]["r"] == "GET /spin?2 HTTP/1.1" and found[3]["s"] == "504"
    assert found[3]["b"] == str(len(timed_out.body))
    assert len(found) == 4


@pytest.mark.timeout(60)
def test_json_access_log_to_a_file(tmp_path: Path) -> None:
    """``--access-log-format json --access-log-file FILE``: one JSON object per line in FILE,
    and nothing else in it (the error log stays on stderr)."""
    path = tmp_path / "access.jsonl"
    server = serve(tmp_path, "--access-log-format", "json", "--access-log-file", str(path))
    try:
        with server.conn() as conn:
            for target in ("/hello", "/say?abc", "/nope"):
                conn.request("GET", target, [("User-Agent", 'quote " agent')])
        wait_until(lambda: len(lines_of(path)) >= 3, 10, "3 lines in the access log file")
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in lines_of(path)]
    assert [(r["path"], r["query"], r["status"]) for r in records] == [
        ("/hello", None, 200), ("/say", "abc", 200), ("/nope", None, 404)]
    assert records[1]["bytes"] == 3
    assert all(r["user_agent"] == 'quote " agent' and r["client"] == "127.0.0.1"
               and r["method"] == "GET" and r["duration_ms"] >= 0 for r in records)
    assert "worker 0" not in path.read_text()


@pytest.mark.timeout(60)
def test_custom_format_with_headers_and_durations(tmp_path: Path) -> None:
    """Atoms for request and response headers, path, query and milliseconds."""
    fmt = "%(m)s %(U)s %(q)s %(s)s %(B)s %({X-Trace}i)s %({Content-Type}o)s %(M)sms"
    server = serve(tmp_path, "--access-log", "--access-log-format", fmt)
    try:
        with server.conn() as conn:
            conn.request("GET", "/hello?a=b", [("X-Trace", "t-123")])
        pattern = re.compile(r"^GET /hello a=b 200 17 t-123 text/plain (\d+)ms$", re.MULTILINE)
        wait_until(lambda: pattern.search(server.log()), 10, "the access line")
    finally:
        assert server.stop() == 0


LOG_CONFIGS = {
    "json": json.dumps({
        "formatters": {"tagged": {"format": "TAGGED %(name)s %(message)s"}},
        "handlers": {
            "access": {"class": "logging.FileHandler", "filename": "{dir}/access.log",
                       "formatter": "tagged"},
            "pool": {"class": "logging.FileHandler", "filename": "{dir}/pool.log",
                     "formatter": "tagged"}},
        "loggers": {"zeus.access": {"handlers": ["access"], "propagate": False},
                    "zeus.pool": {"handlers": ["pool"]}}}),
    "toml": """
[formatters.tagged]
format = "TAGGED %(name)s %(message)s"
[handlers.access]
class = "logging.FileHandler"
filename = "{dir}/access.log"
formatter = "tagged"
[handlers.pool]
class = "logging.FileHandler"
filename = "{dir}/pool.log"
formatter = "tagged"
[loggers."zeus.access"]
handlers = ["access"]
propagate = false
[loggers."zeus.pool"]
handlers = ["pool"]
""",
    "ini": """
[loggers]
keys = root, access, pool
[handlers]
keys = access, pool, stderr
[formatters]
keys = tagged
[logger_root]
level = INFO
handlers = stderr
[logger_access]
qualname = zeus.access
handlers = access
propagate = 0
[logger_pool]
qualname = zeus.pool
handlers = pool
propagate = 1
[handler_access]
class = FileHandler
args = ('{dir}/access.log',)
formatter = tagged
[handler_stderr]
class = StreamHandler
args = (sys.stderr,)
formatter = tagged
[handler_pool]
class = FileHandler
args = ('{dir}/pool.log',)
formatter = tagged
[formatter_tagged]
format = TAGGED %(name)s %(message)s
""",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["json", "toml", "ini"])
def test_log_config_routes_the_loggers(tmp_path: Path, kind: str) -> None:
    """``--log-config`` (dictConfig as JSON or TOML, fileConfig as INI) is applied on top of
    Zeus's set-up: the access log goes only where the file says; the pool's messages go to
    the file's handler too, and on to the error log (propagation left on)."""
    config = tmp_path / f"logging.{kind}"
    config.write_text(LOG_CONFIGS[kind].replace("{dir}", str(tmp_path)))
    server = serve(tmp_path, "--access-log", "--log-config", str(config))
    try:
        with server.conn() as conn:
            assert conn.request("GET", "/hello").status == 200
        access = tmp_path / "access.log"
        wait_until(lambda: any("GET /hello" in line for line in lines_of(access)), 10,
                   "the access line in the configured file")
    finally:
        assert server.stop() == 0
    assert re.fullmatch(r'TAGGED zeus\.access 127\.0\.0\.1 - - \[.*\] "GET /hello HTTP/1\.1" '
                        r'200 17 "-" "-"', lines_of(access)[0])
    pool = (tmp_path / "pool.log").read_text()
    assert "TAGGED zeus.pool worker 0 (pid" in pool and "exited: exit code 0" in pool
    assert "GET /hello" not in server.log() and "worker 0 (pid" in server.log()


def zeus_serve(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ZEUS_") or k == "ZEUS_ALLOW_ROOT"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(ZEUS), "serve", APP, "--bind", "127.0.0.1:0", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "text", "message"), [
    ("missing.json", None, "No such file or directory"),
    ("bad.json", "{not json", "invalid JSON"),
    ("bad.toml", "a = ", "invalid TOML"),
    ("list.json", "[1, 2]", "expected a mapping"),
    ("nohandler.json", '{"handlers": {"h": {"class": "no.such.Handler"}}}',
     "Unable to configure handler 'h'"),
    ("bad.ini", "[loggers]\nkeys = root\n", "no [handlers] section"),
    ("logging.yaml", "version: 1", "unknown kind of file"),
])
def test_a_bad_log_config_is_a_one_line_error(tmp_path: Path, name: str, text: str | None,
                                              message: str) -> None:
    """Whatever is wrong with the file: exit status 2, one line naming it, no traceback."""
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    out = zeus_serve("--log-config", str(path))
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"zeus: error: log_config {path}: "), lines
    assert message in lines[0]


@pytest.mark.timeout(60)
def test_error_log_file_gets_the_front_s_and_the_workers_messages(tmp_path: Path) -> None:
    """``--error-log FILE``: the front's log and what workers write to stderr (the app's
    tracebacks) are appended to FILE; the terminal gets none of it."""
    path = tmp_path / "error.log"
    path.write_text("kept\n")
    state = tmp_path / "state"
    state.mkdir()
    server = Server(["--workers", "1", "--graceful-timeout", "5", "--error-log", str(path)],
                    state, tmp_path / "terminal.log")
    try:
        wait_until(server.accepts, 20, "zeus to accept connections")
        wait_until(lambda: "ready" in path.read_text(), 20, "a ready worker in the error log")
        with server.conn() as conn:
            assert conn.request("GET", "/raise").status == 500
        wait_until(lambda: "SECRET-DETAIL" in path.read_text(), 10, "the app's traceback")
    finally:
        assert server.stop() == 0
    text = path.read_text()
    assert text.startswith("kept\n")
    assert "listening on http://127.0.0.1:" in text and "SIGTERM: draining" in text
    assert server.log() == ""


DEATH = re.compile(r"worker \d+ \(pid (\d+)\) exited: (.*)$", re.MULTILINE)


@pytest.mark.timeout(120)
def test_every_worker_death_is_one_line_with_its_cause(tmp_path: Path) -> None:
    """Exit code, signal (by name), memory limit, request timeout, max-requests recycling and
    shutdown: each death is one line saying how the process ended and why."""
    server = serve(tmp_path, "--max-requests", "3", "--memory-limit", "256M", "--region-size",
                   "4M", "--timeout", "0.5", app=MISBEHAVING)

    def death_of(pid: int) -> str:
        found: list[str] = []

        def look() -> bool:
            found[:] = [m.group(2) for m in DEATH.finditer(server.log()) if int(m.group(1)) == pid]
            return bool(found)

        wait_until(look, 30, f"the death line of worker {pid}")
        assert len(found) == 1
        return found[0]

    def worker() -> int:
        (pid,) = server.wait_ready(1, timeout=30)
        return pid

    try:
        pid = worker()
        with server.conn() as conn:
            assert conn.request("GET", "/exit?3").status == 502
        assert re.fullmatch(r"exit code 3; cause: crash; up [\d.]+s, 0 requests, 1 in flight",
                            death_of(pid))

        pid = worker()
        with server.conn() as conn:
            assert conn.request("GET", "/segv").status == 502
        assert death_of(pid).startswith("signal SIGSEGV; cause: crash; up ")

        pid = worker()
        os.kill(pid, signal.SIGKILL)
        assert re.fullmatch(r"signal SIGKILL; cause: crash; up [\d.]+s, 0 requests",
                            death_of(pid))

        pid = worker()
        with server.conn() as conn:
            assert conn.request("GET", "/alloc").status in (500, 502)
        assert re.match(r"(exit code 7|signal SIGKILL); cause: limit \(memory limit "
                        r"\((address space|cgroup memory\.max)\) reached\)", death_of(pid))

        pid = worker()
        with server.conn() as conn:
            assert conn.request("GET", "/sleep?1.5").status == 504
        assert "; cause: timeout (request GET /sleep?1.5 not answered within the 0.5s " \
               "timeout)" in death_of(pid)

        pid = worker()
        with server.conn() as conn:
            for _ in range(3):
                assert conn.request("GET", "/pid").status == 200
        assert re.fullmatch(r"exit code 0; cause: recycle \(served 3 requests \(max-requests "
                            r"3\)\); up [\d.]+s, 3 requests", death_of(pid))
        last = worker()
    finally:
        assert server.stop() == 0
    assert re.fullmatch(r"exit code 0; cause: stopped \(shutdown\); up [\d.]+s, 0 requests",
                        death_of(last))
    deaths = [m.group(0) for m in DEATH.finditer(server.log())]
    assert len(deaths) == 7
    for line in deaths:  # crashes and limits are errors, planned exits information
        planned = "cause: recycle" in line or "cause: stopped" in line
        assert (f"[INFO] {line}" if planned else f"[ERROR] {line}") in server.log()


@pytest.mark.timeout(60)
def test_a_log_config_error_reaches_the_terminal_even_with_an_error_log(tmp_path: Path) -> None:
    """The redirection of stderr to --error-log comes last: a failure before it is shown."""
    bad = tmp_path / "bad.json"  # parses, but fails when applied (after the checks)
    bad.write_text('{"handlers": {"h": {"class": "no.such.Handler"}}}')
    out = zeus_serve("--error-log", str(tmp_path / "error.log"), "--log-config", str(bad))
    assert out.returncode == 2 and "Unable to configure handler 'h'" in out.stderr
