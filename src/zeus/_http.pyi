"""Type stubs for the C extension zeus._http (see src/zeus/_http.c)."""

ParsedRequest = tuple[bytes, bytes, str, list[tuple[bytes, bytes]], bool, int | None, int, int]
"""method, target, version ('1.1' or '1.0'), headers (names lower-cased), keep-alive,
Content-Length (None: none), where the body starts, where the request ends."""

def parse_request(
    data: bytes, start: int, max_line: int, max_headers: int, max_field: int, max_total: int,
    max_body: int, /,
) -> ParsedRequest | None: ...

def frame_response_head(
    status_line: bytes, headers: list[tuple[bytes, bytes]], keep: bool, no_body: bool,
    http11: bool, date_field: bytes, /,
) -> tuple[bytes, bool, int | None, bool]: ...
