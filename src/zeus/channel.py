"""One end of a shared-memory channel: send and receive messages without copying them twice.

Theory of operation
-------------------
A ``Channel`` is one side (front or worker) of a ``Region``.  It produces into one ring and one
arena part, and consumes from the other ring and part:

=========  ==================  ===================  ==================
side       sends on            receives from        writes arena part
=========  ==================  ===================  ==================
front      request ring        response ring        request arena
worker     response ring       request ring         response arena
=========  ==================  ===================  ==================

*Sending* allocates arena space (``zeus.core.arena``), copies the payload in (or lets the caller
fill it in place with ``reserve``), then publishes one 32-byte slot and the new head with a
release store.  Payloads larger than ``max_chunk`` go out as several messages with
``Flag.MORE`` on all but the last; a full ring or arena is back-pressure: ``*_nowait`` raises
WouldBlock, the blocking calls wait.

*Receiving* acquire-loads the peer's head, copies the slot once, validates it (kind, flags,
reserved bits, arena placement -- see PROTOCOL.md "Validation") and hands out a ``Message``
whose ``data`` is a memoryview straight into the arena.  The bytes stay valid until
``Message.release()``; releases may come in any order.

*Waiting* spins for an adaptive budget (``zeus.core.spin``), then announces sleep in this side's
sleep word, issues a full fence, re-checks every peer word it could be waiting on, and only
then sleeps: in FUTEX_WAIT on its wake word (blocking callers), or on the doorbell eventfd
(asyncio callers, see ``zeus.aiochannel``).  Every publication is a release store, a full
fence and a load of the peer's sleep word (one native call); the publisher wakes the peer only
if it announced sleep, once per sleep.  A blocking wait wakes every ``liveness_interval``
seconds to check that the peer is still alive, so a peer killed with SIGKILL is noticed
promptly.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, NoReturn

from zeus import _native
from zeus.core.arena import ArenaReader, ArenaWriter, Lease
from zeus.core.layout import (
    FLAG_MASK,
    FRONT_PID,
    KINDS,
    SLOT_SIZE,
    WORKER_PID,
    Flag,
    Kind,
    Side,
    State,
    Word,
)
from zeus.core.ring import RingConsumer, RingProducer
from zeus.core.spin import SpinPolicy, SpinStatistics
from zeus.errors import ClosedResourceError, PeerBrokenError, PeerLostError, WouldBlock
from zeus.region import Region

_ASLEEP: Final = 1  # sleep word bit: this side is asleep or about to sleep
_DOORBELL: Final = 2  # sleep word bit: wake me through the doorbell eventfd, not the futex
_EPOCH: Final = 4  # sleep word increment per sleep


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """Counters of one channel end."""

    side: str
    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    send_waits: int
    recv_waits: int
    sleeps: int
    wakes_sent: int
    arena_in_use: int
    live_leases: int
    spin: SpinStatistics


class Message:
    """A received message.  ``data`` points into shared memory until ``release()``."""

    __slots__ = ("_channel", "_lease", "data", "flags", "id", "kind")

    def __init__(
        self,
        channel: Channel,
        msg_id: int,
        kind: int,
        flags: int,
        data: memoryview,
        lease: Lease | None,
    ) -> None:
        self._channel = channel
        self._lease = lease
        self.id = msg_id
        self.kind = kind
        self.flags = flags
        self.data = data

    @property
    def more(self) -> bool:
        """Whether another chunk of the same logical message follows."""
        return bool(self.flags & Flag.MORE)

    @property
    def end(self) -> bool:
        """Whether this is the last message of its ID in this direction."""
        return bool(self.flags & Flag.END)

    def release(self) -> None:
        """Give the bytes back to the sender's arena.  Idempotent; ``data`` is unusable after."""
        lease = self._lease
        if lease is not None:
            self._lease = None
            try:
                self.data.release()
            except BufferError:
                pass  # the application exported the view; it must not use it from now on
            self._channel._release(lease)

    def __enter__(self) -> Message:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._lease is None else "live"
        return f"<Message id={self.id} kind={self.kind} flags={self.flags:#x} {state}>"


