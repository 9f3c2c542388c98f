"""zeus._native.Endpoint, the channel's hot path, driven in one process.

Both ends of a channel live in this process: the front on ``Region.create()`` and the worker
on a second mapping of the same memfd (``Region.attach(os.dup(fd))``).  Every shared word
either end writes is therefore visible to the test, which plays the hostile peer by writing
the words and slots the worker owns, and observes wake-ups in the wake words themselves.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from zeus import Channel, Flag, Kind, Message, PeerBrokenError, PeerLostError, Region, WouldBlock
from zeus.core.layout import State, Word

SIZE = 256 * 1024
SLOTS = 16
SLOT = struct.Struct("<QHHIQQ")  # id, kind, flags, length, offset, reserved

ASLEEP = 1  # sleep word bits, as PROTOCOL.md and zeus.channel define them
DOORBELL = 2
WANT_DATA = 4
WANT_SPACE = 8
EPOCH = 16


@dataclass
class Pair:
    """A front and a worker channel over the same region, in this process."""

    front_region: Region
    worker_region: Region
    front: Channel
    worker: Channel

    @property
    def arena(self) -> int:
        """Size of the request arena (the front's out part)."""
        return self.front_region.geometry.req_arena_size


@contextlib.contextmanager
def channel_pair(*, worker_rings_doorbell: bool = False, **options: object) -> Iterator[Pair]:
    """Create a region, attach it a second time, and open both ends on it."""
    front_region = Region.create(size=SIZE, slots=SLOTS)
    bell = os.dup(front_region.doorbell_fd) if worker_rings_doorbell else None  # type: ignore[arg-type]
    worker_region = Region.attach(os.dup(front_region.fd), bell)
    front = Channel(front_region, peer_pid=os.getpid(), **options)  # type: ignore[arg-type]
    worker = Channel(worker_region, peer_pid=os.getpid(), **options)  # type: ignore[arg-type]
    try:
        yield Pair(front_region, worker_region, front, worker)
    finally:
        worker.close()
        front.close()
        worker_region.close()
        front_region.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    with channel_pair() as p:
        yield p


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        time.sleep(0.001)  # poll interval, not a handshake: the predicate is the handshake


# --------------------------------------------------------------------------- allocation


def test_send_and_reserve_refuse_more_than_half_the_arena(pair: Pair) -> None:
    """The C writer applies the same rule as ArenaWriter: at most size // 2 per message."""
    ep = pair.front._ep
    half = pair.arena // 2
    with pytest.raises(ValueError, match="half"):
        ep.send(1, Kind.DATA, 0, bytes(half + 1))
    with pytest.raises(ValueError, match="half"):
        ep.reserve(half + 1)
    assert not ep.reserved
    assert ep.state()["out_head"] == 0
    with pytest.raises(WouldBlock):
        pair.worker.recv_nowait()  # nothing was published
    assert ep.send(1, Kind.DATA, 0, bytes(half)) is True
    with pair.worker.recv_nowait() as msg:
        assert len(msg.data) == half


BUG_OVERSIZE_WHEN_FULL = (
    "_native.c Endpoint_send / Endpoint_reserve: ring_room() is checked before arena_alloc(), "
    "so with the ring full a send of more than half the arena returns False and reserve "
    "returns -1 (back-pressure) instead of raising ValueError: a caller that waits for space "
    "and retries learns of its mistake only later (reserve(2**64 - 1) also just says 'full')"
)


@pytest.mark.parametrize("call", ["send", "reserve"])
def test_more_than_half_the_arena_is_refused_even_when_the_ring_is_full(
    pair: Pair, call: str
) -> None:
    """A size no arena state can satisfy is the caller's error, whatever the back-pressure."""
    ep = pair.front._ep
    for i in range(SLOTS):
        pair.front.send_nowait(i, b"x")
    n = pair.arena // 2 + 1
    try:
        result = ep.send(1, Kind.DATA, 0, bytes(n)) if call == "send" else ep.reserve(n)
    except ValueError:
        return
    raise AssertionError(f"{call} of {n} bytes with a full ring returned {result!r}")


def test_max_chunk_is_capped_at_half_the_arena() -> None:
    """Whatever the caller asks for, a channel never makes a chunk over half its out part."""
    with channel_pair(max_chunk=1 << 40) as p:
        assert p.front.max_chunk == p.arena // 2
        assert p.worker.max_chunk == p.worker_region.geometry.resp_arena_size // 2


def test_half_the_arena_fits_once_everything_is_released_wherever_the_head_is() -> None:
    """Move the head through many positions; after each, a size // 2 message goes out."""
    with channel_pair(max_chunk=1 << 40) as p:
        front, worker = p.front, p.worker
        half = p.arena // 2
        rng = random.Random(7)
        for i in range(1500):
            front.send_nowait(i, bytes(rng.randrange(0, 4096)))
            worker.recv_nowait().release()
            front.send_nowait(i, bytes(half))  # WouldBlock here would be the bug
            worker.recv_nowait().release()


# --------------------------------------------------------------------------- refresh


def test_refresh_returns_the_peer_words_and_whether_any_moved(pair: Pair) -> None:
    """refresh() -> (peer_head, peer_tail, peer_freed, changed); changed only once per news."""
    front, worker = pair.front, pair.worker
    ep = front._ep
    assert ep.refresh() == (0, 0, 0, False)
    worker.send_nowait(1, b"response")
    assert ep.refresh() == (1, 0, 0, True)
    assert ep.refresh() == (1, 0, 0, False)
    front.send_nowait(2, b"request")
    msg = worker.recv_nowait()
    assert ep.refresh() == (1, 1, 0, True)
    msg.release()
    assert ep.refresh() == (1, 1, 64, True)
    assert ep.refresh() == (1, 1, 64, False)


# --------------------------------------------------------------------------- a broken peer


def forge_slot(
    pair: Pair,
    *,
    kind: int = Kind.DATA,
    flags: int = 0,
    length: int = 0,
    offset: int = 0,
    reserved: int = 0,
) -> None:
    """Write response-ring slot 0 with raw bytes (as a hostile worker could) and publish it."""
    ring = pair.worker_region.geometry.resp_ring
    SLOT.pack_into(pair.worker_region.mm, ring, 1, kind, flags, length, offset, reserved)
    pair.worker_region.memory.store_u64(Word.RESP_HEAD, 1)


@pytest.mark.parametrize("flags", [Flag.MORE, Flag.END, 0])
def test_more_or_end_alone_is_a_valid_slot(pair: Pair, flags: int) -> None:
    """MORE (a chunk follows) and END (last of this ID) are each valid on their own."""
    forge_slot(pair, flags=flags)
    with pair.front.recv_nowait() as msg:
        assert msg.flags == flags
        assert msg.more == bool(flags & Flag.MORE)
        assert msg.end == bool(flags & Flag.END)


def test_more_and_end_together_is_a_broken_peer(pair: Pair) -> None:
    """'Another chunk follows' and 'this is the last' contradict each other."""
    forge_slot(pair, flags=Flag.MORE | Flag.END)
    with pytest.raises(PeerBrokenError, match=r"flags 0x3\b"):
        pair.front.recv_nowait()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"flags": 0x4}, r"kind 1, flags 0x4, reserved 0 invalid", id="flags"),
        pytest.param({"flags": 0x8000}, r"flags 0x8000, reserved 0 invalid", id="high-flag"),
        pytest.param(
            {"reserved": 12345678901}, r"flags 0x0, reserved 12345678901 invalid", id="reserved"
        ),
        pytest.param({"kind": 0xBEEF}, r"kind 48879, flags 0x0", id="kind"),
        pytest.param(
            {"length": 64, "offset": 128}, r"message at offset 128, expected 0 or 0", id="offset"
        ),
    ],
)
def test_the_broken_peer_error_names_the_bad_values(
    pair: Pair, fields: dict[str, int], expected: str
) -> None:
    """Flags print as 0x.., reserved and everything else as decimal; no format directive
    is left in the message."""
    forge_slot(pair, **fields)
    with pytest.raises(PeerBrokenError) as caught:
        pair.front.recv_nowait()
    message = str(caught.value)
    assert re.search(expected, message), message
    assert "%" not in message


