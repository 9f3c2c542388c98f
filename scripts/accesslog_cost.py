"""What the access log costs the front, per request: CPU time and throughput, off and on.

Run ``.venv/bin/python scripts/accesslog_cost.py [--duration SECONDS]`` (needs ``wrk``).

For each case -- access log off, on in gunicorn's default format, on as JSON, each written to a
file -- start ``zeus serve examples.hello:app --workers 2`` on a free port, warm up for one
second, run ``wrk -t1 -c32`` for ``--duration`` seconds, and read the front's own CPU time
(utime + stime of the front process only, from /proc: the access log runs there) before and
after.  Prints requests/s and the front's CPU microseconds per request; the difference between
"off" and "on" is the access log's cost.  On a shared 2-core machine the figures move by a few
per cent from run to run: compare the cases of one run.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZEUS = ROOT / ".venv" / "bin" / "zeus"
CASES = {
    "off": [],
    "text": ["--access-log-file", "{dir}/access.log"],
    "json": ["--access-log-file", "{dir}/access.log", "--access-log-format", "json"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_accepting(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"zeus exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("zeus did not accept connections in time")


def run_case(name: str, duration: float, where: str) -> tuple[float, float]:
    port = free_port()
    args = [a.replace("{dir}", where) for a in CASES[name]]
    env = {**os.environ, "ZEUS_ALLOW_ROOT": "1"}
    proc = subprocess.Popen(
        [str(ZEUS), "serve", "examples.hello:app", "--workers", "2", "--bind",
         f"127.0.0.1:{port}", "--log-level", "warning", *args],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_accepting(port, proc)
        url = f"http://127.0.0.1:{port}/"
        subprocess.run(["wrk", "-t1", "-c32", "-d1s", url], capture_output=True, check=True,
                       timeout=30)
        before = cpu_seconds(proc.pid)
        out = subprocess.run(["wrk", "-t1", "-c32", f"-d{duration:g}s", url],
                             capture_output=True, text=True, check=True,
                             timeout=duration + 30).stdout
        used = cpu_seconds(proc.pid) - before
        total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        return total / duration, used / total * 1e6
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    opts = parser.parse_args()
    print(f"{'access log':<12}{'req/s':>10}{'front CPU us/req':>20}")
    base = None
    for name in CASES:
        with tempfile.TemporaryDirectory() as where:
            rate, cost = run_case(name, opts.duration, where)
        base = cost if base is None else base
        extra = f"  (+{cost - base:.1f})" if name != "off" else ""
        print(f"{name:<12}{rate:>10.0f}{cost:>20.1f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
