"""Index arithmetic and validation for one single-producer/single-consumer ring.

Theory of operation
-------------------
A ring has ``capacity`` slots (a power of two) and two free-running u64 counters in shared
memory: ``head`` (messages published; written only by the producer) and ``tail`` (messages
consumed; written only by the consumer).  Slot ``i`` of the sequence lives at index
``i & (capacity - 1)``.  The ring holds ``head - tail`` messages; it is empty when they are
equal and full when the difference is ``capacity``.

Each side keeps its own counter in a local variable and never reads it back from memory, and
caches the last value it saw of the peer's counter, reloading it only when the cache says the
ring is empty (consumer) or full (producer) -- the rigtorp/SPSCQueue trick that keeps the
peer's cache line from bouncing.

Every value loaded from the peer is checked: the peer's counter may only move forward, and
never past what the protocol allows (``tail <= head <= tail + capacity``).  A violation raises
PeerBrokenError; the counters are 64-bit and never wrap in the life of a channel.
"""

from __future__ import annotations

from typing import Final

from zeus.errors import PeerBrokenError


class RingProducer:
    """The producer's view: its own head, a cached copy of the consumer's tail."""

    __slots__ = ("capacity", "head", "mask", "tail")

    def __init__(self, capacity: int) -> None:
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two, got {capacity}")
        self.capacity: Final = capacity
        self.mask: Final = capacity - 1
        self.head = 0
        self.tail = 0

    def full(self) -> bool:
        """Whether the cached tail says there is no free slot."""
        return self.head - self.tail >= self.capacity

    def update_tail(self, tail: int) -> None:
        """Take a freshly loaded consumer tail, after checking it."""
        if tail < self.tail or tail > self.head:
            raise PeerBrokenError(f"ring tail {tail} outside [{self.tail}, {self.head}]")
        self.tail = tail

    def __repr__(self) -> str:
        return f"<RingProducer {self.head - self.tail}/{self.capacity} head={self.head}>"


class RingConsumer:
    """The consumer's view: its own tail, a cached copy of the producer's head."""

    __slots__ = ("capacity", "head", "mask", "tail")

    def __init__(self, capacity: int) -> None:
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two, got {capacity}")
        self.capacity: Final = capacity
        self.mask: Final = capacity - 1
        self.head = 0
        self.tail = 0

    def empty(self) -> bool:
        """Whether the cached head says there is nothing to read."""
        return self.head == self.tail

    def update_head(self, head: int) -> None:
        """Take a freshly loaded producer head, after checking it."""
        if head < self.head or head - self.tail > self.capacity:
            raise PeerBrokenError(
                f"ring head {head} outside [{self.head}, {self.tail + self.capacity}]"
            )
        self.head = head

    def __repr__(self) -> str:
        return f"<RingConsumer {self.head - self.tail}/{self.capacity} tail={self.tail}>"
