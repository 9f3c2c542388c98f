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

The per-message work runs in one call into the C extension (``_native.Endpoint``), which keeps
this end's counters and applies the rules of ``zeus.core.ring`` and ``zeus.core.arena`` (the
executable specification, differential-tested against it); this module decides when to wait.

*Sending* allocates arena space, copies the payload in (or lets the caller fill it in place with
``reserve``), then publishes one 32-byte slot and the new head with a release store.
Payloads larger than ``max_chunk`` go out as several messages with
``Flag.MORE`` on all but the last; a full ring or arena is back-pressure: ``*_nowait`` raises
WouldBlock, the blocking calls wait.
A worker's whole small response goes out in one call, ``send_response_nowait``: head and body
written, both slots filled, then one release store of the ring head (all or nothing).

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

The message codec's four head functions are here too, in C (``encode_request_head``,
``decode_response_head`` for the front; ``decode_request_head``, ``encode_response_head`` for
workers): ``zeus.core.codec`` is their specification, and only this layer calls the extension.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from zeus import _native
from zeus.core.codec import Headers, RequestHead, ResponseHead
from zeus.core.layout import (
    FLAG_MASK,
    FRONT_PID,
    KINDS,
    WORKER_PID,
    Flag,
    Kind,
    Side,
    State,
    Word,
)
from zeus.core.spin import SpinPolicy, SpinStatistics
from zeus.errors import ClosedResourceError, PeerBrokenError, PeerLostError, WouldBlock
from zeus.region import Region

_ASLEEP: Final = 1  # sleep word bit: this side is asleep or about to sleep
_DOORBELL: Final = 2  # sleep word bit: wake me through the doorbell eventfd, not the futex
WANT_DATA: Final = 4  # sleep word bit: wake me when a message is published
WANT_SPACE: Final = 8  # sleep word bit: wake me when ring slots or arena space come back
_EPOCH: Final = 16  # sleep word increment per sleep
_KINDS_MASK: Final = sum(1 << k for k in KINDS)
_RESPONSE_HEAD: Final = int(Kind.RESPONSE_HEAD)
_RESPONSE_BODY: Final = int(Kind.RESPONSE_BODY)
_END: Final = int(Flag.END)
_CLOSED: Final = int(State.CLOSED)

_native.set_broken_error(PeerBrokenError)


# ``zeus.core.codec.encode_request_head`` in one native call (the front, per request): the C
# function itself, which reads the head's fields, so a compiled caller spends no frame here.
encode_request_head: Final = _native.encode_request_head


def decode_request_head(buf: bytes | memoryview) -> RequestHead:
    """``zeus.core.codec.decode_request_head`` with the parsing in C (the worker side)."""
    return request_head(_native.decode_request_head(buf))


RequestFields = tuple[bytes, bytes, Headers, bytes, bool, str, int, str, int]
"""A decoded request head as the extension returns it: method, target, headers, version,
https, client host ('' if none), client port, server host ('' if none), server port."""


# ``decode_request_head`` without building the ``RequestHead`` -- the C decoder itself, with
# no frame of this module around it (the worker calls it for every request): the worker reads
# the fields it needs from the tuple and builds the record only if the handler asks for it.
decode_request_fields: Final = _native.decode_request_head


def request_head(fields: RequestFields) -> RequestHead:
    """The ``RequestHead`` of fields from ``decode_request_fields``."""
    method, target, headers, version, https, chost, cport, shost, sport = fields
    return RequestHead(
        method=method, target=target, headers=headers, http_version=version,
        scheme="https" if https else "http",
        client=(chost, cport) if chost else None,
        server=(shost, sport) if shost else None,
    )


def encode_response_head(status: int, headers: Headers) -> bytes:
    """``zeus.core.codec.encode_response_head`` in one native call (the worker side)."""
    return _native.encode_response_head(status, headers)


# ``response_headers(headers, str_only=False)``, positional arguments only -- the C function
# itself (called for every response): response headers as the worker sends them, names
# lower-cased, str encoded as latin-1.  ValueError for a name that is not a token or a value
# holding CR, LF or NUL: what the front would take for a protocol violation becomes the
# handler's error (a 500).  ``str_only``: names and values must be str (PEP 3333), else
# TypeError.
response_headers: Final = _native.response_headers


