"""zeus._native: atomics, fences, ring slots, spinning and futexes on a shared page.

Every test works on one anonymous page (``mmap.mmap(-1, 4096)``) pinned by a ``Mapping``.
Threads stand in for the peer process: the kernel treats a shared futex word the same way
whichever task waits on it.  No test sleeps to synchronise: a thread blocked in FUTEX_WAIT is
recognised from /proc (its current syscall and arguments), and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeus import _native
from zeus._native import Mapping

PAGE = 4096
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
SLOT = struct.Struct("<QHHIQQ")  # id, kind, flags, length, offset, reserved: 32 bytes
FUTEX_WAIT = 0  # futex(2) op without FUTEX_PRIVATE_FLAG: the word is shared between processes

WORD = 64  # a u64 / u32 word on its own cache line
SLEEP = 128  # a u32 "peer sleep" word
HEAD = 192  # a u64 ring head
RING = 256  # a ring slot


@dataclass
class Page:
    """One shared page, its Mapping, and its address (to recognise futex waits on it)."""

    mm: mmap.mmap
    mapping: Mapping
    address: int


@pytest.fixture
def page() -> Iterator[Page]:
    mm = mmap.mmap(-1, PAGE)
    anchor = ctypes.c_char.from_buffer(mm)
    address = ctypes.addressof(anchor)
    del anchor  # drop the export so the page can be closed at the end
    mapping = Mapping(mm)
    yield Page(mm, mapping, address)
    mapping.release()
    mm.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        time.sleep(0.001)  # poll interval, not a handshake: the predicate is the handshake


def futex_wait_arguments(native_id: int, address: int) -> list[int] | None:
    """The futex(2) arguments of thread ``native_id`` if it sleeps in FUTEX_WAIT on ``address``.

    /proc/<pid>/task/<tid>/syscall shows a blocked task's syscall number and arguments; the
    arguments of futex(2) are the word's address, the operation, the expected value and the
    timeout pointer (NULL: no limit).
    """
    try:
        fields = Path(f"/proc/self/task/{native_id}/syscall").read_text().split()
    except OSError:
        return None
    if len(fields) < 5 or not fields[1].startswith("0x"):
        return None  # "running", or not in a syscall
    arguments = [int(field, 16) for field in fields[1:5]]
    if arguments[0] != address or arguments[1] != FUTEX_WAIT:
        return None
    return arguments


def in_futex_wait(native_id: int, address: int) -> bool:
    """Whether thread ``native_id`` of this process sleeps in FUTEX_WAIT on ``address``."""
    return futex_wait_arguments(native_id, address) is not None


def cpu_ticks(native_id: int) -> int:
    """CPU time (user + system, in clock ticks) thread ``native_id`` has used so far."""
    stat = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return int(stat[11]) + int(stat[12])


def wait_until_spinning(native_id: int) -> None:
    """Wait until thread ``native_id`` has burnt CPU time: it is inside a GIL-released spin.

    A thread that is about to start spinning runs a few microseconds of Python; 30 ms of CPU
    time can only come from the spin loop itself.
    """
    baseline = cpu_ticks(native_id)
    wait_until(lambda: cpu_ticks(native_id) >= baseline + 3)


class InThread:
    """Run ``call`` in a daemon thread and keep its result, exception and thread id."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.native_id = 0
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()
        assert self._started.wait(10), "thread did not start"

    def _run(self, call: Callable[[], object]) -> None:
        self.native_id = threading.get_native_id()
        self._started.set()
        try:
            self.result = call()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 10.0) -> object:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"thread still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


# --------------------------------------------------------------------------- the mapping


def test_mapping_needs_a_writable_buffer() -> None:
    """A read-only buffer cannot carry stores: the constructor refuses it."""
    with pytest.raises((BufferError, TypeError)):
        Mapping(bytes(PAGE))


def test_mapping_needs_a_64_byte_aligned_buffer() -> None:
    """Offsets are checked for alignment relative to the buffer, so its start must be aligned."""
    mm = mmap.mmap(-1, PAGE)
    view = memoryview(mm)
    try:
        with pytest.raises(ValueError, match="aligned"):
            Mapping(view[8:])
    finally:
        view.release()
        mm.close()