class Reservation:
    """Arena space handed to the sender to fill in place; published by ``commit``."""

    __slots__ = ("_channel", "_offset", "buffer", "committed")

    def __init__(self, channel: Channel, offset: int, buffer: memoryview) -> None:
        self._channel = channel
        self._offset = offset
        self.buffer = buffer
        self.committed = False

    def commit(
        self, msg_id: int, kind: int = Kind.DATA, flags: int = 0, length: int | None = None
    ) -> None:
        """Publish the first ``length`` bytes (default: all) as one message."""
        if self.committed:
            raise ClosedResourceError("reservation already committed")
        n = self.buffer.nbytes if length is None else length
        if not 0 <= n <= self.buffer.nbytes:
            raise ValueError(f"commit of {n} bytes from a reservation of {self.buffer.nbytes}")
        self.committed = True
        self.buffer.release()
        self._channel._commit(self._offset, n, msg_id, kind, flags)


class Channel:
    """One end of a channel region; see the module docstring."""

    def __init__(
        self,
        region: Region,
        *,
        peer_pid: int | None = None,
        spin: SpinPolicy | None = None,
        max_chunk: int | None = None,
        liveness_interval: float = 0.05,
    ) -> None:
        g = region.geometry
        side = region.side
        front = side is Side.FRONT
        self.region: Final = region
        self.side: Final = side
        m = region.memory
        self._m = m
        if front:
            out_ring, in_ring = g.req_ring, g.resp_ring
            out_arena, out_size = g.req_arena, g.req_arena_size
            in_arena, in_size = g.resp_arena, g.resp_arena_size
            self._head_word, self._tail_word = int(Word.REQ_HEAD), int(Word.RESP_TAIL)
            self._peer_head, self._peer_tail = int(Word.RESP_HEAD), int(Word.REQ_TAIL)
            self._freed_word, self._peer_freed = int(Word.RESP_ARENA_FREED), int(
                Word.REQ_ARENA_FREED
            )
            self._sleep_word, self._wake_word = int(Word.FRONT_SLEEP), int(Word.FRONT_WAKE)
            self._peer_sleep, self._peer_wake = int(Word.WORKER_SLEEP), int(Word.WORKER_WAKE)
            self._state_word, self._peer_state = int(Word.FRONT_STATE), int(Word.WORKER_STATE)
            if peer_pid is None:
                pid = m.load_u32(WORKER_PID)
                peer_pid = pid or None
        else:
            out_ring, in_ring = g.resp_ring, g.req_ring
            out_arena, out_size = g.resp_arena, g.resp_arena_size
            in_arena, in_size = g.req_arena, g.req_arena_size
            self._head_word, self._tail_word = int(Word.RESP_HEAD), int(Word.REQ_TAIL)
            self._peer_head, self._peer_tail = int(Word.REQ_HEAD), int(Word.RESP_TAIL)
            self._freed_word, self._peer_freed = int(Word.REQ_ARENA_FREED), int(
                Word.RESP_ARENA_FREED
            )
            self._sleep_word, self._wake_word = int(Word.WORKER_SLEEP), int(Word.WORKER_WAKE)
            self._peer_sleep, self._peer_wake = int(Word.FRONT_SLEEP), int(Word.FRONT_WAKE)
            self._state_word, self._peer_state = int(Word.WORKER_STATE), int(Word.FRONT_STATE)
            if peer_pid is None:
                peer_pid = m.load_u32(FRONT_PID) or None
            m.store_u32(WORKER_PID, os.getpid())
            m.store_u32(Word.WORKER_STATE, State.OPEN)
        self._out_ring = out_ring
        self._in_ring = in_ring
        self._out = region.view[out_arena : out_arena + out_size]
        self._in = region.view[in_arena : in_arena + in_size]
        self._prod = RingProducer(g.slots)
        self._cons = RingConsumer(g.slots)
        self._writer = ArenaWriter(out_size)
        self._reader = ArenaReader(in_size)
        self.max_chunk: Final = min(max_chunk or out_size // 4, out_size)
        self.spin: Final = spin if spin is not None else SpinPolicy()
        self.liveness_interval = liveness_interval
        self._epoch = 0
        self._last_woken = 0
        self._wake_seq = 0
        self._reserved = False
        self._closed = False
        self._broken: PeerBrokenError | None = None
        self._peer_pid = peer_pid
        self._pidfd: int | None = None
        if peer_pid is not None:
            try:
                self._pidfd = os.pidfd_open(peer_pid)
            except OSError:
                self._pidfd = None  # already gone: noticed at the first wait
        self._stats = [0] * 8  # msgs sent, bytes sent, msgs recv, bytes recv, send waits,
        # recv waits, sleeps, wakes sent

    # ------------------------------------------------------------------ sending

    def send_nowait(self, msg_id: int, data: bytes | memoryview, kind: int = Kind.DATA,
                    flags: int = 0) -> None:
        """Send ``data`` (at most ``max_chunk`` bytes) as one message, or raise WouldBlock."""
        n = len(data)
        if n > self.max_chunk:
            raise ValueError(f"{n} bytes exceed max_chunk {self.max_chunk}; use send()")
        off = self._allocate(n)
        if n:
            self._out[off : off + n] = data
        self._commit(off, n, msg_id, kind, flags)

    def send(self, msg_id: int, data: bytes | memoryview, kind: int = Kind.DATA,
             flags: int = 0, *, timeout: float | None = None) -> None:
        """Send ``data`` of any size, waiting for space; chunks carry Flag.MORE but the last.

        Raises TimeoutError if ``timeout`` seconds pass first (some chunks may have gone).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        view = memoryview(data).cast("B")
        n = len(view)
        step = self.max_chunk
        pos = 0
        while True:
            chunk = view[pos : pos + step]
            last = pos + step >= n
            f = flags if last else (flags & ~int(Flag.END)) | Flag.MORE
            while True:
                try:
                    self.send_nowait(msg_id, chunk, kind, f)
                    break
                except WouldBlock:
                    self._stats[4] += 1
                    self._wait(self._send_word(len(chunk)), deadline)
            if last:
                return
            pos += step

    def reserve_nowait(self, n: int) -> Reservation:
        """Reserve ``n`` bytes of arena to fill in place, or raise WouldBlock.

        One reservation may be outstanding at a time; commit it before sending anything else.
        """
        if n > self.max_chunk:
            raise ValueError(f"{n} bytes exceed max_chunk {self.max_chunk}")
        if self._reserved:
            raise RuntimeError("a reservation is already outstanding")
        off = self._allocate(n)
        self._reserved = True
        return Reservation(self, off, self._out[off : off + n])

    def reserve(self, n: int, *, timeout: float | None = None) -> Reservation:
        """Reserve ``n`` bytes of arena, waiting for space."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self.reserve_nowait(n)
            except WouldBlock:
                self._stats[4] += 1
                self._wait(self._send_word(n), deadline)

    def _send_word(self, n: int) -> tuple[int, int]:
        """The peer word whose change could let an ``n``-byte send proceed, and its value."""
        if self._prod.full():
            return self._peer_tail, self._prod.tail
        return self._peer_freed, self._writer.freed

    def _allocate(self, n: int) -> int:
        self._check_usable()
        prod = self._prod
        if prod.full():
            prod.update_tail(self._m.load_u64(self._peer_tail))
            if prod.full():
                raise WouldBlock("ring full")
        w = self._writer
        off = w.allocate(n)
        if off is None:
            w.update_freed(self._m.load_u64(self._peer_freed))
            off = w.allocate(n)
            if off is None:
                raise WouldBlock("arena full")
        return off

    def _commit(self, off: int, n: int, msg_id: int, kind: int, flags: int) -> None:
        if self._reserved:
            self._reserved = False
            self._writer.trim_last(n)
        prod = self._prod
        head = prod.head
        prod.head = head + 1
        peer = self._m.publish_slot(
            self._out_ring + (head & prod.mask) * SLOT_SIZE,
            msg_id, kind, flags, n, off, self._head_word, head + 1, self._peer_sleep,
        )
        st = self._stats
        st[0] += 1
        st[1] += n
        if peer & _ASLEEP and peer != self._last_woken:
            self._wake_peer(peer)

    # ---------------------------------------------------------------- receiving

    def recv_nowait(self) -> Message:
        """Take the next message, or raise WouldBlock (PeerLostError if the peer closed)."""
        self._check_usable()
        cons = self._cons
        if cons.head == cons.tail:
            cons.update_head(self._m.load_u64(self._peer_head))
            if cons.head == cons.tail:
                if self._m.load_u32(self._peer_state) == State.CLOSED:
                    raise PeerLostError("peer closed the channel")
                raise WouldBlock("nothing to receive")
        tail = cons.tail
        msg_id, kind, flags, n, off, reserved = self._m.read_slot(
            self._in_ring + (tail & cons.mask) * SLOT_SIZE
        )
        if kind not in KINDS or flags & ~FLAG_MASK or reserved:
            self._break(
                f"slot {tail}: kind {kind}, flags {flags:#x}, reserved {reserved:#x} invalid"
            )
        try:
            lease = self._reader.accept(off, n)
        except PeerBrokenError as exc:
            self._break(f"slot {tail}: {exc}")
        cons.tail = tail + 1
        peer = self._m.publish(self._tail_word, tail + 1, self._peer_sleep)
        if peer & _ASLEEP and peer != self._last_woken:
            self._wake_peer(peer)
        st = self._stats
        st[2] += 1
        st[3] += n
        return Message(self, msg_id, kind, flags, self._in[off : off + n], lease)

    def recv(self, *, timeout: float | None = None) -> Message:
        """Wait for the next message; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self.recv_nowait()
            except WouldBlock:
                self._stats[5] += 1
                self._wait((self._peer_head, self._cons.head), deadline)

    def __iter__(self) -> Iterator[Message]:
        """Receive until the peer closes its end."""
        while True:
            try:
                yield self.recv()
            except PeerLostError:
                return

    def _release(self, lease: Lease) -> None:
        freed = self._reader.release(lease)
        if freed is not None and not self._closed:
            peer = self._m.publish(self._freed_word, freed, self._peer_sleep)
            if peer & _ASLEEP and peer != self._last_woken:
                self._wake_peer(peer)

    # ------------------------------------------------------------------ waiting

    def _wait(self, word: tuple[int, int], deadline: float | None) -> None:
        """Block until the peer word ``word = (offset, seen)`` may have changed.

        Spin first, then sleep in FUTEX_WAIT in slices of ``liveness_interval`` seconds,
        checking between slices that the peer is alive.  Returns spuriously at times: the
        caller retries its operation.
        """
        off, seen = word
        m = self._m
        budget = self.spin.budget()
        if budget and m.spin_while_equal(off, seen, budget) != seen:
            self.spin.won()
            return
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError("channel wait timed out")
            slice_ = self.liveness_interval
            if deadline is not None:
                slice_ = min(slice_, deadline - now)
            seq = self.prepare_sleep(doorbell=False)
            if seq is None:
                break
            self._stats[6] += 1
            woken = m.futex_wait(self._wake_word, seq, slice_)
            self.finish_sleep()
            if woken:
                break
            self.check_peer()
        if budget:
            self.spin.lost()

    def prepare_sleep(self, *, doorbell: bool) -> int | None:
        """Announce that this side is about to sleep; None if it must not (work is ready).

        Returns the wake sequence to sleep on.  The caller must sleep (futex on the wake word,
        or the doorbell if ``doorbell``) only if this returns an int, and must call
        ``finish_sleep()`` when it wakes.  Store, full fence, re-check: a peer that publishes
        after the re-check sees the announcement and wakes us.
        """
        m = self._m
        # Refresh the caches of the peer's progress first, so that only news that arrives
        # after this point counts as a reason not to sleep.
        self._prod.update_tail(m.load_u64(self._peer_tail))
        self._writer.update_freed(m.load_u64(self._peer_freed))
        seq = m.load_u32(self._wake_word)
        self._epoch += _EPOCH
        word = self._epoch | _ASLEEP | (_DOORBELL if doorbell else 0)
        m.store_u32(self._sleep_word, word & 0xFFFFFFFF)
        _native.fence()
        if (
            m.load_u64(self._peer_head) != self._cons.head
            or m.load_u64(self._peer_tail) != self._prod.tail
            or m.load_u64(self._peer_freed) != self._writer.freed
            or m.load_u32(self._peer_state) == State.CLOSED
        ):
            self.finish_sleep()
            return None
        return seq

    def finish_sleep(self) -> None:
        """Announce that this side is awake again."""
        self._m.store_u32(self._sleep_word, self._epoch & 0xFFFFFFFF & ~(_ASLEEP | _DOORBELL))

    def _wake_peer(self, peer_word: int) -> None:
        """Wake a peer that announced sleep (once per announcement)."""
        self._last_woken = peer_word
        self._wake_seq = (self._wake_seq + 1) & 0xFFFFFFFF
        self._m.store_u32(self._peer_wake, self._wake_seq)
        self._stats[7] += 1
        if peer_word & _DOORBELL:
            bell = self.region.doorbell_fd
            if bell is not None:
                try:
                    os.eventfd_write(bell, 1)
                except BlockingIOError:
                    pass  # counter saturated: the front is certainly going to look
        else:
            self._m.futex_wake(self._peer_wake, 1)

    # ---------------------------------------------------------------- liveness

    def peer_alive(self) -> bool:
        """False once the peer's process is known to have exited."""
        if self._pidfd is None:
            if self._peer_pid is None:
                return True
            try:
                os.kill(self._peer_pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return not select.select([self._pidfd], [], [], 0)[0]

    def check_peer(self) -> None:
        """Raise PeerLostError if the peer closed its end or died."""
        if self._m.load_u32(self._peer_state) == State.CLOSED:
            raise PeerLostError("peer closed the channel")
        if not self.peer_alive():
            raise PeerLostError(f"peer process {self._peer_pid} died")

    def _break(self, why: str) -> NoReturn:
        self._broken = PeerBrokenError(f"{self.side.value} channel: peer broke protocol: {why}")
        raise self._broken

    def _check_usable(self) -> None:
        if self._closed:
            raise ClosedResourceError("channel is closed")
        if self._broken is not None:
            raise PeerBrokenError(str(self._broken))

    # ---------------------------------------------------------------- lifecycle

    def heartbeat(self) -> None:
        """Worker: bump the heartbeat counter the supervisor watches."""
        self._m.fetch_add_u64(Word.WORKER_HEARTBEAT, 1)

    def close(self) -> None:
        """Publish CLOSED, wake a sleeping peer, and stop using the region.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self.region.closed:
            peer = self._m.publish(self._state_word, State.CLOSED, self._peer_sleep)
            if peer & _ASLEEP:
                self._wake_peer(peer)
        self._out.release()
        self._in.release()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def statistics(self) -> ChannelStatistics:
        """A snapshot of this end's counters."""
        s = self._stats
        return ChannelStatistics(
            self.side.value, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
            self._writer.in_use, self._reader.live, self.spin.statistics(),
        )

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Channel {self.side.value} out={self._prod!r} in={self._cons!r} "
            f"{'closed' if self._closed else 'open'}>"
        )

