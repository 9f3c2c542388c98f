"""A worker that writes garbage into the words and slots it owns breaks only itself.

The hostile peer (``peers.py hostile --kind KIND``) attaches like any worker, then corrupts one
thing it is the only writer of: a response-ring slot, the response-ring head, the request-ring
tail, or the request-arena release position.  The front must answer with PeerBrokenError from
the call that first looks at the bad value -- never accept a bogus message, read outside the
region, crash, or wait forever (every call here has a timeout, so a hang is a TimeoutError).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import pytest

from zeus import Channel, Message, PeerBrokenError, Region
from zeus.core.layout import State, Word

from .harness import Peers, open_fds
from .peers import load_u32, load_u64

SIZE: Final = 1 << 20
SLOTS: Final = 16
WAIT: Final = 5.0

# Garbage the front finds in the response ring at once: its first recv must refuse it.
IMMEDIATE: Final = [
    "random-bytes",  # a slot of random bytes
    "unknown-kind",  # kind 0xBEEF
    "kind-zero",  # kind 0 is not a kind
    "unknown-flags",  # a flag bit that means nothing
    "more-and-end",  # MORE (a chunk follows) with END (the last message): contradictory
    "reserved-nonzero",  # the reserved word must be zero
    "offset-past-arena",  # offset == arena size
    "offset-huge",  # offset 2**64 - 1
    "offset-misplaced",  # inside the arena, but not where the writer's next message can be
    "length-past-arena",  # one byte longer than the arena
    "length-u32-max",  # 4 GiB - 1
    "empty-with-offset",  # a zero-length message must carry offset 0
    "head-past-capacity",  # head = slots + 1 with nothing consumed
    "head-huge",  # head = 2**64 - 1
]


def _immediate(ch: Channel, held: list[Message]) -> None:
    ch.recv(timeout=WAIT)


def _after_a_good_one(ch: Channel, held: list[Message]) -> None:
    """Take one valid message (kept unreleased), then the bad one."""
    first = ch.recv(timeout=WAIT)
    assert first.id == 1, first
    held.append(first)
    ch.recv(timeout=WAIT)


def _ack(ch: Channel, held: list[Message]) -> None:
    with ch.recv(timeout=WAIT) as ack:
        assert bytes(ack.data) == b"ack", ack


def _tail_backwards(ch: Channel, held: list[Message]) -> None:
    for i in range(SLOTS):  # fill the ring; the worker takes them all, so our tail cache moves
        ch.send(i, b"request", timeout=WAIT)
    _ack(ch, held)
    ch.send(SLOTS, b"request", timeout=WAIT)  # needs a moved tail: we have seen one above 0
    _ack(ch, held)  # the worker has rewound its tail to 0 meanwhile
    for i in range(4 * SLOTS):
        ch.send(SLOTS + 1 + i, b"request", timeout=WAIT)


def _tail_past_head(ch: Channel, held: list[Message]) -> None:
    ch.send(0, b"request", timeout=WAIT)
    _ack(ch, held)
    for i in range(4 * SLOTS):
        ch.send(1 + i, b"request", timeout=WAIT)


def _freed_backwards(ch: Channel, held: list[Message]) -> None:
    half = ch.region.geometry.req_arena_size // 2
    assert ch.max_chunk == half
    ch.send(0, bytes(half), timeout=WAIT)  # the worker releases it
    _ack(ch, held)
    # Two chunks: the first fills the arena, the second fits only once we have looked at
    # the release of message 0 -- now we have seen the release position at ``half``.
    ch.send(1, bytes(half + 64), timeout=WAIT)
    _ack(ch, held)  # the worker has moved its release position back to 64 meanwhile
    ch.send(2, bytes(half), timeout=WAIT)  # does not fit: we must look again, and refuse


def _freed_past_head(ch: Channel, held: list[Message]) -> None:
    arena = ch.region.geometry.req_arena_size
    ch.send(0, bytes(1000), timeout=WAIT)
    _ack(ch, held)
    ch.send(1, bytes(2 * arena), timeout=WAIT)  # chunks: the second must look at the release


FRONT_SCRIPTS: Final[dict[str, Callable[[Channel, list[Message]], None]]] = {
    **dict.fromkeys(IMMEDIATE, _immediate),
    "overwrites-live-data": _after_a_good_one,  # placed over a message we still hold
    "head-backwards": _after_a_good_one,  # head rewound below what we consumed
    "tail-backwards": _tail_backwards,  # request tail rewound below what we saw
    "tail-past-head": _tail_past_head,  # request tail beyond what we published
    "freed-backwards": _freed_backwards,  # release position rewound below what we saw
    "freed-past-head": _freed_past_head,  # released beyond what we allocated
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", list(FRONT_SCRIPTS))
def test_front_refuses_garbage_from_a_hostile_worker(peers: Peers, kind: str) -> None:
    """The front raises PeerBrokenError naming the protocol breach; it accepts nothing bogus."""
    with Region.create(SIZE, SLOTS, name="zeus-xproc-hostile") as region:
        peer = peers.start("hostile", "--kind", kind, region=region)
        arena = region.geometry.req_arena_size
        held: list[Message] = []
        with Channel(region, peer_pid=peer.pid, max_chunk=arena // 2) as ch:
            with pytest.raises(PeerBrokenError, match=r"outside|invalid|offset|bytes|ends at"):
                FRONT_SCRIPTS[kind](ch, held)
            assert peer.proc.poll() is None, "the worker is alive: this is garbage, not death"
            for msg in held:
                msg.release()
        assert peer.finish(timeout=10) == 0, peer.describe()


@pytest.mark.timeout(30)
def test_a_broken_channel_stays_broken(peers: Peers) -> None:
    """After PeerBrokenError every later call raises it again, with the first reason:
    nothing more crosses (regression: sends still went through)."""
    with Region.create(SIZE, SLOTS, name="zeus-xproc-hostile") as region:
        peer = peers.start("hostile", "--kind", "unknown-kind", region=region)
        with Channel(region, peer_pid=peer.pid) as ch:
            with pytest.raises(PeerBrokenError) as first:
                ch.recv(timeout=WAIT)
            calls: dict[str, Callable[[], object]] = {
                "recv_nowait()": ch.recv_nowait,
                "recv()": lambda: ch.recv(timeout=WAIT),
                "send_nowait()": lambda: ch.send_nowait(1, b"more"),
                "send()": lambda: ch.send(1, b"more", timeout=WAIT),
                "reserve_nowait()": lambda: ch.reserve_nowait(8),
            }
            went_through = []
            for name, call in calls.items():
                try:
                    call()
                except PeerBrokenError as again:
                    assert str(again) == str(first.value), name
                    continue
                went_through.append(name)
            assert not went_through, f"{went_through} went through on a broken channel"
            assert load_u64(region, Word.REQ_HEAD) == 0, "a request was published"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("unknown-flags", "flags 0x100,"),
        ("more-and-end", "flags 0x3,"),
        ("reserved-nonzero", "reserved 1 "),
        ("unknown-kind", "kind 48879,"),
    ],
)
def test_the_error_names_the_bad_value(peers: Peers, kind: str, value: str) -> None:
    """PeerBrokenError says what was wrong with the slot, with the value the peer wrote
    (regression: a printf flag the formatter lacks came out literally, values lost)."""
    with Region.create(SIZE, SLOTS, name="zeus-xproc-hostile") as region:
        peer = peers.start("hostile", "--kind", kind, region=region)
        with Channel(region, peer_pid=peer.pid) as ch, pytest.raises(PeerBrokenError) as broken:
            ch.recv(timeout=WAIT)
    message = str(broken.value)
    assert "%" not in message and value in message, message


@pytest.mark.timeout(30)
def test_closing_a_broken_channel_releases_everything(peers: Peers) -> None:
    """close() after PeerBrokenError succeeds, publishes CLOSED, wakes the worker and gives
    back the pidfd (regression: it raised PeerBrokenError half-way and leaked the pidfd)."""
    with Region.create(SIZE, SLOTS, name="zeus-xproc-hostile") as region:
        peer = peers.start("hostile", "--kind", "unknown-kind", region=region)
        fds = open_fds()
        ch = Channel(region, peer_pid=peer.pid)  # opens a pidfd on the worker
        assert open_fds() == fds + 1
        with pytest.raises(PeerBrokenError):
            ch.recv(timeout=WAIT)
        wake = load_u32(region, Word.WORKER_WAKE)
        ch.close()
        assert ch.closed
        assert load_u32(region, Word.FRONT_STATE) == State.CLOSED
        assert load_u32(region, Word.WORKER_WAKE) != wake, "the worker was not woken"
        assert open_fds() == fds, "the pidfd leaked"
