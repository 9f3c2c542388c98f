"""Zeus channel against the usual Python IPC, side by side, in one run.

Run ``.venv/bin/python bench/ipc.py [--json] [--quick]`` (or ``make bench``).

Theory of operation
-------------------
The parent process drives every measurement; each peer is a separate process started by exec
of this same file (``--peer KIND``), so nothing is shared but what the transport carries:

=============  ==========================================================================
zeus_awake     a Zeus channel, adaptive spin-then-futex on both sides (the default)
zeus_asleep    a Zeus channel with ``SpinPolicy(max_ns=0, probe_ns=0)`` on both sides, so
               every wait that finds nothing goes to FUTEX_WAIT at once
pipe           ``multiprocessing.Pipe()`` (duplex; a Unix socket pair under
               ``Connection.send_bytes`` / ``recv_bytes``, 4-byte length prefix)
socketpair     ``socket.socketpair()`` with ``sendall`` / ``recv_into`` and an 8-byte
               length prefix
memcpy         ``dst[:] = src`` on preallocated memoryviews, in the parent process
=============  ==========================================================================

A peer obeys a two-command protocol on its own transport: a 16-byte command ``(op, arg)``,
then

* ``ECHO``: echo every message until a 1-byte one (echoed too).  The Zeus peer echoes in
  place: ``send(msg.data)``, one copy from the request arena into the response arena, in C.
* ``SINK arg``: receive messages until ``arg`` bytes have arrived, then send an 8-byte ack.
  The Zeus peer only looks at ``len(msg.data)`` and releases it (zero-copy: the bytes stay in
  the arena); Pipe and socketpair must copy out of the kernel, into a preallocated buffer.

Back to back, a non-spinning peer is often still on its way to sleep when the next message
lands, so the round trips are also measured after a 100 us idle gap (untimed), which every
echo peer sleeps through; the table shows how many futex wakes each round trip took.

Throughput is the bytes of one stream divided by the time from the first send to the ack.
Each figure is calibrated from a warm-up run to last ``target_s`` and is the median of
``repeats`` runs.  Round trip latency is measured per round trip with ``perf_counter_ns``,
including the release of the reply.

Every wait is bounded.  Zeus waits pass ``timeout=``.  A blocking Pipe or socket read cannot
take a timeout without an extra poll() per call (which would slow the baseline), so each phase
runs under a SIGALRM watchdog that raises.  Peers die with the parent (PR_SET_PDEATHSIG), exit
on end of stream, and are killed by their own ``alarm()`` after ``PEER_LIFETIME_S``; the
parent kills whatever is left on any exit.  A Zeus wait that times out (or a broken channel)
costs only the figures it was measuring: that transport sits out the rest of the phase with a
fresh peer, the figure prints as FAILED (null in JSON, reason under ``errors``), and the exit
status is 1.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import ctypes
import dataclasses
import functools
import json
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from types import FrameType
from typing import Final, TypeVar

from zeus import Channel, ChannelError, PeerLostError, Region, SpinPolicy

MSG: Final = 64  # bytes per latency message
STOP: Final = b"\x00"  # ends an ECHO run: the only 1-byte message
SIZES: Final = {"64B": 64, "1MiB": 1 << 20, "16MiB": 16 << 20}
MAX_SIZE: Final = max(SIZES.values())
CMD: Final = struct.Struct("<QQ")
LEN: Final = struct.Struct("<Q")
OP_ECHO: Final = 1
OP_SINK: Final = 2
WAIT_S: Final = 10.0  # any single Zeus wait in the parent (each takes milliseconds at most)
PHASE_S: Final = 120.0  # watchdog of one measurement phase
PEER_LIFETIME_S: Final = 900  # a peer's own alarm()
PR_SET_PDEATHSIG: Final = 1
NO_SPIN: Final = SpinPolicy(max_ns=0, probe_ns=0)


@dataclass(frozen=True, slots=True)
class Config:
    """How long each part runs."""

    rtt_samples: int  # round trips timed per transport
    rtt_rounds: int  # ... in this many rounds, transports interleaved (evens out drift)
    rtt_warmup: int  # untimed round trips first
    rtt_max_s: float  # stop sampling a transport after this long
    idle_samples: int  # round trips timed after an idle gap, per transport
    target_s: float  # duration of one throughput run
    repeats: int  # throughput runs per figure (median)
    warm_bytes: int  # bytes of the calibrating warm-up run
    oversub_s: float  # duration of one oversubscribed run
    oversub_reps: int  # runs per spin mode, interleaved


FULL: Final = Config(40_000, 4, 2_000, 8.0, 5_000, 0.6, 3, 256 << 20, 1.0, 6)
QUICK: Final = Config(4_000, 2, 300, 1.0, 1_000, 0.12, 1, 32 << 20, 0.25, 2)
BUSY_LOAD: Final = 0.5  # a 1-min load average at start above this taints the figures
IDLE_GAP_NS: Final = 100_000  # long enough for an echo peer to be asleep in the kernel


# --------------------------------------------------------------------------- processes


class PhaseTimeout(Exception):
    """A measurement phase outlived its watchdog."""


@contextlib.contextmanager
def watchdog(seconds: float, what: str) -> Iterator[None]:
    """Raise PhaseTimeout in the main thread if the block runs longer than ``seconds``."""

    def fire(signum: int, frame: FrameType | None) -> None:
        raise PhaseTimeout(f"{what}: no result after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Children:
    """Every process this run started; ``reap()`` leaves none behind."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        args: list[str],
        *,
        pass_fds: tuple[int, ...] = (),
        env: dict[str, str] | None = None,
        stdout: int = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, os.path.abspath(__file__), *args, "--parent", str(os.getpid())]
        proc = subprocess.Popen(
            cmd, pass_fds=pass_fds, env={**os.environ, **(env or {})}, stdout=stdout
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], grace: float) -> None:
        """Wait ``grace`` seconds for ``proc`` to exit, then kill it."""
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def reap(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            self.stop(proc, 2.0)
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()


# ------------------------------------------------------------------------ transports


@dataclass(frozen=True, slots=True)
class Echo:
    """One run of 64-byte round trips."""

    samples_ns: list[int]
    seconds: float


class Peer(abc.ABC):
    """The parent's end of one transport, with its echo/sink peer process."""

    proc: subprocess.Popen[bytes]

    @abc.abstractmethod
    def echo(self, count: int, seconds: float, gap_ns: int = 0) -> Echo:
        """Time up to ``count`` 64-byte round trips, for at most ``seconds``.

        With ``gap_ns``, busy-wait that long (untimed) before each round trip, so that the
        peer has gone to sleep by the time the message arrives.
        """

    @abc.abstractmethod
    def sink(self, src: memoryview, count: int) -> float:
        """Seconds to stream ``count`` messages of ``src`` to the peer until it acks."""

    @abc.abstractmethod
    def _close_transport(self) -> None: ...

    def close(self) -> None:
        """Close our end (the peer sees end of stream and exits), then reap the peer."""
        try:
            self._close_transport()
        finally:
            Children.stop(self.proc, 3.0)


def idle(ns: int) -> None:
    """Busy-wait ``ns`` nanoseconds (the caller stays on its core; the peer's core idles)."""
    until = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < until:
        pass


def _check_ack(got: int, want: int) -> None:
    if got != want:
        raise RuntimeError(f"peer acknowledged {got} bytes, {want} were sent")


class Failed(Exception):
    """A Zeus channel wait timed out or the channel broke: that figure is lost, the run goes on."""


class ZeusPeer(Peer):
    """A Zeus channel; after a failure it starts a fresh peer and raises Failed."""

    def __init__(self, children: Children, *, spin: bool) -> None:
        self._children = children
        self._spin = spin
        self._start()

    def _start(self) -> None:
        self.region = Region.create()
        try:
            args = ["--peer", "zeus"] + ([] if self._spin else ["--nospin"])
            self.proc = self._children.spawn(
                args, pass_fds=self.region.pass_fds, env=self.region.child_env()
            )
            spin = None if self._spin else NO_SPIN
            self.ch = Channel(self.region, peer_pid=self.proc.pid, spin=spin)
            self._echo(1, 1.0, 0)  # the peer is up and attached before anything is timed
        except BaseException:
            self.region.close()
            raise

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        try:
            yield
        except (TimeoutError, ChannelError) as exc:
            stats = self.ch.statistics()
            self._close_transport()
            self._start()
            raise Failed(f"{type(exc).__name__}: {exc} ({stats})") from exc

    def echo(self, count: int, seconds: float, gap_ns: int = 0) -> Echo:
        with self._failing():
            return self._echo(count, seconds, gap_ns)

    def sink(self, src: memoryview, count: int) -> float:
        with self._failing():
            return self._sink(src, count)

    def _echo(self, count: int, seconds: float, gap_ns: int) -> Echo:
        ch = self.ch
        send, recv, clock = ch.send, ch.recv, time.perf_counter_ns
        payload = bytes(MSG)
        ch.send(0, CMD.pack(OP_ECHO, 0), timeout=WAIT_S)
        samples: list[int] = []
        add = samples.append
        start = clock()
        until = start + int(seconds * 1e9)
        for _ in range(count):
            if gap_ns:
                idle(gap_ns)
            t0 = clock()
            send(1, payload, timeout=WAIT_S)
            recv(timeout=WAIT_S).release()
            t1 = clock()
            add(t1 - t0)
            if t1 > until:
                break
        end = clock()
        send(1, STOP, timeout=WAIT_S)
        recv(timeout=WAIT_S).release()
        return Echo(samples, (end - start) / 1e9)

    def wakes_sent(self) -> int:
        """How many times this end has woken the peer (futex wakes)."""
        return self.ch.statistics().wakes_sent

    def _sink(self, src: memoryview, count: int) -> float:
        ch = self.ch
        send = ch.send
        total = len(src) * count
        send(0, CMD.pack(OP_SINK, total), timeout=WAIT_S)
        t0 = time.perf_counter()
        for _ in range(count):
            send(1, src, timeout=WAIT_S)
        with ch.recv(timeout=WAIT_S) as ack:
            (got,) = LEN.unpack(ack.data)
        dt = time.perf_counter() - t0
        _check_ack(got, total)
        return dt

    def _close_transport(self) -> None:
        try:
            self.ch.close()
        finally:
            Children.stop(self.proc, 3.0)  # the peer's mapping goes first, then ours
            self.region.close()


class PipePeer(Peer):
    def __init__(self, children: Children) -> None:
        self.conn, theirs = Pipe()
        try:
            fd = theirs.fileno()
            self.proc = children.spawn(["--peer", "pipe", "--fd", str(fd)], pass_fds=(fd,))
        except BaseException:
            self.conn.close()
            raise
        finally:
            theirs.close()

    def echo(self, count: int, seconds: float, gap_ns: int = 0) -> Echo:
        conn = self.conn
        send_bytes, recv_bytes, clock = conn.send_bytes, conn.recv_bytes, time.perf_counter_ns
        payload = bytes(MSG)
        send_bytes(CMD.pack(OP_ECHO, 0))
        samples: list[int] = []
        add = samples.append
        start = clock()
        until = start + int(seconds * 1e9)
        for _ in range(count):
            if gap_ns:
                idle(gap_ns)
            t0 = clock()
            send_bytes(payload)
            recv_bytes()
            t1 = clock()
            add(t1 - t0)
            if t1 > until:
                break
        end = clock()
        send_bytes(STOP)
        recv_bytes()
        return Echo(samples, (end - start) / 1e9)

    def sink(self, src: memoryview, count: int) -> float:
        send_bytes = self.conn.send_bytes
        total = len(src) * count
        send_bytes(CMD.pack(OP_SINK, total))
        t0 = time.perf_counter()
        for _ in range(count):
            send_bytes(src)
        (got,) = LEN.unpack(self.conn.recv_bytes())
        dt = time.perf_counter() - t0
        _check_ack(got, total)
        return dt

    def _close_transport(self) -> None:
        self.conn.close()


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``; EOFError if the stream ends first."""
    n = len(view)
    got = sock.recv_into(view)  # nearly always all of it
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError("socket closed")
        got += k


def recv_frame(sock: socket.socket, view: memoryview) -> memoryview:
    """Read one length-prefixed message into ``view``; return its payload."""
    recv_exact(sock, view[: LEN.size])
    (n,) = LEN.unpack_from(view)
    body = view[LEN.size : LEN.size + n]
    recv_exact(sock, body)
    return body


class SocketPeer(Peer):
    def __init__(self, children: Children) -> None:
        self.sock, theirs = socket.socketpair()
        try:
            fd = theirs.fileno()
            self.proc = children.spawn(["--peer", "socket", "--fd", str(fd)], pass_fds=(fd,))
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()
        self.view = memoryview(bytearray(LEN.size + MAX_SIZE))

    def echo(self, count: int, seconds: float, gap_ns: int = 0) -> Echo:
        sock, view = self.sock, self.view
        sendall, clock = sock.sendall, time.perf_counter_ns
        frame = LEN.pack(MSG) + bytes(MSG)
        sendall(LEN.pack(CMD.size) + CMD.pack(OP_ECHO, 0))
        samples: list[int] = []
        add = samples.append
        start = clock()
        until = start + int(seconds * 1e9)
        for _ in range(count):
            if gap_ns:
                idle(gap_ns)
            t0 = clock()
            sendall(frame)
            recv_frame(sock, view)
            t1 = clock()
            add(t1 - t0)
            if t1 > until:
                break
        end = clock()
        sendall(LEN.pack(1) + STOP)
        recv_frame(sock, view)
        return Echo(samples, (end - start) / 1e9)

    def sink(self, src: memoryview, count: int) -> float:
        sock = self.sock
        total = len(src) * count
        frame = LEN.pack(len(src)) + src  # built before the clock starts: one sendall each
        sock.sendall(LEN.pack(CMD.size) + CMD.pack(OP_SINK, total))
        t0 = time.perf_counter()
        for _ in range(count):
            sock.sendall(frame)
        (got,) = LEN.unpack(recv_frame(sock, self.view))
        dt = time.perf_counter() - t0
        _check_ack(got, total)
        return dt

    def _close_transport(self) -> None:
        self.sock.close()


def memcpy(src: memoryview, count: int) -> float:
    """Seconds for ``count`` in-process copies of ``src`` into a preallocated buffer."""
    dst = memoryview(bytearray(len(src)))
    t0 = time.perf_counter()
    for _ in range(count):
        dst[:] = src
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- peers


def die_with_parent(parent: int) -> None:
    """Be killed when the parent dies, and after PEER_LIFETIME_S whatever happens."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    signal.alarm(PEER_LIFETIME_S)  # SIGALRM's default action ends the process


def serve_zeus(spin: SpinPolicy | None) -> None:
    region = Region.from_environment()
    with region, Channel(region, spin=spin) as ch:
        recv = ch.recv
        while True:
            with recv(timeout=PEER_LIFETIME_S) as cmd:
                op, arg = CMD.unpack(cmd.data)
            if op == OP_ECHO:
                send = ch.send
                while True:
                    msg = recv(timeout=PEER_LIFETIME_S)
                    data = msg.data
                    n = len(data)
                    # One copy, arena to arena, inside the C extension (no Python buffer).
                    send(msg.id, data, flags=msg.flags, timeout=PEER_LIFETIME_S)
                    msg.release()
                    if n == len(STOP):
                        break
            elif op == OP_SINK:
                got = 0
                while got < arg:
                    msg = recv(timeout=PEER_LIFETIME_S)
                    got += len(msg.data)
                    msg.release()
                ch.send(0, LEN.pack(got), timeout=PEER_LIFETIME_S)


def serve_pipe(fd: int) -> None:
    conn = Connection(fd)
    buf = bytearray(MAX_SIZE)
    while True:
        op, arg = CMD.unpack(conn.recv_bytes())
        if op == OP_ECHO:
            while True:
                data = conn.recv_bytes()
                conn.send_bytes(data)
                if len(data) == len(STOP):
                    break
        elif op == OP_SINK:
            got = 0
            while got < arg:
                got += conn.recv_bytes_into(buf)
            conn.send_bytes(LEN.pack(got))


def serve_socket(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    view = memoryview(bytearray(LEN.size + MAX_SIZE))
    while True:
        op, arg = CMD.unpack(recv_frame(sock, view))
        if op == OP_ECHO:
            while True:
                n = len(recv_frame(sock, view))
                sock.sendall(view[: LEN.size + n])
                if n == len(STOP):
                    break
        elif op == OP_SINK:
            got = 0
            while got < arg:
                got += len(recv_frame(sock, view))
            sock.sendall(LEN.pack(LEN.size) + LEN.pack(got))


def burn(seconds: float) -> None:
    """Busy-loop for ``seconds`` (an oversubscribing CPU hog); say so on stdout first."""
    os.write(1, b"!")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(10_000):
            pass


def peer_main(args: argparse.Namespace) -> int:
    die_with_parent(args.parent)
    if args.burn is not None:
        burn(args.burn)
        return 0
    with contextlib.suppress(PeerLostError, EOFError, ConnectionError):
        if args.peer == "zeus":
            serve_zeus(NO_SPIN if args.nospin else None)
        elif args.peer == "pipe":
            serve_pipe(args.fd)
        else:
            serve_socket(args.fd)
    return 0


# ------------------------------------------------------------------------- measuring


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


T = TypeVar("T")


class Ledger:
    """The failures of a run: a failed figure is None, and that transport sits out the phase."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._failed: set[str] = set()

    def attempt(self, what: str, fn: Callable[[], T]) -> T | None:
        if what in self._failed:
            return None
        try:
            return fn()
        except Failed as exc:
            self._failed.add(what)
            self.errors.append(f"{what}: {exc}")
            log(f"FAILED {what}: {exc}")
            return None

    def failed(self, what: str) -> bool:
        return what in self._failed


def percentile(samples: list[int], q: float) -> float:
    """The ``q`` quantile of ``samples`` (ns), in microseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or not b else a / b


Figures = dict[str, float | None]  # transport -> figure, None if it failed


def round_trips(
    peers: dict[str, Peer], cfg: Config, ledger: Ledger, *, gap_ns: int = 0
) -> tuple[Figures, Figures, dict[str, int]]:
    """p50 and p99 (us) of 64-byte round trips per peer, and how many were timed.

    Back to back (``gap_ns`` 0), the peers take turns in ``cfg.rtt_rounds`` rounds after a
    warm-up; after an idle gap, each peer runs ``cfg.idle_samples`` round trips in one go.
    """
    samples: dict[str, list[int]] = {name: [] for name in peers}
    what = {name: f"round trip{' after idle' if gap_ns else ''} {name}" for name in peers}
    if gap_ns:
        plan = [(cfg.idle_samples, cfg.rtt_max_s)]
    else:
        for name, peer in peers.items():
            ledger.attempt(what[name], functools.partial(peer.echo, cfg.rtt_warmup, 1.0))
        per_round = cfg.rtt_samples // cfg.rtt_rounds
        plan = [(per_round, cfg.rtt_max_s / cfg.rtt_rounds)] * cfg.rtt_rounds
    for count, seconds in plan:
        for name, peer in peers.items():
            run = ledger.attempt(what[name], functools.partial(peer.echo, count, seconds, gap_ns))
            if run is not None:
                samples[name] += run.samples_ns
    ok = {name: s for name, s in samples.items() if s and not ledger.failed(what[name])}
    p50: Figures = {name: percentile(ok[name], 0.50) if name in ok else None for name in peers}
    p99: Figures = {name: percentile(ok[name], 0.99) if name in ok else None for name in peers}
    return p50, p99, {name: len(s) for name, s in samples.items()}


def throughput(
    movers: dict[str, Callable[[memoryview, int], float]],
    label: str,
    cfg: Config,
    ledger: Ledger,
) -> Figures:
    """GB/s of each mover streaming ``SIZES[label]``-byte messages: the median of the repeats.

    A warm-up run calibrates each mover's message count to last ``cfg.target_s``; the timed
    runs are interleaved across movers, so a drift in the machine's speed hits them all alike.
    """
    size = SIZES[label]
    src = memoryview(os.urandom(size))
    warm = max(2, min(50_000, cfg.warm_bytes // size))
    what = {name: f"throughput {label} {name}" for name in movers}
    counts: dict[str, int] = {}
    for name, move in movers.items():
        took = ledger.attempt(what[name], functools.partial(move, src, warm))
        if took is not None:
            counts[name] = max(2, round(warm / took * cfg.target_s))
    runs: dict[str, list[float]] = {name: [] for name in movers}
    for _ in range(cfg.repeats):
        for name, count in counts.items():
            took = ledger.attempt(what[name], functools.partial(movers[name], src, count))
            if took is not None:
                runs[name].append(size * count / took / 1e9)
    return {
        name: statistics.median(r) if r and not ledger.failed(what[name]) else None
        for name, r in runs.items()
    }


def oversubscribed(
    children: Children, peers: dict[str, ZeusPeer], cfg: Config, ledger: Ledger
) -> Figures:
    """64-byte round trips/s per spin mode while two busy loops compete for the 2 cores."""
    hog_s = (cfg.oversub_s * cfg.oversub_reps + 1.0) * len(peers) + 10.0
    hogs = [children.spawn(["--burn", str(hog_s)], stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for hog in hogs:
            if hog.stdout is None or hog.stdout.read(1) != b"!":
                raise RuntimeError("CPU burner did not start")
        what = {mode: f"oversubscribed {mode}" for mode in peers}
        for mode, peer in peers.items():  # let the adaptive budget settle under load
            ledger.attempt(what[mode], functools.partial(peer.echo, 1 << 30, 0.3))
        rounds = dict.fromkeys(peers, 0)
        took = dict.fromkeys(peers, 0.0)
        for _ in range(cfg.oversub_reps):
            for mode, peer in peers.items():
                timed = functools.partial(peer.echo, 1 << 30, cfg.oversub_s)
                run = ledger.attempt(what[mode], timed)
                if run is not None:
                    rounds[mode] += len(run.samples_ns)
                    took[mode] += run.seconds
        ok = [mode for mode in peers if took[mode] and not ledger.failed(what[mode])]
        return {mode: rounds[mode] / took[mode] if mode in ok else None for mode in peers}
    finally:
        for hog in hogs:
            hog.kill()
            Children.stop(hog, 5.0)


@dataclass(frozen=True, slots=True)
class Results:
    """Everything one run measured; None where a measurement failed (see ``errors``)."""

    rtt_p50_us: Figures
    rtt_p99_us: Figures
    throughput_gbps: dict[str, Figures]  # size label -> transport -> GB/s
    oversubscribed_roundtrips_per_s: Figures
    # Not targets, but what "asleep" really means: with spinning off, back-to-back round trips
    # often find the peer not yet asleep; after an idle gap every message wakes a sleeper.
    rtt_after_idle_p50_us: Figures
    rtt_after_idle_p99_us: Figures
    zeus_asleep_wakes_per_round_trip: Figures  # futex wakes of the peer per round trip
    errors: list[str]


def run_all(cfg: Config, children: Children) -> Results:
    """Start the peers, measure everything, close the peers."""
    ledger = Ledger()
    peers: dict[str, Peer] = {}
    try:
        with watchdog(PHASE_S, "starting peers"):
            awake = peers["zeus_awake"] = ZeusPeer(children, spin=True)
            asleep = peers["zeus_asleep"] = ZeusPeer(children, spin=False)
            peers["pipe"] = PipePeer(children)
            peers["socketpair"] = SocketPeer(children)

        log("round trip, 64 B: " + ", ".join(peers))
        with watchdog(PHASE_S, "round trips"):
            wakes = asleep.wakes_sent()
            p50, p99, done = round_trips(peers, cfg, ledger)
            woken = asleep.wakes_sent() - wakes
        wakes_per_rt: Figures = {"back_to_back": ratio(woken, done["zeus_asleep"])}

        idle = {name: peers[name] for name in ("zeus_asleep", "pipe", "socketpair")}
        log(f"round trip after {IDLE_GAP_NS // 1000} us idle, 64 B: " + ", ".join(idle))
        with watchdog(PHASE_S, "round trips after idle"):
            wakes = asleep.wakes_sent()
            idle50, idle99, done = round_trips(idle, cfg, ledger, gap_ns=IDLE_GAP_NS)
            woken = asleep.wakes_sent() - wakes
        wakes_per_rt["after_idle"] = ratio(woken, done["zeus_asleep"])
        for key, phase in [("back_to_back", "round trip"), ("after_idle", "round trip after idle")]:
            if ledger.failed(f"{phase} zeus_asleep"):
                wakes_per_rt[key] = None  # counters restart with a fresh channel

        movers: dict[str, Callable[[memoryview, int], float]] = {
            "zeus": awake.sink,
            "pipe": peers["pipe"].sink,
            "socketpair": peers["socketpair"].sink,
            "memcpy": memcpy,
        }
        gbps: dict[str, Figures] = {}
        for label in reversed(SIZES):
            log(f"throughput, {label}: " + ", ".join(movers))
            with watchdog(PHASE_S, f"throughput {label}"):
                gbps[label] = throughput(movers, label, cfg, ledger)

        log("oversubscribed ping-pong: zeus adaptive vs no spin, 2 CPU burners")
        with watchdog(PHASE_S, "oversubscribed ping-pong"):
            oversub = oversubscribed(
                children, {"zeus_adaptive": awake, "zeus_nospin": asleep}, cfg, ledger
            )
    finally:
        for peer in peers.values():
            with contextlib.suppress(Exception):
                peer.close()
    return Results(
        rtt_p50_us=p50,
        rtt_p99_us=p99,
        throughput_gbps={label: gbps[label] for label in SIZES},
        oversubscribed_roundtrips_per_s=oversub,
        rtt_after_idle_p50_us=idle50,
        rtt_after_idle_p99_us=idle99,
        zeus_asleep_wakes_per_round_trip=wakes_per_rt,
        errors=ledger.errors,
    )


# -------------------------------------------------------------------------- reporting


@dataclass(frozen=True, slots=True)
class Target:
    label: str
    value: float | None  # None: a figure it needs failed
    limit: float
    at_most: bool

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        return self.value <= self.limit if self.at_most else self.value >= self.limit


def targets(r: Results) -> list[Target]:
    p50, big = r.rtt_p50_us, r.throughput_gbps["16MiB"]
    ovs = r.oversubscribed_roundtrips_per_s
    return [
        Target("RTT p50 zeus awake <= 0.1 x Pipe", ratio(p50["zeus_awake"], p50["pipe"]), 0.1,
               True),
        Target("RTT p50 zeus asleep <= 0.8 x Pipe", ratio(p50["zeus_asleep"], p50["pipe"]), 0.8,
               True),
        Target("16 MiB zeus >= 4 x Pipe", ratio(big["zeus"], big["pipe"]), 4.0, False),
        Target("16 MiB zeus >= 0.7 x memcpy", ratio(big["zeus"], big["memcpy"]), 0.7, False),
        Target("oversubscribed adaptive >= 0.9 x no-spin",
               ratio(ovs["zeus_adaptive"], ovs["zeus_nospin"]), 0.9, False),
    ]


def machine() -> dict[str, object]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
    }


def cell(value: float | None, width: int, spec: str, suffix: str = "") -> str:
    """``value`` formatted right-aligned in ``width`` columns, or FAILED."""
    text = "FAILED" if value is None else format(value, spec) + suffix
    return f"{text:>{width}}"


def table(r: Results, mach: dict[str, object], checks: list[Target], elapsed: float) -> str:
    tp, ovs = r.throughput_gbps, r.oversubscribed_roundtrips_per_s
    names = {
        "zeus_awake": "zeus, peer awake (spin)",
        "zeus_asleep": "zeus, peer asleep (futex)",
        "pipe": "multiprocessing.Pipe",
        "socketpair": "socket.socketpair",
    }
    out = [
        f"Zeus IPC benchmark -- {mach['cpu']}, {mach['cores']} cores, "
        f"Python {mach['python']}, Linux {mach['kernel']}",
    ]
    load = mach["loadavg_1min_at_start"]
    if isinstance(load, float) and load >= BUSY_LOAD:
        out.append(f"WARNING: 1-min load average {load:.2f} at start: the machine was not idle")
    for head, p50, p99 in [
        ("64-byte round trip (us)", r.rtt_p50_us, r.rtt_p99_us),
        (f"... after {IDLE_GAP_NS // 1000} us idle (us)", r.rtt_after_idle_p50_us,
         r.rtt_after_idle_p99_us),
    ]:
        out += ["", f"{head:<32}{'p50':>9}{'p99':>9}{'p50 / Pipe':>12}"]
        for key in p50:
            label = "zeus, no spin" if key == "zeus_asleep" and len(p50) < 4 else names[key]
            out.append(
                f"  {label:<30}{cell(p50[key], 9, '.2f')}{cell(p99[key], 9, '.2f')}"
                f"{cell(ratio(p50[key], p50['pipe']), 12, '.2f', 'x')}"
            )
    wakes = r.zeus_asleep_wakes_per_round_trip
    out.append(
        "  zeus no-spin: futex wakes of the peer per round trip: "
        f"{cell(wakes['back_to_back'], 0, '.2f').strip()} back to back, "
        f"{cell(wakes['after_idle'], 0, '.2f').strip()} after idle"
    )
    out += ["", f"{'one-way throughput (GB/s)':<32}" + "".join(f"{s:>10}" for s in SIZES)]
    for key, label in [("zeus", "zeus (no copy out)"), ("pipe", "multiprocessing.Pipe"),
                       ("socketpair", "socket.socketpair"), ("memcpy", "memcpy, in-process")]:
        out.append(f"  {label:<30}" + "".join(cell(tp[s][key], 10, ".3f") for s in SIZES))
    for key, label in [("pipe", "zeus / Pipe"), ("socketpair", "zeus / socketpair"),
                       ("memcpy", "zeus / memcpy")]:
        ratios = "".join(cell(ratio(tp[s]["zeus"], tp[s][key]), 10, ".2f", "x") for s in SIZES)
        out.append(f"  {label:<30}{ratios}")
    out += [
        "",
        "oversubscribed: 64-byte round trips/s, 2 busy-loop processes on the same cores",
        f"  {'zeus, adaptive spin':<30}{cell(ovs['zeus_adaptive'], 12, ',.0f')}",
        f"  {'zeus, no spin':<30}{cell(ovs['zeus_nospin'], 12, ',.0f')}",
        f"  {'adaptive / no spin':<30}"
        f"{cell(ratio(ovs['zeus_adaptive'], ovs['zeus_nospin']), 12, '.2f', 'x')}",
        "",
        "targets",
    ]
    for t in checks:
        verdict = "met" if t.met else "NOT MET"
        out.append(f"  [{verdict:^7}] {t.label:<42}{cell(t.value, 9, '.3f', 'x')}")
    if r.errors:
        out += ["", "errors (those figures are missing)"] + [f"  {e}" for e in r.errors]
    out += ["", f"run time {elapsed:.1f} s"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    parser.add_argument("--quick", action="store_true", help="short run (a smoke test)")
    parser.add_argument("--peer", choices=["zeus", "pipe", "socket"], help=argparse.SUPPRESS)
    parser.add_argument("--nospin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--burn", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.parent is not None:
        return peer_main(args)

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    cfg = QUICK if args.quick else FULL
    mach = machine()  # before the run: the load average says whether the machine was quiet
    start = time.monotonic()
    children = Children()
    try:
        results = run_all(cfg, children)
    finally:
        children.reap()
    elapsed = time.monotonic() - start
    checks = targets(results)
    if args.json:
        doc = {
            **dataclasses.asdict(results),
            "machine": mach,
            "targets": {t.label: {"ratio": t.value, "met": t.met} for t in checks},
            "run_s": round(elapsed, 1),
            "quick": args.quick,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(table(results, mach, checks, elapsed))
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
