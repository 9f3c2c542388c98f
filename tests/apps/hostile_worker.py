"""A worker program that serves normally until it is armed, then writes garbage into its own
channel region: the hostile worker of RELIABILITY.md ("Hostile workers").

Run as ``zeus run -- python tests/apps/hostile_worker.py``.  Every worker serves:

- ``/pid``: the worker's pid.
- ``/hello``: a short fixed body.
- ``/lengths?V1,V2``: the body ``hello`` with a Content-Length header for each value given
  (crafted lengths: what a worker can make the front say to a client).

Arming: ``$HOSTILE_DIR/arm`` holds ``KIND[,KIND...] [AFTER]``.  On each request a worker that is
not hostile yet tries to rename ``arm`` to ``armed-PID``; the rename is atomic, so exactly one
worker of the pool wins and turns hostile.  After ``AFTER`` more requests (default 0) it attacks
inside the handler of a request (which is therefore in flight when the front notices): it
performs each KIND in order (``random`` picks one of ``DETECTABLE`` at random), writes one line
per attack to ``$HOSTILE_DIR/attack-PID`` (``KIND VALUE``: the bad value the front should
name) and rings the front's doorbell.  After a detectable attack it waits (``STALL``) for the
front to kill it -- its own next publication would overwrite the garbage -- and otherwise goes
on serving as if nothing happened.

Attacks in ``DETECTABLE`` break a rule the front checks whenever it next looks at the channel,
so the front must kill this worker and log why; attacks in ``HARMLESS`` scribble over words the
front never reads back (it keeps its own copy) or over data only this worker reads, so the
front must simply go on.  The slot, index and state attacks write straight into the shared
mapping, as a buggy or malicious program in any language could; the ID and head attacks send
well-framed messages with bad contents.  The record is written before the garbage: the front
may kill this process the moment it sees it.
"""

from __future__ import annotations

import os
import random
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from zeus import Request, Response, Worker
from zeus.core.codec import encode_response_head
from zeus.core.layout import Flag, Kind, State, Word
from zeus.region import Region

SLOT: Final = struct.Struct("<QHHIQQ")  # id, kind, flags, length, offset, reserved
U64: Final = struct.Struct("<Q")
U32: Final = struct.Struct("<I")
U64_MAX: Final = (1 << 64) - 1
STALL: Final = 10.0  # seconds a worker waits, after a detectable attack, to be killed


