"""The byte layout of a channel region: geometry, control block words, slot format, kinds.

Theory of operation
-------------------
A region is one shared mapping per worker::

    +---------------------------+ 0
    |  control block (4 KiB)    |  header (written once by the front), then one 64-byte line
    +---------------------------+  per shared word, each with exactly one writer
    |  request ring             |  front -> worker, ``slots`` x 32-byte slots
    +---------------------------+
    |  response ring            |  worker -> front
    +---------------------------+ (4 KiB aligned)
    |  request arena            |  written by the front only
    +---------------------------+
    |  response arena           |  written by the worker only
    +---------------------------+ region_size

Every offset here is relative to the start of the region.  All integers are little-endian.
This module is pure: it computes and checks numbers and never touches memory it was not handed.
PROTOCOL.md is the normative description; the constants below are its source of truth.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from zeus.errors import RegionMismatchError

MAGIC = int.from_bytes(b"ZEUSCHAN", "little")
VERSION = 1
CONTROL_SIZE = 4096
LINE = 64
SLOT_SIZE = 32
ARENA_ALIGN = 64
PAGE = 4096

DEFAULT_REGION_SIZE = 64 * 1024 * 1024
DEFAULT_SLOTS = 1024
MIN_SLOTS = 2
MAX_SLOTS = 1 << 20
MIN_ARENA = 64 * 1024

# --- header (line 0 and 1): written by the front before the worker starts, then read-only ---
_HEADER = struct.Struct("<QIIQIIQQQQQQ")
# magic, version, control_size, region_size, slots, slot_size,
# req_ring, resp_ring, req_arena, req_arena_size, resp_arena, resp_arena_size


def _line(n: int) -> int:
    return n * LINE


class Word(enum.IntEnum):
    """Offsets of the shared words in the control block; each sits alone on its cache line.

    The comment after each names its only writer.  A side never reads back a word only it
    writes: it keeps its own copy.
    """

    REQ_HEAD = _line(2)  # front: request-ring messages published (u64, free-running)
    REQ_TAIL = _line(3)  # worker: request-ring messages consumed (u64)
    RESP_HEAD = _line(4)  # worker: response-ring messages published (u64)
    RESP_TAIL = _line(5)  # front: response-ring messages consumed (u64)
    REQ_ARENA_FREED = _line(6)  # worker: request-arena bytes released, free-running (u64)
    RESP_ARENA_FREED = _line(7)  # front: response-arena bytes released (u64)
    FRONT_SLEEP = _line(8)  # front: sleep word -- epoch plus ASLEEP/DOORBELL/WANT_* bits (u32)
    FRONT_WAKE = _line(9)  # worker: wake sequence the front sleeps on (u32 futex word)
    WORKER_SLEEP = _line(10)  # worker: sleep word, as FRONT_SLEEP (u32)
    WORKER_WAKE = _line(11)  # front: wake sequence the worker sleeps on (u32 futex word)
    FRONT_STATE = _line(12)  # front: State (u32); front pid at +4 (u32)
    WORKER_STATE = _line(13)  # worker: State (u32); worker pid at +4 (u32)
    WORKER_HEARTBEAT = _line(14)  # worker: heartbeat counter (u64), bumped once a second
    FRONT_COUNTERS = _line(15)  # front: messages sent (u64), bytes sent (+8, u64)
    WORKER_COUNTERS = _line(16)  # worker: messages sent (u64), bytes sent (+8, u64)


FRONT_PID = Word.FRONT_STATE + 4
WORKER_PID = Word.WORKER_STATE + 4


class State(enum.IntEnum):
    """Lifecycle of one side of the channel, published in its state word."""

    NEW = 0
    OPEN = 1
    CLOSED = 2


class Side(enum.Enum):
    """Which end of a region a channel is.  The front creates; the worker attaches."""

    FRONT = "front"
    WORKER = "worker"


class Kind(enum.IntEnum):
    """Message kinds carried by a slot.

    DATA is the plain channel's payload.  The HTTP kinds carry the Zeus message codec
    (zeus.core.codec); CANCEL carries no data.
    """

    DATA = 1
    REQUEST_HEAD = 2
    REQUEST_BODY = 3
    RESPONSE_HEAD = 4
    RESPONSE_BODY = 5
    CANCEL = 6


KINDS = frozenset(int(k) for k in Kind)


class Flag(enum.IntFlag):
    """Slot flag bits.  Unknown bits make a slot invalid."""

    MORE = 0x1  # another chunk of the same logical message follows
    END = 0x2  # the last message of this ID in this direction


FLAG_MASK = int(Flag.MORE | Flag.END)


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where everything lives in a region of ``region_size`` bytes with ``slots`` per ring."""

    region_size: int
    slots: int
    req_ring: int
    resp_ring: int
    req_arena: int
    req_arena_size: int
    resp_arena: int
    resp_arena_size: int

    @classmethod
    def compute(
        cls, region_size: int = DEFAULT_REGION_SIZE, slots: int = DEFAULT_SLOTS
    ) -> Geometry:
        """Lay out a region; raise ValueError for a size or slot count that cannot work."""
        if slots < MIN_SLOTS or slots > MAX_SLOTS or slots & (slots - 1):
            raise ValueError(
                f"slots must be a power of two in [{MIN_SLOTS}, {MAX_SLOTS}], got {slots}"
            )
        if region_size % PAGE:
            raise ValueError(f"region size must be a multiple of {PAGE}, got {region_size}")
        ring_bytes = slots * SLOT_SIZE
        req_ring = CONTROL_SIZE
        resp_ring = req_ring + ring_bytes
        arena = -(-(resp_ring + ring_bytes) // PAGE) * PAGE
        total_arena = region_size - arena
        if total_arena < 2 * MIN_ARENA:
            raise ValueError(
                f"region of {region_size} bytes leaves {max(total_arena, 0)} for the arenas "
                f"with {slots} slots; need at least {2 * MIN_ARENA}"
            )
        half = (total_arena // 2) // PAGE * PAGE
        return cls(
            region_size=region_size,
            slots=slots,
            req_ring=req_ring,
            resp_ring=resp_ring,
            req_arena=arena,
            req_arena_size=half,
            resp_arena=arena + half,
            resp_arena_size=total_arena - half,
        )

    def encode(self) -> bytes:
        """The header bytes the front writes at offset 0."""
        return _HEADER.pack(
            MAGIC,
            VERSION,
            CONTROL_SIZE,
            self.region_size,
            self.slots,
            SLOT_SIZE,
            self.req_ring,
            self.resp_ring,
            self.req_arena,
            self.req_arena_size,
            self.resp_arena,
            self.resp_arena_size,
        )

    @classmethod
    def decode(cls, header: bytes | memoryview, actual_size: int) -> Geometry:
        """Read and check a header; raise RegionMismatchError naming the first thing wrong.

        ``actual_size`` is the size of the mapping the reader really has: a header that claims
        more than that is refused before any offset from it is used.
        """
        if len(header) < _HEADER.size:
            raise RegionMismatchError(f"region of {len(header)} bytes has no header")
        (
            magic,
            version,
            control,
            region_size,
            slots,
            slot_size,
            req_ring,
            resp_ring,
            req_arena,
            req_arena_size,
            resp_arena,
            resp_arena_size,
        ) = _HEADER.unpack_from(header)
        if magic != MAGIC:
            raise RegionMismatchError(f"not a Zeus channel region (magic {magic:#018x})")
        if version != VERSION:
            raise RegionMismatchError(
                f"channel protocol version {version}, this Zeus speaks {VERSION}"
            )
        if control != CONTROL_SIZE or slot_size != SLOT_SIZE:
            raise RegionMismatchError(
                f"control block {control} / slot size {slot_size}, expected "
                f"{CONTROL_SIZE} / {SLOT_SIZE}"
            )
        if region_size != actual_size:
            raise RegionMismatchError(
                f"header says {region_size} bytes but the region has {actual_size}"
            )
        try:
            expected = cls.compute(region_size, slots)
        except ValueError as exc:
            raise RegionMismatchError(f"bad geometry in header: {exc}") from None
        found = cls(
            region_size,
            slots,
            req_ring,
            resp_ring,
            req_arena,
            req_arena_size,
            resp_arena,
            resp_arena_size,
        )
        if found != expected:
            raise RegionMismatchError(f"geometry {found} does not match the layout {expected}")
        return found

    def ring(self, inbound_to: Side) -> int:
        """Offset of the ring whose consumer is ``inbound_to``."""
        return self.req_ring if inbound_to is Side.WORKER else self.resp_ring


HEADER_SIZE = _HEADER.size
