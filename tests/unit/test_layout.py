"""The byte layout of a region: geometry, header, control-block words, kinds and flags."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeus.core.layout import (
    ARENA_ALIGN,
    CONTROL_SIZE,
    DEFAULT_REGION_SIZE,
    DEFAULT_SLOTS,
    FLAG_MASK,
    FRONT_PID,
    HEADER_SIZE,
    KINDS,
    LINE,
    MAGIC,
    MAX_SLOTS,
    MIN_ARENA,
    MIN_SLOTS,
    PAGE,
    SLOT_SIZE,
    VERSION,
    WORKER_PID,
    Flag,
    Geometry,
    Kind,
    Side,
    Word,
)
from zeus.errors import RegionMismatchError

# The header as PROTOCOL.md describes it, written out independently of the code under test.
HEADER = struct.Struct("<QIIQIIQQQQQQ")
FIELDS = (
    "magic",
    "version",
    "control",
    "region_size",
    "slots",
    "slot_size",
    "req_ring",
    "resp_ring",
    "req_arena",
    "req_arena_size",
    "resp_arena",
    "resp_arena_size",
)
FIELD = {name: index for index, name in enumerate(FIELDS)}

MiB = 1024 * 1024


def tampered(geometry: Geometry, **fields: int) -> bytes:
    """The header of ``geometry`` with some fields replaced."""
    values = list(HEADER.unpack(geometry.encode()))
    for name, value in fields.items():
        values[FIELD[name]] = value
    return HEADER.pack(*values)


# --------------------------------------------------------------------------- compute


@pytest.mark.parametrize("slots", [0, 1, 3, 1000, MAX_SLOTS * 2, -2])
def test_compute_rejects_a_slot_count_that_is_not_a_power_of_two_in_range(slots: int) -> None:
    """Rings hold a power-of-two number of slots between MIN_SLOTS and MAX_SLOTS."""
    with pytest.raises(ValueError):
        Geometry.compute(DEFAULT_REGION_SIZE, slots)


@pytest.mark.parametrize("size", [DEFAULT_REGION_SIZE + 1, DEFAULT_REGION_SIZE - 512, 100])
def test_compute_rejects_a_region_size_that_is_not_whole_pages(size: int) -> None:
    """A region is a whole number of 4 KiB pages."""
    with pytest.raises(ValueError):
        Geometry.compute(size, DEFAULT_SLOTS)


@pytest.mark.parametrize(
    ("size", "slots"),
    [(0, 2), (-PAGE, 2), (PAGE, 2), (2 * MIN_ARENA, 2), (64 * MiB, MAX_SLOTS)],
)
def test_compute_rejects_a_region_too_small_for_its_rings_and_arenas(
    size: int, slots: int
) -> None:
    """After the control block and both rings, each arena needs at least MIN_ARENA bytes."""
    with pytest.raises(ValueError):
        Geometry.compute(size, slots)


def test_the_smallest_region_leaves_exactly_the_minimum_arenas() -> None:
    """One page of control block and rings, then two minimal arenas, is accepted."""
    geometry = Geometry.compute(PAGE + PAGE + 2 * MIN_ARENA, MIN_SLOTS)
    assert geometry.req_arena_size == MIN_ARENA
    assert geometry.resp_arena_size == MIN_ARENA


def test_default_geometry() -> None:
    """The default region is 64 MiB with 1024 slots per ring, the arenas split in two."""
    geometry = Geometry.compute()
    assert geometry.region_size == 64 * MiB
    assert geometry.slots == 1024
    assert geometry.req_ring == CONTROL_SIZE
    assert geometry.resp_ring == CONTROL_SIZE + 1024 * SLOT_SIZE
    assert geometry.req_arena == CONTROL_SIZE + 2 * 1024 * SLOT_SIZE
    assert geometry.req_arena_size + geometry.resp_arena_size == 64 * MiB - geometry.req_arena


geometries = st.builds(
    lambda slots_log2, extra_pages: Geometry.compute(
        -(-(CONTROL_SIZE + 2 * (1 << slots_log2) * SLOT_SIZE) // PAGE) * PAGE
        + 2 * MIN_ARENA
        + extra_pages * PAGE,
        1 << slots_log2,
    ),
    slots_log2=st.integers(1, 20),
    extra_pages=st.integers(0, 1 << 14),
)


@given(geometries)
def test_the_parts_of_a_region_follow_each_other_without_overlap(geometry: Geometry) -> None:
    """Control block, request ring, response ring, request arena, response arena, in order.

    The arenas start on page boundaries, are each at least MIN_ARENA bytes and a multiple of
    the arena alignment, and together fill the region to its last byte.
    """
    ring_bytes = geometry.slots * SLOT_SIZE
    assert geometry.req_ring == CONTROL_SIZE
    assert geometry.resp_ring == geometry.req_ring + ring_bytes
    assert geometry.req_arena >= geometry.resp_ring + ring_bytes
    assert geometry.req_arena % PAGE == 0
    assert geometry.resp_arena == geometry.req_arena + geometry.req_arena_size
    assert geometry.resp_arena % PAGE == 0
    assert geometry.resp_arena + geometry.resp_arena_size == geometry.region_size
    for size in (geometry.req_arena_size, geometry.resp_arena_size):
        assert size >= MIN_ARENA
        assert size % ARENA_ALIGN == 0


def test_ring_offsets_by_consumer() -> None:
    """The request ring is consumed by the worker, the response ring by the front."""
    geometry = Geometry.compute()
    assert geometry.ring(Side.WORKER) == geometry.req_ring
    assert geometry.ring(Side.FRONT) == geometry.resp_ring


# --------------------------------------------------------------------------- header


def test_the_header_is_the_documented_little_endian_record() -> None:
    """encode() writes magic "ZEUSCHAN", version, sizes and offsets in the documented order."""
    geometry = Geometry.compute()
    header = geometry.encode()
    assert len(header) == HEADER_SIZE == HEADER.size
    assert header[:8] == b"ZEUSCHAN"
    assert HEADER.unpack(header) == (
        MAGIC,
        VERSION,
        CONTROL_SIZE,
        geometry.region_size,
        geometry.slots,
        SLOT_SIZE,
        geometry.req_ring,
        geometry.resp_ring,
        geometry.req_arena,
        geometry.req_arena_size,
        geometry.resp_arena,
        geometry.resp_arena_size,
    )


@given(geometries)
def test_decode_returns_what_encode_wrote(geometry: Geometry) -> None:
    """A header read back from a region of the right size gives the same geometry."""
    assert Geometry.decode(geometry.encode(), geometry.region_size) == geometry


def test_decode_reads_a_header_at_the_start_of_a_larger_buffer() -> None:
    """The header is read from the first bytes of the control block, whatever follows."""
    geometry = Geometry.compute()
    control = memoryview(geometry.encode() + bytes(CONTROL_SIZE - HEADER_SIZE))
    assert Geometry.decode(control, geometry.region_size) == geometry


@pytest.mark.parametrize(
    ("fields", "actual_size", "says"),
    [
        pytest.param({"magic": 0}, None, "not a Zeus channel region", id="zero-magic"),
        pytest.param({"magic": MAGIC ^ 1}, None, "magic", id="wrong-magic"),
        pytest.param({"version": VERSION + 1}, None, "version", id="newer-version"),
        pytest.param({"version": 0}, None, "version", id="older-version"),
        pytest.param({"control": 8192}, None, "control block", id="control-size"),
        pytest.param({"slot_size": 64}, None, "slot size", id="slot-size"),
        pytest.param({}, 32 * MiB, "the region has", id="region-smaller-than-claimed"),
        pytest.param({"region_size": 128 * MiB}, None, "the region has", id="claims-more"),
        pytest.param({"slots": 1000}, None, "bad geometry", id="slots-not-power-of-two"),
        pytest.param({"slots": 0}, None, "bad geometry", id="no-slots"),
        pytest.param({"req_ring": 0}, None, "does not match", id="ring-over-control"),
        pytest.param({"resp_ring": CONTROL_SIZE}, None, "does not match", id="rings-overlap"),
        pytest.param({"req_arena_size": 64 * MiB}, None, "does not match", id="arena-too-big"),
        pytest.param({"resp_arena": 0}, None, "does not match", id="arena-over-control"),
        pytest.param({"resp_arena_size": 1}, None, "does not match", id="arena-size"),
    ],
)
def test_decode_rejects_a_header_this_code_does_not_speak(
    fields: dict[str, int], actual_size: int | None, says: str
) -> None:
    """Wrong magic, version, block sizes, region size or geometry: RegionMismatchError."""
    geometry = Geometry.compute()
    header = tampered(geometry, **fields)
    with pytest.raises(RegionMismatchError, match=says):
        Geometry.decode(header, actual_size or geometry.region_size)


@pytest.mark.parametrize("length", [0, 8, HEADER_SIZE - 1])
def test_decode_rejects_a_region_too_short_for_a_header(length: int) -> None:
    """Fewer bytes than a header is not a region."""
    with pytest.raises(RegionMismatchError):
        Geometry.decode(Geometry.compute().encode()[:length], DEFAULT_REGION_SIZE)


@given(
    geometries,
    st.sampled_from(FIELDS),
    st.integers(0, (1 << 32) - 1),
)
def test_decode_never_accepts_a_tampered_header(
    geometry: Geometry, field: str, value: int
) -> None:
    """Changing any one field to any other value makes decode raise RegionMismatchError."""
    original = HEADER.unpack(geometry.encode())[FIELD[field]]
    if value == original:
        return
    with pytest.raises(RegionMismatchError):
        Geometry.decode(tampered(geometry, **{field: value}), geometry.region_size)


# --------------------------------------------------------------------------- control block


def test_every_shared_word_has_its_own_cache_line_in_the_control_block() -> None:
    """Each Word starts a distinct 64-byte line after the header, inside the 4 KiB block."""
    lines = [word // LINE for word in Word]
    assert len(set(lines)) == len(lines)
    header_lines = -(-HEADER_SIZE // LINE)
    for word in Word:
        assert word % LINE == 0, word.name
        assert word // LINE >= header_lines, f"{word.name} shares a line with the header"
        assert word + LINE <= CONTROL_SIZE, f"{word.name} is outside the control block"


def test_the_pid_words_sit_beside_their_state_words() -> None:
    """A side's pid (u32) shares the line of its state word (u32), which that side writes."""
    assert FRONT_PID == Word.FRONT_STATE + 4
    assert WORKER_PID == Word.WORKER_STATE + 4
    assert FRONT_PID // LINE == Word.FRONT_STATE // LINE
    assert WORKER_PID // LINE == Word.WORKER_STATE // LINE


def test_futex_words_are_32_bit_aligned_and_counters_64_bit_aligned() -> None:
    """The native layer refuses misaligned atomics; every word offset satisfies both."""
    for word in [*Word, FRONT_PID, WORKER_PID]:
        assert word % 4 == 0
    for word in Word:
        assert word % 8 == 0


# --------------------------------------------------------------------------- kinds, flags


def test_kinds_are_distinct_nonzero_16_bit_values() -> None:
    """A zeroed slot never carries a valid kind; every kind fits the slot's u16 field."""
    values = [int(kind) for kind in Kind]
    assert len(set(values)) == len(values)
    assert frozenset(values) == KINDS
    assert 0 not in KINDS
    assert all(0 < value <= 0xFFFF for value in values)


def test_flag_mask_covers_exactly_the_known_flags() -> None:
    """Any bit outside FLAG_MASK makes a slot invalid."""
    assert FLAG_MASK == Flag.MORE | Flag.END
    assert Flag.MORE & Flag.END == 0
    assert FLAG_MASK <= 0xFFFF