def test_mapping_pins_its_buffer_until_released() -> None:
    """While a Mapping lives the page cannot be unmapped; after release() every call refuses."""
    mm = mmap.mmap(-1, PAGE)
    mapping = Mapping(mm)
    assert mapping.size == PAGE
    with pytest.raises(BufferError):
        mm.close()
    mapping.release()
    mapping.release()  # idempotent
    assert mapping.size == 0
    assert "released" in repr(mapping)
    with pytest.raises(ValueError, match="released"):
        mapping.load_u64(0)
    with pytest.raises(ValueError, match="released"):
        mapping.futex_wake(0, 1)
    mm.close()


def test_a_mapping_of_part_of_a_page_is_bounded_by_that_part() -> None:
    """A 16-byte mapping holds two u64 words and no 32-byte slot."""
    mm = mmap.mmap(-1, PAGE)
    view = memoryview(mm)[:16]
    mapping = Mapping(view)
    try:
        mapping.store_u64(8, 7)
        assert mapping.load_u64(8) == 7
        with pytest.raises(ValueError):
            mapping.load_u64(16)
        with pytest.raises(ValueError):
            mapping.read_slot(0)
    finally:
        mapping.release()
        view.release()
        mm.close()


# --------------------------------------------------------------------------- atomics


@pytest.mark.parametrize("value", [0, 1, 0x0102030405060708, U64_MAX])
def test_u64_store_then_load_roundtrips_little_endian(page: Page, value: int) -> None:
    """store_u64 writes the value's 8 little-endian bytes; load_u64 reads it back."""
    page.mapping.store_u64(WORD, value)
    assert page.mapping.load_u64(WORD) == value
    assert page.mm[WORD : WORD + 8] == value.to_bytes(8, "little")


@pytest.mark.parametrize("value", [0, 1, 0x01020304, U32_MAX])
def test_u32_store_then_load_roundtrips_little_endian(page: Page, value: int) -> None:
    """store_u32 writes 4 little-endian bytes and leaves the neighbouring word alone."""
    page.mm[WORD : WORD + 8] = b"\xaa" * 8
    page.mapping.store_u32(WORD, value)
    assert page.mapping.load_u32(WORD) == value
    assert page.mm[WORD : WORD + 8] == value.to_bytes(4, "little") + b"\xaa" * 4


def test_loads_see_plain_writes_to_the_buffer(page: Page) -> None:
    """A load reads the shared bytes themselves, not a copy taken by the Mapping."""
    page.mm[WORD : WORD + 8] = (12345).to_bytes(8, "little")
    assert page.mapping.load_u64(WORD) == 12345
    assert page.mapping.load_u32(WORD + 4) == 0


@pytest.mark.parametrize(
    ("store", "value"),
    [("store_u32", 1 << 32), ("store_u32", -1), ("store_u64", 1 << 64), ("store_u64", -1)],
)
def test_a_value_that_does_not_fit_the_word_is_refused(
    page: Page, store: str, value: int
) -> None:
    """Too wide or negative values raise OverflowError and store nothing."""
    with pytest.raises(OverflowError):
        getattr(page.mapping, store)(WORD, value)
    assert page.mapping.load_u64(WORD) == 0


def test_fetch_add_returns_the_old_value_and_wraps_at_2_to_the_64(page: Page) -> None:
    """fetch_add_u64 is a u64 fetch-and-add: old value out, sum modulo 2**64 stored."""
    mapping = page.mapping
    assert mapping.fetch_add_u64(WORD, 5) == 0
    assert mapping.fetch_add_u64(WORD, 7) == 5
    assert mapping.load_u64(WORD) == 12
    mapping.store_u64(WORD, U64_MAX)
    assert mapping.fetch_add_u64(WORD, 2) == U64_MAX
    assert mapping.load_u64(WORD) == 1


@pytest.mark.timeout(30)
def test_fetch_add_from_two_threads_loses_no_increment(page: Page) -> None:
    """Two threads adding 100 000 times each leave exactly 200 000 in the word."""
    mapping = page.mapping
    go = threading.Event()

    def add() -> None:
        assert go.wait(10)
        for _ in range(100_000):
            mapping.fetch_add_u64(WORD, 1)

    threads = [InThread(add), InThread(add)]
    go.set()
    for thread in threads:
        thread.join(20)
    assert mapping.load_u64(WORD) == 200_000


