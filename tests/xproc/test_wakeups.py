"""The sleep/wake edge: two sides that never spin lose no wake-up.

With ``SpinPolicy(max_ns=0)`` every wait goes straight to the sleep protocol (announce, fence,
re-check, FUTEX_WAIT), so every message crosses the race between "the peer announced sleep"
and "I published".  ``liveness_interval`` is set far beyond the per-call timeouts, so a lost
wake-up cannot be rescued by a periodic re-check: it shows as a TimeoutError, not as a hang
and not as a 50 ms hiccup.  Irregular delays (busy loops of random length, never sleeps)
shift the two sides against each other so the race is hit at many phases.

Two deterministic, single-process checks pin the edge down further: room freed before each
call a blocked sender makes on its way to sleep is never missed, and a sleeper is woken for
the news it announced it wants (messages, or room) and not for the other kind.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from types import FrameType
from typing import Final

import pytest

from zeus import Channel, Message, Region, SpinPolicy, WouldBlock, channel
from zeus.core.layout import Word

from .harness import Peers, record
from .peers import READY_ID, busy, load_u32, load_u64, send_stream, wait_until

NEVER_SPIN: Final = SpinPolicy(max_ns=0, probe_ns=0)
CHANNEL_CODE: Final = channel.__file__
ASLEEP: Final = 1  # sleep word bits (PROTOCOL.md)
WANTS: Final = {"data": 4, "space": 8}
NO_RESCUE: Final = 60.0  # liveness interval: longer than any wait here may take
WAIT: Final = 5.0  # per-call timeout: a lost wake-up ends as TimeoutError after this
SHORT_WAIT: Final = 3.0
ROUND_TRIPS: Final = 20_000
MAX_ROUND_TRIPS: Final = 100_000
MIN_ANNOUNCED: Final = 200  # sleep announcements each side makes in the ping-pong, at least


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("front_delay_us", "worker_delay_us"),
    [(0, 0), (0, 40), (40, 0), (40, 40)],
    ids=["no-delays", "worker-delays", "front-delays", "both-delay"],
)
def test_ping_pong_between_sleepers_loses_no_wakeup(
    peers: Peers, front_delay_us: int, worker_delay_us: int
) -> None:
    """At least 20,000 round trips where both sides sleep in the futex before many messages.

    How often each side gets to announce sleep depends on scheduling (on a loaded machine
    the reply is often there before anyone looks), so the run goes on, up to
    ``MAX_ROUND_TRIPS``, until both sides have announced sleep ``MIN_ANNOUNCED`` times.
    """
    with Region.create(1 << 20, 16, name="zeus-xproc-wake") as region:
        peer = peers.start(
            "echo",
            "--spin-ns",
            0,
            "--liveness",
            NO_RESCUE,
            "--delay-us",
            worker_delay_us,
            "--seed",
            5,
            region=region,
        )
        rng = random.Random(6)

        def announced() -> tuple[int, int]:  # each sleep announcement adds 16 to the word
            return (
                load_u32(region, Word.FRONT_SLEEP) >> 4,
                load_u32(region, Word.WORKER_SLEEP) >> 4,
            )

        with (
            Channel(region, peer_pid=peer.pid, spin=NEVER_SPIN, liveness_interval=NO_RESCUE) as ch,
            peer.blamed(),
        ):
            i = 0
            while i < ROUND_TRIPS or (min(announced()) < MIN_ANNOUNCED and i < MAX_ROUND_TRIPS):
                payload = i.to_bytes(8, "little") * rng.randint(1, 8)
                if front_delay_us:
                    busy(rng.randrange(front_delay_us * 1000))
                ch.send(i, payload, timeout=WAIT)
                with ch.recv(timeout=WAIT) as reply:
                    assert reply.id == i
                    assert reply.data == payload
                i += 1
            front, sleeps = ch.statistics(), announced()
        assert peer.finish(timeout=WAIT) == 0, peer.describe()
    worker = json.loads(peer.stdout())["channel"]
    # The sleep path was really taken, many times, by both sides.
    assert min(sleeps) >= MIN_ANNOUNCED, (i, sleeps, front, worker)
    assert front.sleeps + worker["sleeps"] >= MIN_ANNOUNCED, (i, front, worker)
    assert front.wakes_sent + worker["wakes_sent"] >= MIN_ANNOUNCED, (i, front, worker)
    record(
        f"ping-pong, never spinning, delays front {front_delay_us} us worker {worker_delay_us} us",
        f"{i:,} round trips, {sleeps[0]:,} + {sleeps[1]:,} sleeps announced, "
        f"{front.sleeps:,} + {worker['sleeps']:,} futex sleeps",
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("full", "profile", "count", "slots"),
    [("ring", "tiny", 20_000, 2), ("arena", "big", 2_000, 64)],
    ids=["full-ring", "full-arena"],
)
@pytest.mark.parametrize("delayed", ["sender-delays", "receiver-delays"])
def test_back_pressure_between_sleepers_loses_no_wakeup(
    peers: Peers, full: str, profile: str, count: int, slots: int, delayed: str
) -> None:
    """A one-way stream that keeps the ring (or the arena) full: the sender sleeps on the
    receiver's progress and the receiver sleeps on the sender's, and neither misses a wake."""
    with Region.create(1 << 20, slots, name="zeus-xproc-wake") as region:
        size = region.geometry.req_arena_size // 3
        receiver_delay = 20 if delayed == "receiver-delays" else 0
        sender_delay = 20 if delayed == "sender-delays" else 0
        peer = peers.start(
            "recv-stream",
            "--seed",
            21,
            "--count",
            count,
            "--profile",
            profile,
            "--max-size",
            size,
            "--spin-ns",
            0,
            "--liveness",
            NO_RESCUE,
            "--delay-us",
            receiver_delay,
            "--hold",
            0,
            region=region,
        )
        with (
            Channel(region, peer_pid=peer.pid, spin=NEVER_SPIN, liveness_interval=NO_RESCUE) as ch,
            peer.blamed(),
        ):
            send_stream(ch, 21, count, profile, size, timeout=SHORT_WAIT, delay_us=sender_delay)
            with ch.recv(timeout=WAIT) as report:
                seen = json.loads(bytes(report.data))
            front = ch.statistics()
        assert peer.finish(timeout=WAIT) == 0, peer.describe()
    assert seen["messages"] == count
    assert front.send_waits > 0 and front.sleeps > 0, front  # the sender was held back


@contextlib.contextmanager
def _pair_in_process() -> Iterator[tuple[Region, Channel, Channel]]:
    """A region with its front and its worker end both in this process (the worker attached
    through duplicated descriptors, as a child inherits them); neither ever spins."""
    with Region.create(1 << 20, 16, name="zeus-xproc-probe") as region:
        fds = [os.dup(fd) for fd in region.pass_fds]
        with (
            Region.attach(*fds) as attached,
            Channel(attached, spin=NEVER_SPIN, liveness_interval=NO_RESCUE) as worker,
            Channel(
                region, peer_pid=os.getpid(), spin=NEVER_SPIN, liveness_interval=NO_RESCUE
            ) as front,
        ):
            yield region, front, worker


def _send_into_full(full: str, free_at: int | None, timeout: float) -> tuple[bool, list[str]]:
    """Fill the front's ``full`` ("arena" or "ring"), then block in one more ``send``; just
    before the ``free_at``-th C call that send makes (counting from 0; None: never), free
    room for it -- the worker end, attached in this very process, consumes or releases one
    message.  Returns whether the send went through within ``timeout`` seconds, and the
    names of the C calls it made up to the freeing (or to its first FUTEX_WAIT).

    Every C call is a point where the sender may look at the shared words, so freeing before
    each one in turn hits every window between "it is full" and "asleep in the futex",
    whatever the code in between; the last one is the futex wait itself, which must then
    return at once (the release saw the sleeper and woke it).  Single-threaded, no timing:
    a window where the news is lost always times out.
    """
    calls: list[str] = []
    held: list[Message] = []
    with _pair_in_process() as (_, front, worker):
        payload = bytes(front.max_chunk if full == "arena" else 1)
        n = 0
        with contextlib.suppress(WouldBlock):
            while True:
                front.send_nowait(n, payload)
                n += 1
        if full == "arena":  # taken but held: the ring has room, the arena has none
            held.extend(worker.recv_nowait() for _ in range(n))

        def free_room() -> None:
            if full == "arena":
                held[0].release()  # the oldest: the release position moves
            else:
                held.append(worker.recv_nowait())  # the tail moves

        def hook(frame: FrameType, event: str, arg: object) -> None:
            # Only calls made by the channel's own code count: a signal handler or finalizer
            # running meanwhile (another test's leftovers) must not shift the numbering.
            if event != "c_call" or frame.f_code.co_filename != CHANNEL_CODE:
                return
            if calls and calls[-1] == "futex_wait":
                return
            if len(calls) == free_at:
                free_room()
                sys.setprofile(None)
            calls.append(getattr(arg, "__name__", repr(arg)))

        gc.disable()
        sys.setprofile(hook)
        try:
            front.send(n, payload, timeout=timeout)
        except TimeoutError:
            return False, calls
        finally:
            sys.setprofile(None)
            gc.enable()
            for msg in held:
                msg.release()
        return True, calls


@pytest.mark.timeout(60)
@pytest.mark.parametrize("full", ["arena", "ring"])
def test_a_blocked_sender_sees_room_freed_at_any_point_before_it_sleeps(full: str) -> None:
    """Room freed at any point between a sender's failed attempt and its sleep lets the send
    proceed at once (regression: the release was taken into the endpoint's cache by a
    refresh and then compared with itself, so the sender slept through it)."""
    sent, calls = _send_into_full(full, None, timeout=1.0)
    assert not sent, "the send went through with no room: the probe does not fill up"
    assert "futex_wait" in calls, f"no sleep within 1 s: {calls}"
    missed = []
    for at in range(len(calls)):
        sent, before = _send_into_full(full, at, timeout=SHORT_WAIT)
        assert before[: at + 1] == calls[: at + 1], f"another path: {before} vs {calls}"
        if not sent:  # nothing else can rescue it: liveness checks are NO_RESCUE apart
            missed.append(f"before call {at} ({calls[at]})")
    assert not missed, f"room freed {', '.join(missed)} was missed; calls: {calls}"
    record(f"blocked sender, {full} full", f"room freed before each of {len(calls)} C calls seen")


@pytest.mark.timeout(30)
def test_a_blocked_sender_sleeps_even_with_unread_messages_inbound(peers: Peers) -> None:
    """A sender waiting for space sleeps (little CPU) though messages wait for it unread
    (regression: it compared the peer's head with a stale cache and never slept)."""
    with Region.create(1 << 20, 16, name="zeus-xproc-wake") as region:
        peer = peers.start("idle", region=region)  # says "ready", then never reads
        with Channel(region, peer_pid=peer.pid) as ch:
            wait_until(lambda: load_u64(region, Word.RESP_HEAD) == 1, WAIT, "worker ready")
            cpu = time.thread_time()
            with pytest.raises(TimeoutError):  # the worker never reads: the arena stays full
                ch.send(1, bytes(8 * ch.max_chunk), timeout=1.0)
            burnt = time.thread_time() - cpu
            with ch.recv(timeout=WAIT) as ready:  # still there, intact
                assert ready.id == READY_ID
    assert burnt < 0.3, f"blocked for 1 s, burnt {burnt:.2f} s of CPU"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("want", ["data", "space"])
def test_a_sleeper_is_woken_for_the_news_it_wants_and_only_for_it(want: str) -> None:
    """The front announces sleep wanting messages (or room); the worker's other kind of news
    leaves its wake word alone, the wanted kind bumps it."""
    with _pair_in_process() as (region, front, worker):
        front.send(1, b"request")  # something for the worker to consume: room news

        def data() -> None:
            worker.send(2, b"reply")

        def space() -> None:
            with worker.recv_nowait() as msg:  # the tail moves, then the release position
                assert msg.id == 1

        wanted, unwanted = (data, space) if want == "data" else (space, data)
        seq = front.prepare_sleep(doorbell=False, want=WANTS[want])
        if seq is None:  # the worker's "open" was news: look again
            seq = front.prepare_sleep(doorbell=False, want=WANTS[want])
        assert seq is not None
        assert load_u32(region, Word.FRONT_SLEEP) & 0xF == ASLEEP | WANTS[want]
        wakes = worker.statistics().wakes_sent
        unwanted()
        assert load_u32(region, Word.FRONT_WAKE) == seq, "woken for news it did not want"
        assert worker.statistics().wakes_sent == wakes
        wanted()
        assert load_u32(region, Word.FRONT_WAKE) != seq, "not woken for the news it wanted"
        assert worker.statistics().wakes_sent == wakes + 1
        front.finish_sleep()
        assert not load_u32(region, Word.FRONT_SLEEP) & ASLEEP
