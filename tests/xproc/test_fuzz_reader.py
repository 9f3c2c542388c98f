"""The front's reader of worker messages, fuzzed: whatever a worker writes into its region, the
reader returns a valid message or raises the channel's own errors -- never another exception,
a crash or a hang (``reliability/fuzz_channel.py`` has the cases and the invariants).

The channel cases run in a child process, so a segfault in the C reader is a failed test, not a
dead test run; a hang is a timeout.  ``make fuzz`` runs the same with 100,000 cases.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeus import PeerBrokenError
from zeus.core.codec import decode_response_head, encode_response_head

ROOT: Final = Path(__file__).resolve().parents[2]
_TOKEN: Final = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def _fuzz(*args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "reliability.fuzz_channel", "--timeout", "60", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    figures: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


@pytest.mark.timeout(120)
def test_reader_survives_hypothesis_cases() -> None:
    """A few hundred hypothesis cases (shrunk to a minimal one on failure)."""
    figures = _fuzz("--cases", "300", "--seed", "20261124")
    assert figures["cases"] == 300
    outcomes = figures["outcomes"]
    assert isinstance(outcomes, dict)
    # The cases reach both sides of the reader: messages taken, and garbage refused.
    assert outcomes.get("recv: ok", 0) > 0 and outcomes.get("recv: PeerBrokenError", 0) > 0


@pytest.mark.timeout(120)
def test_reader_survives_seeded_random_cases() -> None:
    """Thousands of seeded random cases of the same shapes (the long run's engine)."""
    figures = _fuzz("--engine", "random", "--cases", "3000", "--seed", "7")
    assert figures["cases"] == 3000


_header = st.tuples(
    st.one_of(st.sampled_from([b"content-length", b"X-A", b"", b"a b", b"a\x00"]),
              st.binary(max_size=10)),
    st.one_of(st.sampled_from([b"1", b"a\r\nb", b"\x00", b""]), st.binary(max_size=10)),
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.builds(encode_response_head, st.integers(0, 0xFFFF), st.lists(_header, max_size=5)),
    st.builds(lambda head, cut: head[:cut],
              st.builds(encode_response_head, st.integers(0, 0xFFFF),
                        st.lists(_header, max_size=5)),
              st.integers(0, 60)),
))
def test_response_head_decoder_accepts_only_valid_heads(data: bytes) -> None:
    """decode_response_head (the front's parser of a worker's head) returns a valid head or
    raises PeerBrokenError; nothing it returns could break the client's HTTP framing."""
    try:
        head = decode_response_head(data)
    except PeerBrokenError:
        return
    assert 100 <= head.status <= 999
    for name, value in head.headers:
        assert name and set(name) <= _TOKEN, name
        assert not set(value) & {0, 10, 13}, value