def test_fence_is_a_module_level_call_without_arguments() -> None:
    """fence() issues a sequentially consistent fence; it takes nothing and needs no Mapping."""
    _native.fence()
    with pytest.raises(TypeError):
        _native.fence(0)  # type: ignore[call-arg]


# --------------------------------------------------------------------------- offsets

# Every call that takes an offset, with the width it accesses and a call using that offset.
OFFSET_CALLS: dict[str, tuple[int, Callable[[Mapping, int], object]]] = {
    "load_u64": (8, lambda m, off: m.load_u64(off)),
    "load_u32": (4, lambda m, off: m.load_u32(off)),
    "store_u64": (8, lambda m, off: m.store_u64(off, 1)),
    "store_u32": (4, lambda m, off: m.store_u32(off, 1)),
    "fetch_add_u64": (8, lambda m, off: m.fetch_add_u64(off, 1)),
    "publish.word": (8, lambda m, off: m.publish(off, 1, SLEEP)),
    "publish.sleep": (4, lambda m, off: m.publish(WORD, 1, off)),
    "publish_slot.slot": (32, lambda m, off: m.publish_slot(off, 1, 1, 0, 0, 0, HEAD, 1, SLEEP)),
    "publish_slot.head": (8, lambda m, off: m.publish_slot(RING, 1, 1, 0, 0, 0, off, 1, SLEEP)),
    "publish_slot.sleep": (4, lambda m, off: m.publish_slot(RING, 1, 1, 0, 0, 0, HEAD, 1, off)),
    "read_slot": (32, lambda m, off: m.read_slot(off)),
    "spin_while_equal": (8, lambda m, off: m.spin_while_equal(off, 1, 0)),
    "futex_wait": (4, lambda m, off: m.futex_wait(off, 1, 0.0)),
    "futex_wake": (4, lambda m, off: m.futex_wake(off, 1)),
}


@pytest.mark.parametrize("call", sorted(OFFSET_CALLS))
def test_a_misaligned_offset_raises_value_error(page: Page, call: str) -> None:
    """Atomics need natural alignment; slots are 32-byte aligned."""
    width, invoke = OFFSET_CALLS[call]
    for offset in (1, 2, 4, 8, 16, width + 4, PAGE - 2 * width + 4):
        if offset % width:
            with pytest.raises(ValueError, match="aligned"):
                invoke(page.mapping, offset)