class Hostile:
    """This worker's malice: what it does to its own region once armed."""

    def __init__(self, worker: Worker, where: Path) -> None:
        self.worker = worker
        self.region: Region = worker.channel.region
        self.where = where
        self.rng = random.Random(os.getpid())
        self.kinds: list[str] = []
        self.countdown = -1  # requests left before attacking; -1: not armed
        self.done: set[int] = set()  # ids of requests answered (stale ids for the attacks)
        # The writes of the attacks, done only once their record is on disk: the front may
        # kill this process the moment it sees the first one.
        self.actions: list[Callable[[], None]] = []

    # ------------------------------------------------------------- raw access

    def u64(self, offset: int) -> int:
        return int(U64.unpack_from(self.region.view, offset)[0])

    def put64(self, offset: int, value: int) -> None:
        self.later(lambda: U64.pack_into(self.region.view, offset, value & U64_MAX))

    def later(self, action: Callable[[], None]) -> None:
        self.actions.append(action)

    def send(self, msg_id: int, data: bytes, kind: int, flags: int) -> None:
        self.later(lambda: self.worker.channel.send(msg_id, data, kind, flags))

    def publish_slot(self, msg_id: int, kind: int, flags: int, length: int, offset: int,
                     reserved: int = 0) -> None:
        """Write a slot at the next response-ring index and move the head over it."""
        self.later(lambda: self.publish_raw(SLOT.pack(
            msg_id & U64_MAX, kind, flags, length & 0xFFFFFFFF, offset & U64_MAX,
            reserved & U64_MAX)))

    def publish_raw(self, slot: bytes) -> None:
        g = self.region.geometry
        head = self.u64(Word.RESP_HEAD)
        at = g.resp_ring + (head % g.slots) * SLOT.size
        self.region.view[at : at + SLOT.size] = slot
        U64.pack_into(self.region.view, Word.RESP_HEAD, (head + 1) & U64_MAX)

    # ----------------------------------------------------------- the attacks

    def slot_random(self, req: Request) -> str:
        raw = self.rng.randbytes(SLOT.size)
        self.later(lambda: self.publish_raw(raw))
        return f"kind {struct.unpack_from('<H', raw, 8)[0]}"

    def slot_kind(self, req: Request) -> str:
        kind = self.rng.choice([0, 7, 63, 64, 0xBEEF, 0xFFFF])
        self.publish_slot(req.id, kind, 0, 0, 0)
        return f"kind {kind},"

    def slot_flags(self, req: Request) -> str:
        flags = self.rng.choice([0x3, 0x4, 0x100, 0xFFFF])
        self.publish_slot(req.id, Kind.RESPONSE_BODY, flags, 0, 0)
        return f"flags {flags:#x}"

    def slot_reserved(self, req: Request) -> str:
        reserved = self.rng.choice([1, 1 << 63, U64_MAX])
        self.publish_slot(req.id, Kind.RESPONSE_BODY, 0, 0, 0, reserved)
        return f"reserved {reserved} "

    def slot_offset(self, req: Request) -> str:
        size = self.region.geometry.resp_arena_size
        offset = self.rng.choice([size, size + 64, 1 << 40, U64_MAX, 4096 + 64])
        self.publish_slot(req.id, Kind.RESPONSE_BODY, 0, 64, offset)
        return f"offset {offset}"

    def slot_length(self, req: Request) -> str:
        size = self.region.geometry.resp_arena_size
        length = self.rng.choice([size + 1, 0xFFFFFFFF])
        self.publish_slot(req.id, Kind.RESPONSE_BODY, 0, length, 0)
        return f"{length} bytes"

    def empty_with_offset(self, req: Request) -> str:
        self.publish_slot(req.id, Kind.RESPONSE_BODY, 0, 0, 128)
        return "offset 128"

    def unknown_id(self, req: Request) -> str:
        msg_id = self.rng.randrange(1 << 40, 1 << 64)
        self.send(msg_id, encode_response_head(200, []), Kind.RESPONSE_HEAD, 0)
        return f"request {msg_id},"

    def stale_id(self, req: Request) -> str:
        msg_id = min(self.done) if self.done else 1
        self.send(msg_id, b"stale", Kind.RESPONSE_BODY, Flag.END)
        return f"request {msg_id},"

    def bad_head(self, req: Request) -> str:
        head, value = self.rng.choice([
            (encode_response_head(200, [(b"x-evil", b"a\r\nset-cookie: pwned")]), "x-evil"),
            (encode_response_head(200, [(b"bad name", b"v")]), "bad name"),
            (encode_response_head(42, []), "status 42"),
            (b"\x07" + encode_response_head(200, [])[1:], "version 7"),
            (encode_response_head(200, [])[:5], "truncated"),
        ])
        self.send(req.id, head, Kind.RESPONSE_HEAD, 0)
        return value

    def head_backwards(self, req: Request) -> str:
        self.put64(Word.RESP_HEAD, 0)
        return "ring head 0 "

    def head_past_capacity(self, req: Request) -> str:
        value = self.u64(Word.RESP_TAIL) + self.region.geometry.slots + 1 + self.rng.randrange(9)
        self.put64(Word.RESP_HEAD, value)
        return f"ring head {value} "

    def head_huge(self, req: Request) -> str:
        self.put64(Word.RESP_HEAD, U64_MAX)
        return f"ring head {U64_MAX} "

    def tail_backwards(self, req: Request) -> str:
        self.put64(Word.REQ_TAIL, 0)
        return "ring tail 0 "

    def tail_past_head(self, req: Request) -> str:
        value = self.u64(Word.REQ_HEAD) + 1 + self.rng.randrange(1000)
        self.put64(Word.REQ_TAIL, value)
        return f"ring tail {value} "

    def freed_backwards(self, req: Request) -> str:
        self.put64(Word.REQ_ARENA_FREED, 0)
        return "release position 0 "

    def freed_past_head(self, req: Request) -> str:
        value = self.rng.choice([1 << 40, U64_MAX])
        self.put64(Word.REQ_ARENA_FREED, value)
        return f"release position {value} "

    def closed_alive(self, req: Request) -> str:
        self.later(lambda: U32.pack_into(self.region.view, Word.WORKER_STATE, State.CLOSED))
        return "closed its channel"

    # Harmless: words the front never reads back, or bytes only this worker reads.

    def scribble_header(self, req: Request) -> str:
        junk = self.rng.randbytes(128)
        self.later(lambda: self.region.view.__setitem__(slice(0, 128), junk))
        return "header"

    def scribble_front_words(self, req: Request) -> str:
        # (Not the ring and release words: this worker reads those, and would break itself.)
        for word in (Word.FRONT_SLEEP, Word.FRONT_WAKE, Word.FRONT_COUNTERS):
            self.put64(word, self.rng.getrandbits(64))
        return "front words"

    def scribble_heartbeat(self, req: Request) -> str:
        self.put64(Word.WORKER_HEARTBEAT, self.rng.getrandbits(64))
        return "heartbeat"

    # --------------------------------------------------------------- driving

    def on_request(self, req: Request) -> None:
        """Called at the start of every request: arm, count down, attack."""
        if self.countdown < 0:
            self.try_arm()
            if self.countdown < 0:
                return
        if self.countdown > 0:
            self.countdown -= 1
            return
        self.countdown = -2  # attacks once
        lines = []
        for kind in self.kinds:
            name = self.rng.choice(sorted(DETECTABLE)) if kind == "random" else kind
            lines.append(f"{name} {ATTACKS[name](self, req)}\n")
        record = self.where / f"attack-{os.getpid()}"
        record.with_suffix(".tmp").write_text("".join(lines))
        record.with_suffix(".tmp").rename(record)  # appears whole
        for action in self.actions:
            action()
        self.worker.channel._ep.wake_peer()  # ring the front's doorbell: look now
        if any(kind not in HARMLESS for kind in self.kinds):
            # Leave the garbage in place until the front looks: this worker's own next
            # publication would otherwise overwrite it (the front then never saw any).
            time.sleep(STALL)

    def try_arm(self) -> None:
        if self.countdown == -2:
            return
        armed = self.where / f"armed-{os.getpid()}"
        try:
            os.rename(self.where / "arm", armed)
        except FileNotFoundError:
            return
        spec = armed.read_text().split()
        self.kinds = spec[0].split(",")
        self.countdown = int(spec[1]) if len(spec) > 1 else 0


