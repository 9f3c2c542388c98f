"""zeus._http.parse_request, the strict fast path for ordinary request heads, against httptools.

The fast parser may decline (return None) anything; it must never accept bytes that llhttp
(httptools) rejects or reads differently.  The examples pin each accept and decline rule; the
differential tests feed a grammar of valid and slightly invalid requests to both parsers and
compare every request the fast parser accepts; a test of well-formed requests checks that it
does accept the common shapes, so the differential test cannot pass by declining everything.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeus._http import parse_request

LIMITS = {"max_line": 8190, "max_headers": 100, "max_field": 8190, "max_total": 65536,
          "max_body": 0}
WRK = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
BROWSER = (
    b"GET /static/app.js?v=3 HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: */*\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Referer: https://example.com/\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: a=1; b=2\r\n"
    b"Sec-Fetch-Dest: script\r\n"
    b"Sec-Fetch-Mode: no-cors\r\n"
    b"If-None-Match: \"abc\"\r\n"
    b"\r\n"
)

Result = tuple[bytes, bytes, str, list[tuple[bytes, bytes]], bool, int | None, int, int]


def fast(data: bytes, start: int = 0, **limits: int) -> Result | None:
    lim = {**LIMITS, **limits}
    return parse_request(data, start, (lim["max_line"], lim["max_headers"], lim["max_field"],
                                       lim["max_total"], lim["max_body"]))


class Collector:
    """httptools callbacks, recording what the front would see."""

    def __init__(self) -> None:
        self.parser: Any = None
        self.begun = 0
        self.complete = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.method: bytes | None = None
        self.version: str | None = None
        self.keep_alive: bool | None = None

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method()
        self.version = self.parser.get_http_version()
        self.keep_alive = bool(self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


def slow(data: bytes) -> Collector:
    """Feed `data` to a fresh httptools parser (raises httptools.HttpParserError)."""
    c = Collector()
    c.parser = httptools.HttpRequestParser(c)
    c.parser.feed_data(data)
    return c


def assert_agrees(data: bytes, start: int, r: Result) -> None:
    """httptools reads data[start:end] as exactly one complete request equal to `r`."""
    method, target, version, headers, keep_alive, length, body_start, end = r
    assert start < body_start <= end <= len(data)
    assert end - body_start == (length or 0)
    c = slow(data[start:end])
    assert (c.begun, c.complete) == (1, 1)
    assert c.method == method
    assert c.url == target
    assert c.version == version
    assert c.headers == headers
    assert c.keep_alive == keep_alive
    assert c.body == data[body_start:end]
    # The message ends exactly at `end`: one byte less leaves llhttp still waiting.
    assert slow(data[start:end - 1]).complete == 0


def accepted(data: bytes, start: int = 0, **limits: int) -> Result:
    r = fast(data, start, **limits)
    assert r is not None
    assert_agrees(data, start, r)
    return r


# ----------------------------------------------------------------------------- examples


def test_wrk_request() -> None:
    r = accepted(WRK)
    assert r == (b"GET", b"/hello", "1.1", [(b"host", b"127.0.0.1:8000")], True, None,
                 len(WRK), len(WRK))


def test_browser_request() -> None:
    r = accepted(BROWSER)
    assert r[:3] == (b"GET", b"/static/app.js?v=3", "1.1")
    assert [n for n, _ in r[3]] == [
        b"host", b"user-agent", b"accept", b"accept-language", b"accept-encoding", b"referer",
        b"connection", b"cookie", b"sec-fetch-dest", b"sec-fetch-mode", b"if-none-match"]
    assert r[3][2] == (b"accept", b"*/*")
    assert r[3][-1] == (b"if-none-match", b'"abc"')
    assert r[4:] == (True, None, len(BROWSER), len(BROWSER))


@pytest.mark.parametrize(("connection", "keep_alive"), [
    (b"", False), (b"Connection: keep-alive\r\n", True), (b"connection: Keep-Alive\r\n", True),
    (b"Connection: close\r\n", False),
])
def test_http10_keep_alive(connection: bytes, keep_alive: bool) -> None:
    data = b"GET / HTTP/1.0\r\n" + connection + b"\r\n"
    r = accepted(data)
    assert (r[2], r[4]) == ("1.0", keep_alive)


@pytest.mark.parametrize(("connection", "keep_alive"), [
    (b"", True), (b"Connection: close\r\n", False), (b"Connection: CLOSE\r\n", False),
    (b"Connection: keep-alive\r\n", True),
])
def test_http11_keep_alive(connection: bytes, keep_alive: bool) -> None:
    r = accepted(b"GET / HTTP/1.1\r\nHost: h\r\n" + connection + b"\r\n")
    assert r[4] == keep_alive


def test_http10_without_host_is_fine() -> None:
    assert accepted(b"HEAD /x HTTP/1.0\r\n\r\n")[3] == []


def test_post_with_complete_body() -> None:
    data = b"POST /submit HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world"
    r = accepted(data)
    assert r[5] == 11
    assert data[r[6]:r[7]] == b"hello world"
    assert r[7] == len(data)


def test_content_length_zero_and_leading_zeros() -> None:
    r = accepted(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    assert r[5] == 0 and r[6] == r[7]
    r = accepted(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 003\r\n\r\nabc")
    assert r[5] == 3


def test_pipelined_requests() -> None:
    first = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
    second = b"GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    data = first + second
    r1 = accepted(data)
    assert (r1[1], data[r1[6]:r1[7]], r1[7]) == (b"/a", b"xyz", len(first))
    r2 = accepted(data, r1[7])
    assert (r2[1], r2[4], r2[7]) == (b"/b", False, len(data))
    assert fast(data, r2[7]) is None  # nothing left: incomplete


def test_every_method_options_star_and_value_shapes() -> None:
    for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"):
        assert accepted(m + b" /p?q=1#f HTTP/1.1\r\nHost: h\r\n\r\n")[0] == m
    assert accepted(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")[1] == b"*"
    r = accepted(b"GET / HTTP/1.1\r\nHost:h\r\nX-Empty:\r\nX-Ows:\t \tv  a\tl\r\n"
                 b"X-Blank: \r\nX-T: \"~!#{}\"\r\n\r\n")
    assert r[3] == [(b"host", b"h"), (b"x-empty", b""), (b"x-ows", b"v  a\tl"),
                    (b"x-blank", b""), (b"x-t", b'"~!#{}"')]


def test_shared_objects() -> None:
    a, b = fast(WRK), fast(bytes(WRK))
    assert a is not None and b is not None
    assert a[0] is b[0] and a[2] is b[2] and a[3][0][0] is b[3][0][0]


H = b"Host: h\r\n"

DECLINED = {
    "incomplete head": b"GET / HTTP/1.1\r\nHost: h\r\n",
    "incomplete head CR": b"GET / HTTP/1.1\r\nHost: h\r\n\r",
    "incomplete request line": b"GET /hello HTTP/1.",
    "empty": b"",
    "incomplete body": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabcd",
    "transfer-encoding": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n",
    "expect": b"POST / HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\n\r\n",
    "upgrade": b"GET / HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\n\r\n",
    "proxy-connection": b"GET / HTTP/1.1\r\n" + H + b"Proxy-Connection: close\r\n\r\n",
    "bad method": b"FOO / HTTP/1.1\r\n" + H + b"\r\n",
    "lower-case method": b"get / HTTP/1.1\r\n" + H + b"\r\n",
    "CONNECT": b"CONNECT h:443 HTTP/1.1\r\n" + H + b"\r\n",
    "TRACE": b"TRACE / HTTP/1.1\r\n" + H + b"\r\n",
    "HTTP/2.0": b"GET / HTTP/2.0\r\n" + H + b"\r\n",
    "HTTP/1.2": b"GET / HTTP/1.2\r\n" + H + b"\r\n",
    "http/1.1": b"GET / http/1.1\r\n" + H + b"\r\n",
    "HTTP/0.9": b"GET /\r\n\r\n",
    "bare LF request line": b"GET / HTTP/1.1\n" + H + b"\r\n",
    "bare LF header": b"GET / HTTP/1.1\r\nHost: h\n\r\n",
    "bare LF end": b"GET / HTTP/1.1\r\n" + H + b"\n",
    "bare CR in value": b"GET / HTTP/1.1\r\n" + H + b"X: a\rb\r\n\r\n",
    "leading empty line": b"\r\nGET / HTTP/1.1\r\n" + H + b"\r\n",
    "two spaces": b"GET  / HTTP/1.1\r\n" + H + b"\r\n",
    "tab separator": b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n",
    "trailing space on request line": b"GET / HTTP/1.1 \r\n" + H + b"\r\n",
    "absolute-form": b"GET http://h/ HTTP/1.1\r\n" + H + b"\r\n",
    "GET *": b"GET * HTTP/1.1\r\n" + H + b"\r\n",
    "OPTIONS *x": b"OPTIONS *x HTTP/1.1\r\n" + H + b"\r\n",
    "empty target": b"GET  HTTP/1.1\r\n" + H + b"\r\n",
    "0x80 in target": b"GET /\x80 HTTP/1.1\r\n" + H + b"\r\n",
    "DEL in target": b"GET /\x7f HTTP/1.1\r\n" + H + b"\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n",
    "obs-fold tab": b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tb\r\n\r\n",
    "leading whitespace first header": b"GET / HTTP/1.1\r\n " + H + b"\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    "empty name": b"GET / HTTP/1.1\r\n" + H + b": v\r\n\r\n",
    "no colon": b"GET / HTTP/1.1\r\n" + H + b"X-A\r\n\r\n",
    "bad name char": b"GET / HTTP/1.1\r\n" + H + b"X(A): v\r\n\r\n",
    "NUL in value": b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n",
    "0x80 in value": b"GET / HTTP/1.1\r\n" + H + b"X: a\x80b\r\n\r\n",
    "DEL in value": b"GET / HTTP/1.1\r\n" + H + b"X: a\x7fb\r\n\r\n",
    "trailing space in value": b"GET / HTTP/1.1\r\n" + H + b"X: a \r\n\r\n",
    "trailing tab in value": b"GET / HTTP/1.1\r\n" + H + b"X: a\t\r\n\r\n",
    "two content-lengths": b"POST / HTTP/1.1\r\n" + H
    + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "content-length +5": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nabcde",
    "content-length 5 space": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5 \r\n\r\nabcde",
    "content-length 0x5": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nabcde",
    "content-length -1": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n",
    "content-length empty": b"POST / HTTP/1.1\r\n" + H + b"Content-Length:\r\n\r\n",
    "content-length list": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1, 1\r\n\r\nx",
    "content-length 19 digits": b"POST / HTTP/1.1\r\n" + H
    + b"Content-Length: 0000000000000000001\r\n\r\nx",
    "content-length over 1 MiB": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1048577\r\n\r\n"
    + b"x" * 1048577,
    "missing host 1.1": b"GET / HTTP/1.1\r\n\r\n",
    "two hosts 1.1": b"GET / HTTP/1.1\r\n" + H + b"host: h\r\n\r\n",
    "two hosts 1.0": b"GET / HTTP/1.0\r\n" + H + b"HOST: h\r\n\r\n",
    "connection list": b"GET / HTTP/1.1\r\n" + H + b"Connection: keep-alive, close\r\n\r\n",
    "connection upgrade": b"GET / HTTP/1.1\r\n" + H + b"Connection: upgrade\r\n\r\n",
    "connection other": b"GET / HTTP/1.1\r\n" + H + b"Connection: closed\r\n\r\n",
    "two connections": b"GET / HTTP/1.1\r\n" + H
    + b"Connection: close\r\nConnection: close\r\n\r\n",
}


@pytest.mark.parametrize("data", DECLINED.values(), ids=DECLINED.keys())
def test_declines(data: bytes) -> None:
    assert fast(data) is None


# Each limit: accepted exactly at the limit, declined one below it.
LIMIT_CASES = [
    ("max_line", b"GET /abcd HTTP/1.1\r\nHost: h\r\n\r\n", 5),
    ("max_headers", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-B: 2\r\n\r\n", 3),
    ("max_field", b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: 0123456789\r\n\r\n", 16),
    ("max_total", b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: 0123456789\r\n\r\n", 5 + 16),
    ("max_body", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabcde", 5),
]


@pytest.mark.parametrize(("limit", "data", "value"), LIMIT_CASES,
                         ids=[c[0] for c in LIMIT_CASES])
def test_limits(limit: str, data: bytes, value: int) -> None:
    accepted(data, **{limit: value})
    assert fast(data, **{limit: value - 1}) is None


def test_body_limits() -> None:
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabcde"
    assert fast(data, max_body=0) is not None  # 0: no limit
    big = b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n\r\n" + b"x" * 1048576
    assert fast(big) is not None
    assert fast(big, max_body=1048575) is None
    cl18 = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 000000000000000001\r\n\r\nx"
    assert fast(cl18) is not None


def test_head_size_cap() -> None:
    """A head far longer than its limits allow (here: padding whitespace) is declined."""
    data = b"GET / HTTP/1.1\r\nHost:" + b" " * 300 + b"h\r\n\r\n"
    assert fast(data) is not None
    assert fast(data, max_line=10, max_headers=1, max_field=10, max_total=10) is None


def test_arguments() -> None:
    with pytest.raises(ValueError):
        fast(WRK, -1)
    with pytest.raises(ValueError):
        fast(WRK, len(WRK) + 1)
    assert fast(WRK, len(WRK)) is None
    for other in (bytearray(WRK), memoryview(WRK), WRK.decode()):
        with pytest.raises(TypeError):
            parse_request(other, 0, (8190, 100, 8190, 65536, 0))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_request(WRK, 0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        parse_request(WRK, 0, ("8190", 100, 8190, 65536, 0))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_request(WRK, 0, (8190, 100, 8190, 65536))
    with pytest.raises(TypeError):
        parse_request(WRK, 0, [8190, 100, 8190, 65536, 0])  # type: ignore[arg-type]
    assert fast(b"xx" + WRK, 2) is not None


def test_no_leaks() -> None:
    """Accepting and declining (after headers were built) release every object."""
    declined = WRK[:-2] + b"X: a \r\n\r\n"
    pipelined = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyzGET"
    samples = (WRK, BROWSER, declined, pipelined)

    def run(n: int) -> None:
        for _ in range(n):
            for s in samples:
                fast(s)

    run(1000)
    tracemalloc.start()
    try:
        run(100)
        before = tracemalloc.get_traced_memory()[0]
        run(20000)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024


# ----------------------------------------------------------------------------- differential

TCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
# Names that llhttp or the fast parser treat specially, with values that matter to them.
CONNECTION = ([b"Connection", b"connection", b"CONNECTION", b"Proxy-Connection",
               b"proxy-connection"],
              [b"close", b"Close", b"CLOSE", b"keep-alive", b"Keep-Alive", b"upgrade",
               b"close, upgrade", b"keep-alive, close", b"close,", b"clos", b"closed", b""])
LENGTH = ([b"Content-Length", b"content-length", b"CONTENT-LENGTH"],
          [b"0", b"1", b"5", b"+5", b"5 ", b"5\t", b"0x5", b"-1", b"", b"007", b"1, 1",
           b"99999999999999999999"])
OTHER = ([b"Host", b"host", b"HOST", b"Transfer-Encoding", b"Expect", b"Upgrade",
          b"Keep-Alive", b"TE", b"Trailer"],
         [b"chunked", b"100-continue", b"websocket", b"127.0.0.1:8000", b"a\tb", b"a b", b"5",
          b"close", b""])


def mostly(good: st.SearchStrategy[bytes], bad: st.SearchStrategy[bytes],
           odds: int = 10) -> st.SearchStrategy[bytes]:
    """`good`, but one time in `odds` `bad`: most requests stay in (or near) the fast subset."""
    return st.sampled_from([False] * (odds - 1) + [True]).flatmap(lambda b: bad if b else good)


def text(alphabet: st.SearchStrategy[str] | str, max_size: int) -> st.SearchStrategy[bytes]:
    return st.text(alphabet, max_size=max_size).map(str.encode)


visible = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t")
odd_bytes = st.sampled_from([b"\x00", b"\x01", b"\t", b" ", b"\r", b"\n", b"\x7f", b"\x80",
                             b"\xff", b"\r\n", b":", b"#", b"?", b"%", b",", b"\"", b"\\", b"+",
                             b"-", b"0", b"A"])


def with_odd_byte(s: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.tuples(s, odd_bytes, s).map(b"".join)


methods = mostly(
    st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]),
    st.sampled_from([b"get", b"Get", b"CONNECT", b"TRACE", b"PRI", b"GETS", b"", b"ACL",
                     b"GE", b"OPTION", b"POSTS"]), odds=20)
targets = mostly(
    text(visible, 20).map(lambda t: b"/" + t),
    st.one_of(st.sampled_from([b"*", b"http://h/", b"", b"h:443", b"//", b"/a b", b"a"]),
              with_odd_byte(text(visible, 6)).map(lambda t: b"/" + t), st.binary(max_size=8)),
    odds=10)
versions = mostly(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
                  st.sampled_from([b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/0.9",
                                   b"HTTP/1.1 ", b"HTTP/1.10", b"HTTP/11", b"HTTP/1"]),
                  odds=20)
eols = mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r", b"\r\r\n", b" \r\n", b""]),
              odds=30)
spaces = mostly(st.just(b" "), st.sampled_from([b"  ", b"\t", b""]), odds=30)
folds = mostly(st.just(b""), st.sampled_from([b" ", b"\t", b"\r\n"]), odds=30)
separators = mostly(st.sampled_from([b":", b": ", b":\t", b":  \t "]),
                    st.sampled_from([b" :", b"\t:", b"::", b""]), odds=20)
names = mostly(text(TCHAR, 8).filter(bool),
               st.one_of(st.just(b""), with_odd_byte(text(TCHAR, 4))), odds=20)
values = mostly(text(printable, 12).map(lambda v: v.strip(b" \t")),
                st.one_of(with_odd_byte(text(printable, 6)), text(printable, 12),
                          st.binary(max_size=6)), odds=8)
special_headers: st.SearchStrategy[tuple[bytes, bytes]] = st.one_of(*(
    st.tuples(st.sampled_from(names_), mostly(st.sampled_from(values_),
                                              with_odd_byte(st.sampled_from(values_)), odds=6))
    for names_, values_ in (CONNECTION, LENGTH, OTHER)))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request from a grammar of mostly valid, sometimes slightly invalid pieces."""
    body = draw(st.binary(max_size=12))
    head = [draw(methods), draw(spaces), draw(targets), draw(spaces), draw(versions),
            draw(eols)]
    fields = draw(st.lists(st.tuples(names, separators, values), max_size=5))

    def insert(name: bytes, value: bytes) -> None:
        sep = draw(st.sampled_from([b": ", b":"]))
        fields.insert(draw(st.integers(0, len(fields))), (name, sep, value))

    if draw(st.sampled_from([True] * 5 + [False])):
        insert(b"Host", b"example.com")
    if draw(st.booleans()):
        n = len(body)
        insert(b"Content-Length", draw(st.sampled_from([b"%d" % n, b"%d" % (n + 1), b"0%d" % n])))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        insert(*draw(special_headers))
    for name, sep, value in fields:
        head += [draw(folds), name, sep, value, draw(eols)]
    head.append(draw(eols))
    tail = draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n", b"\r\n", b"x"]))
    return b"".join(head) + body + tail


