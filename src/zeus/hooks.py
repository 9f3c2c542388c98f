"""Server hooks: user functions the front calls at points of a server's life.

Theory of operation
-------------------
A hook is a setting (``on_starting``, ``when_ready``, ``pre_spawn``, ``worker_ready``,
``worker_exit``, ``on_reload``, ``on_exit``) naming a function as ``module:function`` or
``path/to/file.py:function``.  :meth:`Hooks.load` imports them all when the configuration is
read -- ``zeus check-config`` too -- so a typo is a one-line error before anything starts,
not a surprise at the first reload.  A module is imported once however many hooks it holds, so
hooks can share state in its globals.

Every hook runs in the front process, the supervisor: the workers are separate programs
started by exec (any program, under ``zeus run``), so there is no forked copy of the front in
which a hook could run.  The hooks that run while serving (``when_ready``, ``pre_spawn``,
``worker_ready``, ``worker_exit``, ``on_reload``) are plain calls on the front's event loop:
while one runs, no request moves, so a hook must be quick (log, count, write a file, send a
datagram) and hand anything slow to a thread of its own.  A coroutine function is refused at
load time for that reason.

An exception in a hook is logged with its traceback on ``zeus.hooks`` and the server carries
on -- except in ``on_starting``, which runs before anything is bound or started: there an
exception (or ``SystemExit``) aborts the start with a one-line error and exit status 4
(:class:`HookFailed`), so a hook can refuse to start a server whose environment is wrong.

The arguments are frozen records (:class:`ServerInfo`, :class:`WorkerInfo`,
:class:`ExitInfo`) and the effective :class:`~zeus.config.Settings`: a hook observes, it cannot
reach into the pool.  docs/hooks.md is the user's description of each hook.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from zeus.errors import ConfigError, ZeusError

if TYPE_CHECKING:
    from zeus.config import Settings

log = logging.getLogger("zeus.hooks")

#: The hooks, in the order of a server's life.
NAMES: Final = ("on_starting", "when_ready", "pre_spawn", "worker_ready", "worker_exit",
                "on_reload", "on_exit")


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """The running server, as ``when_ready``, ``on_reload`` and ``on_exit`` see it."""

    pid: int  # the front's
    addresses: tuple[str, ...]  # what it listens on: ``http://127.0.0.1:8000``, ``unix:/run/x``
    settings: Settings  # the effective configuration


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker, as ``pre_spawn``, ``worker_ready`` and ``worker_exit`` see it."""

    index: int  # its number, never reused in the server's life (a replacement gets a new one)
    generation: int  # how many reloads (SIGHUP) came before it was started
    pid: int | None  # None in pre_spawn: the process does not exist yet


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How a worker ended, as ``worker_exit`` sees it (the same words as the log line)."""

    returncode: int | None  # Popen's: -N for signal N; None if it could not be reaped
    status: str  # ``exit code 1``, ``signal SIGKILL``
    cause: str  # crash, timeout, limit, recycle, boot_failure, stopped, broken
    detail: str  # e.g. ``served 1000 requests (max-requests 1000)``; may be empty


class HookFailed(ZeusError):
    """``on_starting`` raised: the server must not start."""


Hook = Callable[..., object]


def _import(module: str, cwd: Path, cache: dict[str, ModuleType]) -> ModuleType:
    """Import ``module`` (a dotted name, or a ``.py`` file relative to ``cwd``) once."""
    if module in cache:
        return cache[module]
    if module.endswith(".py") or os.sep in module:
        path = (cwd / module).resolve()
        name = f"zeus_hooks_{len(cache)}_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None or not path.is_file():
            raise ConfigError(f"no such file {str(path)!r}")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        spec.loader.exec_module(loaded)
    else:
        if str(cwd) not in sys.path:
            sys.path.insert(0, str(cwd))  # as the workers find the app: from the project
        loaded = importlib.import_module(module)
    cache[module] = loaded
    return loaded


class Hooks:
    """The hooks of one server, loaded; each ``run_<name>`` call is a no-op when unset."""

    def __init__(self, functions: Mapping[str, tuple[str, Hook]] | None = None) -> None:
        self._functions: dict[str, tuple[str, Hook]] = dict(functions or {})

    @classmethod
    def load(cls, specs: Mapping[str, str | None], cwd: str | Path) -> Hooks:
        """Import the hooks ``specs`` names (``name -> module:function``, None when unset).

        ConfigError, naming the hook, if a module does not import, has no such function, or
        the function is a coroutine function.
        """
        cache: dict[str, ModuleType] = {}
        functions: dict[str, tuple[str, Hook]] = {}
        for name, spec in specs.items():
            if not spec:
                continue
            if name not in NAMES:
                raise ConfigError(f"unknown hook {name!r}")
            module, _, attr = spec.rpartition(":")
            try:
                loaded = _import(module, Path(cwd), cache)
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            except Exception as exc:  # the user's module raised while importing
                raise ConfigError(f"{name}: cannot import {module!r}: "
                                  f"{type(exc).__name__}: {exc}") from None
            func = getattr(loaded, attr, None)
            if not callable(func):
                raise ConfigError(f"{name}: {module!r} has no function {attr!r}")
            if inspect.iscoroutinefunction(func):
                raise ConfigError(f"{name}: {spec} is a coroutine function; hooks are plain "
                                  f"functions (they run on the front's event loop)")
            functions[name] = (spec, func)
        return cls(functions)

    @classmethod
    def from_settings(cls, settings: Settings, cwd: str | Path) -> Hooks:
        """:meth:`load` the hook settings of ``settings``."""
        return cls.load({name: getattr(settings, name) for name in NAMES}, cwd)

    def __contains__(self, name: str) -> bool:
        return name in self._functions

    def _call(self, name: str, *args: Any) -> None:
        entry = self._functions.get(name)
        if entry is None:
            return
        spec, func = entry
        try:
            func(*args)
        except (Exception, SystemExit) as exc:
            log.error("hook %s (%s) failed: %s: %s", name, spec, type(exc).__name__, exc,
                      exc_info=True)

    def on_starting(self, settings: Settings) -> None:
        """Before anything is bound or started; HookFailed if the hook raises."""
        entry = self._functions.get("on_starting")
        if entry is None:
            return
        spec, func = entry
        try:
            func(settings)
        except (Exception, SystemExit) as exc:
            detail = f": {exc}" if str(exc) else ""
            raise HookFailed(f"on_starting hook {spec} failed: {type(exc).__name__}{detail}"
                             ) from exc

    def when_ready(self, server: ServerInfo) -> None:
        """Listening, and a worker is ready to serve."""
        self._call("when_ready", server)

    def pre_spawn(self, worker: WorkerInfo) -> dict[str, str]:
        """Just before a worker process is started: the environment variables the hook
        returns (a mapping of str to str, or None) are added to that worker's environment.
        Anything else is logged and ignored."""
        entry = self._functions.get("pre_spawn")
        if entry is None:
            return {}
        spec, func = entry
        try:
            extra = func(worker)
        except (Exception, SystemExit) as exc:
            log.error("hook pre_spawn (%s) failed: %s: %s", spec, type(exc).__name__, exc,
                      exc_info=True)
            return {}
        if extra is None:
            return {}
        if isinstance(extra, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) and k and "=" not in k and
                "\0" not in k + v for k, v in extra.items()):
            return dict(extra)
        log.error("hook pre_spawn (%s) returned %.200r: expected None or a mapping of "
                  "environment variable names to values (str); ignored", spec, extra)
        return {}

    def worker_ready(self, worker: WorkerInfo) -> None:
        """A worker finished booting and takes requests."""
        self._call("worker_ready", worker)

    def worker_exit(self, worker: WorkerInfo, end: ExitInfo) -> None:
        """A worker process ended (reaped), whatever the cause."""
        self._call("worker_exit", worker, end)

    def on_reload(self, server: ServerInfo) -> None:
        """SIGHUP: before the rolling reload starts new workers."""
        self._call("on_reload", server)

    def on_exit(self, server: ServerInfo, status: int) -> None:
        """The server has stopped (workers gone, sockets closed), just before it exits."""
        self._call("on_exit", server, status)

    def __repr__(self) -> str:
        return f"<Hooks {', '.join(self._functions) or 'none'}>"
