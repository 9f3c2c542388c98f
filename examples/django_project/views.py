"""Views of the example Django project.

``/`` (plain text), ``/query`` (the query parameters as JSON), ``POST /echo`` (the JSON body
back), ``/large`` (2 MiB in one piece), ``/stream`` (a body streamed in chunks); anything else
is Django's own 404.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.http import require_GET, require_POST, require_safe

LARGE_SIZE = (2 << 20) + 7  # not a multiple of any buffer size


def large_body(size: int = LARGE_SIZE) -> bytes:
    """Deterministic bytes: every byte value, repeated, then cut to ``size``."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def stream_chunks(count: int = 50) -> Iterator[bytes]:
    """Chunks of varying sizes, each starting with its number."""
    for i in range(count):
        yield f"chunk {i:03d} ".encode() + b"z" * (i * 997 % 8192) + b"\n"


@require_safe
def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django on Zeus!\n", content_type="text/plain")


@require_GET
def query(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dict(request.GET.lists()))


@require_POST
def echo(request: HttpRequest) -> HttpResponse:
    try:
        data = json.loads(request.body)
    except ValueError:
        return HttpResponseBadRequest("expected a JSON body")
    return JsonResponse({"echo": data, "length": len(request.body)})


@require_safe
def large(request: HttpRequest) -> HttpResponse:
    return HttpResponse(large_body(), content_type="application/octet-stream")


@require_safe
def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(stream_chunks(), content_type="text/plain")