@pytest.mark.parametrize("call", sorted(OFFSET_CALLS))
def test_an_offset_outside_the_mapping_raises_value_error(page: Page, call: str) -> None:
    """The whole access must lie inside the mapping, whatever the offset."""
    width, invoke = OFFSET_CALLS[call]
    for offset in (PAGE, PAGE - width // 2, PAGE * 2, -width, -1, 1 << 62):
        with pytest.raises(ValueError, match="outside"):
            invoke(page.mapping, offset)


@settings(max_examples=300, deadline=None)
@given(
    call=st.sampled_from(sorted(OFFSET_CALLS)),
    offset=st.integers(-(1 << 63), (1 << 63) - 1) | st.integers(-64, PAGE + 64),
)
def test_any_offset_is_used_or_refused_never_followed_out_of_the_page(
    call: str, offset: int
) -> None:
    """An in-bounds aligned offset works; any other raises ValueError (and nothing crashes)."""
    width, invoke = OFFSET_CALLS[call]
    mm = mmap.mmap(-1, PAGE)
    mapping = Mapping(mm)
    try:
        if 0 <= offset <= PAGE - width and offset % width == 0:
            invoke(mapping, offset)
        else:
            with pytest.raises(ValueError):
                invoke(mapping, offset)
    finally:
        mapping.release()
        mm.close()


# --------------------------------------------------------------------------- publishing


def test_publish_stores_the_value_and_returns_the_peer_sleep_word(page: Page) -> None:
    """publish(word, value, sleep) = release-store, fence, load of the peer's sleep word."""
    page.mapping.store_u32(SLEEP, 0x8000_0001)
    assert page.mapping.publish(WORD, 42, SLEEP) == 0x8000_0001
    assert page.mapping.load_u64(WORD) == 42


def test_publish_slot_writes_a_32_byte_little_endian_slot_then_the_head(page: Page) -> None:
    """Slot = u64 id, u16 kind, u16 flags, u32 length, u64 offset, u64 reserved (zeroed)."""
    page.mm[RING : RING + 32] = b"\xff" * 32  # garbage from an earlier lap
    page.mapping.store_u32(SLEEP, 3)
    peer = page.mapping.publish_slot(
        RING, 0x1122334455667788, 0xABCD, 0x0003, 0xDEADBEEF, 0x0102030405060708, HEAD, 9, SLEEP
    )
    assert peer == 3
    assert page.mm[RING : RING + 32] == SLOT.pack(
        0x1122334455667788, 0xABCD, 0x0003, 0xDEADBEEF, 0x0102030405060708, 0
    )
    assert page.mm[RING : RING + 8] == bytes.fromhex("8877665544332211")
    assert page.mapping.load_u64(HEAD) == 9


def test_read_slot_copies_all_six_fields(page: Page) -> None:
    """read_slot returns (id, kind, flags, length, offset, reserved) as the bytes say."""
    fields = (U64_MAX, 0xFFFF, 0x8001, U32_MAX, 1 << 63, 0x5A5A)
    SLOT.pack_into(page.mm, RING, *fields)
    assert page.mapping.read_slot(RING) == fields


@given(
    msg_id=st.integers(0, U64_MAX),
    kind=st.integers(0, 0xFFFF),
    flags=st.integers(0, 0xFFFF),
    length=st.integers(0, U32_MAX),
    offset=st.integers(0, U64_MAX),
    index=st.integers(0, 15),
)
def test_read_slot_returns_what_publish_slot_wrote(
    msg_id: int, kind: int, flags: int, length: int, offset: int, index: int
) -> None:
    """Any in-range fields survive the round trip through a slot, with reserved zero."""
    mm = mmap.mmap(-1, PAGE)
    mapping = Mapping(mm)
    try:
        slot = RING + index * 32
        mapping.publish_slot(slot, msg_id, kind, flags, length, offset, HEAD, index + 1, SLEEP)
        assert mapping.read_slot(slot) == (msg_id, kind, flags, length, offset, 0)
        assert mapping.load_u64(HEAD) == index + 1
    finally:
        mapping.release()
        mm.close()


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param((1, 0x10000, 0, 0, 0), id="kind-wider-than-16-bits"),
        pytest.param((1, -1, 0, 0, 0), id="negative-kind"),
        pytest.param((1, 1, 0x10000, 0, 0), id="flags-wider-than-16-bits"),
        pytest.param((1, 1, 0, 1 << 32, 0), id="length-wider-than-32-bits"),
        pytest.param((1 << 64, 1, 0, 0, 0), id="id-wider-than-64-bits"),
        pytest.param((1, 1, 0, 0, -1), id="negative-offset"),
    ],
)
def test_publish_slot_refuses_fields_that_do_not_fit_and_publishes_nothing(
    page: Page, fields: tuple[int, int, int, int, int]
) -> None:
    """A field too wide for its slot field raises OverflowError before any byte is written."""
    with pytest.raises(OverflowError):
        page.mapping.publish_slot(RING, *fields, HEAD, 1, SLEEP)
    assert page.mm[RING : RING + 32] == bytes(32)
    assert page.mapping.load_u64(HEAD) == 0


# --------------------------------------------------------------------------- spinning


def test_spin_returns_at_once_when_the_word_already_differs(page: Page) -> None:
    """No spinning is needed when the word already holds something else: its value returns."""
    page.mapping.store_u64(WORD, 7)
    start = time.monotonic()
    assert page.mapping.spin_while_equal(WORD, 0, 20_000_000_000) == 7
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("budget", [0, -1])
def test_spin_without_a_budget_loads_once(page: Page, budget: int) -> None:
    """A budget of zero (or less) is a single load."""
    page.mapping.store_u64(WORD, 3)
    assert page.mapping.spin_while_equal(WORD, 3, budget) == 3


