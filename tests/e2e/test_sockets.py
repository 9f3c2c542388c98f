"""Where the front listens, for real: systemd socket activation (a socket the test binds, passed
as fd 3 with ``LISTEN_PID`` set to zeus's own pid), sd_notify to a datagram socket the test
reads, ``SO_REUSEPORT`` shared by two instances, and unix sockets (mode and group applied, a
stale file replaced, a live one refused, the file removed on exit)."""

from __future__ import annotations

import contextlib
import grp
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from .helpers import (
    APP,
    ROOT,
    ZEUS,
    Conn,
    RawResponse,
    Server,
    ServerSet,
    build_request,
    free_port,
    wait_until,
)

HELLO = b"Hello from Zeus!\n"  # what the app answers on /hello

# Runs zeus with the listening socket given as its fd 3 and LISTEN_PID set to zeus's own pid:
# what systemd does (it sets the variables in the child between fork and exec; this sets them
# in the very process that then execs zeus, so the pid is the same).
ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES=sys.argv[2])
os.execv(sys.argv[3], sys.argv[3:])
"""


class Launched(Server):
    """A ``zeus`` process started with any argv, environment and inherited descriptors; the
    checks of :class:`Server` (stop, no worker left behind) apply to it."""

    def __init__(self, argv: Sequence[str], log_path: Path, *, port: int = 0,
                 env: dict[str, str] | None = None, unset: Sequence[str] = (),
                 pass_fds: Sequence[int] = ()) -> None:
        self.port = port
        self.state_dir = log_path.parent
        self.log_path = log_path
        self.argv = list(argv)
        full = {k: v for k, v in os.environ.items() if k not in unset and k != "PYTHONPATH"}
        full.update(env or {})
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=full, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     pass_fds=tuple(pass_fds))
        self.seen_workers: set[tuple[int, str]] = set()

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        """Wait until the log says ``text`` (RuntimeError if zeus exits first)."""

        def said() -> bool:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                raise RuntimeError(f"zeus exited {self.proc.returncode}:\n{self.log()}")
            return False

        wait_until(said, timeout, repr(text))

    def exit_status(self, timeout: float = 30.0) -> int:
        """Wait for zeus to exit on its own; its status."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()


Launch = Callable[..., Launched]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """``launch(argv, **options)`` starts a :class:`Launched`; each still running at teardown
    gets SIGTERM and must exit 0 with no worker left behind."""
    servers = ServerSet(tmp_path)
    counter = iter(range(1000))

    def start(argv: Sequence[str], **options: object) -> Launched:
        server = Launched(argv, tmp_path / f"zeus{next(counter)}.log", **options)  # type: ignore[arg-type]
        servers.servers.append(server)
        return server

    try:
        yield start
    finally:
        servers.close()


def serve_argv(*options: str, workers: int = 2) -> list[str]:
    return [str(ZEUS), "serve", APP, "--workers", str(workers), "--graceful-timeout", "5",
            *options]


