"""Fuzz the front's reader of worker messages with hypothesis.

What is fuzzed is the code the front runs on what a worker wrote: ``Channel.recv_nowait`` (the
C ``Endpoint.take``: ring head, slot, arena placement), the peer-word checks behind
``send_nowait`` and ``prepare_sleep`` (request-ring tail, request-arena release position), and
``decode_response_head`` on every response head it hands out.  Each case is a fresh region
with a front ``Channel`` and, in the same process, a well-behaved worker ``Channel`` whose valid
messages are interleaved with hostile writes: raw slots with crafted or random fields, the
worker's progress words set to crafted values (backwards, past capacity, 2**64 - 1), and random
bytes anywhere in the region.

The invariant, checked after every front call: it returns a valid result or raises
``WouldBlock``, ``PeerBrokenError`` or ``PeerLostError`` -- never another exception; a message
it returns matches the slot it came from and its bytes lie inside the response arena, where
the slot says; once broken, the channel stays broken.  A crash would kill the process and a
hang would stall it, so the cases run in a child process: the parent reports a signal or a
timeout as a failure.

    python -m reliability.fuzz_channel --cases 300         # hypothesis, shrinks failures
    python -m reliability.fuzz_channel --engine random --cases 100000   # the long run

Prints one JSON line: cases, seconds, cases per second, and what the front calls ended in.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Final

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from zeus import Channel, Message, PeerBrokenError, PeerLostError, Region, WouldBlock
from zeus.core.codec import decode_response_head, encode_response_head
from zeus.core.layout import Flag, Kind, Word
from zeus.errors import ZeusError

SIZE: Final = 256 * 1024
SLOTS: Final = 8
SLOT: Final = struct.Struct("<QHHIQQ")  # id, kind, flags, length, offset, reserved
U64: Final = struct.Struct("<Q")
U64_MAX: Final = (1 << 64) - 1
ALLOWED: Final = (WouldBlock, PeerBrokenError, PeerLostError)

OUTCOMES: Counter[str] = Counter()

# ------------------------------------------------------------------ strategies

_u64 = st.one_of(
    st.sampled_from([0, 1, 2, 63, 64, 65, SLOTS - 1, SLOTS, SLOTS + 1, 4096, 1 << 31, 1 << 32,
                     (1 << 63), U64_MAX - 1, U64_MAX]),
    st.integers(0, U64_MAX),
)
_u32 = st.one_of(st.sampled_from([0, 1, 63, 64, 65, 4096, 0x7FFFFFFF, 0xFFFFFFFF]),
                 st.integers(0, 0xFFFFFFFF))
_kind = st.one_of(st.sampled_from([int(k) for k in Kind] + [0, 7, 63, 64, 0xFFFF]),
                  st.integers(0, 0xFFFF))
_flags = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 0x100, 0xFFFF]), st.integers(0, 0xFFFF))
_delta = st.integers(-3, SLOTS + 3)
_WORDS = [Word.RESP_HEAD, Word.REQ_TAIL, Word.REQ_ARENA_FREED, Word.WORKER_STATE,
          Word.WORKER_SLEEP, Word.FRONT_WAKE, Word.WORKER_HEARTBEAT]
_NAMES: Final = [b"content-length", b"x-a", b"set-cookie", b"", b"bad name", b"x\x00"]
_VALUES: Final = [b"1", b"-5", b"v", b"a\r\nb", b"\x00", b""]
_STATUSES: Final = [200, 204, 304, 100, 999, 99, 1000, 0]
_name = st.one_of(st.sampled_from(_NAMES), st.binary(max_size=12))
_value = st.one_of(st.sampled_from(_VALUES), st.binary(max_size=16))
_head = st.one_of(
    st.builds(lambda s, h: encode_response_head(s, h),
              st.one_of(st.sampled_from(_STATUSES), st.integers(0, 0xFFFF)),
              st.lists(st.tuples(_name, _value), max_size=4)),
    st.binary(max_size=64),
)

OPS = st.one_of(
    # a worker behaving: a valid message (a response head, valid or not as a head, or data)
    st.tuples(st.just("send"), _u64, st.sampled_from([Kind.RESPONSE_HEAD, Kind.RESPONSE_BODY,
                                                      Kind.CANCEL]),
              st.sampled_from([0, int(Flag.END), int(Flag.MORE)]), _head),
    st.tuples(st.just("send_big"), st.integers(1, SIZE // 4)),
    # a worker misbehaving
    st.tuples(st.just("slot"), _delta, _u64, _kind, _flags, _u32, _u64,
              st.one_of(st.just(0), _u64)),
    st.tuples(st.just("word"), st.sampled_from(_WORDS), _u64),
    st.tuples(st.just("nudge"), st.sampled_from(_WORDS[:3]), st.integers(-SLOTS - 2, SLOTS + 2)),
    st.tuples(st.just("bytes"), st.integers(0, SIZE - 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("worker_recv")),
    # the front reading
    st.tuples(st.just("recv")), st.tuples(st.just("recv")), st.tuples(st.just("recv")),
    st.tuples(st.just("release"), st.integers(0, 7)),
    st.tuples(st.just("front_send"), st.integers(0, SIZE // 16)),
    st.tuples(st.just("sleep")),
)

# ------------------------------------------------------------------- the case


class Case:
    """One front channel and one in-process worker channel on a fresh region."""

    def __init__(self) -> None:
        self.region = Region.create(SIZE, SLOTS, name="zeus-fuzz")
        r = self.region
        bell = os.dup(r.doorbell_fd) if r.doorbell_fd is not None else None
        self.wregion = Region.attach(os.dup(r.fd), bell, None)
        self.front = Channel(self.region, peer_pid=None)
        self.worker = Channel(self.wregion, peer_pid=os.getpid())
        self.g = r.geometry
        self.held: list[Message] = []
        self.wheld: list[Message] = []
        self.taken = 0  # messages the front has taken (its tail, as the invariant sees it)
        self.broken: str | None = None
        self.next_id = 1

    def close(self) -> None:
        for m in self.held + self.wheld:
            m.release()
        self.front.close()
        self.worker.close()
        self.wregion.close()
        self.region.close()

    def u64(self, off: int) -> int:
        return int(U64.unpack_from(self.region.view, off)[0])

    def put64(self, off: int, value: int) -> None:
        U64.pack_into(self.region.view, off, value & U64_MAX)

    # ---------------------------------------------------------- the worker

    def worker_op(self, op: tuple[Any, ...]) -> None:
        """A worker action: its own errors (it may have broken itself) do not matter."""
        name = op[0]
        w = self.worker
        try:
            if name == "send":
                _, msg_id, kind, flags, payload = op
                w.send_nowait(msg_id, b"" if kind == Kind.CANCEL else payload, kind, flags)
            elif name == "send_big":
                w.send_nowait(self.next_id, bytes(op[1]), Kind.RESPONSE_BODY, 0)
                self.next_id += 1
            elif name == "worker_recv":
                while True:
                    msg = w.recv_nowait()
                    if len(self.wheld) < 2 and msg.data.nbytes:
                        self.wheld.append(msg)
                    else:
                        msg.release()
        except (ZeusError, ValueError):
            pass

    def hostile_op(self, op: tuple[Any, ...]) -> None:
        name = op[0]
        g = self.g
        view = self.region.view
        if name == "slot":
            _, delta, msg_id, kind, flags, length, offset, reserved = op
            head = self.u64(Word.RESP_HEAD)
            at = g.resp_ring + ((head + delta) % g.slots) * SLOT.size
            SLOT.pack_into(view, at, msg_id, kind, flags, length, offset, reserved)
            if delta >= 0:
                self.put64(Word.RESP_HEAD, head + delta + 1)
        elif name == "word":
            _, word, value = op
            if word in (Word.WORKER_STATE, Word.WORKER_SLEEP, Word.FRONT_WAKE):
                struct.pack_into("<I", view, word, value & 0xFFFFFFFF)
            else:
                self.put64(word, value)
        elif name == "nudge":
            _, word, delta = op
            self.put64(word, self.u64(word) + delta)
        elif name == "bytes":
            _, off, data = op
            view[off : off + len(data)] = data[: SIZE - off]

    # ----------------------------------------------------------- the front

    def front_op(self, op: tuple[Any, ...]) -> None:
        """A front call; anything but a valid result or an allowed error fails the case."""
        name = op[0]
        was_broken = self.broken
        try:
            if name == "recv":
                self.recv()
            elif name == "release":
                if self.held:
                    self.held.pop(op[1] % len(self.held)).release()
                return
            elif name == "front_send":
                self.front.send_nowait(self.next_id, bytes(op[1]), Kind.REQUEST_BODY, 0)
                self.next_id += 1
            elif name == "sleep" and self.front.prepare_sleep(doorbell=True) is not None:
                self.front.finish_sleep()
            OUTCOMES[f"{name}: ok"] += 1
        except ALLOWED as exc:
            OUTCOMES[f"{name}: {type(exc).__name__}"] += 1
            if isinstance(exc, PeerBrokenError):
                assert was_broken is None or str(exc) == was_broken, (was_broken, exc)
                self.broken = str(exc)
            elif was_broken is not None and not isinstance(exc, PeerLostError):
                raise AssertionError(f"{name} after the channel broke: {exc!r}") from exc
            return
        if was_broken is not None:
            raise AssertionError(f"{name} went through on a broken channel ({was_broken})")

    def recv(self) -> None:
        g = self.g
        at = g.resp_ring + (self.taken % g.slots) * SLOT.size
        msg_id, kind, flags, length, offset, reserved = SLOT.unpack_from(self.region.view, at)
        msg = self.front.recv_nowait()
        self.taken += 1
        # The message is the slot the front copied (the harness writes nothing concurrently).
        assert (msg.id, msg.kind, msg.flags) == (msg_id, kind, flags), (msg, op_slot(at, self))
        assert reserved == 0 and kind in {int(k) for k in Kind}, msg
        data = msg.data
        assert data.nbytes == length, (data.nbytes, length)
        if length:
            assert offset + length <= g.resp_arena_size, (offset, length)
            start = g.resp_arena + offset
            assert bytes(data) == bytes(self.region.view[start : start + length])
        else:
            assert offset == 0
        if kind == Kind.RESPONSE_HEAD and not msg.more:
            try:
                decode_response_head(data)
                OUTCOMES["decode: ok"] += 1
            except PeerBrokenError:
                OUTCOMES["decode: PeerBrokenError"] += 1
        if len(self.held) < 6:
            self.held.append(msg)
        else:
            msg.release()


def op_slot(at: int, case: Case) -> bytes:
    return bytes(case.region.view[at : at + SLOT.size])


def run_case(ops: list[tuple[Any, ...]]) -> None:
    """Play ``ops`` against a fresh region; raise AssertionError if the front misbehaves."""
    case = Case()
    try:
        for op in ops:
            name = op[0]
            if name in ("send", "send_big", "worker_recv"):
                case.worker_op(op)
            elif name in ("slot", "word", "nudge", "bytes"):
                case.hostile_op(op)
            else:
                case.front_op(op)
        case.front_op(("recv",))
        case.front_op(("sleep",))
    finally:
        case.close()


# ------------------------------------------------- the seeded engine (no hypothesis)

_SPECIAL_U64: Final = [0, 1, 2, 63, 64, 65, SLOTS - 1, SLOTS, SLOTS + 1, 4096, 1 << 31, 1 << 32,
                       1 << 63, U64_MAX - 1, U64_MAX]
_SPECIAL_U32: Final = [0, 1, 63, 64, 65, 4096, 0x7FFFFFFF, 0xFFFFFFFF]


def _pick(rng: random.Random, special: list[int], bits: int) -> int:
    return rng.choice(special) if rng.random() < 0.6 else rng.getrandbits(bits)


def random_ops(rng: random.Random) -> list[tuple[Any, ...]]:
    """One case drawn like ``OPS`` (same shapes and special values), without hypothesis:
    several times faster per case, for the long run."""
    ops: list[tuple[Any, ...]] = []
    kinds = [int(k) for k in Kind] + [0, 7, 63, 64, 0xFFFF]
    flag_values = [0, 1, 2, 3, 4, 0x100, 0xFFFF]
    for _ in range(rng.randint(1, 40)):
        r = rng.randrange(13)
        if r == 0:
            head = (encode_response_head(_pick(rng, _STATUSES, 16), [
                (rng.choice(_NAMES) if rng.random() < 0.7 else rng.randbytes(rng.randrange(13)),
                 rng.choice(_VALUES) if rng.random() < 0.7 else rng.randbytes(rng.randrange(17)))
                for _ in range(rng.randrange(5))]) if rng.random() < 0.7
                else rng.randbytes(rng.randrange(65)))
            ops.append(("send", _pick(rng, _SPECIAL_U64, 64),
                        rng.choice([Kind.RESPONSE_HEAD, Kind.RESPONSE_BODY, Kind.CANCEL]),
                        rng.choice([0, int(Flag.END), int(Flag.MORE)]), head))
        elif r == 1:
            ops.append(("send_big", rng.randint(1, SIZE // 4)))
        elif r == 2:
            ops.append(("slot", rng.randint(-3, SLOTS + 3), _pick(rng, _SPECIAL_U64, 64),
                        rng.choice(kinds) if rng.random() < 0.7 else rng.getrandbits(16),
                        rng.choice(flag_values) if rng.random() < 0.7 else rng.getrandbits(16),
                        _pick(rng, _SPECIAL_U32, 32), _pick(rng, _SPECIAL_U64, 64),
                        0 if rng.random() < 0.5 else _pick(rng, _SPECIAL_U64, 64)))
        elif r == 3:
            ops.append(("word", rng.choice(_WORDS), _pick(rng, _SPECIAL_U64, 64)))
        elif r == 4:
            ops.append(("nudge", rng.choice(_WORDS[:3]), rng.randint(-SLOTS - 2, SLOTS + 2)))
        elif r == 5:
            ops.append(("bytes", rng.randrange(SIZE), rng.randbytes(rng.randint(1, 64))))
        elif r == 6:
            ops.append(("worker_recv",))
        elif r in (7, 8, 9):
            ops.append(("recv",))
        elif r == 10:
            ops.append(("release", rng.randrange(8)))
        elif r == 11:
            ops.append(("front_send", rng.randint(0, SIZE // 16)))
        else:
            ops.append(("sleep",))
    return ops


def run_random(cases: int, seed_value: int) -> int:
    """Run ``cases`` seeded random cases; on a failure print the case (replayable) and
    re-raise."""
    rng = random.Random(seed_value)
    for i in range(cases):
        ops = random_ops(rng)
        try:
            run_case(ops)
        except Exception:
            print(f"FAILING CASE {i} (seed {seed_value}): {ops!r}", file=sys.stderr)
            raise
    return cases


# -------------------------------------------------------------------- driving


def run(cases: int, seed_value: int, engine: str) -> dict[str, object]:
    """Run ``cases`` examples in this process with ``engine``; return the figures."""
    count = 0
    if engine == "random":
        started = time.monotonic()
        count = run_random(cases, seed_value)
        seconds = time.monotonic() - started
        return {"engine": engine, "cases": count, "seconds": round(seconds, 1),
                "cases_per_second": round(count / seconds) if seconds else None,
                "outcomes": dict(sorted(OUTCOMES.items()))}

    @seed(seed_value)
    @settings(max_examples=cases, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(st.lists(OPS, min_size=1, max_size=40))
    def prop(ops: list[tuple[Any, ...]]) -> None:
        nonlocal count
        count += 1
        run_case(ops)

    started = time.monotonic()
    prop()
    seconds = time.monotonic() - started
    return {"engine": engine, "cases": count, "seconds": round(seconds, 1),
            "cases_per_second": round(count / seconds) if seconds else None,
            "outcomes": dict(sorted(OUTCOMES.items()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100_000, help="hypothesis examples to run")
    p.add_argument("--seed", type=int, default=int(time.time()), help="hypothesis seed")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a hang is declared")
    p.add_argument("--engine", choices=["hypothesis", "random"], default="hypothesis",
                   help="hypothesis (shrinks a failure to a minimal case) or a seeded random "
                   "generator of the same cases (several times faster)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run(args.cases, args.seed, args.engine)), flush=True)
        return 0
    cmd = [sys.executable, "-m", "reliability.fuzz_channel", "--child", "--cases",
           str(args.cases), "--seed", str(args.seed), "--engine", args.engine]
    try:
        proc = subprocess.run(cmd, timeout=args.timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        print(f"FAIL: the reader hung (no result in {args.timeout:.0f}s); seed {args.seed}")
        return 1
    if proc.returncode != 0:
        how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        print(f"FAIL: fuzzing process {how}; seed {args.seed}\n{proc.stdout}\n"
              f"{proc.stderr[-8000:]}")
        return 1
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["seed"] = args.seed
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