def test_spin_returns_the_unchanged_value_when_the_budget_runs_out(page: Page) -> None:
    """Nobody writes the word: after about budget_ns the spin gives up with the old value."""
    page.mapping.store_u64(WORD, 11)
    start = time.monotonic()
    assert page.mapping.spin_while_equal(WORD, 11, 20_000_000) == 11
    elapsed = time.monotonic() - start
    assert 0.019 <= elapsed < 5


@pytest.mark.timeout(30)
def test_spin_returns_early_when_another_thread_changes_the_word(page: Page) -> None:
    """A store by another thread ends the spin long before its budget, with the new value.

    The storing thread needs the GIL to run, so this also shows the spin releases it.
    """
    mapping = page.mapping
    spinning = threading.Event()

    def store() -> None:
        assert spinning.wait(10)
        mapping.store_u64(WORD, 99)

    writer = InThread(store)
    spinning.set()
    start = time.monotonic()
    assert mapping.spin_while_equal(WORD, 0, 20_000_000_000) == 99
    assert time.monotonic() - start < 10
    writer.join()


# --------------------------------------------------------------------------- futexes


def test_futex_wait_returns_true_at_once_when_the_word_already_differs(page: Page) -> None:
    """FUTEX_WAIT's EAGAIN (value changed before sleeping) counts as a wake-up."""
    page.mapping.store_u32(WORD, 1)
    start = time.monotonic()
    assert page.mapping.futex_wait(WORD, 0, 10.0) is True
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("timeout", [0.0, -1.0, 10.0, None])
def test_futex_wait_reports_a_word_that_already_differs_whatever_the_timeout(
    page: Page, timeout: float | None
) -> None:
    """A poll (timeout 0, or less) on a word that has moved on reports the change: True."""
    page.mapping.store_u32(WORD, 1)
    start = time.monotonic()
    assert page.mapping.futex_wait(WORD, 0, timeout) is True
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("expected", [1 << 32, U64_MAX, 1 << 64, -1])
def test_futex_wait_refuses_an_expected_value_that_is_not_32_bits(
    page: Page, expected: int
) -> None:
    """The futex word is 32 bits: a wider (or negative) expected value is refused like in
    store_u32 -- never truncated to a value that could match the word (here 0)."""
    start = time.monotonic()
    with pytest.raises(OverflowError):
        page.mapping.futex_wait(WORD, expected, 0.5)
    assert time.monotonic() - start < 0.4, "it slept: the value was truncated"


def test_futex_wait_accepts_the_largest_32_bit_expected_value(page: Page) -> None:
    """2**32 - 1 is a valid expected value: a word holding it makes futex_wait sleep."""
    page.mapping.store_u32(WORD, U32_MAX)
    start = time.monotonic()
    assert page.mapping.futex_wait(WORD, U32_MAX, 0.05) is False
    assert time.monotonic() - start >= 0.049
    assert page.mapping.futex_wait(WORD, U32_MAX - 1, 0.05) is True


def test_futex_wait_refuses_a_nan_timeout(page: Page) -> None:
    """NaN is no duration: ValueError, and no sleep."""
    with pytest.raises(ValueError, match="NaN"):
        page.mapping.futex_wait(WORD, 0, float("nan"))


def test_futex_wait_refuses_a_timeout_that_is_not_a_number(page: Page) -> None:
    """The timeout is a float (or None); anything else is a TypeError."""
    with pytest.raises(TypeError):
        page.mapping.futex_wait(WORD, 0, "1")  # type: ignore[arg-type]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "timeout",
    [None, float("inf"), 1e9 + 1, 1e18, 1e300],
    ids=["none", "inf", "1e9+1", "1e18", "1e300"],
)
def test_futex_wait_with_a_huge_timeout_sleeps_without_a_limit(
    page: Page, timeout: float | None
) -> None:
    """Over 1e9 s (and inf) means no limit: FUTEX_WAIT gets a NULL timeout (no overflowed
    deadline in the past or the far future), and a futex_wake ends the sleep."""
    mapping = page.mapping
    waiter = InThread(lambda: mapping.futex_wait(WORD, 0, timeout))
    try:
        wait_until(lambda: in_futex_wait(waiter.native_id, page.address + WORD))
        arguments = futex_wait_arguments(waiter.native_id, page.address + WORD)
        assert arguments is not None
        assert arguments[3] == 0, "FUTEX_WAIT was given a timeout"
        assert mapping.futex_wake(WORD, 1) == 1
        assert waiter.join() is True
    finally:
        mapping.store_u32(WORD, 1)
        mapping.futex_wake(WORD, 1)


