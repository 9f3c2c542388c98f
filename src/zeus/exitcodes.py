"""Exit codes between a worker and its supervisor (a named contract, not magic numbers)."""

from __future__ import annotations

import enum


class WorkerExit(enum.IntEnum):
    """Why a worker process exited, as told by its exit status."""

    OK = 0  # asked to stop (TERM/INT, recycling) and did
    ERROR = 1  # an unexpected error outside any request
    NOT_UNDER_ZEUS = 3  # started without a channel: nothing to serve
    BOOT_FAILURE = 4  # the application could not be imported or started: do not restart
    PEER_LOST = 5  # the front went away
    PEER_BROKEN = 6  # the front broke the channel protocol
    MEMORY_LIMIT = 7  # the application ran out of memory under the worker's limit


class ServerExit(enum.IntEnum):
    """Exit status of the ``zeus`` command."""

    OK = 0
    ERROR = 1
    USAGE = 2  # bad command line or configuration
    BOOT_FAILURE = 4  # the application cannot boot: workers fail before their first request
    CRASH_LOOP = 5  # workers keep dying right after start
