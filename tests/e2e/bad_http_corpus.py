"""A corpus of malformed and malicious HTTP/1.1 requests, and what the front must answer.

Data only (``test_bad_http.py`` sends it; ``reliability/fuzz_http.py`` mutates ``SEEDS``).
Each entry is raw bytes as a client would put them on the wire, the statuses allowed, and the
rule behind them: RFC 9112 (HTTP/1.1 message syntax), RFC 9110 (semantics), or -- where the RFCs
leave a choice -- the choice Zeus makes, the safe one for a server behind or in front of
proxies (refuse what two parsers could read differently: that is how requests get smuggled).

``expect`` lists the acceptable statuses; ``EOF`` among them means that closing the connection
without an answer is acceptable too.  Every refusal also closes the connection (the framing
of whatever follows is unknowable).  Never a 500, never a hang.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

EOF: Final = 0  # in ``expect``: the server may close without answering
OK: Final = (200,)


@dataclass(frozen=True, slots=True)
class Bad:
    """One corpus entry."""

    name: str
    raw: bytes
    expect: tuple[int, ...]
    why: str


def req(head: str, body: bytes = b"") -> bytes:
    """``head`` with ``|`` for CRLF (so entries stay on one line), then the body."""
    return head.replace("|", "\r\n").encode("latin-1") + body


GOOD_GET: Final = req("GET /say?good HTTP/1.1|Host: x||")
GOOD_POST: Final = req("POST /echo HTTP/1.1|Host: x|Content-Length: 5||", b"hello")
CHUNKED: Final = "POST /echo HTTP/1.1|Host: x|Transfer-Encoding: chunked||"

CORPUS: Final[list[Bad]] = [
    # ------------------------------------------------------------ smuggling (RFC 9112 §6)
    Bad("cl-then-te", req("POST /echo HTTP/1.1|Host: x|Content-Length: 5|"
                          "Transfer-Encoding: chunked||0||"), (400,),
        "§6.1: CL with TE may be an attempt to smuggle: reject (and close)"),
    Bad("te-then-cl", req(CHUNKED[:-2] + "|Content-Length: 5||0||"), (400,), "§6.1, as above"),
    Bad("cl-conflicting", req("POST /echo HTTP/1.1|Host: x|Content-Length: 5|"
                              "Content-Length: 6||hello!"), (400,),
        "§6.3 (5): differing lengths are an unrecoverable error"),
    Bad("cl-duplicate-equal", req("POST /echo HTTP/1.1|Host: x|Content-Length: 5|"
                                  "Content-Length: 5||hello"), (200, 400),
        "RFC 9110 §8.6: identical duplicates may be merged or refused (llhttp refuses)"),
    Bad("cl-list", req("POST /echo HTTP/1.1|Host: x|Content-Length: 5, 6||hello!"), (400,),
        "§6.3 (5): a list of differing lengths"),
    Bad("cl-list-equal", req("POST /echo HTTP/1.1|Host: x|Content-Length: 5, 5||hello"),
        (200, 400), "RFC 9110 §8.6: may be merged or refused"),
    Bad("cl-plus", req("POST /echo HTTP/1.1|Host: x|Content-Length: +5||hello"), (400,),
        "RFC 9110 §8.6: Content-Length = 1*DIGIT, no sign"),
    Bad("cl-minus", req("POST /echo HTTP/1.1|Host: x|Content-Length: -5||hello"), (400,),
        "1*DIGIT"),
    Bad("cl-inner-space", req("POST /echo HTTP/1.1|Host: x|Content-Length: 1 0||0123456789"),
        (400,), "1*DIGIT"),
    Bad("cl-hex", req("POST /echo HTTP/1.1|Host: x|Content-Length: 0x5||hello"), (400,),
        "1*DIGIT"),
    Bad("cl-underscore", req("POST /echo HTTP/1.1|Host: x|Content-Length: 1_0||0123456789"),
        (400,), "1*DIGIT (Python's int() would take it: must not be the parser)"),
    Bad("cl-empty", req("POST /echo HTTP/1.1|Host: x|Content-Length: ||"), (400,), "1*DIGIT"),
    Bad("cl-2-64", req("POST /echo HTTP/1.1|Host: x|Content-Length: 18446744073709551616||x"),
        (400, 413), "overflows 64 bits: refuse, never wrap"),
    Bad("cl-20-nines", req("POST /echo HTTP/1.1|Host: x|Content-Length: "
                           "99999999999999999999||x"), (400, 413), "overflow"),
    Bad("cl-2-63", req("POST /echo HTTP/1.1|Host: x|Content-Length: 9223372036854775808||x"),
        (400, 413), "over any body limit"),
    Bad("te-chunked-identity", req("POST /echo HTTP/1.1|Host: x|"
                                   "Transfer-Encoding: chunked, identity||0||"), (400,),
        "§6.3 (4): chunked is not the final coding of a request: 400 and close"),
    Bad("te-identity-chunked", req("POST /echo HTTP/1.1|Host: x|"
                                   "Transfer-Encoding: identity, chunked||0||"), (400, 501),
        "§6.1: a coding the server does not understand (identity is no longer registered)"),
    Bad("te-twice", req(CHUNKED[:-2] + "|Transfer-Encoding: chunked||0||"), (400,),
        "chunked applied twice (§6.1: MUST NOT) -- two parsers could disagree"),
    Bad("te-space-before-colon", req("POST /echo HTTP/1.1|Host: x|"
                                     "Transfer-Encoding : chunked||0||"), (400,),
        "§5.1: whitespace between name and colon MUST be rejected with 400"),
    Bad("te-obs-fold", req("POST /echo HTTP/1.1|Host: x|Transfer-Encoding:| chunked||0||"),
        (400,), "§5.2: obs-fold in a request: reject (the safe choice)"),
    Bad("te-unknown", req("POST /echo HTTP/1.1|Host: x|Transfer-Encoding: xchunked||0||"),
        (400, 501), "§6.1: unknown coding"),
    Bad("te-vertical-tab", req("POST /echo HTTP/1.1|Host: x|Transfer-Encoding:\x0bchunked||0||"),
        (400,), "a control character is not whitespace"),
    Bad("te-http-1.0", req("POST /echo HTTP/1.0|Host: x|Connection: keep-alive|"
                           "Transfer-Encoding: chunked||5|hello|0||"), (400,),
        "§6.1: TE in an HTTP/1.0 message means faulty framing: refuse"),
    # ------------------------------------------------- sizes and folding (RFC 9112 §5, §2.3)
    Bad("header-oversized", req("GET / HTTP/1.1|Host: x|X-Big: " + "v" * 9000 + "||"), (431,),
        "RFC 6585 §5"),
    Bad("header-name-oversized", req("GET / HTTP/1.1|Host: x|X" + "n" * 9000 + ": v||"),
        (431, 400), "RFC 6585 §5"),
    Bad("headers-too-many", req("GET / HTTP/1.1|Host: x|" + "X-A: b|" * 150 + "|"), (431,),
        "RFC 6585 §5"),
    Bad("headers-total-oversized", req("GET / HTTP/1.1|Host: x|"
                                       + "".join(f"X-{i}: {'v' * 8000}|" for i in range(12))
                                       + "|"), (431,), "RFC 6585 §5"),
    Bad("target-oversized", req("GET /" + "a" * 20000 + " HTTP/1.1|Host: x||"), (414,),
        "RFC 9110 §15.5.15"),
    Bad("obs-fold", req("GET / HTTP/1.1|Host: x|X-A: a| folded||"), (400,), "§5.2"),
    Bad("fold-after-request-line", req("GET / HTTP/1.1| Host: x||"), (400,),
        "§2.2: whitespace before the first field line: reject"),
    Bad("method-oversized", req("G" * 20000 + " / HTTP/1.1|Host: x||"), (400, 414, 501),
        "no method is this long"),
    # ------------------------------------------------- NUL and control bytes (RFC 9112 §2.2)
    Bad("nul-in-target", req("GET /a\x00b HTTP/1.1|Host: x||"), (400,), "RFC 3986"),
    Bad("nul-in-method", req("G\x00T / HTTP/1.1|Host: x||"), (400, 501), "method = token"),
    Bad("nul-in-header-name", req("GET / HTTP/1.1|Host: x|X\x00A: b||"), (400,),
        "field-name = token"),
    Bad("nul-in-header-value", req("GET / HTTP/1.1|Host: x|X-A: a\x00b||"), (400,),
        "RFC 9110 §5.5: NUL MUST be rejected or replaced"),
    Bad("ctl-in-header-value", req("GET / HTTP/1.1|Host: x|X-A: a\x01b||"), (400,),
        "RFC 9110 §5.5: field-vchar"),
    Bad("del-in-header-value", req("GET / HTTP/1.1|Host: x|X-A: a\x7fb||"), (400,),
        "RFC 9110 §5.5"),
    Bad("del-in-target", req("GET /a\x7fb HTTP/1.1|Host: x||"), (400,), "RFC 3986"),
    Bad("bare-cr-in-value", req("GET / HTTP/1.1|Host: x|X-A: a\rb||"), (400,),
        "§2.2: a bare CR MUST be rejected or replaced"),
    Bad("space-in-header-name", req("GET / HTTP/1.1|Host: x|X A: b||"), (400,), "token"),
    Bad("empty-header-name", req("GET / HTTP/1.1|Host: x|: b||"), (400,), "token"),
    Bad("header-without-colon", req("GET / HTTP/1.1|Host: x|Xvalue||"), (400,), "§5"),
    Bad("space-in-target", req("GET /a b HTTP/1.1|Host: x||"), (400,), "§3"),
    Bad("tab-in-request-line", req("GET\t/ HTTP/1.1|Host: x||"), (400,), "§3: single SP"),
    Bad("two-spaces-in-request-line", req("GET  /say?x HTTP/1.1|Host: x||"), (200, 400),
        "§3: recipients MAY split on whitespace (llhttp does)"),
    Bad("high-bytes-in-method", req("G\xc3\xa9T / HTTP/1.1|Host: x||"), (400, 501),
        "method = token"),
    # ----------------------------------------------------------- Host (RFC 9112 §3.2)
    Bad("host-missing", req("GET /say?x HTTP/1.1||"), (400,),
        "§3.2: an HTTP/1.1 request without Host MUST get 400"),
    Bad("host-twice", req("GET /say?x HTTP/1.1|Host: a|Host: b||"), (400,),
        "§3.2: more than one Host MUST get 400"),
    # ------------------------------------------------------ chunked bodies (RFC 9112 §7.1)
    Bad("chunk-size-overflow", req(CHUNKED, b"ffffffffffffffffffff\r\n"), (400, 413),
        "overflow: refuse, never wrap"),
    Bad("chunk-size-2-64", req(CHUNKED, b"10000000000000000\r\nx\r\n"), (400, 413),
        "overflow"),
    Bad("chunk-size-negative", req(CHUNKED, b"-1\r\nx\r\n0\r\n\r\n"), (400,), "1*HEXDIG"),
    Bad("chunk-size-garbage", req(CHUNKED, b"zz\r\nab\r\n0\r\n\r\n"), (400,), "1*HEXDIG"),
    Bad("chunk-size-0x", req(CHUNKED, b"0x5\r\nhello\r\n0\r\n\r\n"), (400,), "1*HEXDIG"),
    Bad("chunk-size-empty", req(CHUNKED, b"\r\nhello\r\n0\r\n\r\n"), (400,), "1*HEXDIG"),
    Bad("chunk-size-trailing-space", req(CHUNKED, b"5 \r\nhello\r\n0\r\n\r\n"), (400,),
        "no whitespace after the size without an extension"),
    Bad("chunk-missing-crlf", req(CHUNKED, b"5\r\nhelloXX0\r\n\r\n"), (400,),
        "chunk-data is followed by CRLF"),
    Bad("chunk-longer-than-size", req(CHUNKED, b"3\r\nhello\r\n0\r\n\r\n"), (400,),
        "chunk-data is exactly chunk-size bytes"),
    Bad("chunk-bare-lf", req(CHUNKED, b"5\nhello\n0\n\n"), (400,), "§7.1: CRLF"),
    Bad("chunk-extension-oversized", req(CHUNKED, b"5;" + b"e" * 4_000_000
                                         + b"\r\nhello\r\n0\r\n\r\n"), (400, EOF),
        "an endless chunk extension is a denial of service (Go's CVE-2023-39326): bounded"),
    Bad("chunk-extension-bad-char", req(CHUNKED, b"5;a\x00b\r\nhello\r\n0\r\n\r\n"), (400,),
        "chunk-ext = token"),
    Bad("trailer-obs-fold", req(CHUNKED, b"0\r\nX-T: a\r\n b\r\n\r\n"), (400,), "§7.1.2"),
    Bad("trailer-oversized", req(CHUNKED, b"0\r\nX-T: " + b"t" * 9000 + b"\r\n\r\n"),
        (400, 431), "trailers count against the header limits"),
    # ------------------------------------------------------- versions (RFC 9112 §2.3)
    Bad("http-2.0-in-http1-line", req("GET / HTTP/2.0|Host: x||"), (400, 505),
        "RFC 9110 §15.6.6: major version not supported"),
    Bad("http-3.0", req("GET / HTTP/3.0|Host: x||"), (400, 505), "major version"),
    Bad("http-1.2", req("GET /say?x HTTP/1.2|Host: x||"), (400, 505),
        "§2.3 says a higher minor version SHOULD be served as 1.1; llhttp refuses it, and "
        "no HTTP/1.2 exists: Zeus refuses too (400)"),
    Bad("http-0.9-explicit", req("GET / HTTP/0.9|Host: x||"), (400, 505),
        "HTTP/0.9 is not supported"),
    Bad("http-0.9-no-version", req("GET /||"), (400, 505, EOF),
        "an HTTP/0.9 simple request: not supported"),
    Bad("http-lowercase", req("GET / http/1.1|Host: x||"), (400,), "HTTP-name is case-sensitive"),
    Bad("http-no-minor", req("GET / HTTP/1|Host: x||"), (400,), "HTTP/DIGIT.DIGIT"),
    Bad("http-two-digit-major", req("GET / HTTP/11.1|Host: x||"), (400, 505), "DIGIT.DIGIT"),
    Bad("version-trailing-space", req("GET / HTTP/1.1 |Host: x||"), (400,), "§3"),
    Bad("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (400, 505),
        "an HTTP/2 prior-knowledge preface on an HTTP/1 port"),
    # ------------------------------------------------------------ line endings (§2.2)
    Bad("bare-lf", b"GET /say?x HTTP/1.1\nHost: x\n\n", (400,),
        "§2.2 allows accepting bare LF; Zeus refuses it (llhttp strict): a proxy may not"),
    Bad("bare-lf-in-headers", b"GET /say?x HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", (400,),
        "mixed line endings"),
    Bad("bare-cr-line-ends", b"GET /say?x HTTP/1.1\rHost: x\r\r", (400, EOF), "§2.2"),
    # --------------------------------------------------------------------- garbage
    Bad("garbage-line", b"HELLO THERE\r\n\r\n", (400,), "not a request line"),
    Bad("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40)
        + b"\r\n\r\n", (400, EOF), "TLS on a plain-HTTP port"),
    Bad("only-crlfs-then-garbage", b"\r\n\r\n\r\n\x01\x02\x03\r\n\r\n", (400, EOF), "§2.2"),
    Bad("connect-method", req("CONNECT example.com:443 HTTP/1.1|Host: example.com:443||"),
        (501,), "RFC 9110 §9.3.6: a tunnel is a proxy's job; Zeus is no proxy"),
]

# A good request, then garbage on the same connection: the good response comes first, whole,
# then the connection ends (with a 400 or without).
PIPELINED: Final[list[tuple[str, bytes, int]]] = [
    ("get-then-garbage", GOOD_GET + b"GARBAGE\r\n\r\n", 1),
    ("two-gets-then-garbage", GOOD_GET * 2 + b"\x00\x01\x02\r\n\r\n", 2),
    ("post-then-smuggle", GOOD_POST + req("POST /echo HTTP/1.1|Host: x|Content-Length: 5|"
                                          "Transfer-Encoding: chunked||0||"), 1),
    ("get-then-bad-version", GOOD_GET + req("GET / HTTP/2.0|Host: x||"), 1),
    ("get-then-oversized-header", GOOD_GET + req("GET / HTTP/1.1|X: " + "a" * 9000 + "||"), 1),
]

# Valid requests the fuzzer mutates (reliability/fuzz_http.py).  Their answers never echo the
# request (so a "500" the fuzzer finds is a status, not bytes it sent).
SEEDS: Final[list[bytes]] = [
    req("GET /hello HTTP/1.1|Host: x||"),
    req("POST /method HTTP/1.1|Host: x|Content-Length: 5||", b"hello"),
    req("POST /method HTTP/1.1|Host: x|Transfer-Encoding: chunked||",
        b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"),
    req("GET /hello HTTP/1.0|Host: x|Connection: keep-alive||"),
    req("GET /hello HTTP/1.1|Host: x|Accept: */*|User-Agent: fuzz|Cookie: a=b; c=d||"),
    req("POST /method HTTP/1.1|Host: x|Expect: 100-continue|Content-Length: 3||", b"abc"),
    req("GET /hello HTTP/1.1|Host: x||") + req("POST /method HTTP/1.1|Host: x|"
                                                "Content-Length: 2||", b"ok"),
]
