"""Peer programs for the cross-process channel tests, and the helpers both sides share.

Run as ``python tests/xproc/peers.py MODE [options]`` by the tests (see ``harness.Peers``);
each mode is one role a real process plays against the test process:

==============  ===========================================================================
mode            what the peer does
==============  ===========================================================================
recv-stream     worker: receive and verify a deterministic stream, then report over the
                channel (``REPORT_ID``) and wait for the front to close
send-stream     worker: send a deterministic stream, then close
echo            worker: send every message back with the same id, until the front closes
idle            worker: attach, say ``ready``, then never read (until stdin closes)
front           front: create a region, hand its descriptors to the test process over a
                Unix socket (SCM_RIGHTS), say ``ready``, then never read
hostile         worker: write one kind of garbage into its own ring, indices or release word
attach          any: try ``Region.from_environment()`` and print the outcome
spawn-child     worker: attach, start a child of its own (which inherits every inheritable
                descriptor), and report which of the region's descriptors the child holds
==============  ===========================================================================

A stream is deterministic from a seed, so both sides generate the same sequence of
messages and the receiver checks each one against what it *should* be: the 64-bit message id
is the sequence number (loss and reordering show as a wrong id), and the payload is a slice
of a seeded random pattern whose CRC-32 the receiver recomputes (corruption, truncation and
cross-talk show as a wrong CRC or length).  The receiver also keeps some messages a while and
releases them out of order, re-checking their CRC at release: a sender that reused arena
space before it was released would be caught there.

Peers print one JSON line of figures on stdout when they finish, and a traceback on stderr
(exit status 1) when a check fails.  Idle peers block on stdin: when the test process goes
away the pipe closes and they exit, so a crashed test run leaves no orphans behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Final

from zeus import Channel, Flag, Kind, Message, Region, RegionMismatchError, SpinPolicy, WouldBlock
from zeus.core.layout import Word

REPORT_ID: Final = (1 << 64) - 1  # id of the final report message of a stream
READY_ID: Final = (1 << 64) - 2  # id of a peer's "ready" handshake message
IDLE_LIMIT: Final = 120.0  # an idle peer exits on its own after this many seconds
SLOT: Final = struct.Struct("<QHHIQQ")  # id, kind, flags, length, offset, reserved
U64: Final = struct.Struct("<Q")
U32: Final = struct.Struct("<I")
PATTERN_SLACK: Final = 1 << 16


# ------------------------------------------------------------------------- shared helpers


def wait_until(predicate: Callable[[], object], timeout: float, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.0005)


def busy(ns: int) -> None:
    """Burn ``ns`` nanoseconds of CPU: a delay that never enters the kernel."""
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def load_u64(region: Region, offset: int) -> int:
    """Read a shared u64 word (plain load: only for polling and for the hostile peer)."""
    return int(U64.unpack_from(region.view, offset)[0])


def load_u32(region: Region, offset: int) -> int:
    """Read a shared u32 word."""
    return int(U32.unpack_from(region.view, offset)[0])


def is_asleep(region: Region, sleep_word: int) -> bool:
    """Whether the side owning ``sleep_word`` announced sleep (the word is odd)."""
    return bool(load_u32(region, sleep_word) & 1)


def spin_policy(spin_ns: int | None) -> SpinPolicy | None:
    """The spin policy for a ``--spin-ns`` option: None keeps the default, 0 never spins."""
    if spin_ns is None:
        return None
    return SpinPolicy(max_ns=spin_ns, probe_ns=min(spin_ns, 2_000))


class StreamError(AssertionError):
    """A received stream differs from the one the sender was supposed to send."""


class PayloadStream:
    """The deterministic sequence of payloads for ``seed``.

    Profiles: ``mixed`` (90 % of 1-256 bytes, most of the rest up to 16 KiB, 1 in 2,000 up to
    ``max_size``), ``tiny`` (1-64 bytes), ``big`` (``max_size // 2`` to ``max_size``).
    """

    def __init__(self, seed: int, profile: str, max_size: int) -> None:
        if profile not in ("mixed", "tiny", "big"):
            raise ValueError(f"unknown stream profile {profile!r}")
        self.profile = profile
        self.max_size = max_size
        self.pattern = memoryview(random.Random(seed).randbytes(max_size + PATTERN_SLACK))
        self._rng = random.Random(seed * 7919 + 1)

    def next(self) -> memoryview:
        """The next payload (a view of the pattern: no copy)."""
        rng = self._rng
        if self.profile == "tiny":
            n = rng.randint(1, 64)
        elif self.profile == "big":
            n = rng.randint(self.max_size // 2, self.max_size)
        else:
            r = rng.random()
            if r < 0.9:
                n = rng.randint(1, 256)
            elif r < 0.9995:
                n = rng.randint(257, 16384)
            else:
                n = rng.randint(16385, self.max_size)
        start = rng.randrange(PATTERN_SLACK)
        return self.pattern[start : start + n]


@dataclass(frozen=True, slots=True)
class StreamFigures:
    """What one side measured while sending or receiving a stream."""

    messages: int
    chunks: int
    bytes: int
    held_out_of_order: int
    seconds: float


def send_stream(
    channel: Channel,
    seed: int,
    count: int,
    profile: str,
    max_size: int,
    *,
    timeout: float = 10.0,
    delay_us: int = 0,
) -> StreamFigures:
    """Send ``count`` messages of the stream; ids are sequence numbers 0, 1, 2, ..."""
    stream = PayloadStream(seed, profile, max_size)
    jitter = random.Random(seed + 17)
    sent = 0
    start = time.perf_counter()
    for seq in range(count):
        if delay_us:
            busy(jitter.randrange(delay_us * 1000))
        payload = stream.next()
        channel.send(seq, payload, timeout=timeout)
        sent += len(payload)
    return StreamFigures(count, -1, sent, 0, time.perf_counter() - start)


def receive_stream(
    channel: Channel,
    seed: int,
    count: int,
    profile: str,
    max_size: int,
    *,
    timeout: float = 10.0,
    hold: int = 8,
    delay_us: int = 0,
) -> StreamFigures:
    """Receive ``count`` messages of the stream and check every one; raise StreamError.

    Up to ``hold`` received chunks are kept unreleased and released in random order (all of
    them whenever the ring is empty, so the sender never stalls on space we hold).
    """
    stream = PayloadStream(seed, profile, max_size)
    rng = random.Random(seed + 31)
    held: list[tuple[Message, int, int]] = []
    chunks = total = shuffled = 0
    start = time.perf_counter()

    def release_held(index: int) -> None:
        msg, crc, seq = held.pop(index)
        if zlib.crc32(msg.data) != crc:
            raise StreamError(f"message {seq}: bytes changed before release (arena reused)")
        msg.release()

    for seq in range(count):
        expected = stream.next()
        want_crc = zlib.crc32(expected)
        crc = length = 0
        while True:
            if delay_us:
                busy(rng.randrange(delay_us * 1000))
            try:
                msg = channel.recv_nowait()
            except WouldBlock:
                while held:
                    release_held(len(held) - 1)
                msg = channel.recv(timeout=timeout)
            if msg.id != seq or msg.kind != Kind.DATA or msg.flags & ~int(Flag.MORE):
                raise StreamError(
                    f"expected message {seq}, got id={msg.id} kind={msg.kind} flags={msg.flags:#x}"
                )
            chunk_crc = zlib.crc32(msg.data)
            crc = zlib.crc32(msg.data, crc)
            length += len(msg.data)
            chunks += 1
            more = msg.more
            if hold and rng.random() < 0.05:
                held.append((msg, chunk_crc, seq))
                if len(held) > hold:
                    shuffled += 1
                    release_held(rng.randrange(len(held)))
            else:
                msg.release()
            if not more:
                break
            if length >= len(expected):
                raise StreamError(f"message {seq}: more chunks after {length} bytes")
        if length != len(expected) or crc != want_crc:
            raise StreamError(
                f"message {seq}: {length} bytes crc {crc:#010x}, expected "
                f"{len(expected)} bytes crc {want_crc:#010x}"
            )
        total += length
    while held:
        release_held(0)
    return StreamFigures(count, chunks, total, shuffled, time.perf_counter() - start)


# ----------------------------------------------------------------------------- the modes


def _emit(figures: dict[str, object]) -> None:
    print(json.dumps(figures), flush=True)


def _idle() -> None:
    """Block until the test closes our stdin (or dies), at most IDLE_LIMIT seconds."""
    if not sys.stdin.closed:
        select.select([sys.stdin], [], [], IDLE_LIMIT)


def _channel(args: argparse.Namespace, region: Region) -> Channel:
    return Channel(
        region,
        spin=spin_policy(args.spin_ns),
        liveness_interval=args.liveness,
        max_chunk=args.max_chunk,
    )


def mode_recv_stream(args: argparse.Namespace) -> None:
    region = Region.from_environment()
    with _channel(args, region) as ch:
        figures = receive_stream(
            ch,
            args.seed,
            args.count,
            args.profile,
            args.max_size,
            hold=args.hold,
            delay_us=args.delay_us,
        )
        ch.send(REPORT_ID, json.dumps(asdict(figures)).encode())
        for msg in ch:  # until the front closes
            msg.release()
        _emit({"stream": asdict(figures), "channel": asdict(ch.statistics())})
    region.close()


def mode_send_stream(args: argparse.Namespace) -> None:
    region = Region.from_environment()
    with _channel(args, region) as ch:
        figures = send_stream(
            ch, args.seed, args.count, args.profile, args.max_size, delay_us=args.delay_us
        )
        _emit({"stream": asdict(figures), "channel": asdict(ch.statistics())})
    region.close()


def mode_echo(args: argparse.Namespace) -> None:
    region = Region.from_environment()
    jitter = random.Random(args.seed)
    with _channel(args, region) as ch:
        for msg in ch:
            with msg:
                if args.delay_us:
                    busy(jitter.randrange(args.delay_us * 1000))
                ch.send(msg.id, msg.data, msg.kind, msg.flags, timeout=30)
        _emit({"channel": asdict(ch.statistics())})
    region.close()


def mode_idle(args: argparse.Namespace) -> None:
    region = Region.from_environment()
    with _channel(args, region) as ch:
        ch.send(READY_ID, b"ready")
        _idle()
    region.close()


def mode_front(args: argparse.Namespace) -> None:
    """Be the front for a test process that plays the worker (to kill the front under it)."""
    sock = socket.socket(fileno=args.socket)
    sock.settimeout(30)
    region = Region.create(args.size, args.slots, name="zeus-xproc-front")
    assert region.doorbell_fd is not None
    socket.send_fds(sock, [b"region"], list(region.pass_fds))
    if sock.recv(16) != b"attached":
        raise SystemExit("the test did not attach")
    # The worker's channel is open by now, so our "ready" finds it.  (This front has no
    # peer_pid: a front takes the worker's pid only from its caller, and nobody cares here.)
    with _channel(args, region) as ch:
        ch.send(READY_ID, b"ready")
        _idle()
    region.close()


def mode_attach(args: argparse.Namespace) -> None:
    try:
        region = Region.from_environment()
    except RegionMismatchError as exc:
        print(f"RegionMismatchError: {exc}", flush=True)
        raise SystemExit(3) from None
    print(f"attached {region!r}", flush=True)
    region.close()


def _holds(pid: int, fd: int, ours: int) -> bool:
    """Whether process ``pid`` has, as its descriptor ``fd``, the file our ``ours`` refers to."""
    try:
        theirs = os.stat(f"/proc/{pid}/fd/{fd}")
    except FileNotFoundError:
        return False
    mine = os.fstat(ours)
    return (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino)


def mode_spawn_child(args: argparse.Namespace) -> None:
    """Attach, then start a child with ``close_fds=False`` (it inherits every descriptor not
    marked close-on-exec) and report which of ours it holds.  A pipe end made inheritable on
    purpose is the control: the child must have that one."""
    region = Region.from_environment()
    control, control_w = os.pipe()
    os.set_inheritable(control, True)
    ours = {"region": region.fd, "control": control}
    bells = {"doorbell": region.doorbell_fd, "worker_doorbell": region.worker_doorbell_fd}
    ours.update((name, fd) for name, fd in bells.items() if fd is not None)
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        close_fds=False,
    )
    try:
        # Look only once the child runs its program: Popen may return (vfork) as soon as
        # the exec has replaced the child's memory, before the kernel has closed its
        # close-on-exec descriptors -- a listing then would show them all.
        assert child.stdout is not None
        assert child.stdout.readline() == b"up\n"
        held = {name: _holds(child.pid, fd, fd) for name, fd in ours.items()}
        listing = {
            name: os.readlink(f"/proc/{child.pid}/fd/{name}")
            for name in os.listdir(f"/proc/{child.pid}/fd")
        }
    finally:
        assert child.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    _emit(
        {
            "held": held,
            "inheritable": {name: os.get_inheritable(fd) for name, fd in ours.items()},
            "child_fds": listing,
        }
    )
    os.close(control)
    os.close(control_w)
    region.close()


# --------------------------------------------------------------------------- the hostile peer


def _publish_raw(region: Region, slot: bytes) -> None:
    """Write ``slot`` at the next response-ring index and publish it, bypassing the Channel."""
    g = region.geometry
    head = load_u64(region, Word.RESP_HEAD)
    at = g.resp_ring + (head % g.slots) * SLOT.size
    region.view[at : at + SLOT.size] = slot
    U64.pack_into(region.view, Word.RESP_HEAD, head + 1)


def _slot(
    length: int = 64, offset: int = 0, kind: int = Kind.DATA, flags: int = 0, reserved: int = 0
) -> bytes:
    return SLOT.pack(7, kind, flags, length, offset, reserved)


def _garbage_slot(region: Region, kind: str) -> bytes | None:
    size = region.geometry.resp_arena_size
    return {
        "random-bytes": random.Random(20260101).randbytes(SLOT.size),
        "unknown-kind": _slot(kind=0xBEEF),
        "kind-zero": _slot(kind=0),
        "unknown-flags": _slot(flags=0x100),
        "reserved-nonzero": _slot(reserved=1),
        "offset-past-arena": _slot(offset=size),
        "offset-huge": _slot(length=1, offset=(1 << 64) - 1),
        "offset-misplaced": _slot(offset=4096),
        "length-past-arena": _slot(length=size + 1),
        "length-u32-max": _slot(length=0xFFFFFFFF),
        "empty-with-offset": _slot(length=0, offset=64),
        "more-and-end": _slot(flags=Flag.MORE | Flag.END),
    }.get(kind)


def mode_hostile(args: argparse.Namespace) -> None:
    """Attach as a worker, then break the protocol in one way (``args.kind``)."""
    region = Region.from_environment()
    g = region.geometry
    kind = args.kind
    keep: list[Message] = []  # messages held unreleased on purpose
    with Channel(region) as ch:
        slot = _garbage_slot(region, kind)
        if slot is not None:
            region.view[g.resp_arena : g.resp_arena + 64] = b"\xa5" * 64
            _publish_raw(region, slot)
        elif kind == "overwrites-live-data":
            # A valid message, then one placed over it while the front still holds the first.
            ch.send(1, b"\x11" * 64)
            _publish_raw(region, _slot(length=64, offset=0))
        elif kind == "head-backwards":
            ch.send(1, b"first")
            wait_until(lambda: load_u64(region, Word.RESP_TAIL) == 1, 30, "front took message 1")
            U64.pack_into(region.view, Word.RESP_HEAD, 0)
        elif kind == "head-past-capacity":
            U64.pack_into(region.view, Word.RESP_HEAD, g.slots + 1)
        elif kind == "head-huge":
            U64.pack_into(region.view, Word.RESP_HEAD, (1 << 64) - 1)
        elif kind == "tail-backwards":
            keep.extend(ch.recv(timeout=30) for _ in range(g.slots))
            ch.send(1, b"ack")
            keep.append(ch.recv(timeout=30))
            # Back to 0: below any tail the front can have seen.  (It must have seen one
            # above 0 to send the 17th message, but not necessarily 17: a look taken while
            # this side was still taking the first 16 does as well, and a rewind to 5 was then
            # no rewind to it -- the test failed once in a full run, waiting for space.)
            U64.pack_into(region.view, Word.REQ_TAIL, 0)
            ch.send(2, b"ack")
        elif kind == "tail-past-head":
            keep.append(ch.recv(timeout=30))
            U64.pack_into(region.view, Word.REQ_TAIL, 1000)
            ch.send(1, b"ack")
        elif kind == "freed-backwards":
            ch.recv(timeout=30).release()  # a: released
            ch.send(1, b"ack")
            # b, both chunks, held: once the second is here, the front has looked at a's release
            keep.extend(ch.recv(timeout=30) for _ in range(2))
            U64.pack_into(region.view, Word.REQ_ARENA_FREED, 64)  # below a's release
            ch.send(2, b"ack")
        elif kind == "freed-past-head":
            keep.append(ch.recv(timeout=30))
            U64.pack_into(region.view, Word.REQ_ARENA_FREED, 1 << 40)
            ch.send(1, b"ack")
        else:
            raise SystemExit(f"unknown garbage kind {kind!r}")
        _idle()  # never touch the channel again: its bookkeeping no longer matches memory
    region.close()


# ----------------------------------------------------------------------------------- main

MODES: Final = {
    "recv-stream": mode_recv_stream,
    "send-stream": mode_send_stream,
    "echo": mode_echo,
    "idle": mode_idle,
    "front": mode_front,
    "attach": mode_attach,
    "hostile": mode_hostile,
    "spawn-child": mode_spawn_child,
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--profile", default="mixed")
    p.add_argument("--max-size", type=int, default=1 << 20)
    p.add_argument("--hold", type=int, default=8)
    p.add_argument("--delay-us", type=int, default=0, help="random busy delay per message")
    p.add_argument("--spin-ns", type=int, default=None)
    p.add_argument("--liveness", type=float, default=0.05)
    p.add_argument("--max-chunk", type=int, default=None)
    p.add_argument("--kind", default="", help="hostile: which garbage to write")
    p.add_argument("--socket", type=int, default=-1, help="front: Unix socket to the test")
    p.add_argument("--size", type=int, default=1 << 20)
    p.add_argument("--slots", type=int, default=16)
    args = p.parse_args(argv)
    MODES[args.mode](args)


if __name__ == "__main__":
    main()
