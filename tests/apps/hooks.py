"""Server hooks for tests/e2e/test_hooks.py: each appends one JSON line to ``$HOOKS_LOG`` with
its name, the pid of the process it runs in and what it was given; a hook named in
``$HOOKS_FAIL`` (comma-separated) raises after recording itself."""

from __future__ import annotations

import json
import os
from typing import Any

from zeus.config import Settings
from zeus.hooks import ExitInfo, ServerInfo, WorkerInfo


def _record(name: str, **fields: Any) -> None:
    with open(os.environ["HOOKS_LOG"], "a") as f:
        f.write(json.dumps({"hook": name, "pid": os.getpid(), **fields}) + "\n")
    if name in os.environ.get("HOOKS_FAIL", "").split(","):
        raise RuntimeError(f"{name} fails on purpose")


def _server(server: ServerInfo) -> dict[str, Any]:
    return {"server_pid": server.pid, "addresses": list(server.addresses),
            "workers": server.settings.workers}


def _worker(worker: WorkerInfo) -> dict[str, Any]:
    return {"index": worker.index, "generation": worker.generation, "worker_pid": worker.pid}


def on_starting(settings: Settings) -> None:
    _record("on_starting", workers=settings.workers)


def when_ready(server: ServerInfo) -> None:
    _record("when_ready", **_server(server))


def pre_spawn(worker: WorkerInfo) -> None:
    _record("pre_spawn", **_worker(worker))


def worker_ready(worker: WorkerInfo) -> None:
    _record("worker_ready", **_worker(worker))


def worker_exit(worker: WorkerInfo, end: ExitInfo) -> None:
    _record("worker_exit", **_worker(worker), returncode=end.returncode, status=end.status,
            cause=end.cause, detail=end.detail)


def on_reload(server: ServerInfo) -> None:
    _record("on_reload", **_server(server))


def on_exit(server: ServerInfo, status: int) -> None:
    _record("on_exit", **_server(server), status=status)


async def a_coroutine(server: ServerInfo) -> None:
    """Not a valid hook: hooks run on the front's loop as plain calls."""


def pre_spawn_env(worker: WorkerInfo) -> dict[str, str] | list[str]:
    """Gives each worker ``ZEUS_HOOK_WORKER=index/generation``; with ``$HOOKS_BAD_ENV`` set,
    returns a list instead (not a mapping: logged and ignored)."""
    if os.environ.get("HOOKS_BAD_ENV"):
        return ["not", "a", "mapping"]
    return {"ZEUS_HOOK_WORKER": f"{worker.index}/{worker.generation}"}
