"""systemd integration without libsystemd: socket activation and readiness notification.

Theory of operation
-------------------
*Socket activation* (sd_listen_fds(3)).  systemd binds the addresses of a ``.socket`` unit
itself and starts the service with those listening sockets as descriptors 3, 4, ... and three
variables: ``LISTEN_FDS`` (how many), ``LISTEN_PID`` (the pid they are meant for -- a process
that merely inherited the environment must not take them) and, optionally,
``LISTEN_FDNAMES`` (colon-separated names from ``FileDescriptorName=``).  :func:`listen_fds`
takes them once, in the front: it removes the three variables whatever it finds (so that no
child ever sees them), marks the descriptors close-on-exec (so that no worker inherits a
listener), and checks that each one is a listening stream socket.  When systemd passes
sockets they *replace* the ``bind`` setting: the socket unit is then the one place that says
where the service listens (gunicorn does the same); ``fd://N`` in ``bind`` remains the way to
name an inherited descriptor explicitly without systemd's variables.

*Notification* (sd_notify(3)).  ``NOTIFY_SOCKET`` names an ``AF_UNIX`` datagram socket, a
path or, with a leading ``@``, an abstract name.  Each notification is one datagram of
``KEY=VALUE`` lines.  The front sends ``READY=1`` once a worker is ready and the listeners
accept, ``RELOADING=1`` (with ``MONOTONIC_USEC``, which ``Type=notify-reload`` requires) on
HUP and ``READY=1`` again when the rolling reload is over, ``STOPPING=1`` on TERM and INT, and
``STATUS=`` lines a person reads in ``systemctl status``.  The variable is removed from the
environment as well: the front is the service's only notifier (``NotifyAccess=main``).
A failed notification is logged, never fatal: the service works the same without systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Final

from zeus.errors import ConfigError

log = logging.getLogger("zeus.front")

LISTEN_FDS_START: Final = 3  # SD_LISTEN_FDS_START
ACTIVATION_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
NOTIFY_VARIABLE: Final = "NOTIFY_SOCKET"
#: Variables meant for the front alone: never passed on to workers or the app's import check.
FRONT_ONLY: Final = frozenset({*ACTIVATION_VARIABLES, NOTIFY_VARIABLE})


@dataclass(frozen=True, slots=True)
class ActivatedSocket:
    """One listening socket passed by systemd."""

    sock: socket.socket
    fd: int
    name: str  # FileDescriptorName= of the socket unit, or "unknown"


def worker_environment(environ: MutableMapping[str, str]) -> dict[str, str]:
    """``environ`` without the variables that are meant for the front alone."""
    return {k: v for k, v in environ.items() if k not in FRONT_ONLY}


def listen_fds(environ: MutableMapping[str, str] | None = None,
               pid: int | None = None) -> list[ActivatedSocket]:
    """The listening sockets systemd passed to this process (none if it passed none or they
    are meant for another pid).  Removes the variables in any case; ConfigError if a passed
    descriptor is not a listening stream socket."""
    env = os.environ if environ is None else environ
    pid_text, count_text, names_text = (env.pop(k, None) for k in ACTIVATION_VARIABLES)
    if pid_text is None or count_text is None:
        return []
    try:
        listen_pid, count = int(pid_text), int(count_text)
    except ValueError:
        raise ConfigError(f"invalid socket activation variables LISTEN_PID={pid_text!r} "
                          f"LISTEN_FDS={count_text!r}") from None
    if listen_pid != (os.getpid() if pid is None else pid) or count <= 0:
        return []
    names = names_text.split(":") if names_text else []
    if len(names) != count:
        names = ["unknown"] * count
    out: list[ActivatedSocket] = []
    for fd, name in zip(range(LISTEN_FDS_START, LISTEN_FDS_START + count), names, strict=True):
        out.append(ActivatedSocket(_adopt(fd, name), fd, name))
    return out


def _adopt(fd: int, name: str) -> socket.socket:
    """Take descriptor ``fd`` as a non-blocking, close-on-exec listening stream socket."""
    what = f"systemd socket activation: fd {fd} ({name})"
    try:
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"{what} cannot be used: {exc.strerror}") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET,
                                                               socket.SO_ACCEPTCONN):
        sock.detach()
        raise ConfigError(f"{what} is not a listening stream socket (use ListenStream=)")
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Notifier:
    """Sends sd_notify(3) messages to systemd; does nothing when not run under it."""

    SEND_TIMEOUT: Final = 0.5  # a full notification queue must not stall the front for long

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._failed = False
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec
            self._sock.settimeout(self.SEND_TIMEOUT)

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier ``NOTIFY_SOCKET`` asks for (and the variable removed), or a silent
        one when there is none or it names something other than a unix socket."""
        env = os.environ if environ is None else environ
        where = env.pop(NOTIFY_VARIABLE, None)
        if not where:
            return cls(None)
        if where.startswith("@"):
            return cls("\0" + where[1:])  # the abstract namespace
        if where.startswith("/"):
            return cls(where)
        log.warning("NOTIFY_SOCKET=%r is not a unix socket: systemd will not be notified",
                    where)
        return cls(None)

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere."""
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; False if it could not be sent."""
        if self._sock is None or self.address is None:
            return False
        data = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            self._sock.sendto(data, self.address)
        except OSError as exc:
            if not self._failed:  # once: systemd gone is not worth a line per event
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        """The service is up (or is again, after a reload)."""
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self, status: str) -> bool:
        """A reload began; ``ready`` follows when it is over."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        """The service is shutting down."""
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """A free-form status line for ``systemctl status``."""
        return self.send(f"STATUS={status}")

    def close(self) -> None:
        """Close the notification socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __repr__(self) -> str:
        where = "off" if self.address is None else self.address.replace("\0", "@")
        return f"<Notifier {where}>"
