"""Circular bump allocation in one part of the data arena, for its one writer and one reader.

Theory of operation
-------------------
Each arena part has exactly one writer and one reader.  Both count bytes with free-running
64-bit positions; a position ``p`` lives at byte ``p % size`` of the part.

*Writer.*  ``head`` is where the next allocation may start.  An allocation of ``n`` bytes takes
``a = align(n)`` bytes.  If ``a`` does not fit between ``head % size`` and the end of the part,
the rest of the part is skipped (padding) and the allocation starts at offset 0 -- allocations
are always contiguous, so a reader gets one memoryview per message.  The writer may use
``[freed, freed + size)``, where ``freed`` is the reader's published release position; an
allocation that would pass ``freed + size`` must wait (back-pressure, ``None`` here).

*Reader.*  Messages arrive in the order they were allocated (the ring is FIFO and one writer
allocates and publishes in order), so the reader knows where the next allocation may start:
at its expected position ``p`` if the message fits before the end of the part, or at offset 0
(the writer may always skip the rest of the part; it must when the message does not fit).
Any other offset, or an end past ``freed + size`` (space the writer does not own), is refused
as a broken peer.  The application may finish
with messages in any order: the reader keeps the live allocations in a FIFO and publishes
``freed`` only over the released prefix, so space is never returned while an earlier
allocation is still in use, and never leaked once everything before it is released.

Zero-length messages take no space and carry offset 0.

Worst-case cost: O(1) per allocation; a release pops each allocation once (amortised O(1)).
"""

from __future__ import annotations

from collections import deque
from typing import Final

from zeus.errors import PeerBrokenError

ALIGN: Final = 64
_MASK: Final = ALIGN - 1
U64: Final = (1 << 64) - 1


def align(n: int) -> int:
    """Bytes an allocation of ``n`` bytes takes."""
    return (n + _MASK) & ~_MASK


def placement(pos: int, n: int, size: int) -> int:
    """Free-running start of an ``n``-byte allocation made when the head is at ``pos``."""
    if n == 0:
        return pos
    room = size - pos % size
    return pos + room if align(n) > room else pos


class ArenaWriter:
    """The writer's bookkeeping for one arena part (pure: no memory is touched here)."""

    __slots__ = ("_freed", "_head", "_last", "_prev", "size")

    def __init__(self, size: int) -> None:
        if size <= 0 or size % ALIGN:
            raise ValueError(f"arena size must be a positive multiple of {ALIGN}, got {size}")
        self.size: Final = size
        self._head = 0
        self._freed = 0
        self._last = 0
        self._prev = 0

    @property
    def max_allocation(self) -> int:
        """The largest single allocation: half the part.

        Half guarantees progress: once everything before it is released, an allocation fits
        either before the end of the part or after the wrap, wherever the head is.  (A larger
        one could wait forever behind the padding a wrap leaves.)
        """
        return self.size // 2

    def allocate(self, n: int) -> int | None:
        """Reserve ``n`` bytes; return their offset in the part, or None if not free yet."""
        if n == 0:
            self._prev = self._last = self._head
            return 0
        if n < 0 or n > self.size // 2:
            raise ValueError(f"allocation of {n} bytes; at most half the arena ({self.size // 2})")
        start = placement(self._head, n, self.size)
        end = start + align(n)
        if end - self._freed > self.size:
            return None
        self._prev = self._head
        self._last = start
        self._head = end
        return start % self.size

    def trim_last(self, n: int) -> None:
        """Shrink the most recent allocation to ``n`` bytes before it is published.

        Only valid between ``allocate`` and publishing that allocation.  A trimmed allocation
        that had wrapped stays at offset 0, which the reader accepts (a voluntary skip).
        """
        if n == 0:
            # A zero-length message is placed nowhere: give the whole allocation back.
            self._head = self._prev
            return
        end = self._last + align(n)
        if end > self._head:
            raise ValueError("trim_last cannot grow an allocation")
        self._head = end

    def fits(self, n: int) -> bool:
        """Whether ``allocate(n)`` would succeed now."""
        if n == 0:
            return True
        return placement(self._head, n, self.size) + align(n) - self._freed <= self.size

    def update_freed(self, freed: int) -> bool:
        """Take the reader's published release position; return True if space came back.

        The value was read from shared memory: it must not run backwards nor pass the head.
        """
        if freed == self._freed:
            return False
        if freed < self._freed or freed > self._head:
            raise PeerBrokenError(
                f"arena release position {freed} outside [{self._freed}, {self._head}]"
            )
        self._freed = freed
        return True

    @property
    def in_use(self) -> int:
        """Bytes allocated and not yet released by the reader (padding included)."""
        return self._head - self._freed

    @property
    def head(self) -> int:
        """Free-running position of the next allocation."""
        return self._head

    @property
    def freed(self) -> int:
        """The last release position taken from the reader."""
        return self._freed

    def __repr__(self) -> str:
        return f"<ArenaWriter size={self.size} in_use={self.in_use}>"


class Lease:
    """One live allocation on the reader's side; released exactly once."""

    __slots__ = ("end", "released", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.released = False

    def __repr__(self) -> str:
        return f"<Lease [{self.start}, {self.end}) released={self.released}>"


class ArenaReader:
    """The reader's bookkeeping for one arena part: check placements, release in any order."""

    __slots__ = ("_expected", "_freed", "_live", "size")

    def __init__(self, size: int) -> None:
        if size <= 0 or size % ALIGN:
            raise ValueError(f"arena size must be a positive multiple of {ALIGN}, got {size}")
        self.size: Final = size
        self._expected = 0
        self._freed = 0
        self._live: deque[Lease] = deque()

    def accept(self, offset: int, length: int) -> Lease | None:
        """Check a message's placement and start a lease on its bytes.

        Returns None for a zero-length message (no space).  Raises PeerBrokenError if the
        writer could not have put the message there.
        """
        if length == 0:
            if offset != 0:
                raise PeerBrokenError(f"zero-length message with offset {offset}")
            return None
        if length > self.size:
            raise PeerBrokenError(f"message of {length} bytes in an arena of {self.size}")
        pos = self._expected
        room = self.size - pos % self.size
        if offset == pos % self.size and align(length) <= room:
            start = pos
        elif offset == 0:
            start = pos + room  # the writer skipped the rest of the part
        else:
            raise PeerBrokenError(
                f"message at offset {offset}, expected {pos % self.size} or 0 "
                f"(length {length}, arena {self.size})"
            )
        end = start + align(length)
        if end - self._freed > self.size or end > U64:
            raise PeerBrokenError(f"message ends at {end}, past released {self._freed}+size")
        self._expected = end
        lease = Lease(start, end)
        self._live.append(lease)
        return lease

    def release(self, lease: Lease) -> int | None:
        """Finish with a lease; return the new release position if it moved, else None."""
        if lease.released:
            return None
        lease.released = True
        live = self._live
        if live[0] is not lease:
            return None
        while live and live[0].released:
            live.popleft()
        freed = live[0].start if live else self._expected
        self._freed = freed
        return freed

    @property
    def live(self) -> int:
        """Number of leases not yet released or still behind an unreleased one."""
        return len(self._live)

    @property
    def freed(self) -> int:
        """The release position (what the writer may reuse up to, plus the size)."""
        return self._freed

    def __repr__(self) -> str:
        return f"<ArenaReader size={self.size} live={len(self._live)} freed={self._freed}>"
