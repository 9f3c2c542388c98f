"""nginx from Debian's packages, run as an unprivileged process in front of Zeus instances.

Used by ``scripts/scaleout.py`` and ``tests/e2e/test_scaleout.py``: the one place that finds
(or installs) nginx, writes its configuration and reads its logs.

Theory of operation
-------------------
Nothing system-wide is touched: no nginx service, nothing written under ``/etc``.  Each proxy
gets a fresh prefix directory holding its ``nginx.conf``, pid file, error and access logs and
the temporary directories nginx insists on; the binary runs in the foreground with
``nginx -p PREFIX -c PREFIX/nginx.conf -e PREFIX/error.log -g 'daemon off;'`` (``-e`` so
that even the log written before the configuration is read stays in the prefix).  Run as root
(a CI machine), nginx is started as ``nobody`` and the prefix is handed to that user: the
proxy never holds privileges it does not need, and the ports are above 1024 anyway.

nginx is found on ``PATH`` (or in ``/usr/sbin``, which a non-login shell may not have on it).
Failing that, and only as root with ``apt-get`` present, it is installed from Debian's packages
(``nginx-light``, else ``nginx``), each step bounded by a timeout, with ``apt-get update``
before the second try.  Anything else raises :class:`NginxUnavailable` with a reason a test
can show when it skips.

The proxy configuration is the one ``docs/scale-out.md`` explains: round-robin over the
instances with ``max_fails``/``fail_timeout``, keep-alive connections to the upstreams (closed
by nginx before Zeus's own idle timeout would close them), and ``proxy_next_upstream error
timeout http_502 http_503`` bounded by ``proxy_next_upstream_tries``.  Each response carries
``X-Upstream`` (which instance answered; ``A, B`` when nginx had to retry) and the access log
records the same per request.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

INSTALL_TIMEOUT: Final = 300.0  # seconds for the whole install, apt-get update included
PACKAGES: Final = ("nginx-light", "nginx")  # Debian 12 has both; later releases only nginx
UNPRIVILEGED_USER: Final = "nobody"

#: The access log: one request per line, tab-separated (the fields of :class:`LogRecord`).
LOG_FORMAT: Final = (
    "$msec\\t$status\\t$request_method\\t$request_uri\\t$upstream_addr\\t$upstream_status"
    "\\t$request_time"
)


class NginxUnavailable(Exception):
    """nginx is not installed and cannot be installed here; the message says why."""


def _installed() -> str | None:
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def find_nginx(*, install: bool = True, timeout: float = INSTALL_TIMEOUT) -> str:
    """The path of the nginx binary, installing Debian's package first if need be (as root,
    with apt-get); NginxUnavailable says why when there is none."""
    found = _installed()
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    if not install:
        raise NginxUnavailable("nginx is not installed (apt-get install nginx-light)")
    if apt is None:
        raise NginxUnavailable("nginx is not installed and there is no apt-get to install it")
    if os.geteuid() != 0:
        raise NginxUnavailable("nginx is not installed and installing it needs root "
                               "(apt-get install nginx-light)")
    deadline = time.monotonic() + timeout
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install_cmd = [apt, "-o", "DPkg::Lock::Timeout=60", "install", "-y", "-q",
                   "--no-install-recommends"]
    steps: list[list[str]] = [
        [*install_cmd, PACKAGES[0]],
        [apt, "-o", "DPkg::Lock::Timeout=60", "update", "-q"],  # a stale package list
        [*install_cmd, PACKAGES[0]],
        [*install_cmd, PACKAGES[1]],
    ]
    errors: list[str] = []
    for step in steps:
        left = deadline - time.monotonic()
        if left <= 0:
            errors.append("timed out")
            break
        try:
            done = subprocess.run(step, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=left, check=False)
        except subprocess.TimeoutExpired:
            errors.append(f"{' '.join(step[3:])}: timed out")
            break
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["failed"])[-1]
            errors.append(f"{' '.join(step[3:])}: {tail}")
        found = _installed()
        if found is not None:
            return found
    raise NginxUnavailable("nginx is not installed and apt-get could not install it: "
                           + "; ".join(errors))


@dataclass(frozen=True, slots=True)
class Build:
    """What ``nginx -V`` says about a binary."""

    version: tuple[int, ...]
    without: frozenset[str]  # standard modules configured out (``--without-http_X_module``)

    @classmethod
    def of(cls, binary: str) -> Build:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10,
                             check=True).stderr
        m = re.search(r"nginx/(\d+(?:\.\d+)*)", out)
        version = tuple(int(p) for p in m.group(1).split(".")) if m else (0,)
        without = frozenset(re.findall(r"--without-http_(\w+)_module", out))
        return cls(version, without)


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One line of the proxy's access log."""

    msec: float
    status: int
    method: str
    uri: str
    upstreams: tuple[str, ...]  # every instance nginx tried, in order
    upstream_statuses: tuple[str, ...]
    request_time: float

    @property
    def retried(self) -> bool:
        return len(self.upstreams) > 1


def _split(field: str) -> tuple[str, ...]:
    # nginx separates the tries of one upstream group with ", " (and groups with " : ").
    return tuple(p.strip() for p in re.split(r"[,:] ", field) if p.strip() not in ("", "-"))


