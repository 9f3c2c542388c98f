"""The examples, served by the real ``zeus`` command, answer exactly as their framework's own
test client says they should.

For each example app (Flask, FastAPI, Django) one ``zeus serve`` runs with two workers and the
same list of requests goes to it over one keep-alive connection and to the framework's test
client in this process (``app.test_client()``, ``fastapi.testclient.TestClient``,
``django.test.Client``).  Status, body bytes and every header the framework set must match;
Zeus may only add ``date``, ``server``, ``connection``, and the framing of a body whose length
the framework left open (``content-length`` equal to the body's or ``transfer-encoding``).

``zeus run --workers 2 -- python examples/my_worker.py`` is checked against its handler called
directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from .helpers import ROOT, ZEUS, Conn, RawResponse, Server, ServerSet, free_port, wait_until

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this process imports examples.* for the test clients

# Headers a server adds on its own; a framework's test client has no say in them.
SERVER_HEADERS = frozenset({"date", "server", "connection", "keep-alive", "transfer-encoding"})
JSON_HEADERS = (("Content-Type", "application/json"),)
BIG_JSON = json.dumps({"items": [{"n": i, "s": "é" * (i % 7)} for i in range(12_000)]}).encode()


@dataclass(frozen=True)
class Case:
    """One request, sent to Zeus and to the framework's test client alike."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def __str__(self) -> str:
        return f"{self.method} {self.target[:60]}"


CASES: Sequence[Case] = (
    Case("GET", "/"),
    Case("HEAD", "/"),
    Case("GET", "/query?a=1&b=two&a=3&empty="),
    Case("GET", "/query?name=%C3%A9t%C3%A9&x=a+b&sym=%26%3D%3F"),
    Case("GET", "/query"),
    Case("POST", "/echo", JSON_HEADERS, b'{"hello": "world", "n": [1, 2.5, null, true]}'),
    Case("POST", "/echo", JSON_HEADERS, BIG_JSON),
    Case("POST", "/echo", JSON_HEADERS, b"{not json"),
    Case("GET", "/large"),
    Case("HEAD", "/large"),
    Case("GET", "/stream"),
    Case("GET", "/missing"),
    Case("GET", "/missing/deeper?x=1"),
    Case("POST", "/query", JSON_HEADERS, b"{}"),
    Case("GET", "/"),  # the connection still works after all of the above
)


