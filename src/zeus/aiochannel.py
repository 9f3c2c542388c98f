"""One end of a channel inside an asyncio event loop.

Theory of operation
-------------------
An event loop cannot sleep in FUTEX_WAIT, so a side that runs one sleeps on its *doorbell*, an
eventfd registered with the loop.  A ``ChannelPump`` owns such an end (the front has one per
worker; an ASGI worker has one for its channel):

* When the doorbell rings (or at start), the pump drains the response ring, handing every
  message to ``on_message`` synchronously, then wakes every coroutine waiting for ring or arena
  space, then announces sleep with the doorbell bit (``Channel.prepare_sleep(doorbell=True)``:
  store, full fence, re-check).  If news arrived meanwhile it drains again (on the next loop
  iteration, so one busy worker cannot starve the loop); otherwise it waits for the bell.
* The worker publishes, fences, and rings the bell only if the front announced sleep and it
  has not rung for that announcement yet (PROTOCOL.md, "Waking").

Because the loop is single-threaded, whenever a coroutine runs the pump is either asleep with
its announcement published, or about to drain; so a sender that finds the ring or the arena
full can always wait for the next drain: the worker's next release or tail update rings the
bell, and the drain wakes the sender.  The sleep announcement is only ever withdrawn by the
pump itself, which wakes all waiters whenever it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Final

from zeus.channel import WANT_DATA, WANT_SPACE, Channel, Message
from zeus.core.layout import Flag, Kind
from zeus.errors import ClosedResourceError, PeerLostError, WouldBlock, ZeusError


def _ignore_message(msg: Message) -> None:
    msg.release()


class ChannelPump:
    """Drives one end of a channel from an asyncio loop."""

    def __init__(
        self,
        channel: Channel,
        on_message: Callable[[Message], None],
        on_wake: Callable[[], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        bell = channel.region.own_bell
        if bell is None:
            raise ValueError("this side of the region has no doorbell")
        self.channel: Final = channel
        # The C end itself: the per-message calls (recv, send) skip the blocking end's Python
        # wrappers, with their checks done here (this module is compiled, channel.py is not).
        self._ep: Final = channel._ep
        self._send: Final = channel._ep.send  # bound once (see _drain)
        self._bell = bell
        self._on_message = on_message
        self._on_wake = on_wake
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        self._space: list[asyncio.Future[None]] = []
        self._error: BaseException | None = None
        self._scheduled = False
        self._asleep = False
        self._wants_space = False
        self._closed = False
        self._wake_due = False  # messages sent this loop turn; _flush_wakes is scheduled
        self.drains = 0
        self.sent = 0  # messages published on the request ring (its head, as we count it)
        self.space_waits = 0  # sends that found the ring or arena full (back-pressure)
        # One wake of a sleeping peer per loop turn, not per message (Channel.defer_wakes)
        channel.defer_wakes()
        self._loop.add_reader(bell, self._on_bell)
        self._schedule()

    # ------------------------------------------------------------ the pump

    def _on_bell(self) -> None:
        # try/except, not contextlib.suppress: that is an interpreted object and two calls.
        try:  # noqa: SIM105
            os.eventfd_read(self._bell)
        except BlockingIOError:
            pass
        self._drain()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain_soon)

    def _drain_soon(self) -> None:
        self._scheduled = False
        self._drain()

    def _drain(self) -> None:
        if self._closed:
            return
        ch = self.channel
        if self._asleep:
            self._asleep = False
            ch.finish_sleep()
        self.drains += 1
        on_message = self._on_message
        recv = self._ep.recv  # bound once a drain: a method call by name looks it up each time
        try:
            while True:
                if ch._closed:
                    raise ClosedResourceError("channel is closed")
                msg = recv()
                if msg is None:
                    msg = ch.recv_ready()  # once per drain: is the peer gone?
                    if msg is None:
                        break
                on_message(msg)
        except (ZeusError, ValueError) as exc:
            self.fail(exc)
            return
        self._wake_senders()
        if self._on_wake is not None:
            self._on_wake()
        self._announce()

    def _announce(self) -> None:
        """Announce sleep: wake me for messages, and for space only if a sender waits for it
        (every release by the peer would otherwise ring the doorbell)."""
        want = WANT_DATA | (WANT_SPACE if self._space else 0)
        try:
            seq = self.channel.prepare_sleep(doorbell=True, want=want)
        except ZeusError as exc:
            self.fail(exc)
            return
        if seq is None:
            if self._asleep:
                self.channel.finish_sleep()
            self._asleep = False
            self._schedule()
        else:
            self._asleep = True
            self._wants_space = bool(want & WANT_SPACE)

    def _wake_senders(self) -> None:
        waiters, self._space = self._space, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # ------------------------------------------------------------- sending

    async def send(
        self, msg_id: int, data: bytes | memoryview, kind: int, flags: int = 0
    ) -> None:
        """Send a message of any size, waiting (without blocking the loop) for space."""
        ch = self.channel
        view = memoryview(data).cast("B") if len(data) > ch.max_chunk else data
        n = len(view)
        step = ch.max_chunk
        pos = 0
        while True:
            chunk = view[pos : pos + step] if n > step else view
            last = pos + step >= n
            f = flags if last else (flags & ~int(Flag.END)) | Flag.MORE
            while True:
                self._check()
                try:
                    ch.send_nowait(msg_id, chunk, kind, f)
                    self.sent += 1
                    self._wake_later()
                    break
                except WouldBlock:
                    await self.wait_space()
            if last:
                return
            pos += step

    def send_nowait(self, msg_id: int, data: bytes | memoryview, kind: int, flags: int = 0) -> bool:
        """Send one small message if there is room now; False if not."""
        self._check()
        ch = self.channel
        if len(data) > ch.max_chunk:  # Channel.send_nowait's checks, without its frame
            raise ValueError(f"{len(data)} bytes exceed max_chunk {ch.max_chunk}; use send()")
        if ch._closed:
            raise ClosedResourceError("channel is closed")
        if not self._send(msg_id, kind, flags, data):
            return False
        self.sent += 1
        if not self._wake_due:
            self._wake_later()
        return True

    def cancel(self, msg_id: int) -> None:
        """Tell the worker request ``msg_id`` is abandoned (best effort, never waits)."""
        if self._closed or self._error is not None:
            return
        with contextlib.suppress(WouldBlock, ZeusError):
            self.channel.send_nowait(msg_id, b"", Kind.CANCEL, Flag.END)
            self.sent += 1
            self._wake_later()

    def _wake_later(self) -> None:
        """Wake the peer, if it sleeps, once this loop turn's sends are all published."""
        if not self._wake_due:
            self._wake_due = True
            self._loop.call_soon(self._flush_wakes)

    def _flush_wakes(self) -> None:
        self._wake_due = False
        if not self._closed and not self.channel._closed:
            try:  # noqa: SIM105 (as in _on_bell)
                self._ep.flush_wakes()  # Channel.flush_wakes without its interpreted frame
            except ValueError:  # the mapping went with the channel
                pass

    async def wait_space(self) -> None:
        """Wait until the worker has made progress (consumed messages or released space)."""
        self._check()
        self.space_waits += 1
        fut: asyncio.Future[None] = self._loop.create_future()
        self._space.append(fut)
        if self._asleep and not self._wants_space:
            self._announce()  # re-announce, now asking for space too
        elif not self._asleep:
            self._schedule()
        await fut
        self._check()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ClosedResourceError("channel pump is closed")

    # ----------------------------------------------------------- lifecycle

    def fail(self, exc: BaseException) -> None:
        """Stop pumping because of ``exc``; waiting senders get it; the owner is told once."""
        if self._error is None:
            self._error = exc
            if self._on_error is not None and not self._closed:
                self._loop.call_soon(self._on_error, exc)
        waiters, self._space = self._space, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: the sender may be gone already

    def close(self) -> None:
        """Unregister from the loop and close the channel end.  Idempotent."""
        if self._closed:
            return
        self.fail(PeerLostError("channel closed"))
        self._closed = True
        self._loop.remove_reader(self._bell)
        self.channel.close()
        # Break the cycle owner -> pump -> callbacks -> owner, so the region's mapping goes
        # as soon as the last message view does, not at the next cyclic collection.
        self._on_message = _ignore_message
        self._on_wake = None
        self._on_error = None

    def __repr__(self) -> str:
        return f"<ChannelPump drains={self.drains} asleep={self._asleep} closed={self._closed}>"
