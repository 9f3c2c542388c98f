"""Listening on a unix socket file: permissions, a stale file replaced, a live one refused,
and the file removed on exit.

Theory of operation
-------------------
A unix socket file outlives the process that bound it when that process is killed, so a
restarted server finds its path taken.  Unlinking whatever is there (as many servers do) lets
a second instance silently steal the path from a first one that is still serving: the first
keeps running, unreachable.  So before binding, :func:`bind_unix` connects to the existing
file: refused (``ECONNREFUSED``) means nobody listens and the file is stale -- it is replaced;
accepted (or a full backlog, ``EAGAIN``) means a live server -- zeus refuses with an error
naming the path.  A path that is not a socket is never removed.

Permissions are in place before the first client can connect: the socket is bound under a
umask that grants at most ``mode`` (the umask is process-wide, and the front binds before it
starts any thread or worker), then ``chmod`` makes the mode exact and ``chown`` gives the file
its group.  Connecting needs write permission on the file (unix(7)), so ``660`` with the web
server's group admits that server and nobody else.

On exit the front removes the file, but only if the path still names the file it bound: an
instance that replaced it in the meantime keeps its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SocketFile:
    """The file a unix listener was bound to, as it was right after bind."""

    path: str
    device: int
    inode: int

    @classmethod
    def of(cls, path: str) -> SocketFile:
        """The file at ``path`` now."""
        st = os.stat(path)
        return cls(path, st.st_dev, st.st_ino)

    def remove(self) -> bool:
        """Unlink the file if the path still names it; True if it was removed."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != (self.device, self.inode):
            return False  # another server's now
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            return True
        return False


def is_live(path: str) -> bool:
    """Whether a server accepts connections on the unix socket file ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except BlockingIOError:
            return True  # listening, backlog full
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise
        return True


def clear_stale(path: str) -> None:
    """Make room at ``path``: unlink a stale socket file; OSError if a server listens there
    or the path is something other than a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a socket: not replacing it", path)
    if is_live(path):
        raise OSError(errno.EADDRINUSE, "another server is listening on this socket", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def bind_unix(path: str, *, backlog: int, mode: int | None = None,
              gid: int | None = None) -> socket.socket:
    """A listening unix socket at ``path`` with ``mode`` and group ``gid`` (None: leave as
    created); OSError on failure.  The caller removes the file on exit (:class:`SocketFile`)."""
    clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o777 & ~mode) if mode is not None else None
        try:
            sock.bind(path)
        finally:
            if old is not None:
                os.umask(old)
        created = SocketFile.of(path)
        try:
            if mode is not None:
                os.chmod(path, mode)
            if gid is not None:
                os.chown(path, -1, gid)
            sock.listen(backlog)
        except OSError:
            created.remove()
            raise
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
