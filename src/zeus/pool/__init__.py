"""The worker pool: processes behind shared-memory channels, and requests handed to them.

``zeus.pool.core`` has the theory of operation.  This package re-exports its public names.
"""

from zeus.pool.config import PoolConfig, PoolStatistics, WorkerStatistics
from zeus.pool.core import Pool, worker_argv
from zeus.pool.exchange import (
    BootFailure,
    Exchange,
    Overloaded,
    RequestTimeout,
    ResponseAborted,
    WorkerLost,
)
from zeus.pool.handle import WorkerHandle, WState

__all__ = [
    "BootFailure",
    "Exchange",
    "Overloaded",
    "Pool",
    "PoolConfig",
    "PoolStatistics",
    "RequestTimeout",
    "ResponseAborted",
    "WState",
    "WorkerHandle",
    "WorkerLost",
    "WorkerStatistics",
    "worker_argv",
]
