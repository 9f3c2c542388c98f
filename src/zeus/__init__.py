"""Zeus: a zero-copy process runner for Python web applications.

The channel layer (``Region``, ``Channel``) passes bytes between two processes through shared
memory; see PROTOCOL.md for the wire format and README.md for the rest.
"""

from zeus.channel import Channel, ChannelStatistics, Message, Reservation
from zeus.core.layout import Flag, Kind, Side
from zeus.core.spin import SpinPolicy
from zeus.errors import (
    ChannelError,
    ClosedResourceError,
    ConfigError,
    PeerBrokenError,
    PeerLostError,
    RegionMismatchError,
    WouldBlock,
    ZeusError,
)
from zeus.region import Region
from zeus.worker import ClientDisconnected, Request, Response, ResponseWriter, Worker

__all__ = [
    "Channel",
    "ChannelError",
    "ChannelStatistics",
    "ClientDisconnected",
    "ClosedResourceError",
    "ConfigError",
    "Flag",
    "Kind",
    "Message",
    "PeerBrokenError",
    "PeerLostError",
    "Region",
    "RegionMismatchError",
    "Request",
    "Reservation",
    "Response",
    "ResponseWriter",
    "Side",
    "SpinPolicy",
    "Worker",
    "WouldBlock",
    "ZeusError",
]
__version__ = "0.1.0"