@pytest.mark.timeout(30)
def test_futex_wait_with_a_finite_timeout_passes_it_to_the_kernel(page: Page) -> None:
    """A timeout of 1e9 s or less is a real limit: FUTEX_WAIT gets a timeout pointer."""
    mapping = page.mapping
    waiter = InThread(lambda: mapping.futex_wait(WORD, 0, 1e9))
    try:
        wait_until(lambda: in_futex_wait(waiter.native_id, page.address + WORD))
        arguments = futex_wait_arguments(waiter.native_id, page.address + WORD)
        assert arguments is not None
        assert arguments[3] != 0
        assert mapping.futex_wake(WORD, 1) == 1
        assert waiter.join() is True
    finally:
        mapping.store_u32(WORD, 1)
        mapping.futex_wake(WORD, 1)


def test_futex_wait_returns_false_when_its_timeout_passes(page: Page) -> None:
    """Nobody wakes the waiter: after ``timeout`` seconds (monotonic) it returns False."""
    start = time.monotonic()
    assert page.mapping.futex_wait(WORD, 0, 0.05) is False
    assert 0.049 <= time.monotonic() - start < 5


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_futex_wait_with_no_time_left_returns_false_without_sleeping(
    page: Page, timeout: float
) -> None:
    """A zero or negative timeout does not sleep."""
    start = time.monotonic()
    assert page.mapping.futex_wait(WORD, 0, timeout) is False
    assert time.monotonic() - start < 5


def test_futex_wake_with_no_waiter_wakes_nobody(page: Page) -> None:
    """futex_wake returns the number of waiters woken: none here."""
    assert page.mapping.futex_wake(WORD, 1) == 0
    assert page.mapping.futex_wake(WORD, 1 << 40) == 0  # more than INT_MAX: "everybody"


@pytest.mark.parametrize("count", [0, -1, -(1 << 31)])
def test_futex_wake_of_fewer_than_one_waiter_is_refused(page: Page, count: int) -> None:
    """A wake count below 1 is a caller's mistake (FUTEX_WAKE would treat it oddly)."""
    with pytest.raises(ValueError):
        page.mapping.futex_wake(WORD, count)


@pytest.mark.timeout(30)
def test_futex_wake_with_a_count_wakes_up_to_that_many_waiters(page: Page) -> None:
    """Three sleepers, futex_wake(2) wakes two, futex_wake(huge count) the last one."""
    mapping = page.mapping
    waiters = [InThread(lambda: mapping.futex_wait(WORD, 0, 20.0)) for _ in range(3)]
    try:
        for waiter in waiters:
            wait_until(lambda w=waiter: in_futex_wait(w.native_id, page.address + WORD))
        assert mapping.futex_wake(WORD, 2) == 2
        assert mapping.futex_wake(WORD, 1 << 40) == 1
        assert [waiter.join() for waiter in waiters] == [True, True, True]
    finally:
        mapping.store_u32(WORD, 1)
        mapping.futex_wake(WORD, 1 << 40)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("timeout", [20.0, None], ids=["with-timeout", "without-timeout"])
def test_futex_wake_wakes_a_thread_blocked_in_futex_wait(
    page: Page, timeout: float | None
) -> None:
    """A thread asleep on the word returns True from futex_wait when futex_wake is called.

    The word is left unchanged, so the waiter returns because it was woken, not because the
    value moved.
    """
    mapping = page.mapping
    waiter = InThread(lambda: mapping.futex_wait(WORD, 0, timeout))
    try:
        wait_until(lambda: in_futex_wait(waiter.native_id, page.address + WORD))
        assert mapping.futex_wake(WORD, 1) == 1
        assert waiter.join() is True
    finally:
        mapping.store_u32(WORD, 1)
        mapping.futex_wake(WORD, 1)