def render_config(prefix: Path, listen: int, upstreams: Sequence[int], build: Build, *,
                  down: frozenset[int] = frozenset(), max_fails: int = 1,
                  fail_timeout: float = 2.0, tries: int = 3,
                  upstream_keepalive_timeout: float = 4.0) -> str:
    """The nginx.conf of a proxy listening on 127.0.0.1:``listen`` in front of Zeus instances
    on 127.0.0.1:``upstreams``; those in ``down`` are taken out of rotation."""
    temp = [f"    client_body_temp_path {prefix}/tmp/body;",
            f"    proxy_temp_path {prefix}/tmp/proxy;"]
    for module in ("fastcgi", "uwsgi", "scgi"):  # each compiled-in one has a temp path too
        if module not in build.without:
            temp.append(f"    {module}_temp_path {prefix}/tmp/{module};")
    servers = "\n".join(
        f"        server 127.0.0.1:{port} max_fails={max_fails} fail_timeout={fail_timeout:g}s"
        + (" down;" if port in down else ";")
        for port in upstreams
    )
    return f"""# Written by scripts/nginx_proxy.py: nginx before {len(upstreams)} Zeus instances.
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;

events {{
    worker_connections 1024;
}}

http {{
    log_format scaleout "{LOG_FORMAT}";
    access_log {prefix}/access.log scaleout;
{chr(10).join(temp)}

    upstream zeus {{
{servers}
        # Idle connections to the instances, reused across client requests.  nginx drops one
        # after {upstream_keepalive_timeout:g} s, before Zeus's --keep-alive (5 s) would: the
        # side that closes an idle connection first must be the one that would reuse it.
        keepalive 16;
        keepalive_timeout {upstream_keepalive_timeout:g}s;
    }}

    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://zeus;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            # Another instance gets the request when one refuses the connection, resets it,
            # or answers 502/503.  Never for a POST whose bytes were sent (see the docs).
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries {tries};
            proxy_next_upstream_timeout 10s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxProxy:
    """One nginx process in a temporary prefix; a context manager that always stops it."""

    def __init__(self, binary: str, upstreams: Sequence[int], *, port: int = 0,
                 fail_timeout: float = 2.0, upstream_keepalive_timeout: float = 4.0) -> None:
        self.binary = binary
        self.upstreams = list(upstreams)
        self.fail_timeout = fail_timeout
        self.upstream_keepalive_timeout = upstream_keepalive_timeout
        self.build = Build.of(binary)
        self.port = port or _free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="zeus-nginx-"))
        for sub in ("tmp", "logs"):  # nginx checks that PREFIX/logs exists
            (self.prefix / sub).mkdir()
        self.conf = self.prefix / "nginx.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam(UNPRIVILEGED_USER)
            for path in [self.prefix, *self.prefix.rglob("*")]:
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self._write_config(frozenset())

    def _write_config(self, down: frozenset[int]) -> None:
        text = render_config(self.prefix, self.port, self.upstreams, self.build, down=down,
                             fail_timeout=self.fail_timeout,
                             upstream_keepalive_timeout=self.upstream_keepalive_timeout)
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(text)
        if self.user is not None:
            os.chown(tmp, self.user.pw_uid, self.user.pw_gid)
        tmp.rename(self.conf)  # nginx never reads half a file

    def workers(self) -> set[int]:
        """Pids of nginx's worker processes (children of the master), old ones included."""
        assert self.proc is not None
        out = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    fields = stat[stat.rindex(")") + 2:].split()
                    if fields[1] == str(self.proc.pid) and fields[0] not in ("Z", "X"):
                        out.add(int(entry))
        return out

    def set_down(self, down: Sequence[int], timeout: float = 30.0) -> None:
        """Take the instances on ports ``down`` out of rotation (all others in) and reload;
        return once the workers of the old configuration have exited, and so have finished
        their requests to those instances and closed their idle connections to them."""
        assert self.proc is not None
        self._write_config(frozenset(down))
        self.check()
        old = self.workers()
        self.proc.send_signal(signal.SIGHUP)  # nginx -s reload
        deadline = time.monotonic() + timeout
        while True:
            now = self.workers()
            if now and not now & old:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited on reload:\n{self.error_log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"old nginx workers {sorted(now & old)} still running")
            time.sleep(0.01)  # polling /proc: a parent cannot wait for a grandchild

    @property
    def argv(self) -> list[str]:
        argv = [self.binary, "-p", str(self.prefix), "-c", str(self.conf)]
        if self.build.version >= (1, 19, 5):  # -e (the startup error log) is that recent
            argv += ["-e", str(self.prefix / "error.log")]
        return [*argv, "-g", "daemon off;"]

    def check(self) -> None:
        """``nginx -t`` on the configuration; RuntimeError with nginx's words if invalid."""
        proc = self._run([*self.argv[:-2], "-t"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
        out, _ = proc.communicate(timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{out.decode(errors='replace')}")

    def _run(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` as the unprivileged user when we are root."""
        user = self.user
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                user=None if user is None else user.pw_uid,
                                group=None if user is None else user.pw_gid,
                                extra_groups=None if user is None else [], **kwargs)

    def start(self, timeout: float = 15.0) -> None:
        """Start nginx and wait until it accepts connections."""
        self.check()
        out = open(self.prefix / "stderr.log", "wb")  # noqa: SIM115 - nginx holds it
        with out:
            self.proc = self._run(self.argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n"
                                   f"{self.error_log()}")
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx did not listen on {self.port} within {timeout}s")
            time.sleep(0.01)  # polling for the listener, there is nothing to wait on

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop nginx gracefully (QUIT), then for good; its exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def access_log(self) -> list[LogRecord]:
        """Every request nginx has logged so far."""
        records = []
        path = self.prefix / "access.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            f = line.split("\t")
            if len(f) != 7:
                continue
            records.append(LogRecord(float(f[0]), int(f[1]), f[2], f[3], _split(f[4]),
                                     _split(f[5]), float(f[6])))
        return records

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> NginxProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
