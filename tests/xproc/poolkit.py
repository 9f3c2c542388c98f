"""Helpers shared by the pool tests: run a test body, build a request head, read a reply."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from zeus.core.codec import RequestHead
from zeus.pool import Exchange, Pool

T = TypeVar("T")


def run(test: Callable[[], Awaitable[T]]) -> T:
    """Run an async test body in a fresh event loop."""
    async def main() -> T:
        return await test()

    return asyncio.run(main())


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        values = [v.decode("latin-1") for k, v in self.headers if k == key]
        return ", ".join(values) if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def head(target: str | bytes, method: str = "GET",
         headers: Sequence[tuple[bytes, bytes]] = ()) -> RequestHead:
    return RequestHead(
        method.encode(), target if isinstance(target, bytes) else target.encode(),
        [(b"host", b"testserver"), *headers], client=("127.0.0.1", 50123),
        server=("127.0.0.1", 8000),
    )


async def read_reply(ex: Exchange) -> Reply:
    resp = await ex.response()
    parts = []
    while (chunk := await ex.next_chunk()) is not None:
        with chunk:
            parts.append(bytes(chunk.data))
    return Reply(resp.status, resp.headers, b"".join(parts))


async def fetch(pool: Pool, target: str | bytes, method: str = "GET", body: bytes = b"",
                headers: Sequence[tuple[bytes, bytes]] = ()) -> Reply:
    ex = await pool.submit(head(target, method, headers), body)
    return await read_reply(ex)