# The response-head decoder as it is, (status, headers): a compiled caller (zeus.pool.core)
# builds the ResponseHead itself, without a frame of this interpreted module.
decode_response_fields: Final = _native.decode_response_head


def decode_response_head(buf: bytes | memoryview) -> ResponseHead:
    """``zeus.core.codec.decode_response_head`` -- same checks, same errors -- in C (the
    front decodes every response head a worker sends, and a worker may be hostile)."""
    status, headers = _native.decode_response_head(buf)
    return ResponseHead(status, headers)


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


Message = _native.Message
"""A received message (``id``, ``kind``, ``flags``, ``more``, ``end``, ``data``).

``data`` is a memoryview into the sender's arena, valid until ``release()`` (also on leaving a
``with`` block, or when the message is garbage-collected).  Releases may come in any order.
"""


class Reservation:
    """Arena space handed to the sender to fill in place; published by ``commit``."""

    __slots__ = ("_endpoint", "buffer", "committed")

    def __init__(self, endpoint: _native.Endpoint, buffer: memoryview) -> None:
        self._endpoint = endpoint
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
        self._endpoint.commit(msg_id, kind, flags, n)


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
        region.check_open()
        g = region.geometry
        side = region.side
        m = region.memory
        self.region: Final = region
        self.side: Final = side
        self._m = m
        if side is Side.FRONT:
            out_ring, in_ring = g.req_ring, g.resp_ring
            out_arena, out_size = g.req_arena, g.req_arena_size
            in_arena, in_size = g.resp_arena, g.resp_arena_size
            words = (Word.REQ_HEAD, Word.REQ_TAIL, Word.RESP_TAIL, Word.RESP_HEAD,
                     Word.RESP_ARENA_FREED, Word.REQ_ARENA_FREED)
            self._sleep_word, self._wake_word = int(Word.FRONT_SLEEP), int(Word.FRONT_WAKE)
            peer_sleep, peer_wake = Word.WORKER_SLEEP, Word.WORKER_WAKE
            self._state_word, self._peer_state = int(Word.FRONT_STATE), int(Word.WORKER_STATE)
            # peer_pid comes from the caller (who spawned the worker), never from the region,
            # which the worker could have written anything into.
        else:
            out_ring, in_ring = g.resp_ring, g.req_ring
            out_arena, out_size = g.resp_arena, g.resp_arena_size
            in_arena, in_size = g.req_arena, g.req_arena_size
            words = (Word.RESP_HEAD, Word.RESP_TAIL, Word.REQ_TAIL, Word.REQ_HEAD,
                     Word.REQ_ARENA_FREED, Word.RESP_ARENA_FREED)
            self._sleep_word, self._wake_word = int(Word.WORKER_SLEEP), int(Word.WORKER_WAKE)
            peer_sleep, peer_wake = Word.FRONT_SLEEP, Word.FRONT_WAKE
            self._state_word, self._peer_state = int(Word.WORKER_STATE), int(Word.FRONT_STATE)
            if peer_pid is None:
                peer_pid = m.load_u32(FRONT_PID) or None
            m.store_u32(WORKER_PID, os.getpid())
            m.store_u32(Word.WORKER_STATE, State.OPEN)
        head_word, peer_tail, tail_word, peer_head, freed_word, peer_freed = map(int, words)
        bell = -1 if region.peer_bell is None else region.peer_bell
        self._peer_head, self._peer_tail, self._peer_freed = peer_head, peer_tail, peer_freed
        self._out = region.view[out_arena : out_arena + out_size]
        self._in = region.view[in_arena : in_arena + in_size]
        self._ep = _native.Endpoint(
            m, g.slots, out_ring, in_ring, out_arena, out_size, in_arena, in_size,
            head_word, peer_tail, tail_word, peer_head, freed_word, peer_freed,
            int(peer_sleep), int(peer_wake), _KINDS_MASK, FLAG_MASK, self._in, bell,
        )
        # At most half the part (so a chunk always fits once earlier ones are released) and
        # under 2**31 (the slot's length field is 32 bits).
        self.max_chunk: Final = min(max_chunk or out_size // 4, out_size // 2, 1 << 31)
        self.spin: Final = spin if spin is not None else SpinPolicy()
        self.liveness_interval = liveness_interval
        self._epoch = 0
        self._closed = False
        self._peer_pid = peer_pid
        self._pidfd: int | None = None
        if peer_pid is not None:
            try:
                self._pidfd = os.pidfd_open(peer_pid)
            except OSError:
                self._pidfd = None  # already gone: noticed at the first wait
        self._send_waits = 0
        self._recv_waits = 0
        self._sleeps = 0
        if side is Side.WORKER:
            self._ep.wake_peer()  # tell the front this end is open (ready)

    # ------------------------------------------------------------------ sending

    def send_nowait(self, msg_id: int, data: bytes | memoryview, kind: int = Kind.DATA,
                    flags: int = 0) -> None:
        """Send ``data`` (at most ``max_chunk`` bytes) as one message, or raise WouldBlock."""
        if len(data) > self.max_chunk:
            raise ValueError(f"{len(data)} bytes exceed max_chunk {self.max_chunk}; use send()")
        if self._closed:
            raise ClosedResourceError("channel is closed")
        if not self._ep.send(msg_id, kind, flags, data):
            raise WouldBlock("ring or arena full")

    def send(self, msg_id: int, data: bytes | memoryview, kind: int = Kind.DATA,
             flags: int = 0, *, timeout: float | None = None) -> None:
        """Send ``data`` of any size, waiting for space; chunks carry Flag.MORE but the last.

        Raises TimeoutError if ``timeout`` seconds pass first (some chunks may have gone).
        """
        if self._closed:
            raise ClosedResourceError("channel is closed")
        ep = self._ep
        if len(data) <= self.max_chunk and ep.send(msg_id, kind, flags, data):
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        view = memoryview(data).cast("B")
        n = len(view)
        step = self.max_chunk
        pos = 0
        while True:
            chunk = view[pos : pos + step]
            last = pos + step >= n
            f = flags if last else (flags & ~int(Flag.END)) | Flag.MORE
            while not ep.send(msg_id, kind, f, chunk):
                self._wait_space(deadline)
            if last:
                return
            pos += step

    def send_response_nowait(self, msg_id: int, status: int, headers: Headers,
                             body: bytes | memoryview, add_length: bool) -> bool:
        """Worker: publish a whole response at once -- the head (``Flag.END`` if ``body`` is
        empty), then ``body`` with ``Flag.END`` -- or nothing and False if it does not fit now
        (the ring or the arena is full, or ``body`` is over ``max_chunk``).

        The head is encoded straight into the arena (``encode_response_head``'s layout), with
        ``content-length: len(body)`` appended if ``add_length`` and no header has that name;
        ``headers`` are ``response_headers``' output.  One release store publishes both
        messages, and the peer is woken at most once: the hello-world path in one call.
        """
        if self._closed:
            raise ClosedResourceError("channel is closed")
        if (body.nbytes if isinstance(body, memoryview) else len(body)) > self.max_chunk:
            return False
        return _native.send_response(self._ep, msg_id, _RESPONSE_HEAD, _RESPONSE_BODY, _END,
                                     status, headers, body, add_length)

    def reserve_nowait(self, n: int) -> Reservation:
        """Reserve ``n`` bytes of arena to fill in place, or raise WouldBlock.

        One reservation may be outstanding at a time; commit it before sending anything else.
        """
        if n > self.max_chunk or n < 0:
            raise ValueError(f"reservation of {n} bytes; max_chunk is {self.max_chunk}")
        if self._closed:
            raise ClosedResourceError("channel is closed")
        off = self._ep.reserve(n)
        if off < 0:
            raise WouldBlock("ring or arena full")
        return Reservation(self._ep, self._out[off : off + n])

    def reserve(self, n: int, *, timeout: float | None = None) -> Reservation:
        """Reserve ``n`` bytes of arena, waiting for space."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self.reserve_nowait(n)
            except WouldBlock:
                self._wait_space(deadline)

    # ---------------------------------------------------------------- receiving

    def recv_nowait(self) -> Message:
        """Take the next message, or raise WouldBlock (PeerLostError if the peer closed)."""
        if self._closed:
            raise ClosedResourceError("channel is closed")
        r = self._ep.recv()
        if r is None:
            if self._m.load_u32(self._peer_state) == State.CLOSED:
                # Re-check: the peer may have published just before closing.
                r = self._ep.recv()
                if r is None:
                    raise PeerLostError("peer closed the channel")
            else:
                raise WouldBlock("nothing to receive")
        return r

    def recv_ready(self) -> Message | None:
        """``recv_nowait`` without the exception: the next message, or None if there is none
        (PeerLostError if the peer closed).  The asyncio pump drains with it."""
        if self._closed:
            raise ClosedResourceError("channel is closed")
        r = self._ep.recv()
        if r is None and self._m.load_u32(self._peer_state) == _CLOSED:
            r = self._ep.recv()  # it may have published just before closing
            if r is None:
                raise PeerLostError("peer closed the channel")
        return r

    def recv(self, *, timeout: float | None = None) -> Message:
        """Wait for the next message; TimeoutError after ``timeout`` seconds."""
        if self._closed:
            raise ClosedResourceError("channel is closed")
        msg = self._ep.recv()
        if msg is not None:
            return msg
        deadline = None if timeout is None else time.monotonic() + timeout
        ep = self._ep
        spin = self.spin
        while True:
            budget = spin.budget()
            if budget:
                msg = ep.spin_recv(budget)
                if msg is not None:
                    spin.won()
                    return msg
            msg = self.recv_ready()
            if msg is not None:
                return msg
            self._recv_waits += 1
            self._sleep_until_news(deadline, want=WANT_DATA)
            if budget:
                spin.lost()

    def __iter__(self) -> Iterator[Message]:
        """Receive until the peer closes its end."""
        while True:
            try:
                yield self.recv()
            except PeerLostError:
                return

    # ------------------------------------------------------------------ waiting

    def _wait_space(self, deadline: float | None) -> None:
        """After a send found the ring or arena full: wait until the peer consumes something.

        Returns at once if the peer moved since the failed attempt (retry); raises
        PeerLostError if the peer closed (nobody will ever make room).  Returns spuriously at
        times: the caller retries its operation.
        """
        self._send_waits += 1
        _, tail, _, changed = self._ep.refresh()
        if changed:
            return
        if self._m.load_u32(self._peer_state) == State.CLOSED:
            raise PeerLostError("peer closed the channel")
        budget = self.spin.budget()
        if budget and self._m.spin_while_equal(self._peer_tail, tail, budget) != tail:
            self.spin.won()
            return
        self._sleep_until_news(deadline, want=WANT_SPACE)
        if budget:
            self.spin.lost()

    def _sleep_until_news(self, deadline: float | None, want: int) -> None:
        """Sleep in FUTEX_WAIT until the peer publishes anything, the deadline passes
        (TimeoutError), or the peer is found dead or closed (PeerLostError).

        Sleeps in slices of ``liveness_interval`` seconds, checking between slices that the
        peer is alive, so a peer killed with SIGKILL is noticed promptly.
        """
        m = self._m
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError("channel wait timed out")
            slice_ = self.liveness_interval
            if deadline is not None:
                slice_ = min(slice_, deadline - now)
            seq = self.prepare_sleep(doorbell=False, want=want)
            if seq is None:
                return
            self._sleeps += 1
            woken = m.futex_wait(self._wake_word, seq, slice_)
            self.finish_sleep()
            if woken:
                return
            self.check_peer()

    def prepare_sleep(
        self, *, doorbell: bool, want: int = WANT_DATA | WANT_SPACE
    ) -> int | None:
        """Announce that this side is about to sleep; None if it must not (news arrived).

        Returns the wake sequence to sleep on.  The caller sleeps (FUTEX_WAIT on the wake
        word, or on the doorbell eventfd if ``doorbell``) only if this returns an int, and
        calls ``finish_sleep()`` when it wakes.  ``want`` says which publications should wake
        it (messages, space, or both).  Store, full fence, re-check: a peer that publishes
        after the re-check sees the announcement and wakes us.
        """
        # One native call (Endpoint.prepare_sleep): refresh the peer's words; if news the
        # caller waits for is already here (news it does not wait for -- say, space, for a
        # receiver -- is no reason to stay awake) or the peer closed, return at once; else
        # store the announcement, fence, re-check, and withdraw it if news came meanwhile.
        epoch = (self._epoch + _EPOCH) & 0xFFFFFFF0
        word = epoch | _ASLEEP | want | (_DOORBELL if doorbell else 0)
        seq = self._ep.prepare_sleep(self._sleep_word, self._wake_word, self._peer_state,
                                     State.CLOSED, word, epoch)
        if seq == -1:
            return None
        self._epoch = epoch  # announced (a new epoch per announcement: see wake_if_asleep)
        return None if seq == -2 else seq

    def finish_sleep(self) -> None:
        """Announce that this side is awake again."""
        self._m.store_u32(self._sleep_word, self._epoch)

    def defer_wakes(self) -> None:
        """From now on, sending does not wake a sleeping peer: ``flush_wakes`` does, once
        per batch.  For an event loop that sends many messages per turn (the front): a peer
        woken by the first would often take it and sleep again before the next, one wake per
        message, each a cross-CPU wake-up."""
        self._ep.defer_wakes(True)

    def flush_wakes(self) -> None:
        """Wake the peer if it sleeps and messages were sent since the last flush."""
        if not self._closed:
            self._ep.flush_wakes()

    # ---------------------------------------------------------------- liveness

    def peer_alive(self) -> bool:
        """False once the peer's process is known to have exited."""
        if self._pidfd is not None:
            return not select.select([self._pidfd], [], [], 0)[0]
        if self._peer_pid is None:
            return True
        try:
            os.kill(self._peer_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def check_peer(self) -> None:
        """Raise PeerLostError if the peer closed its end or died."""
        if self._m.load_u32(self._peer_state) == State.CLOSED:
            raise PeerLostError("peer closed the channel")
        if not self.peer_alive():
            raise PeerLostError(f"peer process {self._peer_pid} died")

    # ---------------------------------------------------------------- lifecycle

    def peer_consumed(self) -> int | None:
        """How many messages the peer has taken from our ring (checked), or None if the
        peer broke the protocol (then nothing it says can be trusted)."""
        try:
            return self._ep.refresh()[1]
        except (PeerBrokenError, ValueError):
            return None

    def heartbeat(self) -> None:
        """Worker: bump the heartbeat counter the supervisor watches."""
        self._m.fetch_add_u64(Word.WORKER_HEARTBEAT, 1)

    def close(self) -> None:
        """Publish CLOSED, wake a sleeping peer, and stop using the region.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self.region.closed:
            # Publish CLOSED, then wake the peer whatever it announced: it re-checks and sees
            # CLOSED (store -> fence inside wake_peer -> the peer's re-check).
            self._m.store_u32(self._state_word, State.CLOSED)
            with contextlib.suppress(ValueError, OSError):
                self._ep.wake_peer()
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
        st = self._ep.state()
        return ChannelStatistics(
            side=self.side.value,
            messages_sent=st["messages_sent"],
            bytes_sent=st["bytes_sent"],
            messages_received=st["messages_received"],
            bytes_received=st["bytes_received"],
            send_waits=self._send_waits,
            recv_waits=self._recv_waits,
            sleeps=self._sleeps,
            wakes_sent=st["wakes_sent"],
            arena_in_use=st["arena_in_use"],
            live_leases=st["live_leases"],
            spin=self.spin.statistics(),
        )

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        st = self._ep.state()
        return (
            f"<Channel {self.side.value} sent={st['messages_sent']} "
            f"received={st['messages_received']} {'closed' if self._closed else 'open'}>"
        )
