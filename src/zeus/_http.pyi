"""Type stubs for the C extension zeus._http (see src/zeus/_http.c)."""

ParsedRequest = tuple[bytes, bytes, str, list[tuple[bytes, bytes]], bool, int | None, int, int]
"""method, target, version ('1.1' or '1.0'), headers (names lower-cased), keep-alive,
Content-Length (None: none), where the body starts, where the request ends."""

ParseLimits = tuple[int, ...]
"""max_line, max_headers, max_field, max_total, max_body (``tuple[int, ...]`` for mypyc: a
fixed-length tuple of ints would be unboxed, and boxed again at every call)."""

def parse_request(data: bytes, start: int, limits: ParseLimits, /) -> ParsedRequest | None: ...

def frame_response_head(
    status_line: bytes, headers: list[tuple[bytes, bytes]], keep: bool, no_body: bool,
    http11: bool, date_field: bytes, /,
) -> tuple[bytes, bool, int | None, bool]: ...
