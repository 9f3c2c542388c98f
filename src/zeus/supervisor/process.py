"""Process mechanism: start a worker with its region, watch it with a pidfd, signal, reap.

A worker is started by exec (never a bare fork of the front, which has every region mapped):
``subprocess.Popen`` with ``pass_fds`` set to exactly this worker's region and doorbell, so
it inherits those and nothing else (every region is created close-on-exec).  The supervisor's
signals are blocked around the fork so a signal cannot run the front's handler in the child
before exec; the child unblocks them in ``preexec`` after applying its limits.

Exit is noticed at once through a pidfd registered with the event loop (no polling, no
SIGCHLD races), then the process is reaped with ``Popen.poll()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from zeus.region import Region
from zeus.supervisor.limits import CgroupMemory, Limits, make_preexec

SUPERVISOR_SIGNALS: Final = frozenset(
    {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
     signal.SIGCHLD, signal.SIGQUIT}
)


class WorkerProcess:
    """One running worker process and its pidfd."""

    def __init__(
        self,
        argv: list[str],
        region: Region,
        *,
        env: Mapping[str, str],
        limits: Limits,
        cgroup: CgroupMemory | None,
        name: str,
        cwd: str | None = None,
    ) -> None:
        self.cgroup_path: Path | None = None
        if limits.memory and cgroup is not None:
            self.cgroup_path = cgroup.create(name, limits.memory)
        procs = self.cgroup_path / "cgroup.procs" if self.cgroup_path else None
        preexec = make_preexec(limits, procs, SUPERVISOR_SIGNALS)
        full_env = {**os.environ, **env, **region.child_env()}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        try:
            self.popen: Final = subprocess.Popen(
                argv,
                pass_fds=region.pass_fds,
                env=full_env,
                preexec_fn=preexec,
                cwd=cwd,
                close_fds=True,
            )
        except PermissionError as exc:  # exec as --user: say who could not run it
            who = limits.privileges
            if who is None or not who.changes_identity():
                raise
            raise PermissionError(exc.errno, f"{exc.strerror} (as user {who.user or who.uid})",
                                  exc.filename) from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.pid: Final = self.popen.pid
        self.started: Final = time.monotonic()
        self.pidfd: int | None = os.pidfd_open(self.pid)
        self.returncode: int | None = None

    def watch(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None]) -> None:
        """Call ``on_exit`` from ``loop`` as soon as the process exits."""
        assert self.pidfd is not None
        loop.add_reader(self.pidfd, on_exit)

    def reap(self, loop: asyncio.AbstractEventLoop | None = None) -> int | None:
        """Collect the exit status if the process has exited; close the pidfd then."""
        rc = self.popen.poll()
        if rc is not None:
            self.returncode = rc
            if self.pidfd is not None:
                if loop is not None:
                    loop.remove_reader(self.pidfd)
                os.close(self.pidfd)
                self.pidfd = None
            if self.cgroup_path is not None:
                CgroupMemory.remove(self.cgroup_path)
        return rc

    def oom_killed(self) -> bool:
        """Whether the cgroup memory limit killed this worker."""
        return self.cgroup_path is not None and CgroupMemory.oom_kills(self.cgroup_path) > 0

    def send_signal(self, sig: int) -> None:
        """Signal the process unless it has already been reaped."""
        if self.returncode is None and self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)

    def rss(self) -> int | None:
        """Resident set size in bytes, or None if unknown."""
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time consumed so far, or None if unknown."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            return (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, ValueError, IndexError):
            return None

    @property
    def age(self) -> float:
        """Seconds since start."""
        return time.monotonic() - self.started

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<WorkerProcess pid={self.pid} {state}>"


def describe_exit(returncode: int) -> str:
    """A human account of an exit status: 'exit code 3' or 'signal SIGKILL'."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