@settings(max_examples=1000, deadline=None)
@given(data=requests(), prefix=st.sampled_from([b"", b"xyz"]))
def test_differential_against_httptools(data: bytes, prefix: bytes) -> None:
    """Whatever the fast parser accepts, httptools reads the same way."""
    buf = prefix + data
    r = fast(buf, len(prefix))
    if r is not None:
        assert_agrees(buf, len(prefix), r)


@st.composite
def ordinary_requests(draw: st.DrawFn) -> tuple[bytes, Result]:
    """A well-formed request inside the fast subset, with the result it must produce."""
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH",
                                   b"OPTIONS"]))
    path = b"/" + draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                               max_size=30)).encode()
    v11 = draw(st.booleans())
    special = {b"host", b"content-length", b"connection", b"transfer-encoding", b"expect",
               b"upgrade", b"proxy-connection"}
    name = st.text(TCHAR, min_size=1, max_size=16).map(str.encode).filter(
        lambda n: n.lower() not in special)
    value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"),
                    max_size=40).map(lambda s: s.strip(" \t").encode())
    fields = draw(st.lists(st.tuples(name, value), max_size=12))
    if v11 or draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), (b"Host", b"localhost:8000"))
    keep_alive = v11
    conn = draw(st.sampled_from([None, b"close", b"keep-alive", b"Close", b"Keep-Alive"]))
    if conn is not None:
        fields.insert(draw(st.integers(0, len(fields))), (b"Connection", conn))
        keep_alive = conn.lower() == b"keep-alive"
    body = draw(st.binary(max_size=64))
    length: int | None = None
    if body or draw(st.booleans()):
        length = len(body)
        fields.insert(draw(st.integers(0, len(fields))), (b"Content-Length", b"%d" % length))
    ows = st.sampled_from([b"", b" ", b"\t", b"  "])
    head = method + b" " + path + (b" HTTP/1.1\r\n" if v11 else b" HTTP/1.0\r\n")
    head += b"".join(n + b":" + draw(ows) + v + b"\r\n" for n, v in fields) + b"\r\n"
    expected: Result = (method, path, "1.1" if v11 else "1.0",
                        [(n.lower(), v) for n, v in fields], keep_alive, length, len(head),
                        len(head) + len(body))
    return head + body + draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n"])), expected


