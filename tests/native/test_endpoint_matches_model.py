"""The C channel hot path (``_native.Endpoint``) against its executable specification.

``zeus.core.arena`` (ArenaWriter, ArenaReader) and the ring rule (at most ``slots`` messages
published and not yet taken) say what a channel may accept.  Here a real front ``Channel`` and
a real worker ``Channel`` share one region in this process, and hypothesis drives them with
random message sizes, in-place reservations (trimmed or not), receives and releases in random
order, while the same steps run on the pure-Python model.  At every step:

* a send / reserve succeeds exactly when the model's ring has room and its ``allocate``
  succeeds (after loading the reader's release position, as the C writer does); it raises
  ValueError exactly when the model does (more than half the part);
* the bytes land where the model puts them: the offset of a reservation and of a received
  message's ``data`` in the arena (found from its address) is the model's offset, and the
  bytes are the ones sent;
* a held message is never overwritten, whatever is sent meanwhile;
* the counters agree: arena bytes in use on the writer's side, live leases on the reader's
  side, and the release position the reader publishes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import struct
from collections import deque
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zeus import Channel, Kind, Message, PeerBrokenError, Region, WouldBlock
from zeus.core.arena import ALIGN, ArenaReader, ArenaWriter, Lease
from zeus.core.layout import Geometry, Word

SIZE = 256 * 1024
SLOTS = 16
SLOT = struct.Struct("<QHHIQQ")  # id, kind, flags, length, offset, reserved
ARENA = Geometry.compute(SIZE, SLOTS).req_arena_size
HALF = ARENA // 2


def address(view: memoryview) -> int:
    """Address of the first byte of a (writable, non-empty) buffer."""
    anchor = ctypes.c_char.from_buffer(view)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor  # drop the export at once, so the view can be released later


def pattern(tag: int, n: int) -> bytes:
    """Bytes unique to one message, so an overwrite by another is seen."""
    return random.Random(tag).randbytes(n)


@dataclass
class Sent:
    """A message published on the request ring and not yet taken by the worker."""

    tag: int
    offset: int
    length: int
    payload: bytes


@dataclass
class Held:
    """A message the worker holds: the model's lease and the real Message."""

    sent: Sent
    lease: Lease
    msg: Message


