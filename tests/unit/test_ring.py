"""Index bookkeeping of a single-producer/single-consumer ring.

The producer owns ``head``, the consumer owns ``tail``; each caches the other's counter and
checks every value it loads from shared memory before believing it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeus.core.ring import RingConsumer, RingProducer
from zeus.errors import PeerBrokenError

U64_MAX = (1 << 64) - 1


@pytest.mark.parametrize("capacity", [0, -4, 3, 6, 1000])
def test_capacity_must_be_a_power_of_two(capacity: int) -> None:
    """Both ends refuse a capacity that is not a positive power of two."""
    with pytest.raises(ValueError):
        RingProducer(capacity)
    with pytest.raises(ValueError):
        RingConsumer(capacity)


@pytest.mark.parametrize("capacity", [1, 2, 1024, 1 << 20])
def test_the_mask_maps_a_counter_to_its_slot(capacity: int) -> None:
    """Counter ``i`` lives in slot ``i & mask``, with ``mask = capacity - 1``."""
    assert RingProducer(capacity).mask == capacity - 1
    assert RingConsumer(capacity).mask == capacity - 1


def test_a_new_ring_is_empty_and_not_full() -> None:
    """Both counters start at zero."""
    assert RingConsumer(4).empty()
    assert not RingProducer(4).full()


def test_producer_is_full_after_capacity_messages_until_the_tail_moves() -> None:
    """Full means ``head - tail == capacity`` by the producer's cached tail."""
    producer = RingProducer(4)
    for _ in range(4):
        assert not producer.full()
        producer.head += 1  # publish one message
    assert producer.full()
    producer.update_tail(1)
    assert not producer.full()


def test_consumer_is_empty_until_it_loads_a_newer_head() -> None:
    """Empty means ``head == tail`` by the consumer's cached head."""
    consumer = RingConsumer(4)
    consumer.update_head(2)
    assert not consumer.empty()
    consumer.tail += 2
    assert consumer.empty()


def test_producer_accepts_a_tail_anywhere_between_its_cache_and_its_head() -> None:
    """The consumer may have taken anything from nothing new to everything published."""
    producer = RingProducer(4)
    producer.head = 3
    producer.update_tail(0)
    producer.update_tail(3)
    assert producer.tail == 3


@pytest.mark.parametrize(
    ("tail", "why"), [(1, "backwards"), (6, "past the head"), (U64_MAX, "garbage")]
)
def test_producer_rejects_a_tail_the_consumer_could_not_have_published(
    tail: int, why: str
) -> None:
    """A tail that runs backwards or passes the head is the consumer's fault."""
    producer = RingProducer(4)
    producer.head = 5
    producer.update_tail(2)
    with pytest.raises(PeerBrokenError):
        producer.update_tail(tail)
    assert producer.tail == 2, f"a rejected tail ({why}) must not be cached"


def test_consumer_accepts_a_head_up_to_a_full_ring() -> None:
    """The producer may have published up to ``capacity`` messages past the tail."""
    consumer = RingConsumer(4)
    consumer.tail = 2
    consumer.head = 2
    consumer.update_head(6)
    assert consumer.head == 6


@pytest.mark.parametrize(
    ("head", "why"), [(3, "backwards"), (7, "past tail + capacity"), (U64_MAX, "garbage")]
)
def test_consumer_rejects_a_head_the_producer_could_not_have_published(
    head: int, why: str
) -> None:
    """A head that runs backwards or overfills the ring is the producer's fault."""
    consumer = RingConsumer(4)
    consumer.update_head(4)
    consumer.tail = 2
    with pytest.raises(PeerBrokenError):
        consumer.update_head(head)
    assert consumer.head == 4, f"a rejected head ({why}) must not be cached"


@given(
    head=st.integers(0, 1 << 40),
    behind=st.integers(0, 1 << 40),
    value=st.integers(0, U64_MAX) | st.integers(0, 1 << 41),
)
def test_producer_takes_exactly_the_tails_in_its_window(head: int, behind: int, value: int) -> None:
    """update_tail accepts ``cached_tail <= tail <= head`` and raises for anything else."""
    producer = RingProducer(1024)
    producer.head = head
    producer.tail = cached = max(0, head - behind)
    if cached <= value <= head:
        producer.update_tail(value)
        assert producer.tail == value
    else:
        with pytest.raises(PeerBrokenError):
            producer.update_tail(value)


@given(
    tail=st.integers(0, 1 << 40),
    ahead=st.integers(0, 1024),
    value=st.integers(0, U64_MAX) | st.integers(0, 1 << 41),
)
def test_consumer_takes_exactly_the_heads_in_its_window(tail: int, ahead: int, value: int) -> None:
    """update_head accepts ``cached_head <= head <= tail + capacity`` and raises otherwise."""
    consumer = RingConsumer(1024)
    consumer.tail = tail
    consumer.head = cached = tail + ahead
    if cached <= value <= tail + 1024:
        consumer.update_head(value)
        assert consumer.head == value
    else:
        with pytest.raises(PeerBrokenError):
            consumer.update_head(value)


@settings(max_examples=300)
@given(
    capacity_log2=st.integers(0, 4),
    ops=st.lists(st.sampled_from(["send", "recv"]), max_size=120),
)
def test_producer_and_consumer_pass_messages_in_fifo_order(
    capacity_log2: int, ops: list[str]
) -> None:
    """Driven as two processes sharing two words, the ring is a bounded FIFO.

    The producer reloads the tail only when its cache says full, the consumer reloads the head
    only when its cache says empty; a send fails only when ``capacity`` messages are really in
    flight, a receive only when none is, and no unread slot is ever overwritten.
    """
    capacity = 1 << capacity_log2
    producer, consumer = RingProducer(capacity), RingConsumer(capacity)
    shared = {"head": 0, "tail": 0}
    slots: list[int | None] = [None] * capacity
    sent = received = 0
    for op in ops:
        if op == "send":
            if producer.full():
                producer.update_tail(shared["tail"])
            if producer.full():
                assert sent - received == capacity
                continue
            index = producer.head & producer.mask
            assert slots[index] is None, "overwrote a slot the consumer had not read"
            slots[index] = sent
            sent += 1
            producer.head += 1
            shared["head"] = producer.head
        else:
            if consumer.empty():
                consumer.update_head(shared["head"])
            if consumer.empty():
                assert sent == received
                continue
            index = consumer.tail & consumer.mask
            assert slots[index] == received, "messages out of order"
            slots[index] = None
            received += 1
            consumer.tail += 1
            shared["tail"] = consumer.tail
        assert 0 <= shared["head"] - shared["tail"] <= capacity


def test_repr_shows_occupancy() -> None:
    """A ring end's repr tells how full it believes the ring is."""
    producer = RingProducer(8)
    producer.head = 3
    assert "3/8" in repr(producer)
    consumer = RingConsumer(8)
    consumer.update_head(5)
    assert "5/8" in repr(consumer)
