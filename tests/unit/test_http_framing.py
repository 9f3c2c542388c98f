"""The front's response framing in C (``frame_response_head``) against a plain Python model.

The model is the rule set of ``HttpProtocol._begin`` written out in Python: hop-by-hop fields
dropped ("close" in Connection ends keep-alive), the first all-digit Content-Length kept and
any other dropped, chunked framing for a body without a length on HTTP/1.1 (close on 1.0),
Server and Date added when missing, the Connection field last.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeus._http import frame_response_head

DATE = b"date: Sun, 06 Dec 2026 13:00:00 GMT\r\n"
LINE = b"HTTP/1.1 200 OK\r\n"
HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection", b"upgrade",
       b"te", b"trailer"}


def model(headers: list[tuple[bytes, bytes]], keep: bool, no_body: bool, http11: bool
          ) -> tuple[bytes, bool, int | None, bool]:
    out = [LINE]
    length: int | None = None
    has_server = has_date = False
    for name, value in headers:
        if name in HOP:
            if name == b"connection" and b"close" in value.lower():
                keep = False
            continue
        if name == b"content-length":
            if length is not None or not value.isdigit():
                continue
            length = int(value)
        elif name == b"server":
            has_server = True
        elif name == b"date":
            has_date = True
        out.append(name + b": " + value + b"\r\n")
    chunked = False
    if not no_body and length is None:
        if http11:
            chunked = True
            out.append(b"transfer-encoding: chunked\r\n")
        else:
            keep = False
    if not has_server:
        out.append(b"server: zeus\r\n")
    if not has_date:
        out.append(DATE)
    out.append(b"connection: keep-alive\r\n\r\n" if keep else b"connection: close\r\n\r\n")
    return b"".join(out), keep, length, chunked


def test_a_plain_response() -> None:
    head, keep, length, chunked = frame_response_head(
        LINE, [(b"content-type", b"text/plain"), (b"content-length", b"12")], True, False, True,
        DATE)
    assert head == (LINE + b"content-type: text/plain\r\ncontent-length: 12\r\n"
                    b"server: zeus\r\n" + DATE + b"connection: keep-alive\r\n\r\n")
    assert (keep, length, chunked) == (True, 12, False)


@pytest.mark.parametrize(("headers", "keep", "length", "chunked"), [
    ([(b"connection", b"Close")], False, None, True),
    ([(b"connection", b"keep-alive, CLOSE")], False, None, True),
    ([(b"connection", b"keep-alive")], True, None, True),
    ([(b"content-length", b"5"), (b"content-length", b"7")], True, 5, False),
    ([(b"content-length", b"+5")], True, None, True),
    ([(b"content-length", b"5 ")], True, None, True),
    ([(b"content-length", b"")], True, None, True),
    ([(b"content-length", b"123456789012345678901234567890")], True,
     123456789012345678901234567890, False),
    ([(b"transfer-encoding", b"gzip"), (b"upgrade", b"h2c"), (b"te", b"x"),
      (b"trailer", b"x"), (b"keep-alive", b"1"), (b"proxy-connection", b"x")], True, None, True),
    ([(b"server", b"mine"), (b"date", b"yesterday")], True, None, True),
])
def test_the_rules(headers: list[tuple[bytes, bytes]], keep: bool, length: int | None,
                   chunked: bool) -> None:
    got = frame_response_head(LINE, headers, True, False, True, DATE)
    assert got == model(headers, True, False, True)
    assert got[1:] == (keep, length, chunked)


def test_no_body_and_http10() -> None:
    assert frame_response_head(LINE, [], True, True, True, DATE) == model([], True, True, True)
    head, keep, _, chunked = frame_response_head(LINE, [], True, False, False, DATE)
    assert (keep, chunked) == (False, False)
    assert head.endswith(b"connection: close\r\n\r\n")


def test_many_headers() -> None:
    headers = [(b"x-%d" % i, b"v" * i) for i in range(300)]
    assert frame_response_head(LINE, headers, True, False, True, DATE) == model(
        headers, True, False, True)


def test_wrong_types_are_type_errors() -> None:
    with pytest.raises(TypeError):
        frame_response_head(LINE, [(b"a", "b")], True, False, True, DATE)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        frame_response_head(LINE, [(b"a",)], True, False, True, DATE)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        frame_response_head(LINE, ((b"a", b"b"),), True, False, True, DATE)  # type: ignore[arg-type]


_NAMES = st.sampled_from([b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection",
                          b"upgrade", b"te", b"trailer", b"content-length", b"server", b"date",
                          b"content-type", b"x-a", b"cookie", b"dates", b"tee"])
_VALUES = st.one_of(st.binary(max_size=12), st.sampled_from(
    [b"close", b"CLOSE", b"keep-alive", b"0", b"12", b"007", b"-1", b"1_0", b" 3", b"x-close"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=12), st.booleans(), st.booleans(),
       st.booleans())
def test_matches_the_model(headers: list[tuple[bytes, bytes]], keep: bool, no_body: bool,
                           http11: bool) -> None:
    assert frame_response_head(LINE, headers, keep, no_body, http11, DATE) == model(
        headers, keep, no_body, http11)
