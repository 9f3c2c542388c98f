"""Where the front's logs go: the error log, the access log, and a ``log_config`` file.

Theory of operation
-------------------
Two loggers matter to an operator.  The error log is every logger but one (``zeus.front``,
``zeus.pool``, ``zeus.hooks``, ...): lines of ``[time] [pid] [LEVEL] message`` on stderr at
``log_level``.  The access log is ``zeus.access``: bare lines (the access log format makes the
whole line), INFO, not propagated, so it can go elsewhere -- stderr by default, stdout with
``access_log_file = "-"``, or appended to a file (reopened if logrotate moves it).

``error_log = FILE`` does not add a handler: it points the front's file descriptor 2 at FILE
(appending) before any worker starts, so the workers, which inherit it, write their own
messages and the application's tracebacks there too -- one file with everything that went
wrong, as gunicorn's ``--error-logfile`` gives.  Rotate it with ``copytruncate``.

``log_config`` is applied last, on top of the above, so what it configures wins and what it
leaves alone keeps Zeus's set-up: a dictConfig file (``.json`` or ``.toml``; ``version: 1``
and ``disable_existing_loggers: false`` are the defaults here, since Zeus's loggers exist
already) or a fileConfig file (``.ini``, ``.conf``, ``.cfg``), as gunicorn's ``--log-config``
takes.  Every failure -- a missing file, bad syntax, a handler that cannot be built -- is a
one-line :class:`ConfigError`.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import logging
import logging.config
import logging.handlers
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from zeus.config import Settings
from zeus.errors import ConfigError

ERROR_FORMAT: Final = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
ACCESS_LOGGER: Final = "zeus.access"
_DICT_SUFFIXES: Final = (".json", ".toml")
_FILE_SUFFIXES: Final = (".ini", ".conf", ".cfg")
_BATCH: Final = 64 << 10  # write at once when this many characters are waiting

_installed: logging.Handler | None = None  # the access log handler setup() made


def _one_line(exc: BaseException) -> str:
    """An exception and its causes, on one line (dictConfig wraps the real error)."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        text = str(seen) or type(seen).__name__
        if not parts or text not in parts[-1]:
            parts.append(text)
        seen = seen.__cause__ or seen.__context__
    return ": ".join(parts).replace("\n", " ")


def read_log_config(path: str) -> dict[str, Any] | None:
    """Read and check ``path``: its dictConfig mapping, or None for a fileConfig file.

    ConfigError (one line, naming the file) if it cannot be read or parsed.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in _DICT_SUFFIXES + _FILE_SUFFIXES:
        raise ConfigError(f"log_config {path}: unknown kind of file (dictConfig as .json or "
                          f".toml, fileConfig as .ini, .conf or .cfg)")
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"log_config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"log_config {path}: not UTF-8 text") from None
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            parser = configparser.ConfigParser()
            parser.read_string(text, source=path)
            for section in ("loggers", "handlers", "formatters"):
                if not parser.has_section(section):
                    raise ConfigError(f"log_config {path}: no [{section}] section "
                                      f"(a logging fileConfig file has all three)")
            return None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, configparser.Error) as exc:
        raise ConfigError(f"log_config {path}: invalid {suffix[1:].upper()}: "
                          f"{_one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"log_config {path}: expected a mapping (a dictConfig), "
                          f"got {type(data).__name__}")
    data.setdefault("version", 1)
    data.setdefault("disable_existing_loggers", False)
    return data


def apply_log_config(path: str) -> None:
    """Read ``path`` and apply it with dictConfig or fileConfig; ConfigError if it fails."""
    data = read_log_config(path)
    try:
        if data is None:
            logging.config.fileConfig(path, disable_existing_loggers=False)
        else:
            logging.config.dictConfig(data)
    except Exception as exc:  # logging.config raises all kinds (ValueError, KeyError, ...)
        raise ConfigError(f"log_config {path}: {_one_line(exc)}") from None


def redirect_stderr(path: str) -> None:
    """Point file descriptor 2 (inherited by the workers) at ``path``, appending."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(f"error_log {path}: {exc.strerror or exc}") from None
    sys.stderr.flush()
    os.dup2(fd, 2)  # the new descriptor 2 is inheritable (dup2 clears close-on-exec)
    os.close(fd)


