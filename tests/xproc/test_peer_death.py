"""A peer killed with SIGKILL is noticed promptly by the side that waits on it.

The killed side cannot publish CLOSED, so the survivor must learn of the death from the
process itself (a pidfd, checked every ``liveness_interval`` while it sleeps).  Each test
blocks the survivor in one call -- ``recv`` on an empty ring, ``send`` on a full arena, ``send``
on a full ring -- and a helper thread kills the peer once the survivor is blocked; the
survivor must raise PeerLostError within ``DETECTION_LIMIT`` seconds of the kill.

The worker is killed under a front (the test process is the front), and the front is killed
under a worker: then the test process plays the worker, and the front peer hands it the
region's descriptors over a Unix socket (SCM_RIGHTS), as a runner would by inheritance.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

import pytest

from zeus import Channel, PeerLostError, Region, Side
from zeus.core.layout import WORKER_PID, Word

from .harness import FIGURES, KillWhen, Peer, Peers, record
from .peers import READY_ID, is_asleep, load_u64, wait_until

DETECTION_LIMIT: Final = 2.0
BLOCK_LIMIT: Final = 5.0  # the blocked call's own timeout: TimeoutError means "never noticed"
SIZE: Final = 1 << 20
SLOTS: Final = 16
# "unread-inbound": a message from the peer waits unread while we block in send (regression:
# the sender then never slept, so it never checked the peer, and noticed nothing).
CASES: Final = ["recv", "send-arena", "send-ring", "send-arena-unread-inbound"]


def _fills(ch: Channel, blocked_in: str) -> int:
    """How many messages the survivor publishes before ``blocked_in`` blocks."""
    if blocked_in == "send-ring":
        return SLOTS
    g = ch.region.geometry
    arena = g.req_arena_size if ch.side is Side.FRONT else g.resp_arena_size
    return arena // ch.max_chunk


def _block(ch: Channel, blocked_in: str) -> None:
    """Make the call that blocks: the peer never reads, so sends fill up and wait."""
    if blocked_in == "recv":
        ch.recv(timeout=BLOCK_LIMIT)
    elif blocked_in == "send-ring":
        for i in range(4 * SLOTS):
            ch.send(i, b"x", timeout=BLOCK_LIMIT)
    else:
        ch.send(1, bytes(8 * ch.max_chunk), timeout=BLOCK_LIMIT)


def _is_blocked(
    region: Region, ch: Channel, blocked_in: str, sleep_word: int, head_word: int
) -> Callable[[], bool]:
    """A predicate that holds once the survivor is (about to be) blocked in ``blocked_in``."""
    if blocked_in == "recv":
        return lambda: is_asleep(region, sleep_word)
    fills = _fills(ch, blocked_in)
    return lambda: load_u64(region, head_word) == fills


def _survive(ch: Channel, peer: Peer, blocked_in: str, predicate: Callable[[], bool]) -> float:
    """Block in ``blocked_in`` while the peer is killed; return the detection latency."""
    killer = KillWhen(peer.pid, predicate)
    with pytest.raises(PeerLostError):
        _block(ch, blocked_in)
    noticed = time.monotonic()
    latency = noticed - killer.join()
    assert latency < DETECTION_LIMIT, f"noticed {latency:.3f} s after the kill"
    return latency


def _record_latency(who: str, blocked_in: str, latency: float) -> None:
    key = "SIGKILL detection latency"
    prior = FIGURES.get(key, "")
    record(key, f"{prior}{', ' if prior else ''}{who}/{blocked_in} {latency * 1000:.0f} ms")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("blocked_in", CASES)
def test_front_notices_a_worker_killed_while_it_waits(peers: Peers, blocked_in: str) -> None:
    """The front, blocked in recv or send, raises PeerLostError soon after the worker dies."""
    with Region.create(SIZE, SLOTS, name="zeus-xproc-death") as region:
        peer = peers.start("idle", region=region)
        with Channel(region, peer_pid=peer.pid) as ch:
            if blocked_in.endswith("unread-inbound"):
                # The worker's "ready" stays in our inbound ring, unread.
                wait_until(lambda: load_u64(region, Word.RESP_HEAD) == 1, 10, "worker ready")
            else:
                with ch.recv(timeout=10) as ready:
                    assert ready.id == READY_ID
            blocked = _is_blocked(region, ch, blocked_in, Word.FRONT_SLEEP, Word.REQ_HEAD)
            latency = _survive(ch, peer, blocked_in, blocked)
    _record_latency("worker killed", blocked_in, latency)


@contextmanager
def _worker_of_a_front_peer(peers: Peers) -> Iterator[tuple[Peer, Region, Channel]]:
    """Start a front peer and attach to its region as the worker, via SCM_RIGHTS."""
    ours, theirs = socket.socketpair()
    with ours:
        with theirs:
            peer = peers.start(
                "front",
                "--socket",
                theirs.fileno(),
                "--size",
                SIZE,
                "--slots",
                SLOTS,
                pass_fds=[theirs.fileno()],
            )
        ours.settimeout(10)
        _, fds, _, _ = socket.recv_fds(ours, 64, 3)
        assert 2 <= len(fds) <= 3, f"front peer sent {len(fds)} descriptors"
        region = Region.attach(*fds)
        try:
            with Channel(region) as ch:  # a worker takes the front's pid from the region
                ours.sendall(b"attached")  # our pid is in the region now: the front may start
                wait_until(lambda: load_u64(region, Word.REQ_HEAD) == 1, 10, "front ready")
                yield peer, region, ch
        finally:
            region.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("blocked_in", CASES)
def test_worker_notices_a_front_killed_while_it_waits(peers: Peers, blocked_in: str) -> None:
    """The worker, blocked in recv or send, raises PeerLostError soon after the front dies."""
    with _worker_of_a_front_peer(peers) as (peer, region, ch):
        if not blocked_in.endswith("unread-inbound"):
            with ch.recv(timeout=10) as ready:
                assert ready.id == READY_ID
        blocked = _is_blocked(region, ch, blocked_in, Word.WORKER_SLEEP, Word.RESP_HEAD)
        latency = _survive(ch, peer, blocked_in, blocked)
    _record_latency("front killed", blocked_in, latency)


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait(timeout=30)
    return child.pid


@contextmanager
def _front_and_worker(worker_pid_in_region: int, peer_pid: int | None) -> Iterator[Channel]:
    """A front channel whose worker end is attached in this process, with the worker's pid
    word in the region overwritten by ``worker_pid_in_region``."""
    with Region.create(SIZE, SLOTS, name="zeus-xproc-pid") as region:
        assert region.doorbell_fd is not None
        with (
            Region.attach(os.dup(region.fd), os.dup(region.doorbell_fd)) as attached,
            Channel(attached),
        ):
            region.memory.store_u32(WORKER_PID, worker_pid_in_region)
            with Channel(region, peer_pid=peer_pid, liveness_interval=0.01) as front:
                yield front


@pytest.mark.timeout(30)
def test_a_front_takes_the_workers_pid_only_from_its_caller() -> None:
    """The pid a worker writes into the region means nothing to the front: it neither makes
    the front give up on a live worker nor keeps it waiting on a dead one."""
    dead = _dead_pid()
    with _front_and_worker(dead, peer_pid=None) as front:
        assert front.peer_alive()
        with pytest.raises(TimeoutError):  # no liveness to check: it just waits
            front.recv(timeout=0.3)
    with (
        _front_and_worker(dead, peer_pid=os.getpid()) as front,
        pytest.raises(TimeoutError),  # the caller's pid is alive
    ):
        front.recv(timeout=0.3)
    with _front_and_worker(os.getpid(), peer_pid=dead) as front:
        assert not front.peer_alive()
        with pytest.raises(PeerLostError, match=str(dead)):  # the caller's pid is dead
            front.recv(timeout=5)
