"""Limits and timeouts of the HTTP front, and the canned responses for breaking them."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one client may send, and how slowly.  Sizes in bytes, times in seconds."""

    max_request_line: int = 8190  # URL length, like gunicorn's limit_request_line
    max_headers: int = 100  # number of header fields
    max_header_size: int = 8190  # one field, name plus value
    max_headers_total: int = 65536  # all fields together
    max_body: int = 1 << 30  # 0: unlimited
    header_timeout: float = 10.0  # from the first byte of a request to the end of its head
    body_timeout: float = 30.0  # longest silence while a body is being received
    keepalive_timeout: float = 5.0  # idle connection between requests
    max_pipeline: int = 16  # parsed requests waiting behind the one being answered
    write_high_water: int = 256 * 1024  # pause reading the response from the arena above this
    read_high_water: int = 1 << 20  # pause reading the socket above this much queued body


def error_response(status: int, detail: str = "", *, close: bool = True) -> bytes:
    """A complete short plain-text response for an error the front answers itself."""
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}\n{detail}\n".encode() if detail else f"{status} {phrase}\n".encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n"
    ).encode()
    return head + b"Server: zeus\r\n\r\n" + body