U64_MAX = (1 << 64) - 1

# (what the hostile worker corrupts, how to do it, how to put it back, the call that notices)
CORRUPTIONS: dict[str, tuple[Callable[[Pair], None], Callable[[Pair], None], str]] = {
    "slot": (
        lambda p: forge_slot(p, kind=0xBEEF),
        lambda p: forge_slot(p),  # a valid slot now: still refused
        "recv",
    ),
    "head": (
        lambda p: p.worker_region.memory.store_u64(Word.RESP_HEAD, U64_MAX),
        lambda p: p.worker_region.memory.store_u64(Word.RESP_HEAD, 0),
        "refresh",
    ),
    "tail": (
        lambda p: p.worker_region.memory.store_u64(Word.REQ_TAIL, 5),
        lambda p: p.worker_region.memory.store_u64(Word.REQ_TAIL, 0),
        "refresh",
    ),
    "freed": (
        lambda p: p.worker_region.memory.store_u64(Word.REQ_ARENA_FREED, 4096),
        lambda p: p.worker_region.memory.store_u64(Word.REQ_ARENA_FREED, 0),
        "refresh",
    ),
}

LATER_CALLS: dict[str, Callable[[Pair], object]] = {
    "ep.send": lambda p: p.front._ep.send(9, Kind.DATA, 0, b"later"),
    "ep.reserve": lambda p: p.front._ep.reserve(8),
    "ep.commit": lambda p: p.front._ep.commit(9, Kind.DATA, 0, 0),
    "ep.recv": lambda p: p.front._ep.recv(),
    "ep.spin_recv": lambda p: p.front._ep.spin_recv(1000),
    "ep.refresh": lambda p: p.front._ep.refresh(),
    "send_nowait": lambda p: p.front.send_nowait(9, b"later"),
    "send": lambda p: p.front.send(9, b"later", timeout=1.0),
    "reserve_nowait": lambda p: p.front.reserve_nowait(8),
    "recv_nowait": lambda p: p.front.recv_nowait(),
    "recv": lambda p: p.front.recv(timeout=1.0),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_broken_endpoint_refuses_everything_with_the_first_reason(
    pair: Pair, corruption: str
) -> None:
    """PeerBrokenError latches: once raised, every later operation raises it again with the
    same message -- even after the hostile peer put the bad value back."""
    corrupt, repair, notices = CORRUPTIONS[corruption]
    corrupt(pair)
    with pytest.raises(PeerBrokenError) as first:
        pair.front._ep.recv() if notices == "recv" else pair.front._ep.refresh()
    reason = str(first.value)
    repair(pair)
    out_head = pair.front._ep.state()["out_head"]
    for name, call in LATER_CALLS.items():
        with pytest.raises(PeerBrokenError) as later:
            call(pair)
        assert str(later.value) == reason, name
    assert pair.front._ep.state()["out_head"] == out_head, "a message went out"
    assert pair.worker_region.memory.load_u64(Word.REQ_HEAD) == out_head


def test_a_broken_channel_still_closes_and_wakes_its_peer(pair: Pair) -> None:
    """close() of a channel whose peer broke the protocol succeeds: it publishes CLOSED,
    wakes the peer (wake_peer works on a broken endpoint) and lets go of everything."""
    forge_slot(pair, kind=0xBEEF)
    with pytest.raises(PeerBrokenError):
        pair.front.recv_nowait()
    seq = pair.worker_region.memory.load_u32(Word.WORKER_WAKE)
    pair.front.close()
    assert pair.front.closed
    assert pair.worker_region.memory.load_u32(Word.FRONT_STATE) == State.CLOSED
    assert pair.worker_region.memory.load_u32(Word.WORKER_WAKE) != seq
    assert pair.front._pidfd is None
    with pytest.raises(PeerLostError):
        pair.worker.recv_nowait()


# --------------------------------------------------------------------------- waking


def announce_sleep(ch: Channel, want: int, *, doorbell: bool = False) -> int:
    """Have ``ch`` announce sleep (as a blocking wait does); return the sequence it sleeps on.

    prepare_sleep() refuses (None) while there is news the caller has not looked at yet;
    the second attempt has seen it.
    """
    for _ in range(3):
        seq = ch.prepare_sleep(doorbell=doorbell, want=want)
        if seq is not None:
            return seq
    raise AssertionError("prepare_sleep kept finding news")


def publish_message(p: Pair, held: list[Message]) -> None:
    p.front.send_nowait(1, b"request")


def publish_tail(p: Pair, held: list[Message]) -> None:
    held.append(p.front.recv_nowait())  # consumes a slot: the response-ring tail moves


def publish_release(p: Pair, held: list[Message]) -> None:
    held.pop().release()  # the response-arena release position moves


# event -> (what the worker does first, what the front publishes, the news it is)
EVENTS: dict[str, tuple[Callable[[Pair, list[Message]], None], int]] = {
    "message": (publish_message, WANT_DATA),
    "ring-tail": (publish_tail, WANT_SPACE),
    "arena-release": (publish_release, WANT_SPACE),
}


def prepare_event(p: Pair, event: str, held: list[Message]) -> None:
    """Set the stage so that the event publishes exactly one word."""
    if event in ("ring-tail", "arena-release"):
        p.worker.send_nowait(1, b"response")
    if event == "arena-release":
        held.append(p.front.recv_nowait())


@pytest.mark.parametrize("event", sorted(EVENTS))
@pytest.mark.parametrize(
    "want",
    [0, WANT_DATA, WANT_SPACE, WANT_DATA | WANT_SPACE],
    ids=["none", "data", "space", "both"],
)
def test_a_publisher_wakes_a_sleeper_only_for_news_it_wants(
    pair: Pair, event: str, want: int
) -> None:
    """Sleep word bits: 1 asleep, 4 wants data, 8 wants space.  A message wakes a sleeper
    that wants data; a ring-tail or arena-release publication wakes one that wants space;
    nothing else wakes it."""
    held: list[Message] = []
    prepare_event(pair, event, held)
    seq = announce_sleep(pair.worker, want)
    assert pair.worker_region.memory.load_u32(Word.WORKER_SLEEP) & 0xF == ASLEEP | want
    wakes = pair.front.statistics().wakes_sent
    publish, news = EVENTS[event]
    publish(pair, held)
    woken = bool(want & news)
    assert (pair.worker_region.memory.load_u32(Word.WORKER_WAKE) != seq) == woken
    assert pair.front.statistics().wakes_sent - wakes == int(woken)
    pair.worker.finish_sleep()
    for msg in held:
        msg.release()


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_a_peer_that_is_awake_is_not_woken(pair: Pair, event: str) -> None:
    """Without the asleep bit the want bits mean nothing: no wake word bump, no futex call."""
    held: list[Message] = []
    prepare_event(pair, event, held)
    announce_sleep(pair.worker, WANT_DATA | WANT_SPACE)
    pair.worker.finish_sleep()
    assert pair.worker_region.memory.load_u32(Word.WORKER_SLEEP) & 0xF == 0
    seq = pair.worker_region.memory.load_u32(Word.WORKER_WAKE)
    wakes = pair.front.statistics().wakes_sent
    EVENTS[event][0](pair, held)
    assert pair.worker_region.memory.load_u32(Word.WORKER_WAKE) == seq
    assert pair.front.statistics().wakes_sent == wakes
    for msg in held:
        msg.release()


def test_a_sleeper_is_woken_once_per_announcement(pair: Pair) -> None:
    """Several messages during one sleep wake it once; a new announcement (next epoch) is
    woken again."""
    memory = pair.worker_region.memory
    first = announce_sleep(pair.worker, WANT_DATA)
    epoch = memory.load_u32(Word.WORKER_SLEEP) & ~0xF
    for i in range(3):
        pair.front.send_nowait(i, b"x")
    assert memory.load_u32(Word.WORKER_WAKE) == first + 1
    pair.worker.finish_sleep()
    for _ in range(3):
        pair.worker.recv_nowait().release()
    second = announce_sleep(pair.worker, WANT_DATA)
    assert memory.load_u32(Word.WORKER_SLEEP) & ~0xF == epoch + EPOCH
    pair.front.send_nowait(3, b"x")
    pair.front.send_nowait(4, b"x")
    assert memory.load_u32(Word.WORKER_WAKE) == second + 1
    assert pair.front.statistics().wakes_sent == 2


def test_deferred_wakes_wake_a_sleeper_once_per_flush(pair: Pair) -> None:
    """With defer_wakes, messages published to a sleeper do not wake it; flush_wakes does,
    once for the batch; a flush with nothing published, or to a peer awake, wakes nobody."""
    memory = pair.worker_region.memory
    pair.front.defer_wakes()
    seq = announce_sleep(pair.worker, WANT_DATA)
    for i in range(3):
        pair.front.send_nowait(i, b"x")
    assert memory.load_u32(Word.WORKER_WAKE) == seq  # not yet
    assert pair.front.statistics().wakes_sent == 0
    pair.front.flush_wakes()
    assert memory.load_u32(Word.WORKER_WAKE) == seq + 1
    pair.front.flush_wakes()  # nothing new published
    assert pair.front.statistics().wakes_sent == 1
    pair.worker.finish_sleep()
    for _ in range(3):
        pair.worker.recv_nowait().release()
    pair.front.send_nowait(3, b"x")  # published to a peer awake
    pair.front.flush_wakes()
    assert pair.front.statistics().wakes_sent == 1
    pair.worker.recv_nowait().release()


def in_futex_wait(native_id: int, address: int) -> bool:
    """Whether thread ``native_id`` of this process sleeps in a futex call on ``address``."""
    try:
        fields = Path(f"/proc/self/task/{native_id}/syscall").read_text().split()
    except OSError:
        return False
    return len(fields) >= 3 and fields[1].startswith("0x") and int(fields[1], 16) == address


def address_of(region: Region, offset: int) -> int:
    anchor = ctypes.c_char.from_buffer(region.mm, offset)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


@pytest.mark.timeout(30)
def test_a_message_wakes_a_thread_asleep_in_futex_wait_for_data(pair: Pair) -> None:
    """End to end: a thread really sleeping on the wake word returns when a message comes,
    but not when space comes back (it did not ask for that)."""
    memory = pair.worker_region.memory
    pair.worker.send_nowait(1, b"response")
    seq = announce_sleep(pair.worker, WANT_DATA)
    result: list[bool] = []
    sleeper = threading.Thread(target=lambda: result.append(memory.futex_wait(
        Word.WORKER_WAKE, seq, 20.0)))
    sleeper.start()
    address = address_of(pair.worker_region, Word.WORKER_WAKE)
    wait_until(lambda: sleeper.native_id is not None and in_futex_wait(sleeper.native_id, address))
    assert sleeper.native_id is not None
    pair.front.recv_nowait().release()  # tail and release: space, not data
    assert in_futex_wait(sleeper.native_id, address), "woken by news it did not want"
    pair.front.send_nowait(2, b"request")
    sleeper.join(10)
    assert not sleeper.is_alive()
    assert result == [True]
    pair.worker.finish_sleep()


def read_doorbell(fd: int) -> int:
    """The eventfd's counter (reading resets it); 0 if nobody rang."""
    try:
        return int.from_bytes(os.read(fd, 8), "little")
    except BlockingIOError:
        return 0


@pytest.mark.parametrize(("want", "rings"), [(WANT_DATA, True), (WANT_SPACE, False)])
def test_a_sleeper_that_asked_for_the_doorbell_is_woken_through_it(
    want: int, rings: bool
) -> None:
    """Bit 2 (doorbell): the publisher writes the sleeper's eventfd, still only for news the
    sleeper wants, and still bumps the wake word."""
    with channel_pair(worker_rings_doorbell=True) as p:
        bell = p.front_region.doorbell_fd
        assert bell is not None
        read_doorbell(bell)  # the worker rang once when it opened its end
        seq = announce_sleep(p.front, want, doorbell=True)
        assert p.front_region.memory.load_u32(Word.FRONT_SLEEP) & 0xF == ASLEEP | DOORBELL | want
        p.worker.send_nowait(1, b"response")
        assert read_doorbell(bell) == int(rings)
        assert (p.front_region.memory.load_u32(Word.FRONT_WAKE) != seq) == rings
        p.front.finish_sleep()


# --------------------------------------------------------------------------- busy mapping


def cpu_ticks(native_id: int) -> int:
    """CPU time (user + system, in clock ticks) thread ``native_id`` has used so far."""
    stat = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return int(stat[11]) + int(stat[12])


@pytest.mark.timeout(60)
def test_a_mapping_cannot_be_released_under_spin_recv(pair: Pair) -> None:
    """While a thread spins in Endpoint.spin_recv (GIL released), the region's Mapping
    refuses release() with BufferError; the spin ends normally when a message arrives."""
    memory = pair.worker_region.memory
    ep = pair.worker._ep
    result: list[object] = []
    spinner = threading.Thread(target=lambda: result.append(ep.spin_recv(20_000_000_000)))
    spinner.start()
    wait_until(lambda: spinner.native_id is not None)
    assert spinner.native_id is not None
    baseline = cpu_ticks(spinner.native_id)
    wait_until(lambda: cpu_ticks(spinner.native_id) >= baseline + 3)  # type: ignore[arg-type]
    try:
        with pytest.raises(BufferError, match="in use"):
            memory.release()
        assert memory.size == SIZE
    finally:
        pair.front.send_nowait(7, b"wake up")
        spinner.join(30)
    assert not spinner.is_alive()
    [msg] = result
    assert isinstance(msg, Message)
    assert msg.id == 7
    assert bytes(msg.data) == b"wake up"
    msg.release()