def get(port: int, target: str = "/hello") -> RawResponse:
    with Conn(port) as conn:
        return conn.request("GET", target)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    items = raw.decode(errors="replace").split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def socket_inodes(pid: int) -> set[str]:
    """``socket:[INODE]`` of every socket descriptor ``pid`` holds."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:"):
                out.add(target)
    return out


def listener(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen(64)
    return sock


# ------------------------------------------------------------------ socket activation


@pytest.mark.timeout(60)
def test_socket_activation_serves_through_the_inherited_socket_instead_of_bind(
        launch: Launch) -> None:
    """zeus takes fd 3 when LISTEN_PID is its own pid: requests are served through it, the
    ``--bind`` address is not bound (the socket unit says where to listen), and neither the
    variables nor the listening socket reach the workers."""
    sock = listener()
    port = sock.getsockname()[1]
    unused = free_port()
    zeus = launch([sys.executable, "-c", ACTIVATE, str(sock.fileno()), "web",
                   *serve_argv("--bind", f"127.0.0.1:{unused}")], port=port,
                  pass_fds=[sock.fileno()])
    inode = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
    sock.close()  # zeus holds it now
    zeus.wait_ready(2)
    for _ in range(4):
        resp = get(port)
        assert (resp.status, resp.body) == (200, HELLO)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", unused), timeout=2).close()
    assert f"bind 127.0.0.1:{unused} ignored" in zeus.log()
    assert f"listening on http://127.0.0.1:{port}" in zeus.log()
    assert inode in socket_inodes(zeus.pid)
    for worker in zeus.workers():
        env = environ_of(worker)
        assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & env.keys(), env
        assert inode not in socket_inodes(worker)
    assert zeus.stop() == 0


@pytest.mark.timeout(60)
def test_sockets_meant_for_another_pid_are_left_alone(launch: Launch) -> None:
    """LISTEN_PID names another process (zeus merely inherited the variables): zeus ignores
    the descriptors and binds its ``--bind`` address as usual."""
    port = free_port()
    zeus = launch(serve_argv("--bind", f"127.0.0.1:{port}"), port=port,
                  env={"LISTEN_PID": "1", "LISTEN_FDS": "1"})
    zeus.wait_ready(2)
    assert get(port).status == 200
    assert "socket activation" not in zeus.log()
    assert zeus.stop() == 0


@pytest.mark.timeout(30)
def test_a_passed_descriptor_that_is_not_a_listening_socket_is_one_line(launch: Launch) -> None:
    """A datagram socket as fd 3 (ListenDatagram= by mistake): exit 2, one clear line."""
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dgram.bind(("127.0.0.1", 0))
    zeus = launch([sys.executable, "-c", ACTIVATE, str(dgram.fileno()), "web", *serve_argv()],
                  pass_fds=[dgram.fileno()])
    dgram.close()
    assert zeus.exit_status() == 2
    assert "fd 3 (web) is not a listening stream socket" in zeus.log()
    assert "Traceback" not in zeus.log()


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
def test_systemd_socket_activate_starts_zeus(launch: Launch) -> None:
    """systemd's own implementation of the protocol (systemd-socket-activate binds, passes
    the socket and sets the variables) works the same."""
    port = free_port()
    zeus = launch(["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=http",
                   "-E", "ZEUS_ALLOW_ROOT", "-E", "PATH", *serve_argv()], port=port)
    zeus.wait_ready(2)
    resp = get(port)
    assert (resp.status, resp.body) == (200, HELLO)
    assert zeus.stop() == 0


# ------------------------------------------------------------------ sd_notify


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket; ``expect`` reads one message."""

    def __init__(self, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"zeus-test-notify-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
            self.dir: str | None = None
        else:  # a short path: sun_path holds 108 bytes
            self.dir = tempfile.mkdtemp(prefix="zn", dir="/tmp")
            self.sock.bind(f"{self.dir}/notify")
            self.env = f"{self.dir}/notify"

    def expect(self, key: str, timeout: float = 20.0) -> dict[str, str]:
        """The next message, which must contain ``key``=1."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in data.splitlines())
        assert fields.get(key) == "1", data
        return fields

    def close(self) -> None:
        self.sock.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_ready_reloading_stopping(launch: Launch, abstract: bool) -> None:
    """READY=1 once the listeners accept and a worker is ready; RELOADING=1 on HUP and READY=1
    again only when every old worker has been replaced; STOPPING=1 on TERM."""
    notify = NotifySocket(abstract)
    try:
        port = free_port()
        zeus = launch(serve_argv("--bind", f"127.0.0.1:{port}"), port=port,
                      env={"NOTIFY_SOCKET": notify.env})
        ready = notify.expect("READY")
        assert "serving" in ready["STATUS"]
        assert get(port).status == 200  # accepting when READY=1 arrives, no waiting
        zeus.wait_ready(2)
        for worker in zeus.workers():
            assert "NOTIFY_SOCKET" not in environ_of(worker)
        old = zeus.workers()

        zeus.send_signal(signal.SIGHUP)
        reloading = notify.expect("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        ready = notify.expect("READY")
        assert not old & zeus.workers(), "READY=1 came before the old workers were replaced"
        assert ready["STATUS"] == "serving; 2 of 2 workers ready"
        assert get(port).status == 200

        zeus.send_signal(signal.SIGTERM)
        assert "draining" in notify.expect("STOPPING")["STATUS"]
        assert zeus.stop() == 0
    finally:
        notify.close()


@pytest.mark.timeout(60)
def test_sigint_notifies_stopping(launch: Launch) -> None:
    notify = NotifySocket(abstract=True)
    try:
        port = free_port()
        zeus = launch(serve_argv("--bind", f"127.0.0.1:{port}"), port=port,
                      env={"NOTIFY_SOCKET": notify.env})
        notify.expect("READY")
        zeus.send_signal(signal.SIGINT)
        notify.expect("STOPPING")
        assert zeus.stop(signal.SIGINT) == 0
    finally:
        notify.close()


@pytest.mark.timeout(60)
def test_a_notify_socket_nobody_reads_costs_nothing(launch: Launch, tmp_path: Path) -> None:
    """NOTIFY_SOCKET names a path where no one listens: one warning, the server works."""
    port = free_port()
    zeus = launch(serve_argv("--bind", f"127.0.0.1:{port}"), port=port,
                  env={"NOTIFY_SOCKET": str(tmp_path / "nobody-here")})
    zeus.wait_ready(2)
    assert get(port).status == 200
    assert zeus.log().count("cannot notify systemd") == 1
    assert zeus.stop() == 0


# ------------------------------------------------------------------ SO_REUSEPORT


@pytest.mark.timeout(90)
def test_two_instances_share_a_port_with_reuse_port(launch: Launch) -> None:
    """Two zeus with --reuse-port bind the same port and the kernel spreads new connections
    over both; a third without it cannot bind there (one line, exit 2)."""
    port = free_port()
    a = launch(serve_argv("--bind", f"127.0.0.1:{port}", "--reuse-port", workers=1), port=port)
    a.wait_ready(1)
    b = launch(serve_argv("--bind", f"127.0.0.1:{port}", "--reuse-port", workers=1), port=port)
    b.wait_ready(1)
    owner = {pid: "a" for pid in a.workers()} | {pid: "b" for pid in b.workers()}
    answered: dict[str, int] = {"a": 0, "b": 0}
    deadline = time.monotonic() + 30
    for _ in range(400):  # fresh connections: each is hashed onto one of the two listeners
        resp = get(port, "/pid")
        assert resp.status == 200
        answered[owner[int(resp.body)]] += 1
        if min(answered.values()) >= 3 or time.monotonic() > deadline:
            break
    assert min(answered.values()) >= 3, answered

    c = launch(serve_argv("--bind", f"127.0.0.1:{port}", workers=1), port=port)
    assert c.exit_status() == 2
    assert "cannot bind" in c.log() and "Address already in use" in c.log()


# ------------------------------------------------------------------ unix sockets


class UnixConn(Conn):
    """A raw client connection over a unix socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = bytearray()


def unix_get(path: str, target: str = "/hello") -> RawResponse:
    with UnixConn(path) as conn:
        conn.send(build_request("GET", target))
        return conn.read_response()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for socket files (sun_path holds 108 bytes)."""
    where = Path(tempfile.mkdtemp(prefix="zu", dir="/tmp"))
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.timeout(60)
def test_unix_socket_mode_and_group_are_applied_and_the_file_removed_on_exit(
        launch: Launch, sock_dir: Path) -> None:
    path = sock_dir / "zeus.sock"
    options = ["--bind", f"unix:{path}", "--unix-socket-mode", "660"]
    gid = os.getgid()
    if os.geteuid() == 0:
        gid = grp.getgrnam("nogroup").gr_gid
        options += ["--unix-socket-group", "nogroup"]
    zeus = launch(serve_argv(*options))
    zeus.wait_log(f"listening on unix:{path}")
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == gid
    resp = unix_get(str(path))
    assert (resp.status, resp.body) == (200, HELLO)
    assert zeus.stop() == 0
    assert not path.exists()


@pytest.mark.timeout(60)
def test_a_stale_unix_socket_file_is_replaced(launch: Launch, sock_dir: Path) -> None:
    """A socket file left by a dead process (nobody listens) is replaced."""
    path = sock_dir / "zeus.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays behind, as after a SIGKILL
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    zeus = launch(serve_argv("--bind", f"unix:{path}"))
    zeus.wait_log(f"listening on unix:{path}")
    assert unix_get(str(path)).status == 200
    assert zeus.stop() == 0
    assert not path.exists()


@pytest.mark.timeout(60)
def test_a_live_unix_socket_is_refused_not_stolen(launch: Launch, sock_dir: Path) -> None:
    """Another server listens at the path: zeus exits 2 with one line, and the other server
    keeps its socket file and its clients."""
    path = sock_dir / "zeus.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen(8)
    try:
        zeus = launch(serve_argv("--bind", f"unix:{path}"))
        assert zeus.exit_status() == 2
        log = zeus.log()
        lines = [line for line in log.splitlines() if "CRITICAL" in line]
        assert len(lines) == 1 and "another server is listening" in lines[0], log
        assert str(path) in lines[0]
        assert "Traceback" not in log
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # still the other server's
            conn, _ = other.accept()
            conn.close()
    finally:
        other.close()


@pytest.mark.timeout(30)
def test_a_path_that_is_not_a_socket_is_never_removed(launch: Launch, sock_dir: Path) -> None:
    path = sock_dir / "zeus.sock"
    path.write_text("precious")
    zeus = launch(serve_argv("--bind", f"unix:{path}"))
    assert zeus.exit_status() == 2
    assert re.search(r"cannot bind: .*exists and is not a socket", zeus.log()), zeus.log()
    assert path.read_text() == "precious"


@pytest.mark.timeout(60)
def test_the_file_is_left_alone_when_another_server_took_the_path(
        launch: Launch, sock_dir: Path) -> None:
    """At exit zeus removes its socket file only if the path still names it."""
    path = sock_dir / "zeus.sock"
    zeus = launch(serve_argv("--bind", f"unix:{path}"))
    zeus.wait_log(f"listening on unix:{path}")
    path.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    try:
        assert zeus.stop() == 0
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        other.close()
