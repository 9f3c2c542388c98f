"""Resource limits for a worker, applied in the child after fork and before exec.

Theory of operation
-------------------
Limits are set between fork and exec (``preexec``), so they hold before any application code
runs, and they bind the worker alone.  rlimits survive exec:

* ``address_space`` -> RLIMIT_AS: allocations past it fail (Python raises MemoryError, which a
  Zeus worker treats as fatal: it exits with WorkerExit.MEMORY_LIMIT).
* ``cpu_seconds`` -> RLIMIT_CPU: the kernel sends SIGXCPU at the limit, SIGKILL a second later.
* ``open_files`` -> RLIMIT_NOFILE: opening past it fails with EMFILE.
* ``memory`` -> cgroup v2 ``memory.max`` when the supervisor's cgroup is on the unified hierarchy
  and writable: the worker joins its own child cgroup before exec, and the kernel's OOM killer
  kills it alone (SIGKILL, counted in ``memory.events``).  Without a writable cgroup, ``memory``
  falls back to RLIMIT_AS, and the log says so.
* ``privileges`` -> the user, groups and umask the worker takes (``privileges.py``), applied
  last: joining a cgroup and raising an rlimit need the front's root.

Not a limit but applied the same way, ``sched_batch`` puts the worker under Linux's
SCHED_BATCH policy (``zeus serve --worker-sched``, on by default): same CPU share, but a
worker woken by the front does not preempt it.  Every request passes through the front, so
on a machine without a spare core a worker taking the front's core the moment it is woken
stalls every other request; measured on 2 cores, hello world: 15-25% more requests/s.

``preexec`` only makes system calls (no allocation-heavy Python, no logging, no locks), as
code between fork and exec must.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from zeus import _native
from zeus.supervisor.privileges import Privileges

_CGROUP_ROOT: Final = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-worker resource limits; 0 means unlimited."""

    address_space: int = 0
    cpu_seconds: int = 0
    open_files: int = 0
    memory: int = 0
    privileges: Privileges | None = None  # user, groups, umask taken last (privileges.py)
    # Not a limit, but set the same way: the worker runs under SCHED_BATCH (see the module
    # docstring).
    sched_batch: bool = False

    def any(self) -> bool:
        """Whether any limit is set."""
        return bool(self.address_space or self.cpu_seconds or self.open_files or self.memory)


def _own_cgroup() -> Path | None:
    """This process's cgroup v2 directory, if the unified hierarchy is mounted there."""
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            path = _CGROUP_ROOT / line[3:].lstrip("/")
            if (path / "cgroup.controllers").exists():
                return path
    return None


class CgroupMemory:
    """One child cgroup with ``memory.max`` per worker, when cgroup v2 is writable."""

    def __init__(self, base: Path) -> None:
        self.base = base

    @classmethod
    def discover(cls) -> CgroupMemory | None:
        """A usable cgroup v2 parent, or None (not mounted, no memory controller, read-only)."""
        own = _own_cgroup()
        if own is None:
            return None
        try:
            if "memory" not in (own / "cgroup.controllers").read_text().split():
                return None
            probe = own / f"zeus-probe-{os.getpid()}"
            probe.mkdir()
            probe.rmdir()
        except OSError:
            return None
        return cls(own)

    def create(self, name: str, memory_max: int) -> Path:
        """Make the worker's cgroup and set its limit; returns its directory."""
        path = self.base / name
        path.mkdir(exist_ok=True)
        (path / "memory.max").write_text(str(memory_max))
        with contextlib.suppress(OSError):
            (path / "memory.swap.max").write_text("0")
        return path

    @staticmethod
    def oom_kills(path: Path) -> int:
        """How many times the kernel's OOM killer fired in this cgroup."""
        try:
            for line in (path / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    @staticmethod
    def remove(path: Path) -> None:
        """Remove a worker's cgroup once its process is gone."""
        with contextlib.suppress(OSError):
            path.rmdir()


def make_preexec(
    limits: Limits, cgroup_procs: Path | None, unblock: frozenset[int]
) -> Callable[[], None]:
    """The function the child runs between fork and exec."""
    rlimits: list[tuple[int, int, int]] = []
    address_space = limits.address_space
    if limits.memory and cgroup_procs is None:
        address_space = min(address_space or limits.memory, limits.memory)
    if address_space:
        rlimits.append((resource.RLIMIT_AS, address_space, address_space))
    if limits.cpu_seconds:
        rlimits.append((resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1))
    if limits.open_files:
        rlimits.append((resource.RLIMIT_NOFILE, limits.open_files, limits.open_files))
    procs = str(cgroup_procs) if cgroup_procs is not None else None
    batch = getattr(os, "SCHED_BATCH", None) if limits.sched_batch else None
    sigs = set(unblock)
    parent = os.getpid()
    drop = limits.privileges

    def preexec() -> None:
        # A worker must not outlive its front (a hung one would spin forever, orphaned).
        _native.set_pdeathsig(signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)  # the front died between fork and prctl
        if procs is not None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        for which, soft, hard in rlimits:
            resource.setrlimit(which, (soft, hard))
        if batch is not None:
            with contextlib.suppress(OSError):  # a policy, not a limit: never worth failing
                os.sched_setscheduler(0, batch, os.sched_param(0))
        if drop is not None:  # last: joining the cgroup and raising rlimits need root
            drop.apply()
            # New credentials clear the parent-death signal (prctl(2)): set it again.
            _native.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(1)
        if sigs:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)

    return preexec
