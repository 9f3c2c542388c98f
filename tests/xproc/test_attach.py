"""Attaching refuses anything that is not a sealed Zeus region, with a message that says why.

A worker may be handed a wrong descriptor by a broken runner, a region of another protocol
version, or one that is not sealed (so it could be truncated under the front: SIGBUS).  Each
is a RegionMismatchError naming the problem, raised before any offset from the header is used.
The same holds in a real child process, including one started without ZEUS_CHANNEL_FD.

A worker that attached passes the region on to nobody: its own children do not inherit the
region's descriptors, even when it starts them with every other descriptor it has.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import pytest

from zeus import Region, RegionMismatchError
from zeus.core.layout import Geometry
from zeus.region import ENV_DOORBELL_FD, ENV_REGION_FD

from .harness import Peers

SIZE: Final = 1 << 20
SEALS: Final = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


def _header(**changes: int) -> bytes:
    """A valid header for a SIZE-byte region, with some fields replaced."""
    g = Geometry.compute(SIZE, 16)
    fields = dict(
        zip(
            ("magic", "version", "control", "region_size", "slots", "slot_size"),
            struct.unpack_from("<QIIQII", g.encode()),
            strict=True,
        )
    )
    fields.update(changes)
    head = struct.pack("<QIIQII", *fields.values())
    return head + g.encode()[len(head) :]


@contextmanager
def _memfd(header: bytes | None, seals: int = SEALS, size: int = SIZE) -> Iterator[int]:
    """A memfd of ``size`` bytes holding ``header`` at offset 0, sealed with ``seals``."""
    fd = os.memfd_create("zeus-xproc-fake", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        if header is not None:
            os.pwrite(fd, header, 0)
        if seals:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        yield fd
    finally:
        os.close(fd)


MISMATCHES: Final = {
    "wrong-magic": (_header(magic=int.from_bytes(b"NOTZEUS!", "little")), SEALS, "magic"),
    "zeroed-header": (None, SEALS, "not a Zeus channel region"),
    "wrong-version": (_header(version=99), SEALS, "version 99"),
    "wrong-slot-size": (_header(slot_size=64), SEALS, "slot size"),
    "size-disagrees": (_header(region_size=2 * SIZE), SEALS, "header says"),
    "slots-not-power-of-two": (_header(slots=15), SEALS, "geometry"),
    "unsealed": (_header(), 0, "not sealed"),
    "may-shrink": (_header(), fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL, "not sealed"),
    "may-grow": (_header(), fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL, "not sealed"),
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("case", list(MISMATCHES))
def test_attach_refuses_a_region_that_does_not_match(case: str) -> None:
    """A memfd with a bad header or missing seals is refused, and the message says which."""
    header, seals, why = MISMATCHES[case]
    with _memfd(header, seals) as fd, pytest.raises(RegionMismatchError, match=why):
        Region.attach(fd)


@pytest.mark.timeout(10)
def test_attach_accepts_the_same_bytes_when_they_are_right() -> None:
    """The fakes above differ from a good region only in what each one breaks."""
    with _memfd(_header()) as fd:
        region = Region.attach(os.dup(fd))
        assert region.geometry == Geometry.compute(SIZE, 16)
        region.close()


@pytest.mark.timeout(10)
def test_attach_refuses_a_descriptor_that_is_not_a_memfd() -> None:
    """A pipe, a regular file, or a closed descriptor is not a sealed memfd."""
    r, w = os.pipe()
    try:
        with pytest.raises(RegionMismatchError, match="not a sealed memfd"):
            Region.attach(r)
    finally:
        os.close(r)
        os.close(w)
    with open(__file__, "rb") as f, pytest.raises(RegionMismatchError, match="not a sealed memfd"):
        Region.attach(f.fileno())
    closed = os.dup(0)
    os.close(closed)
    with pytest.raises(RegionMismatchError, match="not a sealed memfd"):
        Region.attach(closed)


@pytest.mark.timeout(10)
def test_from_environment_explains_a_missing_or_bad_variable() -> None:
    """Without ZEUS_CHANNEL_FD, or with garbage in it, the error names the variable."""
    with pytest.raises(RegionMismatchError, match=f"{ENV_REGION_FD} is not set"):
        Region.from_environment({})
    with pytest.raises(RegionMismatchError, match="not a descriptor"):
        Region.from_environment({ENV_REGION_FD: "three"})


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (ENV_REGION_FD, ENV_DOORBELL_FD)}


@pytest.mark.timeout(30)
def test_a_worker_started_without_a_region_gets_a_clear_error(peers: Peers) -> None:
    """A child started by hand (no ZEUS_CHANNEL_FD) fails to attach with a RegionMismatchError."""
    peer = peers.start("attach", env=_clean_env())
    assert peer.finish(timeout=20) == 3, peer.describe()
    assert peer.stdout().startswith(f"RegionMismatchError: {ENV_REGION_FD} is not set"), (
        peer.stdout()
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", ["wrong-magic", "wrong-version", "unsealed"])
def test_a_worker_handed_a_bad_region_gets_a_clear_error(peers: Peers, case: str) -> None:
    """A child that inherits a mismatching region refuses it, as attach does in-process."""
    header, seals, why = MISMATCHES[case]
    with _memfd(header, seals) as fd:
        env = {**_clean_env(), ENV_REGION_FD: str(fd)}
        peer = peers.start("attach", env=env, pass_fds=[fd])
        assert peer.finish(timeout=20) == 3, peer.describe()
    assert peer.stdout().startswith("RegionMismatchError: "), peer.stdout()
    assert why in peer.stdout()


@pytest.mark.timeout(30)
def test_a_worker_handed_a_good_region_attaches(peers: Peers) -> None:
    """The control case: the same child attaches to a region made by Region.create."""
    with Region.create(SIZE, 16) as region:
        peer = peers.start("attach", region=region)
        assert peer.finish(timeout=20) == 0, peer.describe()
    assert peer.stdout().startswith("attached <Region worker"), peer.stdout()


@pytest.mark.timeout(10)
def test_attach_makes_the_inherited_descriptors_close_on_exec() -> None:
    """Descriptors that arrive inheritable (as a child gets them) are close-on-exec after
    attach, so they go no further."""
    with Region.create(SIZE, 16) as region:
        fds = [os.dup(fd) for fd in region.pass_fds]
        for fd in fds:
            os.set_inheritable(fd, True)
        with Region.attach(*fds):
            assert [os.get_inheritable(fd) for fd in fds] == [False] * len(fds)


@pytest.mark.timeout(30)
def test_a_workers_own_children_do_not_inherit_the_region(peers: Peers) -> None:
    """A worker attaches, then starts a child with close_fds=False: the child holds none of
    the region's descriptors (/proc/<child>/fd), but does hold the worker's control pipe."""
    with Region.create(SIZE, 16, name="zeus-xproc-inherit") as region:
        peer = peers.start("spawn-child", region=region)
        assert peer.finish(timeout=20) == 0, peer.describe()
    report = json.loads(peer.stdout())
    held = report["held"]
    assert held.pop("control"), f"the control pipe was not inherited: the check is blind {report}"
    assert set(held) >= {"region", "doorbell"}, report
    assert not any(held.values()), f"the child inherited {held}: {report['child_fds']}"
    assert not any("zeus-xproc-inherit" in fd for fd in report["child_fds"].values()), report
    assert not any("eventfd" in fd for fd in report["child_fds"].values()), report