@pytest.mark.timeout(30)
def test_futex_wake_wakes_only_waiters_on_its_word(page: Page) -> None:
    """A wake on another word, even in the same page, leaves the sleeper asleep."""
    mapping = page.mapping
    waiter = InThread(lambda: mapping.futex_wait(WORD, 0, 20.0))
    try:
        wait_until(lambda: in_futex_wait(waiter.native_id, page.address + WORD))
        assert mapping.futex_wake(SLEEP, 1) == 0
        assert in_futex_wait(waiter.native_id, page.address + WORD)
        assert mapping.futex_wake(WORD, 1) == 1
        assert waiter.join() is True
    finally:
        mapping.store_u32(WORD, 1)
        mapping.futex_wake(WORD, 1)


@pytest.mark.timeout(30)
def test_futex_wait_releases_the_gil_while_it_sleeps(page: Page) -> None:
    """While one thread sleeps in futex_wait, other Python threads run to completion."""
    mapping = page.mapping
    waiter = InThread(lambda: mapping.futex_wait(WORD, 0, 20.0))
    try:
        wait_until(lambda: in_futex_wait(waiter.native_id, page.address + WORD))
        counted = InThread(lambda: sum(1 for _ in range(200_000)))
        assert counted.join() == 200_000
        assert in_futex_wait(waiter.native_id, page.address + WORD), "woke up on its own"
        mapping.store_u32(WORD, 1)
        mapping.futex_wake(WORD, 1)
        assert waiter.join() is True
    finally:
        mapping.store_u32(WORD, 1)
        mapping.futex_wake(WORD, 1)


class Interrupted(Exception):
    """Raised by the test's signal handler."""


@contextlib.contextmanager
def on_sigusr1(handler: Callable[[int, FrameType | None], object]) -> Iterator[None]:
    """Handle SIGUSR1 with ``handler`` for the duration of the block."""
    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


def signal_main_thread_once_it_sleeps(address: int) -> InThread:
    """A helper thread that sends SIGUSR1 to the main thread once it sleeps on ``address``."""
    main = threading.main_thread()
    assert threading.current_thread() is main, "Python runs signal handlers in the main thread"
    main_id = main.native_id
    assert main_id is not None

    def send() -> None:
        wait_until(lambda: in_futex_wait(main_id, address))
        signal.pthread_kill(main.ident or 0, signal.SIGUSR1)

    return InThread(send)