Attack = Callable[[Hostile, Request], str]

DETECTABLE: Final[dict[str, Attack]] = {
    "slot-random": Hostile.slot_random,
    "slot-kind": Hostile.slot_kind,
    "slot-flags": Hostile.slot_flags,
    "slot-reserved": Hostile.slot_reserved,
    "slot-offset": Hostile.slot_offset,
    "slot-length": Hostile.slot_length,
    "empty-with-offset": Hostile.empty_with_offset,
    "unknown-id": Hostile.unknown_id,
    "stale-id": Hostile.stale_id,
    "bad-head": Hostile.bad_head,
    "head-backwards": Hostile.head_backwards,
    "head-past-capacity": Hostile.head_past_capacity,
    "head-huge": Hostile.head_huge,
    "tail-backwards": Hostile.tail_backwards,
    "tail-past-head": Hostile.tail_past_head,
    "freed-backwards": Hostile.freed_backwards,
    "freed-past-head": Hostile.freed_past_head,
    "closed-alive": Hostile.closed_alive,
}
HARMLESS: Final[dict[str, Attack]] = {
    "scribble-header": Hostile.scribble_header,
    "scribble-front-words": Hostile.scribble_front_words,
    "scribble-heartbeat": Hostile.scribble_heartbeat,
}
ATTACKS: Final[dict[str, Attack]] = {**DETECTABLE, **HARMLESS}


def main() -> None:
    """Serve ``/pid`` and ``/hello``; turn hostile when armed (see the module docstring)."""
    worker = Worker.connect()
    hostile = Hostile(worker, Path(os.environ.get("HOSTILE_DIR", "/nonexistent")))

    def app(req: Request) -> Response:
        hostile.on_request(req)
        hostile.done.add(req.id)
        if len(hostile.done) > 64:
            hostile.done.discard(min(hostile.done))
        if req.path == "/pid":
            return Response(200, [], str(os.getpid()).encode())
        if req.path == "/hello":
            return Response(200, [], b"hello\n")
        if req.path == "/lengths":  # body "hello", with the Content-Length values listed
            values = req.query.split(",") if req.query else []
            return Response(200, [(b"content-length", v.encode()) for v in values], b"hello")
        return Response(404, [], b"not found\n")

    worker.serve(app)


if __name__ == "__main__":
    main()
