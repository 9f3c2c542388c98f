"""The lifecycle of a channel region: a sealed memfd, its mapping, and its doorbell.

The front creates a region with ``memfd_create`` (close-on-exec, so no other child inherits
it), sizes it, writes the header, and seals it against growing and shrinking so the worker can
never truncate it under the front (which would turn the front's next access into SIGBUS).
Nothing is ever created under /dev/shm: the memory goes away when the last descriptor and
mapping do, whoever dies first.

With the region come two eventfds, the *doorbells* of the front and of the worker: an asyncio
loop cannot sleep in FUTEX_WAIT, so a side that waits in an event loop asks its peer to write
its doorbell instead (see PROTOCOL.md, "Waking").  The front always waits that way; a worker
does when it runs an asyncio application (ASGI).

A worker receives both descriptors by inheritance (``pass_fds``) and their numbers in its
environment (``child_env()``), and attaches with ``Region.attach()`` or
``Region.from_environment()``, which check the seals and the header before anything else.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Mapping as MappingABC
from typing import Final

from zeus import _native
from zeus.core.layout import (
    DEFAULT_REGION_SIZE,
    DEFAULT_SLOTS,
    FRONT_PID,
    HEADER_SIZE,
    Geometry,
    Side,
    State,
    Word,
)
from zeus.errors import ClosedResourceError, RegionMismatchError

ENV_REGION_FD: Final = "ZEUS_CHANNEL_FD"
ENV_DOORBELL_FD: Final = "ZEUS_DOORBELL_FD"  # the front's doorbell (the worker rings it)
ENV_WORKER_DOORBELL_FD: Final = "ZEUS_WORKER_DOORBELL_FD"  # the worker's own doorbell

_REQUIRED_SEALS: Final = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


class Region:
    """One mapped channel region, seen from ``side``."""

    __slots__ = (
        "_closed", "doorbell_fd", "fd", "geometry", "memory", "mm", "side", "view",
        "worker_doorbell_fd",
    )

    def __init__(
        self,
        fd: int,
        mm: mmap.mmap,
        geometry: Geometry,
        side: Side,
        doorbell_fd: int | None,
        worker_doorbell_fd: int | None = None,
    ) -> None:
        self.fd = fd
        self.mm = mm
        self.geometry = geometry
        self.side = side
        self.doorbell_fd = doorbell_fd
        self.worker_doorbell_fd = worker_doorbell_fd
        self.view = memoryview(mm)
        self.memory = _native.Mapping(self.view)
        self._closed = False

    @classmethod
    def create(
        cls, size: int = DEFAULT_REGION_SIZE, slots: int = DEFAULT_SLOTS, *, name: str = "zeus"
    ) -> Region:
        """Create, size, seal and map a new region, and its doorbell, as the front."""
        geometry = Geometry.compute(size, slots)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        bells: list[int] = []
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _REQUIRED_SEALS)
            for _ in range(2):
                bells.append(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK))
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            for d in (fd, *bells):
                os.close(d)
            raise
        mm[:HEADER_SIZE] = geometry.encode()
        region = cls(fd, mm, geometry, Side.FRONT, bells[0], bells[1])
        region.memory.store_u32(FRONT_PID, os.getpid())
        region.memory.store_u32(Word.FRONT_STATE, State.OPEN)
        return region

    @classmethod
    def attach(
        cls, fd: int, doorbell_fd: int | None = None, worker_doorbell_fd: int | None = None
    ) -> Region:
        """Map an inherited region as the worker, after checking its seals and header.

        The region stays owned by the caller's descriptor ``fd``: ``close()`` closes it.
        """
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise RegionMismatchError(f"descriptor {fd} is not a sealed memfd: {exc}") from None
        if seals & _REQUIRED_SEALS != _REQUIRED_SEALS:
            raise RegionMismatchError(
                f"region on descriptor {fd} is not sealed against resizing (seals {seals:#x})"
            )
        if size < HEADER_SIZE:
            raise RegionMismatchError(f"region of {size} bytes is too small to be a channel")
        # Inherited descriptors stop here: the worker's own children must not get them.
        os.set_inheritable(fd, False)
        for bell in (doorbell_fd, worker_doorbell_fd):
            if bell is not None:
                try:
                    os.set_inheritable(bell, False)
                except OSError as exc:
                    raise RegionMismatchError(f"doorbell descriptor {bell}: {exc}") from None
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            geometry = Geometry.decode(mm[:HEADER_SIZE], size)
        except BaseException:
            mm.close()
            raise
        return cls(fd, mm, geometry, Side.WORKER, doorbell_fd, worker_doorbell_fd)

    @classmethod
    def from_environment(cls, environ: MappingABC[str, str] | None = None) -> Region:
        """Attach the region a Zeus runner prepared for this process."""
        env = os.environ if environ is None else environ
        raw = env.get(ENV_REGION_FD)
        if not raw:
            raise RegionMismatchError(
                f"{ENV_REGION_FD} is not set: this process was not started by a Zeus runner"
            )
        fds: list[int | None] = []
        for name in (ENV_REGION_FD, ENV_DOORBELL_FD, ENV_WORKER_DOORBELL_FD):
            value = env.get(name)
            try:
                fds.append(int(value) if value else None)
            except ValueError:
                raise RegionMismatchError(f"{name}={value!r} is not a descriptor") from None
        fd, bell, worker_bell = fds
        assert fd is not None
        return cls.attach(fd, bell, worker_bell)

    def child_env(self) -> dict[str, str]:
        """Environment entries that tell a child which inherited descriptors to attach."""
        env = {ENV_REGION_FD: str(self.fd)}
        if self.doorbell_fd is not None:
            env[ENV_DOORBELL_FD] = str(self.doorbell_fd)
        if self.worker_doorbell_fd is not None:
            env[ENV_WORKER_DOORBELL_FD] = str(self.worker_doorbell_fd)
        return env

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """Descriptors a child must inherit (for ``subprocess.Popen(pass_fds=...)``)."""
        return tuple(
            d for d in (self.fd, self.doorbell_fd, self.worker_doorbell_fd) if d is not None
        )

    @property
    def own_bell(self) -> int | None:
        """The doorbell this side waits on in an event loop."""
        return self.doorbell_fd if self.side is Side.FRONT else self.worker_doorbell_fd

    @property
    def peer_bell(self) -> int | None:
        """The doorbell this side rings when its peer waits in an event loop."""
        return self.worker_doorbell_fd if self.side is Side.FRONT else self.doorbell_fd

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def check_open(self) -> None:
        """Raise ClosedResourceError if this region was closed."""
        if self._closed:
            raise ClosedResourceError("region is closed")

    def close(self) -> None:
        """Unmap and close the descriptors.  Idempotent.

        If the application still holds a memoryview into the region, the mapping stays until
        that view is gone (the descriptors are closed at once either way).
        """
        if self._closed:
            return
        # BufferError if another thread is blocked on this region: close after it returns.
        self.memory.release()
        self._closed = True
        self.view.release()
        # With views still exported (a message the application still holds), the mapping
        # and the descriptor mmap keeps go with the last of them: drop our reference so that
        # nothing but those views keeps it alive.
        with contextlib.suppress(BufferError):
            self.mm.close()
        del self.mm
        for d in (self.fd, self.doorbell_fd, self.worker_doorbell_fd):
            if d is not None:
                os.close(d)

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self.fd}"
        return (
            f"<Region {self.side.value} {state} size={self.geometry.region_size} "
            f"slots={self.geometry.slots}>"
        )