@pytest.mark.timeout(30)
def test_a_signal_handler_that_raises_interrupts_futex_wait(page: Page) -> None:
    """EINTR runs the Python handlers; an exception from one ends futex_wait with it."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted

    with on_sigusr1(handler):
        sender = signal_main_thread_once_it_sleeps(page.address + WORD)
        start = time.monotonic()
        with pytest.raises(Interrupted):
            page.mapping.futex_wait(WORD, 0, 20.0)
        assert time.monotonic() - start < 10
        sender.join()


@pytest.mark.timeout(30)
def test_a_signal_handler_that_returns_lets_futex_wait_sleep_on_until_its_timeout(
    page: Page,
) -> None:
    """After a handler that does not raise, futex_wait keeps waiting for the time left."""
    handled = threading.Event()
    with on_sigusr1(lambda signum, frame: handled.set()):
        sender = signal_main_thread_once_it_sleeps(page.address + WORD)
        start = time.monotonic()
        assert page.mapping.futex_wait(WORD, 0, 0.5) is False
        elapsed = time.monotonic() - start
        sender.join()
    assert handled.is_set(), "the signal was not delivered during the wait"
    assert 0.499 <= elapsed < 5


# --------------------------------------------------------------------------- busy mappings


def spin_on(mapping: Mapping) -> InThread:
    """A thread spinning (GIL released) on WORD of ``mapping`` for up to 20 s."""
    return InThread(lambda: mapping.spin_while_equal(WORD, 0, 20_000_000_000))


def sleep_on(mapping: Mapping) -> InThread:
    """A thread sleeping (GIL released) in FUTEX_WAIT on WORD of ``mapping`` for up to 20 s."""
    return InThread(lambda: mapping.futex_wait(WORD, 0, 20.0))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("blocking", ["spin_while_equal", "futex_wait"])
@pytest.mark.parametrize("drop", ["release", "reinit"])
def test_a_mapping_in_use_by_a_blocking_call_cannot_be_released(
    blocking: str, drop: str
) -> None:
    """release() (or re-running __init__) while another thread is inside a GIL-released call
    on the mapping raises BufferError; the page stays pinned, so it cannot be unmapped under
    the blocked thread either.  Once that call returns, release() works.

    (Before the fix, release() dropped the buffer, mmap.close() unmapped it, and the spinner
    loaded from unmapped memory: SIGSEGV.  Should that come back, the page here is never
    closed while the thread runs, so the test fails instead of crashing.)
    """
    mm = mmap.mmap(-1, PAGE)
    anchor = ctypes.c_char.from_buffer(mm)
    address = ctypes.addressof(anchor)
    del anchor
    other = mmap.mmap(-1, PAGE)
    mapping = Mapping(mm)
    thread = spin_on(mapping) if blocking == "spin_while_equal" else sleep_on(mapping)
    try:
        if blocking == "spin_while_equal":
            wait_until_spinning(thread.native_id)
        else:
            wait_until(lambda: in_futex_wait(thread.native_id, address + WORD))
        with pytest.raises(BufferError, match="in use"):
            if drop == "release":
                mapping.release()
            else:
                mapping.__init__(other)  # type: ignore[misc]
        assert mapping.size == PAGE
        with pytest.raises(BufferError):
            mm.close()  # still pinned
        assert mapping.load_u64(WORD) == 0  # and still usable
    finally:
        # End the blocking call through the mmap itself, which works whatever state the
        # Mapping is in.
        mm[WORD : WORD + 8] = (1).to_bytes(8, "little")
        if blocking == "futex_wait":
            Mapping(mm).futex_wake(WORD, 1)
    assert thread.join(30) in (1, True)
    mapping.release()
    assert mapping.size == 0
    mm.close()
    other.close()


# --------------------------------------------------------------------------- parent death

PDEATHSIG_GRANDCHILD = textwrap.dedent(
    """
    import os, signal, sys
    from zeus import _native

    def on_term(signum, frame):
        print(f"SIGTERM from parent death, ppid {os.getppid()}", flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(30)  # never outlive a failed test by long
    _native.set_pdeathsig(signal.SIGTERM)
    print(f"armed {os.getpid()} parent {os.getppid()}", flush=True)
    os.write(int(sys.argv[1]), b"!")  # tell the parent it may exit now
    while True:
        signal.pause()
    """
)

PDEATHSIG_PARENT = textwrap.dedent(
    """
    import os, subprocess, sys
    ready, armed = os.pipe()
    subprocess.Popen(
        [sys.executable, "-c", sys.argv[1], str(armed)], pass_fds=(armed,)
    )
    os.close(armed)
    assert os.read(ready, 1) == b"!"  # the grandchild has set its parent-death signal
    print(f"parent {os.getpid()} exits", flush=True)
    os._exit(0)
    """
)


@pytest.mark.timeout(60)
def test_set_pdeathsig_delivers_the_signal_when_the_parent_exits() -> None:
    """A process that called set_pdeathsig(SIGTERM) gets SIGTERM when its parent exits.

    The grandchild shares our stdout pipe; reading it to EOF waits for both processes to
    exit (the grandchild only exits from its SIGTERM handler, or after 30 s from SIGALRM).
    """
    parent = subprocess.Popen(
        [sys.executable, "-c", PDEATHSIG_PARENT, PDEATHSIG_GRANDCHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = parent.communicate(timeout=45)
    assert parent.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 3, (out, err)
    armed, exits, term = lines
    parent_pid = int(exits.split()[1])
    assert armed.startswith("armed ") and armed.endswith(f" parent {parent_pid}")
    assert term.startswith("SIGTERM from parent death, ppid ")
    assert int(term.rsplit(" ", 1)[1]) != parent_pid  # reparented: the parent is gone


def test_set_pdeathsig_refuses_a_signal_that_does_not_exist() -> None:
    """prctl(PR_SET_PDEATHSIG) with an invalid signal number fails: OSError (EINVAL)."""
    with pytest.raises(OSError):
        _native.set_pdeathsig(1000)
