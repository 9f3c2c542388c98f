"""The arena part: a circular bump allocator with one writer and one reader.

The writer (ArenaWriter) and the reader (ArenaReader) live in different processes and share
only the ring of descriptors (offset, length) and the reader's release position.  The model
test below drives both exactly as the two processes would -- allocate, deliver in FIFO order,
release in any order -- over a bytearray standing in for the shared memory.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from zeus.core.arena import ALIGN, ArenaReader, ArenaWriter, Lease, align, placement
from zeus.errors import PeerBrokenError

U64_MAX = (1 << 64) - 1


def pair(size: int) -> tuple[ArenaWriter, ArenaReader]:
    return ArenaWriter(size), ArenaReader(size)


def send(writer: ArenaWriter, reader: ArenaReader, n: int) -> Lease | None:
    """Allocate ``n`` bytes and deliver them: one message from writer to reader."""
    offset = writer.allocate(n)
    assert offset is not None
    return reader.accept(offset, n)


def give_back(writer: ArenaWriter, reader: ArenaReader, lease: Lease | None) -> None:
    """Release the oldest live lease and let the writer see the new release position."""
    assert lease is not None
    freed = reader.release(lease)
    assert freed is not None
    writer.update_freed(freed)


# --------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    ("n", "taken"), [(0, 0), (1, 64), (63, 64), (64, 64), (65, 128), (1000, 1024)]
)
def test_an_allocation_takes_whole_64_byte_lines(n: int, taken: int) -> None:
    """align(n) rounds up to the arena's 64-byte alignment."""
    assert align(n) == taken


def test_placement_keeps_an_allocation_that_fits_before_the_end() -> None:
    """An allocation that fits between the head and the end of the part starts at the head."""
    assert placement(pos=1024 + 128, n=100, size=1024) == 1024 + 128


def test_placement_skips_to_the_next_lap_when_the_allocation_does_not_fit() -> None:
    """An allocation that would cross the end starts at offset 0 of the next lap."""
    assert placement(pos=1024 + 960, n=100, size=1024) == 2048


def test_placement_of_zero_bytes_is_the_head() -> None:
    """A zero-length allocation takes no space and never skips."""
    assert placement(pos=960, n=0, size=1024) == 960


# --------------------------------------------------------------------------- the writer


@pytest.mark.parametrize("size", [0, -64, 100, 65])
def test_arena_size_must_be_a_positive_multiple_of_64(size: int) -> None:
    """Both sides refuse a part whose size is not a positive multiple of the alignment."""
    with pytest.raises(ValueError):
        ArenaWriter(size)
    with pytest.raises(ValueError):
        ArenaReader(size)