class EndpointMatchesModel(RuleBasedStateMachine):
    """Front (writer) and worker (reader) of the request ring and arena, and the model."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = contextlib.ExitStack()
        front_region = self.stack.enter_context(Region.create(size=SIZE, slots=SLOTS))
        worker_region = self.stack.enter_context(Region.attach(os.dup(front_region.fd)))
        self.front = Channel(front_region, peer_pid=os.getpid(), max_chunk=1 << 40)
        self.stack.callback(self.front.close)
        self.worker = Channel(worker_region, peer_pid=os.getpid())
        self.stack.callback(self.worker.close)
        self.worker_memory = worker_region.memory
        g = front_region.geometry
        self.size = g.req_arena_size
        self.half = self.size // 2
        assert self.size == ARENA
        assert self.front.max_chunk == self.half
        # Where the request arena is in each of the two mappings of the region.
        self.front_base = address(front_region.view[g.req_arena : g.req_arena + 1])
        self.worker_base = address(worker_region.view[g.req_arena : g.req_arena + 1])
        self.writer = ArenaWriter(self.size)
        self.reader = ArenaReader(self.size)
        self.ring: deque[Sent] = deque()
        self.held: list[Held] = []
        self.next_tag = 1

    def teardown(self) -> None:
        for held in self.held:
            held.msg.release()
        self.held.clear()
        self.stack.close()

    # ------------------------------------------------------------------ the model's writer

    def _model_allocate(self, n: int) -> int | None:
        """The writer's send path: ring room first, then the arena (reloading ``freed``)."""
        if len(self.ring) >= SLOTS:
            return None
        offset = self.writer.allocate(n)
        if offset is None:
            self.writer.update_freed(self.reader.freed)  # the word the worker published
            offset = self.writer.allocate(n)
        return offset

    def _tag(self) -> int:
        tag = self.next_tag
        self.next_tag += 1
        return tag

    # ------------------------------------------------------------------ rules

    sizes = (
        st.integers(0, 300)
        | st.integers(0, HALF)
        | st.sampled_from([1, ALIGN, ALIGN + 1, 4096, HALF - ALIGN, HALF - 1])
        | st.just(-1)  # stands for "exactly half the part"
    )

    def _size(self, n: int) -> int:
        return self.half if n < 0 else min(n, self.half)

    @rule(n=sizes)
    def send(self, n: int) -> None:
        n = self._size(n)
        tag = self._tag()
        payload = pattern(tag, n)
        offset = self._model_allocate(n)
        try:
            self.front.send_nowait(tag, payload)
        except WouldBlock:
            assert offset is None, f"C refused {n} bytes the model placed at {offset}"
            return
        assert offset is not None, f"C accepted {n} bytes the model refused"
        self.ring.append(Sent(tag, offset if n else 0, n, payload))

    @rule(count=st.integers(1, 2 * SLOTS), n=st.integers(0, 2048))
    def send_burst(self, count: int, n: int) -> None:
        """Many small messages in a row: fills the ring (and wraps the arena over time)."""
        for _ in range(count):
            self.send(n)

    @rule(count=st.integers(1, 2 * SLOTS))
    def recv_burst(self, count: int) -> None:
        for _ in range(count):
            self.recv()

    @rule(n=sizes, data=st.data())
    def reserve_and_commit(self, n: int, data: st.DataObject) -> None:
        n = self._size(n)
        trim = data.draw(st.none() | st.integers(0, n) | st.just(0), label="trim")
        tag = self._tag()
        offset = self._model_allocate(n)
        try:
            reservation = self.front.reserve_nowait(n)
        except WouldBlock:
            assert offset is None, f"C refused to reserve {n} bytes the model placed at {offset}"
            return
        assert offset is not None, f"C reserved {n} bytes the model refused"
        assert reservation.buffer.nbytes == n
        if n:
            assert address(reservation.buffer) - self.front_base == offset
        payload = pattern(tag, n)
        reservation.buffer[:] = payload  # fill the whole reservation
        length = n if trim is None else trim
        self.writer.trim_last(length)
        reservation.commit(tag, Kind.DATA, 0, length)
        self.ring.append(Sent(tag, offset if length else 0, length, payload[:length]))

    @rule(
        n=st.just(HALF + 1)
        | st.integers(HALF + 1, ARENA + ALIGN)
        | st.integers(ARENA + ALIGN, 1 << 32)
    )
    def refuse_more_than_half(self, n: int) -> None:
        """The model raises ValueError; so does the C endpoint, and the Channel before it.
        Nothing is allocated or published."""
        with pytest.raises(ValueError):
            self.writer.allocate(n)
        before = self._published()
        with pytest.raises(ValueError):
            self.front.reserve_nowait(n)
        with pytest.raises(ValueError):
            self.front.send_nowait(0, bytes(min(n, ARENA + ALIGN)))
        if len(self.ring) < SLOTS:  # with a full ring the C calls report back-pressure
            with pytest.raises(ValueError):
                self.front._ep.reserve(n)
            if n <= ARENA + ALIGN:
                with pytest.raises(ValueError):
                    self.front._ep.send(0, Kind.DATA, 0, bytes(n))
        assert self._published() == before
        assert not self.front._ep.reserved

    def _published(self) -> tuple[int, int, int]:
        state = self.front._ep.state()
        return state["out_head"], state["arena_in_use"], state["messages_sent"]

    @rule()
    def recv(self) -> None:
        if not self.ring:
            with pytest.raises(WouldBlock):
                self.worker.recv_nowait()
            return
        msg = self.worker.recv_nowait()
        sent = self.ring.popleft()
        lease = self.reader.accept(sent.offset, sent.length)
        assert msg.id == sent.tag
        assert msg.data.nbytes == sent.length
        if sent.length:
            assert address(msg.data) - self.worker_base == sent.offset
        assert bytes(msg.data) == sent.payload
        if lease is None:
            msg.release()  # a zero-length message holds no space
        else:
            self.held.append(Held(sent, lease, msg))

    def _release(self, held: Held) -> None:
        assert bytes(held.msg.data) == held.sent.payload, f"message {held.sent.tag} overwritten"
        held.msg.release()
        self.reader.release(held.lease)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.held) - 1), label="index")
        self._release(self.held.pop(index))

    @rule(data=st.data())
    def release_everything(self, data: st.DataObject) -> None:
        """Take and release everything; then half the part must go out at once."""
        while self.ring:
            self.recv()
        for index in data.draw(st.permutations(range(len(self.held))), label="order"):
            self._release(self.held[index])
        self.held.clear()
        assert self.reader.live == 0
        self.send(-1)
        assert self.ring and self.ring[-1].length == self.half, "half the part did not fit"

    # ------------------------------------------------------------------ invariants

    @invariant()
    def counters_agree(self) -> None:
        front = self.front._ep.state()
        worker = self.worker._ep.state()
        assert front["arena_in_use"] == self.writer.in_use
        assert front["out_head"] - worker["in_tail"] == len(self.ring)
        assert worker["live_leases"] == self.reader.live
        assert self.worker_memory.load_u64(Word.REQ_ARENA_FREED) == self.reader.freed


EndpointMatchesModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestEndpointMatchesModel = EndpointMatchesModel.TestCase


# --------------------------------------------------------------------------- a hostile writer


@settings(max_examples=150, deadline=None)
@given(
    prefix=st.lists(
        st.tuples(st.integers(0, HALF) | st.integers(0, 300), st.booleans()), max_size=12
    ),
    offset=st.integers(0, ARENA + ALIGN) | st.sampled_from([0, ALIGN, ARENA, (1 << 64) - 1]),
    length=st.integers(0, ARENA + 1) | st.sampled_from([0, 1, HALF + 1, ARENA, ARENA + 1]),
    aligned=st.booleans(),
    data=st.data(),
)
def test_the_reader_accepts_exactly_the_placements_the_model_accepts(
    prefix: list[tuple[int, bool]], offset: int, length: int, aligned: bool, data: st.DataObject
) -> None:
    """After some honest traffic (released in any order), the worker writes one slot of its
    own: the front's C reader takes it exactly when ArenaReader.accept does -- including
    messages over half the part, which an honest writer never makes but the reader judges by
    placement alone -- and refuses it with PeerBrokenError exactly when the model does."""
    if aligned and offset < ARENA:
        offset -= offset % ALIGN
    with contextlib.ExitStack() as stack:
        front_region = stack.enter_context(Region.create(size=SIZE, slots=SLOTS))
        worker_region = stack.enter_context(Region.attach(os.dup(front_region.fd)))
        front = Channel(front_region, peer_pid=os.getpid())
        stack.callback(front.close)
        worker = Channel(worker_region, peer_pid=os.getpid(), max_chunk=1 << 40)
        stack.callback(worker.close)
        g = front_region.geometry
        assert g.resp_arena_size == ARENA
        base = address(front_region.view[g.resp_arena : g.resp_arena + 1])
        reader = ArenaReader(ARENA)
        held: list[tuple[Message, Lease]] = []
        stack.callback(lambda: [msg.release() for msg, _ in held])
        sent = 0
        expected = 0  # where the next message may start (free-running), as the model says
        for n, keep in prefix:
            try:
                worker.send_nowait(sent, bytes(n))
            except WouldBlock:
                continue
            sent += 1
            msg = front.recv_nowait()
            lease = reader.accept(
                0 if n == 0 else address(msg.data) - base, msg.data.nbytes
            )
            if lease is not None:
                expected = lease.end
            if lease is None:
                msg.release()
            elif keep:
                held.append((msg, lease))
            else:
                msg.release()
                reader.release(lease)
        for index in data.draw(st.permutations(range(len(held))), label="release order"):
            if data.draw(st.booleans(), label="release"):
                msg, lease = held[index]
                msg.release()
                reader.release(lease)
        assert front_region.memory.load_u64(Word.RESP_ARENA_FREED) == reader.freed

        # The hostile slot: the worker's next one, written by hand, placed at random or
        # exactly where (or one line after where) the next message may start, and sized at
        # random or to fill exactly (or overfill) the rest of the part.
        room = ARENA - expected % ARENA
        where = data.draw(st.sampled_from(["drawn", "expected", "after"]), label="where")
        if where != "drawn":
            offset = expected % ARENA + (ALIGN if where == "after" else 0)
        size = data.draw(st.sampled_from(["drawn", "room", "room+1"]), label="size")
        if size != "drawn":
            length = room + (1 if size == "room+1" else 0)
        SLOT.pack_into(
            worker_region.mm, g.resp_ring + (sent % SLOTS) * SLOT.size,
            99, Kind.DATA, 0, length, offset, 0,
        )
        worker_region.memory.store_u64(Word.RESP_HEAD, sent + 1)
        try:
            lease = reader.accept(offset, length)
        except PeerBrokenError:
            with pytest.raises(PeerBrokenError):
                front.recv_nowait()
            return
        with front.recv_nowait() as msg:
            assert msg.id == 99
            assert msg.data.nbytes == length
            if length:
                assert lease is not None
                assert address(msg.data) - base == offset