def access_handler(destination: str | None) -> logging.Handler:
    """The access log's handler: stderr (None), stdout (``-``) or a file, bare lines."""
    handler: logging.Handler
    if destination == "-":
        handler = logging.StreamHandler(sys.stdout)
    elif destination:
        try:
            handler = logging.handlers.WatchedFileHandler(destination)
        except OSError as exc:
            raise ConfigError(f"access_log_file {destination}: {exc.strerror or exc}"
                              ) from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def setup(settings: Settings) -> None:
    """Set up the front's logging from ``settings``; ConfigError (one line) if it cannot."""
    logging.basicConfig(level=getattr(logging, settings.log_level.upper()),
                        format=ERROR_FORMAT, stream=sys.stderr, force=True)
    access = logging.getLogger(ACCESS_LOGGER)
    for old in list(access.handlers):
        access.removeHandler(old)
        old.close()
    global _installed
    _installed = access_handler(settings.access_log_file)
    access.addHandler(_installed)
    access.setLevel(logging.INFO)
    access.propagate = False
    if settings.log_config:
        apply_log_config(settings.log_config)
    if settings.error_log and settings.error_log != "-":
        # Last, so that a failure above still reaches the terminal; the handlers made above
        # write to sys.stderr, whose descriptor 2 now leads to the file.
        redirect_stderr(settings.error_log)


class BatchWriter:
    """The access log's fast path: lines gathered during one turn of the event loop are
    written together, with one ``write`` and one flush, at the end of that turn.

    Used only while ``zeus.access`` still has just the handler :func:`setup` gave it (a
    ``log_config`` that configures it gets every line as a log record instead).  Measured in
    docs/logging.md: it saves the log record and the system call per request that
    ``logger.info`` costs, which is most of the access log's price under load.
    """

    __slots__ = ("handler", "lines", "loop", "size")

    def __init__(self, handler: logging.StreamHandler[Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.handler = handler
        self.loop = loop
        self.lines: list[str] = []
        self.size = 0

    def __call__(self, line: str) -> None:
        if not self.lines:
            self.loop.call_soon(self.flush)
        self.lines.append(line)
        self.size += len(line)
        if self.size > _BATCH:
            self.flush()

    def flush(self) -> None:
        """Write what is waiting (also called at shutdown)."""
        if not self.lines:
            return
        text = "\n".join(self.lines) + "\n"
        self.lines.clear()
        self.size = 0
        handler = self.handler
        handler.acquire()
        try:
            if isinstance(handler, logging.handlers.WatchedFileHandler):
                handler.reopenIfNeeded()  # logrotate moved the file: write to a new one
            handler.stream.write(text)
            handler.stream.flush()
        except (OSError, ValueError):  # a full disk, a closed stream: as logging does
            print(f"zeus: cannot write the access log: {sys.exc_info()[1]}", file=sys.stderr)
        finally:
            handler.release()


def access_writer(loop: asyncio.AbstractEventLoop) -> Callable[[str], None] | None:
    """A :class:`BatchWriter` for the access log if Zeus's own handler is still its only
    one; None if a ``log_config`` changed it (the lines then go through logging)."""
    access = logging.getLogger(ACCESS_LOGGER)
    handler = _installed
    if (handler is None or access.handlers != [handler] or access.propagate
            or access.filters or handler.filters
            or not access.isEnabledFor(logging.INFO)
            or not isinstance(handler, logging.StreamHandler)):
        return None
    return BatchWriter(handler, loop)
