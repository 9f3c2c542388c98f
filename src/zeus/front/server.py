"""The front process: bind, start the pool, serve HTTP, and act on signals.

Signal handlers only record (``loop.add_signal_handler`` runs them from the loop, not inside
the interrupted code); the main coroutine acts on them in order:

* TERM: graceful drain -- take the connections already waiting in the listen queue, stop
  accepting, half-close idle keep-alive connections (after one more poll for a request on its
  way), let requests in flight finish within ``graceful_timeout``, stop the workers, exit 0.
* INT: quick -- stop accepting, stop workers at once, exit 0.
* HUP: zero-downtime rolling reload of the workers (new code is imported by new processes).
* TTIN / TTOU: one worker more / less.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from zeus.config import Settings, parse_bind
from zeus.errors import ConfigError
from zeus.exitcodes import ServerExit
from zeus.front import systemd
from zeus.front.accesslog import AccessLog
from zeus.front.health import Health
from zeus.front.http import HttpProtocol, parse_limits
from zeus.front.limits import HttpLimits, error_response
from zeus.front.logs import access_writer
from zeus.front.metrics import FrontMetrics, MetricsEndpoint
from zeus.front.unixsocket import SocketFile, bind_unix
from zeus.hooks import HookFailed, Hooks, ServerInfo
from zeus.pool import BootFailure, Pool, PoolConfig

log = logging.getLogger("zeus.front")


@dataclass(slots=True)
class ServeConfig:
    """What ``zeus serve`` / ``zeus run`` were asked to do."""

    pool: PoolConfig
    binds: list[str] = field(default_factory=lambda: ["127.0.0.1:8000"])
    limits: HttpLimits = field(default_factory=HttpLimits)
    access_log: bool = False
    backlog: int = 2048
    reuse_port: bool = False
    unix_socket_mode: int | None = None  # permissions of unix: sockets (None: umask's)
    unix_socket_gid: int | None = None  # their group (None: the front's)
    settings: Settings = field(default_factory=Settings)  # everything, for the newer features
    hooks: Hooks = field(default_factory=Hooks)  # loaded (zeus/hooks.py)


def bind_socket(spec: str, *, backlog: int, reuse_port: bool, unix_mode: int | None = None,
                unix_gid: int | None = None) -> socket.socket:
    """Create and listen on the socket ``spec`` names (unix: see front/unixsocket.py)."""
    kind, where = parse_bind(spec)
    if kind == "fd":
        assert isinstance(where, int)
        sock = socket.socket(fileno=where)
        sock.setblocking(False)
        return sock
    if kind == "unix":
        assert isinstance(where, str)
        return bind_unix(where, backlog=backlog, mode=unix_mode, gid=unix_gid)
    else:
        assert isinstance(where, tuple)
        host, port = where
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def describe(sock: socket.socket) -> str:
    """``http://host:port`` or ``unix:path`` for the log."""
    name = sock.getsockname()
    if isinstance(name, tuple):
        host = f"[{name[0]}]" if ":" in name[0] else name[0]
        return f"http://{host}:{name[1]}"
    return f"unix:{name}"