@dataclass
class Answer:
    """What came back: status, headers (lower-case names) and body bytes."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


Reference = Callable[[Case], Answer]


# --------------------------------------------------------------- the frameworks' clients


def flask_reference() -> Reference:
    from examples.flask_app import app

    client = app.test_client()

    def ask(case: Case) -> Answer:
        resp = client.open(case.target, method=case.method, headers=list(case.headers),
                           data=case.body)
        return Answer(resp.status_code, [(k.lower(), v) for k, v in resp.headers.items()],
                      resp.get_data())

    return ask


def fastapi_reference() -> Reference:
    with warnings.catch_warnings():  # starlette deprecating httpx for its client: not ours
        warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient

    from examples.fastapi_app import app

    client = TestClient(app)

    def ask(case: Case) -> Answer:
        resp = client.request(case.method, case.target, headers=dict(case.headers),
                              content=case.body or None)
        return Answer(resp.status_code, [(k.lower(), v) for k, v in resp.headers.multi_items()],
                      resp.content)

    return ask


def django_reference() -> Reference:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")
    import examples.django_project.wsgi  # noqa: F401 - configures Django (django.setup())
    from django.test import Client

    client = Client()

    def ask(case: Case) -> Answer:
        ctype = dict(case.headers).get("Content-Type", "application/octet-stream")
        resp: Any = client.generic(case.method, case.target, data=case.body,
                                   content_type=ctype)
        body = b"".join(resp.streaming_content) if resp.streaming else resp.content
        return Answer(resp.status_code, [(k.lower(), v) for k, v in resp.headers.items()], body)

    return ask


EXAMPLES = {
    "flask": ("examples.flask_app:app", flask_reference),
    "fastapi": ("examples.fastapi_app:app", fastapi_reference),
    "django": ("examples.django_project.wsgi:application", django_reference),
}


# -------------------------------------------------------------------------- servers


class RunServer(Server):
    """``zeus run [options] -- COMMAND``: like ``Server`` (same checks when stopped), but
    the workers are COMMAND rather than an app that ``zeus serve`` imports."""

    def __init__(self, command: Sequence[str], args: Sequence[str], state_dir: Path,
                 log_path: Path) -> None:
        self.port = free_port()
        self.state_dir = state_dir
        self.log_path = log_path
        self.argv = [str(ZEUS), "run", "--bind", f"127.0.0.1:{self.port}", *args, "--",
                     *command]
        env = {**os.environ}
        env.pop("PYTHONPATH", None)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.seen_workers: set[tuple[int, str]] = set()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerSet]:
    """Servers started by the test; at teardown each gets SIGTERM and must exit 0 in time
    with no worker left behind (``ServerSet.close``)."""
    started = ServerSet(tmp_path)
    try:
        yield started
    finally:
        started.close()


def start(servers: ServerSet, make: Callable[[Path, Path], Server], workers: int = 2) -> Server:
    n = next(servers.counter)
    state = servers.where / f"state{n}"
    state.mkdir()
    server = make(state, servers.where / f"zeus{n}.log")
    servers.servers.append(server)
    server.wait_ready(workers)
    return server


def options(workers: int) -> list[str]:
    return ["--workers", str(workers), "--graceful-timeout", "5"]


# ---------------------------------------------------------------------------- client


class Client:
    """Requests to a server over one keep-alive connection, reopened if the server closes it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.conn: Conn | None = None

    def ask(self, case: Case) -> tuple[Answer, RawResponse]:
        if self.conn is None:
            self.conn = self.server.conn()
        raw = self.conn.request(case.method, case.target, case.headers, case.body)
        if (raw.header("connection") or "").lower() == "close":
            self.close()
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw.headers]
        return Answer(raw.status, headers, raw.body), raw

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def normal(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers in a comparable form.  Werkzeug builds ``Allow`` from a set, so its order
    changes from one process to the next (hash randomisation): compare it as a set."""
    out = []
    for name, value in headers:
        if name == "allow":
            value = ", ".join(sorted(m.strip() for m in value.split(",")))
        out.append((name, value))
    return sorted(out)


def assert_same(case: Case, got: Answer, raw: RawResponse, want: Answer) -> None:
    where = f"{case}: zeus answered {raw.raw_head!r}"
    assert got.status == want.status, where
    assert got.body == want.body, f"{where}: body of {len(got.body)} bytes, not the " \
                                  f"{len(want.body)} bytes of the test client"
    theirs = normal(want.headers)
    ours = normal(h for h in got.headers if h[0] not in SERVER_HEADERS)
    if want.header("content-length") is None and case.method != "HEAD":
        # The framework left the length open: Zeus frames the body as it sees fit.
        length = got.header("content-length")
        assert length is None or int(length) == len(got.body), where
        assert (length is None) == raw.chunked, where
        ours = [h for h in ours if h[0] != "content-length"]
    assert ours == theirs, where
    assert raw.version == b"HTTP/1.1", where
    for name in ("date", "server", "content-length", "content-type", "transfer-encoding"):
        assert raw.header_count(name) <= 1, f"{where}: {name} more than once"


# ----------------------------------------------------------------------------- tests


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_answers_as_its_test_client(servers: ServerSet, name: str) -> None:
    app, make_reference = EXAMPLES[name]
    server = start(servers, lambda state, log: Server(options(2), state, log, app=app))
    reference = make_reference()
    client = Client(server)
    try:
        for case in CASES:
            got, raw = client.ask(case)
            want = reference(case)
            assert_same(case, got, raw, want)
    finally:
        client.close()
    assert "Traceback" not in server.log()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", [
    "flask",
    "fastapi",
    "django",
])
def test_head_of_a_streamed_response(servers: ServerSet, name: str) -> None:
    """HEAD of a response whose length the framework leaves open (it streams) must not
    claim a length: the test clients send no Content-Length, and the GET is not empty."""
    app, make_reference = EXAMPLES[name]
    server = start(servers, lambda state, log: Server(options(1), state, log, app=app),
                   workers=1)
    reference = make_reference()
    client = Client(server)
    try:
        for case in (Case("HEAD", "/stream"), Case("GET", "/stream"), Case("HEAD", "/")):
            got, raw = client.ask(case)
            assert_same(case, got, raw, reference(case))
    finally:
        client.close()


def worker_reference(method: str, target: str, body: bytes = b"",
                     headers: Sequence[tuple[str, str]] = ()) -> Answer:
    """What ``examples/my_worker.py``'s handler returns, called in this process."""
    from examples.my_worker import handler

    path, _, query = target.partition("?")
    given = {k.lower(): v for k, v in headers}
    request: Any = SimpleNamespace(method=method, path=path, query=query, body=body,
                                   header=lambda name, default=None: given.get(name, default))
    resp = handler(request)
    assert isinstance(resp.body, bytes)
    out = [(k.decode().lower(), v.decode()) for k, v in resp.headers]
    out.append(("content-length", str(len(resp.body))))
    return Answer(resp.status, out, b"" if method == "HEAD" else resp.body)


@pytest.mark.timeout(60)
def test_zeus_run_serves_my_worker(servers: ServerSet) -> None:
    command = [sys.executable, "examples/my_worker.py"]
    server = start(servers, lambda state, log: RunServer(command, options(2), state, log))
    workers = server.ready_workers()
    assert len(workers) == 2
    client = Client(server)
    try:
        cases = [
            Case("GET", "/"),
            Case("HEAD", "/"),
            Case("GET", "/query?a=1&b=two&a=3&empty="),
            Case("POST", "/echo", JSON_HEADERS, b'{"hello": "world"}'),
            Case("POST", "/echo", (("Content-Type", "application/octet-stream"),),
                 bytes(range(256)) * 4096),
            Case("GET", "/missing"),
        ]
        for case in cases:
            got, raw = client.ask(case)
            assert_same(case, got, raw,
                        worker_reference(case.method, case.target, case.body, case.headers))
        # Each worker is a separate process running the program: both take requests.
        answered: set[int] = set()

        def both_answered() -> bool:
            got, _ = client.ask(Case("GET", "/pid"))
            assert got.status == 200
            answered.add(int(got.body))
            return answered == workers

        wait_until(both_answered, 20, "both workers to answer /pid")
    finally:
        client.close()
    assert "Traceback" not in server.log()