@pytest.mark.parametrize("size", [64, 128, 1024, 4096 * 31])
def test_the_largest_allocation_is_half_the_part(size: int) -> None:
    """max_allocation is size // 2: that much is accepted, one byte more is refused."""
    writer = ArenaWriter(size)
    assert writer.max_allocation == size // 2
    assert writer.allocate(size // 2) == 0
    with pytest.raises(ValueError, match="half"):
        writer.allocate(size // 2 + 1)


@pytest.mark.parametrize("n", [-1, 513, 1024, 1025, 1 << 40])
def test_writer_refuses_impossible_allocation_sizes(n: int) -> None:
    """A negative size, or one larger than half the part, is the caller's error."""
    writer = ArenaWriter(1024)
    with pytest.raises(ValueError):
        writer.allocate(n)
    assert writer.head == 0
    assert writer.in_use == 0


def test_allocations_are_contiguous_and_aligned() -> None:
    """Consecutive allocations follow each other, each starting on a 64-byte boundary."""
    writer = ArenaWriter(1024)
    assert writer.allocate(10) == 0
    assert writer.allocate(64) == 64
    assert writer.allocate(65) == 128
    assert writer.in_use == 256
    assert writer.head == 256


def test_zero_length_allocation_takes_no_space() -> None:
    """allocate(0) returns offset 0 and leaves the head where it was."""
    writer = ArenaWriter(1024)
    writer.allocate(100)
    assert writer.allocate(0) == 0
    assert writer.in_use == 128


def test_allocation_that_does_not_fit_wraps_to_offset_zero_and_counts_the_padding() -> None:
    """The rest of the part is skipped; the padding stays in use until released past it."""
    writer, reader = pair(1024)
    first = send(writer, reader, 512)
    second = send(writer, reader, 256)
    give_back(writer, reader, first)
    give_back(writer, reader, second)
    assert writer.head == 768
    assert writer.allocate(512) == 0
    assert writer.in_use == 256 + 512  # 256 bytes of padding at the end, then 512


def test_a_full_arena_is_back_pressure_not_an_error() -> None:
    """allocate returns None while the space is still in use, and succeeds once released."""
    writer, reader = pair(1024)
    first = send(writer, reader, 512)
    second = send(writer, reader, 512)
    assert first is not None and second is not None
    assert not writer.fits(64)
    assert writer.allocate(64) is None
    assert writer.head == 1024  # a refused allocation changes nothing
    freed = reader.release(first)
    assert freed == 512
    assert writer.update_freed(freed) is True
    assert writer.fits(64)
    assert writer.allocate(64) == 0


def test_trim_last_gives_back_the_unused_tail() -> None:
    """A reservation trimmed before publication keeps its offset and returns the rest."""
    writer = ArenaWriter(1024)
    writer.allocate(64)
    assert writer.allocate(512) == 64
    writer.trim_last(100)
    assert writer.head == 64 + 128
    assert writer.allocate(64) == 192


def test_trim_last_to_zero_gives_back_the_whole_allocation_and_its_padding() -> None:
    """A reservation trimmed to nothing returns the head to where it was before allocate."""
    writer = ArenaWriter(1024)
    writer.allocate(512)
    writer.allocate(448)
    writer.update_freed(960)
    assert writer.allocate(128) == 0  # wrapped: 64 bytes of padding, then 128
    assert writer.in_use == 64 + 128
    writer.trim_last(0)
    assert writer.head == 960
    assert writer.in_use == 0


def test_trim_last_cannot_grow_an_allocation() -> None:
    """Trimming to more than was allocated is the caller's error."""
    writer = ArenaWriter(1024)
    writer.allocate(64)
    with pytest.raises(ValueError):
        writer.trim_last(65)


def test_a_trimmed_wrapped_allocation_stays_at_zero_and_the_reader_accepts_it() -> None:
    """After trimming, a wrapped message could have fitted in place; offset 0 is still valid."""
    writer, reader = pair(1024)
    first = send(writer, reader, 512)
    second = send(writer, reader, 384)
    give_back(writer, reader, first)
    give_back(writer, reader, second)
    assert writer.allocate(256) == 0  # does not fit in the last 128 bytes: wraps
    writer.trim_last(64)  # would have fitted in place now
    lease = reader.accept(0, 64)
    assert lease is not None
    assert (lease.start, lease.end) == (1024, 1088)


def test_update_freed_reports_whether_space_came_back() -> None:
    """The same release position again is no news; a larger one is."""
    writer = ArenaWriter(1024)
    writer.allocate(256)
    assert writer.update_freed(0) is False
    assert writer.update_freed(128) is True
    assert writer.freed == 128
    assert writer.in_use == 128


@pytest.mark.parametrize("freed", [64, 320], ids=["backwards", "past-head"])
def test_update_freed_rejects_a_release_position_the_reader_could_not_publish(
    freed: int,
) -> None:
    """The release position may neither run backwards nor pass the writer's head."""
    writer = ArenaWriter(1024)
    writer.allocate(256)
    writer.update_freed(128)
    with pytest.raises(PeerBrokenError):
        writer.update_freed(freed)


def release_all(
    writer: ArenaWriter, reader: ArenaReader, leases: list[Lease], data: st.DataObject
) -> None:
    """Release every live lease in an order hypothesis picks; the writer sees the result."""
    for lease in data.draw(st.permutations(leases), label="release order"):
        reader.release(lease)
    leases.clear()
    writer.update_freed(reader.freed)
    assert writer.in_use == 0
    assert reader.live == 0


@settings(max_examples=300, deadline=None)
@given(
    units=st.integers(1, 64),
    history=st.lists(st.integers(0, 1 << 20), max_size=12),
    n=st.integers(0, 1 << 20),
    data=st.data(),
)
def test_an_allocation_up_to_half_always_fits_once_everything_is_released(
    units: int, history: list[int], n: int, data: st.DataObject
) -> None:
    """Wherever earlier traffic left the head, an empty part takes any allocation <= size/2.

    The history moves the head to an arbitrary position (an allocation that has to wait gets
    everything before it released, in an arbitrary order, and must then succeed); finally
    the part is emptied and any allocation up to half of it must fit -- before the end of
    the part or after the wrap -- and be accepted by the reader.
    """
    size = units * ALIGN
    half = size // 2
    writer, reader = pair(size)
    leases: list[Lease] = []
    for m in (m % (half + 1) for m in history):
        offset = writer.allocate(m)
        if offset is None:
            release_all(writer, reader, leases, data)
            offset = writer.allocate(m)
            assert offset is not None, f"empty part of {size} refused {m} at head {writer.head}"
        lease = reader.accept(offset, m)
        if lease is not None:
            leases.append(lease)
    release_all(writer, reader, leases, data)

    n = n % half + 1  # 1 .. size // 2
    head = writer.head
    assert writer.fits(n)
    offset = writer.allocate(n)
    assert offset is not None, f"empty part of {size} refused {n} bytes at head {head}"
    assert offset in (head % size, 0)
    assert offset + align(n) <= size
    lease = reader.accept(offset, n)
    assert lease is not None
    assert lease.start % size == offset


def test_the_largest_allocation_fits_an_empty_part_whatever_the_head() -> None:
    """Exhaustively for a small part: every head position, every size up to half."""
    size = 1024
    for skip in range(0, size, ALIGN):
        for n in range(1, size // 2 + 1, 7):
            writer, reader = pair(size)
            if skip:
                give_back(writer, reader, send(writer, reader, min(skip, size // 2)))
                if skip > size // 2:
                    give_back(writer, reader, send(writer, reader, skip - size // 2))
            assert writer.head == skip
            offset = writer.allocate(n)
            assert offset is not None, (skip, n)
            assert reader.accept(offset, n) is not None


# --------------------------------------------------------------------------- the reader


def test_reader_releases_only_over_the_released_prefix() -> None:
    """Out-of-order releases return space only once every earlier allocation is released."""
    writer, reader = pair(1024)
    a, b, c = (send(writer, reader, 64) for _ in range(3))
    assert a is not None and b is not None and c is not None
    assert reader.release(b) is None
    assert reader.release(c) is None
    assert reader.freed == 0
    assert reader.release(a) == 192
    assert reader.live == 0


def test_releasing_a_lease_twice_is_harmless() -> None:
    """The second release of a lease does nothing."""
    writer, reader = pair(1024)
    a = send(writer, reader, 64)
    b = send(writer, reader, 64)
    assert a is not None and b is not None
    assert reader.release(a) == 64
    assert reader.release(a) is None
    assert reader.freed == 64
    assert reader.live == 1


def test_zero_length_message_has_no_lease() -> None:
    """accept(0, 0) is a message with no bytes: nothing to release."""
    assert ArenaReader(1024).accept(0, 0) is None


def _reader_at(expected: int, live: int = 0, size: int = 1024) -> ArenaReader:
    """A reader that expects the next message at ``expected`` with ``live`` bytes held."""
    writer, reader = pair(size)
    if live:
        send(writer, reader, live)
    while writer.head < expected:  # released messages of at most half the part each
        lease = send(writer, reader, min(expected - writer.head, size // 2))
        assert lease is not None
        reader.release(lease)
    assert writer.head == expected
    return reader


@pytest.mark.parametrize(
    ("expected", "live", "offset", "length"),
    [
        pytest.param(128, 0, 64, 10, id="behind-the-expected-position"),
        pytest.param(128, 0, 192, 10, id="ahead-of-the-expected-position"),
        pytest.param(128, 0, 129, 10, id="unaligned"),
        pytest.param(128, 0, 1024, 10, id="at-the-end-of-the-part"),
        pytest.param(128, 0, U64_MAX, 10, id="huge-offset"),
        pytest.param(0, 0, 0, 1025, id="longer-than-the-part"),
        pytest.param(0, 0, 0, 1 << 40, id="far-longer-than-the-part"),
        pytest.param(0, 0, 64, 0, id="zero-length-with-an-offset"),
        pytest.param(1024, 512, 0, 64, id="end-past-freed-plus-size"),
        pytest.param(128, 128, 0, 64, id="skip-into-space-still-held"),
    ],
)
def test_reader_refuses_a_placement_the_writer_could_not_have_made(
    expected: int, live: int, offset: int, length: int
) -> None:
    """A forged offset or length is the peer's fault: PeerBrokenError."""
    reader = _reader_at(expected, live)
    with pytest.raises(PeerBrokenError):
        reader.accept(offset, length)


@pytest.mark.parametrize(
    ("expected", "live", "offset", "length", "span"),
    [
        pytest.param(0, 0, 0, 1024, (0, 1024), id="the-whole-part-when-empty"),
        pytest.param(64, 0, 64, 960, (64, 1024), id="the-rest-of-the-part-in-place"),
        pytest.param(256, 0, 256, 768, (256, 1024), id="over-half-in-place"),
        pytest.param(768, 0, 0, 768, (1024, 1792), id="over-half-after-a-skip"),
    ],
)
def test_reader_accepts_lengths_up_to_the_whole_part_where_they_fit(
    expected: int, live: int, offset: int, length: int, span: tuple[int, int]
) -> None:
    """The reader does not apply the writer's half-the-part rule: a message of up to ``size``
    bytes is judged by its placement and by ``end - freed <= size`` alone."""
    reader = _reader_at(expected, live)
    lease = reader.accept(offset, length)
    assert lease is not None
    assert (lease.start, lease.end) == span


@settings(max_examples=300, deadline=None)
@given(
    units=st.integers(1, 16),
    prefix=st.lists(st.integers(0, 1024), max_size=8),
    held=st.integers(0, 8),
    length=st.integers(0, 1100),
    offsets=st.lists(st.integers(0, 1100) | st.integers(0, U64_MAX), max_size=4),
)
def test_reader_accepts_exactly_the_placements_the_writer_makes(
    units: int, prefix: list[int], held: int, length: int, offsets: list[int]
) -> None:
    """In any state, the reader accepts the writer's own offset and refuses any forged one.

    Offset 0 is the one other placement a writer may choose (it may always skip the rest of
    the part), so it is not a forgery.  The writer is told the reader's latest release
    position first, so the two agree on the free space: when the writer has to wait (None),
    the reader accepts no placement at all.
    """
    size = units * ALIGN
    writer, reader = pair(size)
    leases = []
    for n in (min(n, size // 2) for n in prefix):
        offset = writer.allocate(n)
        if offset is None:
            break
        leases.append(reader.accept(offset, n))
    for lease in leases[held:]:
        if lease is not None:
            reader.release(lease)
    writer.update_freed(reader.freed)

    if length > size // 2:
        # The writer never makes such a message; the reader still judges it by its placement
        # only (it may accept one at the expected position or at 0, never anywhere else).
        with pytest.raises(ValueError):
            writer.allocate(length)
        for forged in offsets:
            if forged not in (writer.head % size, 0):
                with pytest.raises(PeerBrokenError):
                    reader.accept(forged, length)
        return
    own = writer.allocate(length)
    for forged in offsets:
        if forged in (own, 0):
            continue
        with pytest.raises(PeerBrokenError):
            reader.accept(forged, length)
    if own is None:
        for candidate in {0, writer.head % size}:
            with pytest.raises(PeerBrokenError):
                reader.accept(candidate, length)
    else:
        lease = reader.accept(own, length)
        assert (lease is None) == (length == 0)


# --------------------------------------------------------------------------- the model


@dataclass
class Sent:
    """A message published on the ring, not yet taken by the reader."""

    tag: int
    offset: int
    length: int
    payload: bytes


@dataclass
class Held:
    """A message the reader's application holds (its bytes must stay intact)."""

    sent: Sent
    lease: Lease


def pattern(tag: int, n: int) -> bytes:
    """Bytes unique to one allocation, so an overwrite by another one is seen."""
    return random.Random(tag).randbytes(n)


class ArenaModel(RuleBasedStateMachine):
    """The writer process and the reader process of one arena part, over shared bytes.

    * FIFO: the reader takes messages in allocation order and each starts after the last;
    * no overwrite: a held message's bytes are intact when it is released, although later
      allocations wrote their own pattern all over the rest of the part;
    * no double use: an allocation never overlaps bytes still allocated to another message;
    * no leak: once everything is released the writer has nothing in use and any allocation
      up to half the part (the largest there is) succeeds;
    * the writer's fits() predicts allocate(), and the published release position never
      passes a held message.
    """

    def __init__(self) -> None:
        super().__init__()
        self.size = 0
        self.writer = ArenaWriter(ALIGN)
        self.reader = ArenaReader(ALIGN)
        self.memory = bytearray()
        self.ring: deque[Sent] = deque()
        self.held: list[Held] = []
        self.owned: dict[int, range] = {}  # tag -> bytes of the part it owns
        self.published_freed = 0  # the reader's release word in shared memory
        self.last_end = 0
        self.next_tag = 0

    @initialize(units=st.integers(1, 16))
    def create(self, units: int) -> None:
        self.size = units * ALIGN
        self.writer, self.reader = pair(self.size)
        self.memory = bytearray(self.size)

    def _allocate(self, n: int, trim: int | None) -> bool:
        """Run the writer's send path; return False on back-pressure."""
        writer = self.writer
        predicted = writer.fits(n)
        offset = writer.allocate(n)
        assert (offset is not None) == predicted
        if offset is None:
            # Back-pressure: the writer loads the reader's release word and tries again.
            writer.update_freed(self.published_freed)
            offset = writer.allocate(n)
            if offset is None:
                return False
        assert offset % ALIGN == 0
        assert offset + align(n) <= self.size
        end = offset + align(n)
        for tag, owned in self.owned.items():
            assert end <= owned.start or owned.stop <= offset, f"overlaps message {tag}"
        tag = self.next_tag
        self.next_tag += 1
        payload = pattern(tag, align(n))
        self.memory[offset : offset + align(n)] = payload  # fill the whole reservation
        if trim is not None:
            writer.trim_last(trim)
            n = trim
            if n == 0:
                offset = 0  # a zero-length message carries offset 0
        if n:
            self.owned[tag] = range(offset, offset + align(n))
        self.ring.append(Sent(tag, offset, n, payload[:n]))
        assert 0 <= writer.in_use <= self.size
        return True

    @rule(data=st.data())
    def allocate(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(0, self.size // 2), label="n")
        trim = data.draw(st.none() | st.none() | st.integers(0, n), label="trim")
        self._allocate(n, trim)

    @precondition(lambda self: self.ring)
    @rule()
    def deliver(self) -> None:
        sent = self.ring.popleft()
        lease = self.reader.accept(sent.offset, sent.length)
        if sent.length == 0:
            assert lease is None
            return
        assert lease is not None
        assert lease.start % self.size == sent.offset
        assert lease.start >= self.last_end, "messages must arrive in allocation order"
        assert lease.end - lease.start == align(sent.length)
        self.last_end = lease.end
        assert bytes(self.memory[sent.offset : sent.offset + sent.length]) == sent.payload
        self.held.append(Held(sent, lease))

    def _release(self, held: Held) -> None:
        sent = held.sent
        view = bytes(self.memory[sent.offset : sent.offset + sent.length])
        assert view == sent.payload, f"message {sent.tag} was overwritten while held"
        freed = self.reader.release(held.lease)
        if freed is not None:
            assert freed >= self.published_freed
            self.published_freed = freed
        del self.owned[sent.tag]

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.held) - 1), label="index")
        self._release(self.held.pop(index))

    @rule()
    def writer_loads_release_word(self) -> None:
        self.writer.update_freed(self.published_freed)

    @rule(data=st.data())
    def release_everything(self, data: st.DataObject) -> None:
        while self.ring:
            self.deliver()
        order = data.draw(st.permutations(range(len(self.held))), label="order")
        for index in order:
            self._release(self.held[index])
        self.held.clear()
        self.writer.update_freed(self.published_freed)
        assert self.reader.live == 0
        assert self.writer.in_use == 0
        assert not self.owned
        n = data.draw(st.just(self.size // 2) | st.integers(1, self.size // 2), label="n")
        assert self._allocate(n, None), f"an empty part refused {n} bytes"

    @rule(data=st.data())
    def allocate_more_than_half(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(self.size // 2 + 1, 2 * self.size), label="n")
        head, in_use = self.writer.head, self.writer.in_use
        with pytest.raises(ValueError):
            self.writer.allocate(n)
        assert (self.writer.head, self.writer.in_use) == (head, in_use)

    @invariant()
    def release_position_never_passes_a_held_message(self) -> None:
        writer = self.writer
        assert writer.freed <= self.published_freed <= writer.head
        assert 0 <= writer.in_use <= self.size
        if self.held:
            assert self.published_freed <= min(h.lease.start for h in self.held)


ArenaModel.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
TestArenaModel = ArenaModel.TestCase
