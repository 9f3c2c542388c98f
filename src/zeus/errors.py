"""Zeus's exceptions.  Each says whose fault it is.

- ``ZeusError``: the base of everything Zeus raises on purpose.
- ``ConfigError``: the user's configuration is wrong.
- ``WouldBlock``: a ``*_nowait`` call could not proceed right now; nothing was done.
- ``ClosedResourceError``: *you* closed this object and then used it.
- ``RegionMismatchError``: the region handed to ``attach`` is not a Zeus region this code
  speaks (wrong magic, version or geometry) -- the runner's fault, not the peer's.
- ``PeerBrokenError``: the peer wrote something that breaks the protocol (garbage slot, index
  running backwards, offset outside its arena).  The channel is unusable from then on.
- ``PeerLostError``: the peer closed its end or died.
"""

from __future__ import annotations


class ZeusError(Exception):
    """Base class of the errors Zeus raises on purpose."""


class ConfigError(ZeusError):
    """A configuration value or combination is invalid."""


class WouldBlock(ZeusError):
    """A non-blocking call could not proceed now (ring full, arena full, nothing to read)."""


class ClosedResourceError(ZeusError):
    """This object was closed by its owner and cannot be used any more."""


class ChannelError(ZeusError):
    """Base of the errors of a shared-memory channel."""


class RegionMismatchError(ChannelError):
    """The region is not a Zeus channel region this version can attach to."""


class PeerBrokenError(ChannelError):
    """The peer broke the channel protocol; the channel is dead from now on."""


class PeerLostError(ChannelError):
    """The peer closed its end of the channel or its process died."""
