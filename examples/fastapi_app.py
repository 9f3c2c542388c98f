"""A small FastAPI application served by Zeus through its ASGI adapter.

    zeus serve examples.fastapi_app:app

Routes: ``/`` (plain text), ``/query`` (the query parameters as JSON), ``POST /echo`` (the
JSON body back), ``/large`` (2 MiB in one piece), ``/stream`` (a body streamed in chunks);
anything else is FastAPI's own 404.  ``/``, ``/large`` and ``/stream``
also answer HEAD.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

app = FastAPI(title="Zeus example")

LARGE_SIZE = (2 << 20) + 7  # not a multiple of any buffer size


def large_body(size: int = LARGE_SIZE) -> bytes:
    """Deterministic bytes: every byte value, repeated, then cut to ``size``."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


async def stream_chunks(count: int = 50) -> AsyncIterator[bytes]:
    """Chunks of varying sizes, each starting with its number."""
    for i in range(count):
        yield f"chunk {i:03d} ".encode() + b"z" * (i * 997 % 8192) + b"\n"
        await asyncio.sleep(0)


@app.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse)
async def index() -> str:
    return "Hello from FastAPI on Zeus!\n"


@app.get("/query")
async def query(request: Request) -> dict[str, list[str]]:
    params = request.query_params
    return {key: params.getlist(key) for key in params}


@app.post("/echo")
async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    try:
        data: Any = json.loads(body)
    except ValueError:
        raise HTTPException(400, "expected a JSON body") from None
    return JSONResponse({"echo": data, "length": len(body)})


@app.api_route("/large", methods=["GET", "HEAD"])
async def large() -> Response:
    return Response(large_body(), media_type="application/octet-stream")


@app.api_route("/stream", methods=["GET", "HEAD"])
async def stream() -> StreamingResponse:
    return StreamingResponse(stream_chunks(), media_type="text/plain")