@settings(max_examples=500, deadline=None)
@given(case=ordinary_requests())
def test_accepts_ordinary_requests(case: tuple[bytes, Result]) -> None:
    """The common shapes are accepted (so the differential test is not vacuous)."""
    data, expected = case
    r = fast(data)
    assert r == expected
    assert_agrees(data, 0, r)


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """An ordinary request with one byte replaced, inserted or deleted in its head, or with one
    special header line (Connection, Content-Length, Proxy-Connection, ...) inserted."""
    data, _ = draw(ordinary_requests())
    head_end = data.index(b"\r\n\r\n") + 4
    kind = draw(st.sampled_from(["replace", "insert", "delete", "header"]))
    if kind == "header":
        at = draw(st.sampled_from([i + 2 for i in range(head_end - 2)
                                   if data[i:i + 2] == b"\r\n"]))
        name, value = draw(special_headers)
        line = name + b": " + value + b"\r\n"
        return data[:at] + line + data[at:]
    at = draw(st.integers(0, head_end - 1))
    byte = draw(st.one_of(odd_bytes, st.binary(min_size=1, max_size=1)))
    if kind == "replace":
        return data[:at] + byte + data[at + 1:]
    if kind == "insert":
        return data[:at] + byte + data[at:]
    return data[:at] + data[at + 1:]


@settings(max_examples=1000, deadline=None)
@given(data=mutated_requests())
def test_differential_near_misses(data: bytes) -> None:
    """Requests one edit away from the fast subset: accepted only if httptools agrees."""
    r = fast(data)
    if r is not None:
        assert_agrees(data, 0, r)
