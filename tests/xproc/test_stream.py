"""A million messages each way through a 1 MiB region: none lost, reordered or corrupted.

Sizes run from 1 byte to four times an arena part (most are small, 1 in 2,000 is huge), so the
stream crosses every path: plain messages, chunked ones (Flag.MORE), wrap-around at the end
of the arena, a full ring and a full arena (back-pressure), and releases out of order.  Both
sides derive the stream from one seed (see ``peers.PayloadStream``); the receiver checks id,
kind, flags, length and CRC-32 of every message.  ``ZEUS_XPROC_MESSAGES`` changes the count
per direction.
"""

from __future__ import annotations

import json
import os
from typing import Final

import pytest

from zeus import Channel, PeerLostError, Region

from .harness import Peers, record
from .peers import REPORT_ID, receive_stream, send_stream

MESSAGES: Final = int(os.environ.get("ZEUS_XPROC_MESSAGES", "1000000"))  # per direction
REGION_SIZE: Final = 1 << 20
SLOTS: Final = 256


def _huge(region: Region) -> int:
    """The largest message size: several times the smaller arena part."""
    g = region.geometry
    return 4 * min(g.req_arena_size, g.resp_arena_size)


def _figure(direction: str, seconds: float, nbytes: int) -> None:
    record(
        f"{MESSAGES:,} messages {direction}",
        f"{seconds:.1f} s ({MESSAGES / seconds:,.0f} msg/s, {nbytes / seconds / 2**20:.0f} MiB/s)",
    )


@pytest.mark.timeout(150)
def test_a_million_messages_front_to_worker_arrive_intact_and_in_order(peers: Peers) -> None:
    """The worker checks every message of the stream and reports what it saw."""
    with Region.create(REGION_SIZE, SLOTS, name="zeus-xproc-stream") as region:
        huge = _huge(region)
        peer = peers.start(
            "recv-stream", "--seed", 11, "--count", MESSAGES, "--max-size", huge, region=region
        )
        with Channel(region, peer_pid=peer.pid) as ch, peer.blamed():
            sent = send_stream(ch, 11, MESSAGES, "mixed", huge)
            with ch.recv(timeout=60) as report:
                assert report.id == REPORT_ID
                seen = json.loads(bytes(report.data))
            stats = ch.statistics()
        assert peer.finish(timeout=30) == 0, peer.describe()
    assert seen["messages"] == MESSAGES
    assert seen["bytes"] == sent.bytes
    assert seen["chunks"] > MESSAGES  # the huge ones went in several chunks
    assert seen["held_out_of_order"] > 0  # and some releases came out of order
    assert stats.messages_sent == seen["chunks"]
    _figure("front -> worker", seen["seconds"], sent.bytes)


@pytest.mark.timeout(150)
def test_a_million_messages_worker_to_front_arrive_intact_and_in_order(peers: Peers) -> None:
    """The front checks every message of the worker's stream, then sees the worker close."""
    with Region.create(REGION_SIZE, SLOTS, name="zeus-xproc-stream") as region:
        huge = _huge(region)
        peer = peers.start(
            "send-stream", "--seed", 12, "--count", MESSAGES, "--max-size", huge, region=region
        )
        with Channel(region, peer_pid=peer.pid) as ch, peer.blamed():
            got = receive_stream(ch, 12, MESSAGES, "mixed", huge)
            with pytest.raises(PeerLostError):
                ch.recv(timeout=30)  # nothing after the stream: the worker closed
            stats = ch.statistics()
        assert peer.finish(timeout=30) == 0, peer.describe()
    sent = json.loads(peer.stdout())
    assert sent["stream"]["bytes"] == got.bytes
    assert sent["channel"]["messages_sent"] == got.chunks == stats.messages_received
    assert got.chunks > MESSAGES
    assert got.held_out_of_order > 0
    assert stats.live_leases == 0
    _figure("worker -> front", got.seconds, got.bytes)
