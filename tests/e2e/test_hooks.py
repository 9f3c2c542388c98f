"""Server hooks (zeus/hooks.py, docs/hooks.md) on the real ``zeus serve``: each runs in the
front, at its point of the server's life, with its documented arguments; a failing hook is
logged and the server carries on, except ``on_starting``, which refuses the start in one line.

The hooks are tests/apps/hooks.py: each appends a JSON line to ``$HOOKS_LOG``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from zeus.hooks import NAMES

from .helpers import APP, ROOT, ZEUS, Server, wait_until

HOOKS = "tests.apps.hooks"


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def hook_flags(names: tuple[str, ...] = NAMES) -> list[str]:
    return [arg for name in names for arg in (f"--{name.replace('_', '-')}", f"{HOOKS}:{name}")]


def zeus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("ZEUS_") or k == "ZEUS_ALLOW_ROOT"}
    full.pop("PYTHONPATH", None)
    return subprocess.run([str(ZEUS), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, env={**full, **(env or {})})


@pytest.mark.timeout(90)
def test_every_hook_runs_in_the_front_in_order_with_its_arguments(tmp_path: Path) -> None:
    """From a TOML file: start, a reload (SIGHUP), a worker killed, a graceful stop -- each
    hook fires at its moment, in the front process, with the worker and exit it concerns."""
    log = tmp_path / "hooks.jsonl"
    config = tmp_path / "zeus.toml"
    config.write_text("[hooks]\n" + "".join(f'{n} = "{HOOKS}:{n}"\n' for n in NAMES)
                      + "[timeouts]\ngraceful_timeout = 5\n")
    server = Server(["--config", str(config), "--workers", "1"], tmp_path, tmp_path / "zeus.log",
                    env={"HOOKS_LOG": str(log)})
    try:
        (first,) = server.wait_ready(1)
        wait_until(lambda: any(r["hook"] == "when_ready" for r in records(log)), 10, "when_ready")
        with server.conn() as conn:
            assert conn.request("GET", "/hello").status == 200

        server.send_signal(signal.SIGHUP)
        wait_until(lambda: any(r["hook"] == "worker_exit" and r["worker_pid"] == first
                               for r in records(log)), 30, "worker_exit of the reloaded worker")
        (second,) = server.wait_ready(1)

        os.kill(second, signal.SIGKILL)
        wait_until(lambda: any(r["hook"] == "worker_exit" and r["worker_pid"] == second
                               for r in records(log)), 30, "worker_exit of the killed worker")
        (third,) = server.wait_ready(1)
        assert server.stop() == 0
    finally:
        server.kill_all()

    recs = records(log)
    assert {r["pid"] for r in recs} == {server.pid}, "every hook runs in the front"
    names = [r["hook"] for r in recs]
    assert names[0] == "on_starting" and recs[0]["workers"] == 1
    assert names[-1] == "on_exit" and recs[-1]["status"] == 0

    def find(hook: str, **fields: Any) -> int:
        hits = [i for i, r in enumerate(recs)
                if r["hook"] == hook and all(r[k] == v for k, v in fields.items())]
        assert len(hits) == 1, (hook, fields, recs)
        return hits[0]

    spawn0 = find("pre_spawn", index=0, generation=0, worker_pid=None)
    ready0 = find("worker_ready", index=0, worker_pid=first)
    ready = find("when_ready", server_pid=server.pid)
    assert recs[ready]["addresses"] == [f"http://127.0.0.1:{server.port}"]
    reload = find("on_reload", server_pid=server.pid)
    spawn1 = find("pre_spawn", index=1, generation=1, worker_pid=None)
    ready1 = find("worker_ready", index=1, generation=1, worker_pid=second)
    exit0 = find("worker_exit", index=0, worker_pid=first, cause="recycle", detail="reload",
                 status="exit code 0", returncode=0)
    exit1 = find("worker_exit", index=1, worker_pid=second, cause="crash",
                 status="signal SIGKILL", returncode=-signal.SIGKILL)
    ready2 = find("worker_ready", index=2, worker_pid=third)
    exit2 = find("worker_exit", index=2, worker_pid=third, cause="stopped", detail="shutdown")
    assert 0 < spawn0 < ready0 < ready < reload < spawn1 < ready1 < exit0 < exit1 < ready2
    assert ready2 < exit2 < len(recs) - 1
    assert names.count("pre_spawn") == names.count("worker_ready") == names.count(
        "worker_exit") == 3


@pytest.mark.timeout(60)
def test_failing_hooks_are_logged_and_the_server_carries_on(tmp_path: Path) -> None:
    """Every hook but on_starting raises: each failure is logged with its traceback, requests
    are served, a reload still replaces the worker, and the exit status is still 0."""
    log = tmp_path / "hooks.jsonl"
    failing = [n for n in NAMES if n != "on_starting"]
    server = Server(["--workers", "1", "--graceful-timeout", "5", *hook_flags()], tmp_path,
                    tmp_path / "zeus.log",
                    env={"HOOKS_LOG": str(log), "HOOKS_FAIL": ",".join(failing)})
    try:
        (first,) = server.wait_ready(1)
        with server.conn() as conn:
            assert conn.request("GET", "/hello").status == 200
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: any(r["hook"] == "worker_exit" for r in records(log)), 30,
                   "the reloaded worker's exit")
        (second,) = server.wait_ready(1)
        assert second != first
        with server.conn() as conn:
            assert conn.request("GET", "/hello").status == 200
        assert server.stop() == 0
    finally:
        server.kill_all()
    text = server.log()
    for name in failing:
        assert (f"hook {name} ({HOOKS}:{name}) failed: RuntimeError: {name} fails on purpose"
                in text), name
    assert text.count("Traceback (most recent call last)") >= len(failing)
    assert {r["hook"] for r in records(log)} == set(NAMES)


@pytest.mark.timeout(60)
def test_on_starting_can_refuse_the_start_in_one_line(tmp_path: Path) -> None:
    """An exception in on_starting: exit status 4, one line saying which hook and why, no
    traceback, no worker started, nothing bound -- and no other hook runs."""
    log = tmp_path / "hooks.jsonl"
    server = Server(["--workers", "1", *hook_flags()], tmp_path, tmp_path / "zeus.log",
                    env={"HOOKS_LOG": str(log), "HOOKS_FAIL": "on_starting"})
    try:
        assert server.proc.wait(timeout=30) == 4
    finally:
        server.kill_all()
    text = server.log()
    assert (f"on_starting hook {HOOKS}:on_starting failed: RuntimeError: on_starting fails "
            f"on purpose") in text
    assert "Traceback" not in text and "started worker" not in text, text
    assert len(text.strip().splitlines()) == 1, text
    assert [r["hook"] for r in records(log)] == ["on_starting"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("spec", "message"), [
    ("tests.apps.no_such_module:f", "when_ready: cannot import 'tests.apps.no_such_module': "
                                    "ModuleNotFoundError"),
    (f"{HOOKS}:missing", f"when_ready: '{HOOKS}' has no function 'missing'"),
    (f"{HOOKS}:a_coroutine", "is a coroutine function"),
    ("tests/apps/no_such_file.py:f", "when_ready: no such file"),
    ("not-a-spec", "expected module:function"),
])
def test_a_hook_that_cannot_be_loaded_is_a_one_line_error(spec: str, message: str) -> None:
    """Hooks are imported when the configuration is checked: a typo fails before starting."""
    out = zeus("check-config", APP, "--when-ready", spec)
    assert out.returncode == 2, out
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.timeout(60)
def test_a_hook_may_be_a_file_path(tmp_path: Path) -> None:
    """``path/to/file.py:function`` loads the file (relative to the working directory)."""
    out = zeus("check-config", APP, "--when-ready", "tests/apps/hooks.py:when_ready")
    assert out.returncode == 0, out.stderr
    assert 'when_ready = "tests/apps/hooks.py:when_ready"' in out.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", [False, True])
def test_pre_spawn_may_add_to_each_workers_environment(tmp_path: Path, bad: bool) -> None:
    """The mapping ``pre_spawn`` returns joins that worker's environment (the replacement of a
    killed worker gets its own); anything but a mapping of str is logged and ignored."""
    server = Server(["--workers", "1", "--graceful-timeout", "5",
                     "--pre-spawn", f"{HOOKS}:pre_spawn_env"], tmp_path, tmp_path / "zeus.log",
                    env={"HOOKS_BAD_ENV": "1"} if bad else {})
    try:
        (first,) = server.wait_ready(1)
        with server.conn() as conn:
            assert conn.request("GET", "/env?ZEUS_HOOK_WORKER").body == (b"-" if bad else b"0/0")
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: server.ready_workers() - {first}, 30, "the replacement")
        with server.conn() as conn:
            assert conn.request("GET", "/env?ZEUS_HOOK_WORKER").body == (b"-" if bad else b"1/0")
        assert server.stop() == 0
    finally:
        server.kill_all()
    assert ("hook pre_spawn" in server.log() and "expected None or a mapping" in server.log()
            ) is bad
