"""The native codec (``zeus.channel``'s head functions, in C) against ``zeus.core.codec``,
the executable specification: same bytes out, same heads back, same refusals."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeus import channel as native
from zeus.core import codec
from zeus.errors import PeerBrokenError

_names = st.binary(min_size=1, max_size=40)
_values = st.binary(max_size=200)
_headers = st.lists(st.tuples(_names, _values), max_size=12)
_hosts = st.one_of(st.none(), st.tuples(st.text(st.characters(max_codepoint=255), min_size=1,
                                                 max_size=40), st.integers(0, 65535)))


@settings(max_examples=300, deadline=None)
@given(method=st.binary(min_size=1, max_size=20), target=st.binary(max_size=300),
       headers=_headers, version=st.sampled_from([b"1.1", b"1.0"]),
       scheme=st.sampled_from(["http", "https"]), client=_hosts, server=_hosts)
def test_request_head_round_trip_matches_the_specification(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], version: bytes,
    scheme: str, client: tuple[str, int] | None, server: tuple[str, int] | None,
) -> None:
    head = codec.RequestHead(method, target, headers, version, scheme, client, server)
    data = codec.encode_request_head(head)
    assert native.encode_request_head(head) == data
    assert native.decode_request_head(data) == codec.decode_request_head(data)


@settings(max_examples=300, deadline=None)
@given(status=st.integers(100, 999), headers=_headers)
def test_response_head_encoding_matches_the_specification(
    status: int, headers: list[tuple[bytes, bytes]],
) -> None:
    data = codec.encode_response_head(status, headers)
    assert native.encode_response_head(status, headers) == data


def _outcome(decode: object, data: bytes) -> object:
    try:
        return decode(data)  # type: ignore[operator]
    except PeerBrokenError as exc:
        return ("refused", str(exc))


@settings(max_examples=500, deadline=None)
@given(status=st.integers(0, 65535), headers=_headers, cut=st.integers(0, 64),
       tail=st.binary(max_size=3), version=st.sampled_from([1, 1, 1, 2]))
def test_response_head_decoding_accepts_and_refuses_as_the_specification(
    status: int, headers: list[tuple[bytes, bytes]], cut: int, tail: bytes, version: int,
) -> None:
    """Hostile heads too: bad names and values, bad status, truncation, trailing bytes."""
    data = bytearray(codec.encode_response_head(status, headers))
    data[0] = version
    variants = [bytes(data), bytes(data[: max(0, len(data) - cut)]), bytes(data) + tail]
    for v in variants:
        assert _outcome(native.decode_response_head, v) == _outcome(
            codec.decode_response_head, v)


@pytest.mark.parametrize("data", [
    b"", b"\x01", struct.pack("<BBHI", 1, 0, 200, 1_000_000),
    struct.pack("<BBHI", 1, 0, 200, 1) + struct.pack("<H", 3) + b"a\rb" + struct.pack("<I", 0),
    struct.pack("<BBHI", 1, 0, 200, 1) + struct.pack("<H", 1) + b"X" + struct.pack("<I", 1)
    + b"\n",
])
def test_hostile_response_heads_are_refused_like_the_specification(data: bytes) -> None:
    assert _outcome(native.decode_response_head, data) == _outcome(
        codec.decode_response_head, data)
    with pytest.raises(PeerBrokenError):
        native.decode_response_head(data)


def test_truncated_request_heads_are_refused_like_the_specification() -> None:
    head = codec.RequestHead(b"GET", b"/x", [(b"a", b"b")], client=("1.2.3.4", 5))
    data = codec.encode_request_head(head)
    for n in range(len(data)):
        assert _outcome(native.decode_request_head, data[:n]) == _outcome(
            codec.decode_request_head, data[:n])


def test_request_head_encoder_refuses_a_malformed_head() -> None:
    """The C encoder reads the head's fields itself: a bad one is an error, not a crash (a
    namespace stands in for the head: a compiled RequestHead would refuse these fields)."""
    encode: Any = native.encode_request_head  # takes anything with a head's attributes
    good: dict[str, object] = {"method": b"GET", "target": b"/", "headers": [],
                               "http_version": b"1.1", "scheme": "http", "client": None,
                               "server": None}
    expected = codec.encode_request_head(codec.RequestHead(b"GET", b"/"))
    assert encode(SimpleNamespace(**good)) == expected
    with pytest.raises(TypeError, match="client"):
        encode(SimpleNamespace(**{**good, "client": ("h", 1, 2)}))
    with pytest.raises(TypeError):
        encode(SimpleNamespace(**{**good, "headers": [(b"a",)]}))
    with pytest.raises(AttributeError):
        encode(object())
