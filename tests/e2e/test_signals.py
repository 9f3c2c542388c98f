"""Signals to the front (gunicorn's conventions): TERM drains and exits 0, INT stops at once,
HUP reloads the workers one by one without failing a request, TTIN/TTOU add/remove one."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .helpers import (
    FIGURES,
    ROOT,
    ZEUS,
    Hammer,
    RawResponse,
    StartServer,
    alive,
    build_request,
    children,
    free_port,
    marker,
    process_identity,
    wait_until,
)


@pytest.mark.timeout(30)
def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(
    start_server: StartServer,
) -> None:
    server = start_server()
    result: list[RawResponse | BaseException] = []

    def client() -> None:
        try:
            with server.conn(timeout=15) as c:
                result.append(c.request("GET", "/sleep?1.5"))
        except BaseException as exc:  # reported by the assertion below
            result.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    marker(server, "sleeping")
    server.send_signal(signal.SIGTERM)
    wait_until(lambda: "SIGTERM: draining" in server.log(), 10, "the drain to start")
    with pytest.raises(ConnectionRefusedError):  # no new connections while draining
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    started = time.monotonic()
    rc = server.stop(signal.SIGTERM)
    thread.join(10)
    assert rc == 0, server.log()
    (resp,) = result
    assert isinstance(resp, RawResponse), resp
    assert (resp.status, resp.body) == (200, b"slept")
    assert resp.header("connection") == "close"
    assert time.monotonic() - started < 5


@pytest.mark.timeout(30)
def test_sigint_stops_at_once_even_with_a_request_in_flight(start_server: StartServer) -> None:
    server = start_server()
    with server.conn(timeout=15) as c:
        c.send(build_request("GET", "/sleep?30"))
        marker(server, "sleeping")
        started = time.monotonic()
        rc = server.stop(signal.SIGINT)
        assert rc == 0
        assert time.monotonic() - started < 5
        assert c.closed_by_server()


@pytest.mark.timeout(30)
def test_kill_9_of_the_front_takes_the_workers_with_it(start_server: StartServer) -> None:
    server = start_server()
    workers = [process_identity(pid) for pid in server.workers()]
    rc = server.stop(signal.SIGKILL)  # checks that no worker outlives the front
    assert rc == -signal.SIGKILL
    assert not any(alive(w) for w in workers if w is not None)


@pytest.mark.timeout(60)
def test_sighup_reloads_every_worker_without_failing_a_request(
    start_server: StartServer,
) -> None:
    server = start_server()
    before = server.workers()
    with Hammer(server) as fresh, Hammer(server, keep_alive=True) as kept:
        wait_until(lambda: len(fresh.statuses) >= 20 and len(kept.statuses) >= 20, 10,
                   "requests before the reload")
        started = time.monotonic()
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: len(server.ready_workers()) == 2
                   and not server.workers() & before, 20, "every worker to be replaced")
        FIGURES["SIGHUP rolling reload of 2 workers"] = f"{time.monotonic() - started:.2f} s"
        after = server.workers()
        counts = len(fresh.statuses), len(kept.statuses)
        wait_until(lambda: len(fresh.statuses) >= counts[0] + 20
                   and len(kept.statuses) >= counts[1] + 20, 10, "requests after the reload")
    assert fresh.failures == [] and kept.failures == [], (fresh.failures, kept.failures)
    FIGURES["requests during the SIGHUP reload test (fresh / keep-alive connections)"] = (
        f"{len(fresh.statuses)} / {len(kept.statuses)}, 0 failed"
    )
    assert len(after) == 2 and not after & before
    assert after <= fresh.pids | kept.pids  # the new workers served


@pytest.mark.timeout(60)
def test_hups_in_a_row_fail_no_request_and_log_no_traceback(start_server: StartServer) -> None:
    """Reloads on top of reloads: TERMs reach workers while they boot, wait or serve.  Each
    leaves quietly (no traceback in the log) and no request fails."""
    server = start_server()
    with Hammer(server, keep_alive=True) as kept, Hammer(server) as fresh:
        wait_until(lambda: len(kept.statuses) >= 20, 10, "requests before the reloads")
        for _ in range(6):
            server.send_signal(signal.SIGHUP)
            time.sleep(0.02)  # pacing, not synchronisation: reloads overlap on purpose
        wait_until(lambda: "SIGHUP" in server.log(), 10, "the reloads")
        server.wait_ready(2, timeout=30)
        count = len(kept.statuses)
        wait_until(lambda: len(kept.statuses) >= count + 20, 10, "requests after the reloads")
    assert kept.failures == [] and fresh.failures == [], (kept.failures, fresh.failures)
    assert "Traceback" not in server.log(), server.log()[-4000:]


@pytest.mark.timeout(60)
def test_ttin_adds_a_worker_and_ttou_removes_one(start_server: StartServer) -> None:
    server = start_server()
    before = server.workers()
    server.send_signal(signal.SIGTTIN)
    wait_until(lambda: len(server.ready_workers()) == 3, 15, "a third worker")
    assert before < server.workers()
    with server.conn() as c:
        served = {int(c.request("GET", "/pid").body) for _ in range(6)}
    assert served == server.workers()  # round-robin reaches the new one too
    server.send_signal(signal.SIGTTOU)
    wait_until(lambda: len(server.workers()) == 2, 15, "back to two workers")
    server.send_signal(signal.SIGTTOU)
    wait_until(lambda: len(server.workers()) == 1, 15, "down to one worker")
    server.send_signal(signal.SIGTTOU)  # never below one
    with server.conn() as c:
        assert c.request("GET", "/hello").status == 200
    assert len(server.workers()) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_the_workers_boot_stops_them_and_exits_0(
    tmp_path: Path, sig: signal.Signals,
) -> None:
    """Workers that take their time to boot (they never connect here): TERM or INT then stops
    the boot at once, stops the workers started so far and exits 0 -- not the default action
    of the signal, and not a wait for the boot timeout."""
    log_path = tmp_path / "zeus.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [str(ZEUS), "run", "--bind", f"127.0.0.1:{free_port()}", "--workers", "2", "--",
             sys.executable, "-c", "import time; time.sleep(60)"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(children(proc.pid)) == 2, 20, "two booting workers")
        workers = [process_identity(pid) for pid in children(proc.pid)]
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0, log_path.read_text()
        assert f"{sig.name} while the workers boot: stopping" in log_path.read_text()
        wait_until(lambda: not any(alive(w) for w in workers if w is not None), 10,
                   "the booting workers to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