class FrontServer:
    """The HTTP side of a running Zeus: the pool, the listeners, the connections."""

    def __init__(self, config: ServeConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config: Final = config
        self.loop = loop
        self.limits = config.limits
        self.parse_limits = parse_limits(config.limits)
        # None when off: the per-request cost is then one attribute test (front/accesslog.py)
        self.access_log = (AccessLog(config.settings.access_log_format,
                                     writer=access_writer(loop)) if config.access_log else None)
        self.hooks = config.hooks
        self.pool = Pool(config.pool, hooks=config.hooks)
        self.addresses: list[str] = []  # what it listens on, for the hooks
        self.connections: set[HttpProtocol] = set()
        self.servers: list[asyncio.Server] = []
        self.listeners: list[socket.socket] = []  # the listening sockets (drained on TERM)
        self.draining = False
        self.lame_duck = False  # TERM with --drain-delay: serving, but readiness fails
        self.date_header = b""
        self._date_timer: asyncio.TimerHandle | None = None
        self._signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
        self.notifier = systemd.Notifier.from_environment()  # sd_notify; silent off systemd
        self._reloaded: asyncio.Task[None] | None = None
        self.metrics = FrontMetrics()  # counted as requests are answered (front/metrics.py)
        self.health = Health(self)  # liveness and readiness (front/health.py)
        self.scrape = MetricsEndpoint(self)  # the metrics bind (--metrics-bind), if any
        self._update_date()

    def _update_date(self) -> None:
        now = time.time()
        self.date_header = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        self._date_timer = self.loop.call_later(1.0 - now % 1.0, self._update_date)

    def error_response(self, status: int, detail: str, *, close: bool) -> bytes:
        """An error response with the current Date header."""
        self.metrics.error(status)
        raw = error_response(status, detail, close=close)
        head, _, body = raw.partition(b"\r\n\r\n")
        return head + b"\r\n" + self.date_header + b"\r\n" + body

    async def serve(self, sockets: list[socket.socket]) -> int:
        """Run until a signal says stop; return the exit status."""
        try:
            await self.scrape.start()  # before the workers boot: probes see "not ready"
        except OSError as exc:
            log.critical("cannot bind the metrics endpoint: %s", exc)
            return ServerExit.USAGE
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
        for sig in signals:  # before the boot: a TERM while workers boot stops them too
            self.loop.add_signal_handler(sig, self._signals.put_nowait, sig)
        try:
            stopped = await self._boot()
        except BootFailure as exc:
            log.critical("%s", exc)
            stopped = ServerExit.BOOT_FAILURE
        if stopped is not None:
            for sig in signals:
                self.loop.remove_signal_handler(sig)
            self.notifier.close()
            self.scrape.close()
            return stopped
        for sock in sockets:
            server = await self.loop.create_server(
                lambda: HttpProtocol(self), sock=sock, backlog=self.config.backlog
            )
            self.servers.append(server)
            self.listeners.append(sock)
            self.addresses.append(describe(sock))
            log.info("listening on %s", describe(sock))
        self.notifier.ready(self._status())
        self.hooks.when_ready(self.info())
        halted: asyncio.Future[Any] = self.pool.halted
        try:
            while True:
                getter: asyncio.Future[Any] = asyncio.ensure_future(self._signals.get())
                done, _ = await asyncio.wait(
                    {getter, halted}, return_when=asyncio.FIRST_COMPLETED
                )
                if halted in done:
                    getter.cancel()
                    log.critical("%s", halted.result())
                    await self.shutdown(graceful=False)
                    return ServerExit.BOOT_FAILURE
                sig = getter.result()
                if sig == signal.SIGTERM:
                    self.notifier.stopping("draining: finishing requests in flight")
                    graceful = await self._lame_duck()
                    log.info("SIGTERM: draining" if graceful else "SIGINT: stopping")
                    await self.shutdown(graceful=graceful)
                    return ServerExit.OK
                if sig == signal.SIGINT:
                    log.info("SIGINT: stopping")
                    self.notifier.stopping("stopping")
                    await self.shutdown(graceful=False)
                    return ServerExit.OK
                if sig == signal.SIGHUP:
                    log.info("SIGHUP: rolling reload of the workers")
                    self.notifier.reloading("rolling reload of the workers")
                    self._notify_when_reloaded()  # before the reload starts new workers
                    self.hooks.on_reload(self.info())
                    self.pool.reload()
                elif sig == signal.SIGTTIN:
                    self.pool.scale(+1)
                    log.info("SIGTTIN: %d workers", len(self.pool.workers))
                elif sig == signal.SIGTTOU:
                    self.pool.scale(-1)
                    log.info("SIGTTOU: scaling down")
        finally:
            for sig in signals:
                self.loop.remove_signal_handler(sig)
            if self._date_timer is not None:
                self._date_timer.cancel()
            if self._reloaded is not None:
                self._reloaded.cancel()
            self.notifier.close()
            if self.access_log is not None:
                self.access_log.flush()
            self.scrape.close()  # last: readiness says 503 on it until the drain is over

    def info(self) -> ServerInfo:
        """The server as the hooks see it."""
        return ServerInfo(pid=os.getpid(), addresses=tuple(self.addresses),
                          settings=self.config.settings)

    async def _lame_duck(self) -> bool:
        """``--drain-delay``: before the drain, keep serving for that long while readiness
        fails, so that load balancers polling it stop sending new connections before the
        listeners close (what a Kubernetes preStop sleep does by hand).  A second TERM ends
        the delay; an INT ends it and asks for a quick stop (returns False)."""
        delay = self.config.settings.drain_delay
        if delay <= 0:
            return True
        log.info("SIGTERM: readiness fails for %.1fs, then the drain", delay)
        self.lame_duck = True
        deadline = self.loop.time() + delay
        while (left := deadline - self.loop.time()) > 0:
            try:
                sig = await asyncio.wait_for(self._signals.get(), left)
            except TimeoutError:
                break
            if sig == signal.SIGINT:
                return False
            if sig == signal.SIGTERM:
                break
            log.info("%s ignored: the server is stopping", sig.name)
        return True

    async def _boot(self) -> ServerExit | None:
        """Start the pool; a TERM or an INT meanwhile stops the boot and the workers already
        started (the exit status is then returned), other signals wait for the boot to end.

        Raises BootFailure when the application cannot boot."""
        boot: asyncio.Future[Any] = asyncio.ensure_future(self.pool.start())
        later: list[signal.Signals] = []
        try:
            while not boot.done():
                getter: asyncio.Future[Any] = asyncio.ensure_future(self._signals.get())
                await asyncio.wait({boot, getter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                sig = getter.result()
                if sig not in (signal.SIGTERM, signal.SIGINT):
                    later.append(sig)  # HUP, TTIN, TTOU: handled once serving
                    continue
                log.info("%s while the workers boot: stopping", sig.name)
                self.notifier.stopping("stopping")
                boot.cancel()
                with contextlib.suppress(asyncio.CancelledError, BootFailure):
                    await boot
                await self.pool.stop(graceful=False)
                return ServerExit.OK
            boot.result()
            return None
        finally:
            for sig in later:
                self._signals.put_nowait(sig)

    def _status(self) -> str:
        """The STATUS= line systemd shows."""
        ready = sum(1 for w in self.pool.workers if w.state.value == "ready")
        return f"serving; {ready} of {len(self.pool.workers)} workers ready"

    def _notify_when_reloaded(self) -> None:
        """Send READY=1 once every worker that predates the reload has been replaced."""
        if not self.notifier.enabled:
            return
        old = {w.pid for w in self.pool.workers}
        if self._reloaded is not None:
            self._reloaded.cancel()

        async def wait() -> None:
            while any(w.pid in old for w in self.pool.workers) or not any(
                    w.state.value == "ready" for w in self.pool.workers):
                await asyncio.sleep(0.05)  # only while a reload rolls (the pool has no event)
            self.notifier.ready(self._status())

        self._reloaded = self.loop.create_task(wait(), name="zeus-notify-reloaded")

    async def shutdown(self, *, graceful: bool) -> None:
        """Stop accepting; drain (graceful) or drop connections; stop the pool."""
        self.draining = True
        # Connections the kernel completed but nobody accepted yet would be reset when the
        # listener closes (their clients have sent requests): on a drain, take them first.
        pending = self._accept_pending() if graceful else []
        for server in self.servers:
            server.close()
        for sock in pending:
            task = self.loop.create_task(
                self.loop.connect_accepted_socket(lambda: HttpProtocol(self), sock))
            task.add_done_callback(_log_adopt_failure)
        timeout = self.config.pool.graceful_timeout
        deadline = time.monotonic() + timeout
        if graceful:
            while time.monotonic() < deadline:
                busy = [c for c in list(self.connections) if not c.close_if_idle()]
                if not busy:
                    break
                await asyncio.sleep(0.05)
            # Idle connections were half-closed (close_if_idle): give their clients a moment
            # to see the FIN and close, so that nothing they sent meanwhile resets them.
            linger = min(deadline, time.monotonic() + _LINGER)
            while self.connections and time.monotonic() < linger:
                await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn._abort()
        await self.pool.stop(graceful=graceful, timeout=max(0.0, deadline - time.monotonic()))


    def _accept_pending(self) -> list[socket.socket]:
        """Accept, without blocking, every connection waiting in the listeners' queues."""
        taken: list[socket.socket] = []
        for listener in self.listeners:
            while True:
                try:
                    sock, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # EMFILE and the like: the rest are lost, say so
                    log.warning("draining the accept queue: %s", exc)
                    break
                sock.setblocking(False)
                if sock.family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                taken.append(sock)
        return taken


_LINGER: Final = 1.0  # seconds half-closed connections get to close on a drain


def _log_adopt_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a connection accepted during the drain failed: %s", task.exception())


def run(config: ServeConfig) -> int:
    """Run the hooks around :func:`bind_and_serve`: ``on_starting`` (which may refuse) and
    ``on_exit``; return the process exit status."""
    try:
        config.hooks.on_starting(config.settings)  # before anything is bound or started
    except HookFailed as exc:
        log.critical("%s", exc)
        return ServerExit.BOOT_FAILURE
    addresses: list[str] = []
    status: int = ServerExit.ERROR
    try:
        status = bind_and_serve(config, addresses)
    finally:
        info = ServerInfo(pid=os.getpid(), addresses=tuple(addresses), settings=config.settings)
        config.hooks.on_exit(info, status)
    return status


def bind_and_serve(config: ServeConfig, addresses: list[str] | None = None) -> int:
    """Bind, serve until told to stop, and return the process exit status (``addresses``
    receives what it listened on)."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        loop_factory = asyncio.new_event_loop
    sockets: list[socket.socket] = []
    files: list[SocketFile] = []  # unix socket files to remove on exit
    try:
        activated = systemd.listen_fds()  # they replace the binds (see front/systemd.py)
        sockets.extend(a.sock for a in activated)
        if activated and list(config.binds) != list(Settings().bind):
            log.warning("socket activation: %d socket(s) from systemd; bind %s ignored",
                        len(activated), ", ".join(config.binds))
        elif activated:
            log.info("socket activation: %d socket(s) from systemd", len(activated))
        for spec in config.binds if not activated else ():
            sockets.append(
                bind_socket(spec, backlog=config.backlog, reuse_port=config.reuse_port,
                            unix_mode=config.unix_socket_mode, unix_gid=config.unix_socket_gid)
            )
            kind, where = parse_bind(spec)
            if kind == "unix":
                assert isinstance(where, str)
                files.append(SocketFile.of(where))
    except (OSError, ValueError, ConfigError) as exc:
        log.critical("cannot bind: %s", exc)
        for s in sockets:
            s.close()
        for f in files:
            f.remove()
        return ServerExit.USAGE
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        server = FrontServer(config, loop)
        if addresses is not None:
            server.addresses = addresses  # filled as it listens
        return loop.run_until_complete(server.serve(sockets))
    finally:
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()
        for f in files:
            f.remove()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
