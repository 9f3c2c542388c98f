"""A thousand create/attach/close cycles leave nothing behind.

Each cycle creates a region (the default 64 MiB, 1024 slots), attaches a worker to it, passes a
64 KiB message each way and closes both ends.  Most cycles attach in this process through a
duplicate of the descriptors (as a child would after inheriting them); every
``CHILD_EVERY``-th cycle a real child process attaches instead.  Afterwards the process holds
as many descriptors as before, no mapping of a region, no more memory (within noise), and
nothing has appeared under /dev/shm -- not even while a region was open.
"""

from __future__ import annotations

import gc
import os
import random
from typing import Final

import pytest

from zeus import Channel, Region

from .harness import Peers, memfd_mappings, open_fds, record, rss_bytes

CYCLES: Final = 1000
CHILD_EVERY: Final = 50
WARM_UP: Final = 30
NAME: Final = "zeus-xproc-cycle"
PAYLOAD: Final = random.Random(3).randbytes(64 * 1024)
RSS_SLACK: Final = 20 * 2**20


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm"))


def _cycle_in_process(shm_before: set[str] | None = None) -> None:
    """Create, attach through duplicated descriptors, exchange, close."""
    with Region.create(name=NAME) as region:
        assert region.doorbell_fd is not None
        with (
            Region.attach(os.dup(region.fd), os.dup(region.doorbell_fd)) as attached,
            Channel(attached) as worker,
            Channel(region, peer_pid=os.getpid()) as front,  # a pidfd per cycle, too
        ):
            front.send(1, PAYLOAD, timeout=5)
            with worker.recv(timeout=5) as msg:
                worker.send(msg.id, msg.data, timeout=5)
            with front.recv(timeout=5) as reply:
                assert reply.data == PAYLOAD
            if shm_before is not None:
                assert _shm() == shm_before, "a region appeared under /dev/shm"


def _cycle_with_child(peers: Peers) -> None:
    """Create, let a real child attach by inheritance, exchange, close, reap the child."""
    with Region.create(name=NAME) as region:
        peer = peers.start("echo", region=region)
        with Channel(region, peer_pid=peer.pid) as ch, peer.blamed():
            ch.send(1, PAYLOAD, timeout=10)
            with ch.recv(timeout=10) as reply:
                assert reply.data == PAYLOAD
        assert peer.finish(timeout=10) == 0, peer.describe()
        peers.reap(peer)


@pytest.mark.timeout(120)
def test_a_thousand_create_attach_close_cycles_leak_nothing(peers: Peers) -> None:
    """Descriptors, mappings and memory return to where they were; /dev/shm stays empty."""
    for _ in range(WARM_UP):
        _cycle_in_process()
    _cycle_with_child(peers)
    gc.collect()
    fds, rss, shm = open_fds(), rss_bytes(), _shm()
    children = 0
    for i in range(CYCLES):
        if i % CHILD_EVERY == CHILD_EVERY - 1:
            _cycle_with_child(peers)
            children += 1
        else:
            _cycle_in_process(shm if i == CYCLES // 2 else None)
    gc.collect()
    grown = rss_bytes() - rss
    assert open_fds() == fds, f"{open_fds() - fds} descriptors leaked"
    assert memfd_mappings(NAME) == 0, "a region is still mapped"
    assert _shm() == shm, f"appeared under /dev/shm: {_shm() - shm}"
    assert grown < RSS_SLACK, f"RSS grew by {grown / 2**20:.1f} MiB"
    assert children == CYCLES // CHILD_EVERY
    record(
        f"{CYCLES} create/attach/close cycles ({children} with a child)",
        f"RSS {grown / 2**20:+.1f} MiB, descriptors +0",
    )
