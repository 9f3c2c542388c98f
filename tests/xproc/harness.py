"""Test-side helpers for cross-process tests: start peer programs, kill a peer at the right
moment, and collect figures worth reporting.

Peers are started through ``Peers`` (the ``peers`` fixture), which kills and reaps whatever is
still running when the test ends and prints the stderr of a peer that failed (pytest shows it
under the test's report).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

from zeus import ChannelError, Region

from .peers import wait_until

PEERS_PROGRAM: Final = Path(__file__).with_name("peers.py")
FIGURES: dict[str, str] = {}


class Peer:
    """One running peer program (``tests/xproc/peers.py MODE ...``)."""

    def __init__(self, proc: subprocess.Popen[bytes], out_fd: int, err_fd: int) -> None:
        self.proc = proc
        self.out_fd = out_fd  # memfds holding what the peer printed
        self.err_fd = err_fd

    @property
    def pid(self) -> int:
        return self.proc.pid

    @staticmethod
    def _read(fd: int) -> str:
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def stdout(self) -> str:
        return self._read(self.out_fd)

    def stderr(self) -> str:
        return self._read(self.err_fd)

    def finish(self, timeout: float = 10.0) -> int:
        """Close the peer's stdin (idle peers exit on it) and wait for it to exit."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the peer (if still running); it is reaped by ``finish``/teardown."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)

    def describe(self) -> str:
        return (
            f"peer {self.proc.args!r} pid {self.pid} exit {self.proc.poll()}\n"
            f"--- stderr ---\n{self.stderr()}"
        )

    @contextlib.contextmanager
    def blamed(self) -> Iterator[None]:
        """Attach the peer's story (exit status, stderr) to a channel failure on our side."""
        try:
            yield
        except (ChannelError, TimeoutError) as exc:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)
            exc.add_note(self.describe())
            raise


class Peers:
    """Starts peers for one test; ``cleanup()`` kills and reaps them."""

    def __init__(self) -> None:
        self.started: list[Peer] = []

    def start(
        self,
        mode: str,
        *options: object,
        region: Region | None = None,
        pass_fds: Sequence[int] = (),
        env: dict[str, str] | None = None,
    ) -> Peer:
        """Start ``peers.py MODE OPTIONS``, inheriting ``region``'s descriptors if given."""
        environ = dict(os.environ if env is None else env)
        fds = tuple(pass_fds)
        if region is not None:
            environ.update(region.child_env())
            fds += region.pass_fds
        out = os.memfd_create("peer-stdout", os.MFD_CLOEXEC)
        err = os.memfd_create("peer-stderr", os.MFD_CLOEXEC)
        proc = subprocess.Popen(
            [sys.executable, str(PEERS_PROGRAM), mode, *map(str, options)],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
            pass_fds=fds,
            env=environ,
        )
        peer = Peer(proc, out, err)
        self.started.append(peer)
        return peer

    def reap(self, peer: Peer) -> None:
        """Kill ``peer`` if it still runs, wait for it, and close what we held for it."""
        if peer.proc.poll() is None:
            peer.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            peer.finish(timeout=10)
        if peer.proc.returncode not in (0, -signal.SIGKILL):
            print(peer.describe())
        os.close(peer.out_fd)
        os.close(peer.err_fd)
        self.started.remove(peer)

    def cleanup(self) -> None:
        for peer in list(self.started):
            self.reap(peer)


class KillWhen:
    """SIGKILL ``pid`` from a helper thread as soon as ``predicate()`` holds.

    The main thread meanwhile blocks in a channel call; ``killed_at`` (monotonic) is the moment
    the signal went, so the main thread can measure how long it took to notice.
    """

    def __init__(self, pid: int, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        self.pid = pid
        self.killed_at: float | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(predicate, timeout), name=f"kill-{pid}", daemon=True
        )
        self._thread.start()

    def _run(self, predicate: Callable[[], object], timeout: float) -> None:
        try:
            wait_until(predicate, timeout, "the other side blocking")
            self.killed_at = time.monotonic()
            os.kill(self.pid, signal.SIGKILL)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self) -> float:
        """Wait for the thread; return the kill time (raise what went wrong in the thread)."""
        self._thread.join(timeout=30)
        if self.error is not None:
            raise AssertionError(f"killer thread failed: {self.error!r}") from self.error
        assert self.killed_at is not None, "killer thread did not kill"
        return self.killed_at


def open_fds() -> int:
    """Number of descriptors open in this process."""
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memfd_mappings(name: str) -> int:
    """Number of mappings of memfds called ``name`` in this process."""
    with open("/proc/self/maps") as f:
        return sum(f"memfd:{name}" in line for line in f)


def record(name: str, value: str) -> None:
    """Keep a figure for the summary printed at the end of the run."""
    FIGURES[name] = value
