"""Every setting of ``zeus``, declared once: the command line, ``ZEUS_*`` variables, the TOML
file, ``zeus check-config`` and the documentation's reference are all generated from here.

Theory of operation
-------------------
``Settings`` is a frozen dataclass; each field is declared with :func:`option`, which stores an
:class:`Option` (help, section, parser, flag names) in the field's metadata.  A setting's names
follow from its field name: ``max_requests`` is ``--max-requests`` on the command line,
``ZEUS_MAX_REQUESTS`` in the environment and ``max_requests`` in ``zeus.toml``.  Every value,
wherever it comes from, goes through the same parser, so ``--memory-limit 512M``,
``ZEUS_MEMORY_LIMIT=512M`` and ``memory_limit = "512M"`` mean the same thing and fail the same
way.  To add a setting, add a field here; nothing else needs to know its name except the code
that uses it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

from zeus.errors import ConfigError

T = TypeVar("T")

SERVE: Final = "serve"
RUN: Final = "run"
BOTH: Final = frozenset({SERVE, RUN})

#: Sections, in the order ``--help``, ``check-config`` and the reference show them.
SECTIONS: Final = {
    "app": "Application",
    "server": "Server and workers",
    "timeouts": "Timeouts",
    "limits": "Recycling and limits",
    "http": "HTTP limits",
    "logging": "Logging",
    "metrics": "Metrics and health",
    "sockets": "Sockets and systemd",
    "security": "Privileges",
    "hooks": "Hooks",
}


# ------------------------------------------------------------------------------ parsers
# Each takes the text of a value and returns it parsed, or raises ConfigError saying why.

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``512M``, ``2GiB``, ``1048576`` -> bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"invalid size {text!r} (examples: 512M, 2G, 65536)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_int(text: str) -> int:
    """A whole number, zero or more."""
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(f"invalid integer {text!r}") from None
    if n < 0:
        raise ConfigError(f"must be >= 0, got {n}")
    return n


def parse_positive(text: str) -> int:
    """A whole number, one or more."""
    n = parse_int(text)
    if n < 1:
        raise ConfigError(f"must be at least 1, got {n}")
    return n


def parse_seconds(text: str) -> float:
    """A duration in seconds, zero or more (fractions allowed)."""
    try:
        n = float(text)
    except ValueError:
        raise ConfigError(f"invalid number of seconds {text!r}") from None
    if n != n or n == float("inf"):
        raise ConfigError(f"must be a finite number, got {text!r}")
    if n < 0:
        raise ConfigError(f"must be >= 0, got {n:g}")
    return n


def parse_str(text: str) -> str:
    """Any text."""
    return text


def parse_bool(text: str) -> bool:
    """``1 true yes on`` / ``0 false no off`` (any case)."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected true or false, got {text!r}")


def parse_bind(spec: str) -> tuple[str, object]:
    """Parse ``HOST:PORT``, ``[V6]:PORT``, ``unix:PATH`` or ``fd://N`` into (kind, where)."""
    bad = ConfigError(f"invalid bind {spec!r} (HOST:PORT, unix:PATH or fd://N)")
    if spec.startswith("unix:"):
        if not spec[5:]:
            raise bad
        return "unix", spec[5:]
    if spec.startswith("fd://"):
        try:
            return "fd", parse_int(spec[5:])
        except ConfigError:
            raise bad from None
    host, sep, port = spec.rpartition(":")
    if not sep:
        host, port = spec, "8000"
    host = host.strip("[]") or "0.0.0.0"
    try:
        number = int(port)
    except ValueError:
        raise bad from None
    if not 0 <= number <= 65535:
        raise bad
    return "tcp", (host, number)


def check_bind(spec: str) -> str:
    """A bind address, validated (see :func:`parse_bind`)."""
    parse_bind(spec)
    return spec


def parse_path(text: str) -> str:
    """An absolute URL path (``/healthz``): starts with ``/``, no query, no spaces."""
    if not text.startswith("/") or not (text.isascii() and text.isprintable()) or any(
            c in text for c in "?# "):
        raise ConfigError(f"invalid path {text!r} (an absolute path such as /healthz)")
    return text


def parse_mode(text: str) -> str:
    """Permission bits in octal (``660``, ``0o027``) -> their canonical text (``0660``).

    Kept as text so that check-config prints it back as octal; in TOML write it as a string
    (``umask = "027"``): a TOML integer would be read as decimal digits.
    """
    digits = text.strip().lower().removeprefix("0o")
    if not 0 < len(digits) <= 4 or any(c not in "01234567" for c in digits):
        raise ConfigError(f"invalid octal mode {text!r} (examples: 660, 027)")
    value = int(digits, 8)
    if value > 0o777:
        raise ConfigError(f"mode {text!r} is beyond 777")
    return f"{value:04o}"


def check_hook(spec: str) -> str:
    """``module:function`` naming a hook (imported when the server starts)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name.isidentifier():
        raise ConfigError(f"expected module:function, got {spec!r}")
    return spec


def check_access_log_format(text: str) -> str:
    """An access log format (gunicorn-style atoms, or ``json``), compiled to check it."""
    from zeus.front.accesslog import check_format  # the format's grammar lives with its user

    return check_format(text)


# ------------------------------------------------------------------------------ declaration


@dataclass(frozen=True, slots=True)
class Option:
    """How one setting is named, parsed and documented."""

    section: str
    help: str
    parse: Callable[[str], Any]
    short: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    flag: bool = False  # a switch: ``--reuse-port`` on the command line, a bool elsewhere
    multiple: bool = False  # a list: repeatable flag, comma-separated variable, TOML array
    commands: frozenset[str] = BOTH
    cli: bool = True  # has a command-line flag (False: file and environment only)
    env_aliases: tuple[str, ...] = ()  # lower-priority variables honoured too
    default_doc: str | None = None  # how the reference shows a computed default


def option(default: T, *, section: str, help: str, parse: Callable[[str], Any] = parse_str,
           short: str | None = None, metavar: str | None = None,
           choices: tuple[str, ...] | None = None, flag: bool = False, multiple: bool = False,
           commands: frozenset[str] = BOTH, cli: bool = True,
           env_aliases: tuple[str, ...] = (), default_doc: str | None = None) -> T:
    """Declare a field of :class:`Settings` (the dataclass keeps the metadata)."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}")
    meta = Option(section=section, help=help, parse=parse, short=short, metavar=metavar,
                  choices=choices, flag=flag, multiple=multiple, commands=commands, cli=cli,
                  env_aliases=env_aliases, default_doc=default_doc)
    return dataclasses.field(default=default, metadata={"zeus": meta})


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration of one ``zeus`` invocation (see the module docstring)."""

    # -- application
    app: str | None = option(
        None, section="app", commands=frozenset({SERVE}), cli=False,
        help="the application as module:attribute (the APP argument of zeus serve)")
    command: tuple[str, ...] = option(
        (), section="app", commands=frozenset({RUN}), cli=False, multiple=True,
        help="the worker program and its arguments (what follows -- on zeus run)")
    interface: str = option(
        "auto", section="app", commands=frozenset({SERVE}),
        choices=("auto", "native", "wsgi", "asgi"),
        help="how to call the app; auto detects it from its signature")
    chdir: str | None = option(
        None, section="app", metavar="DIR", help="change to this directory before loading")

    # -- server and workers
    bind: tuple[str, ...] = option(
        ("127.0.0.1:8000",), section="server", short="-b", parse=check_bind, multiple=True,
        metavar="ADDRESS", help="where to listen: HOST:PORT, unix:PATH or fd://N; repeatable")
    workers: int = option(
        2, section="server", short="-w", parse=parse_positive, metavar="N",
        env_aliases=("WEB_CONCURRENCY",), help="worker processes")
    balance: str = option(
        "round-robin", section="server", choices=("round-robin", "least-conn"),
        help="how requests are spread over workers")
    concurrency: int | None = option(
        None, section="server", parse=parse_positive, metavar="N", default_doc="1; 64 for ASGI",
        help="requests in flight per worker")
    prefetch: int | None = option(
        None, section="server", parse=parse_int, metavar="N",
        default_doc="auto: 2 to 16, by how fast requests are served",
        help="complete requests a worker's ring may hold beyond its concurrency when every "
             "worker is busy. More costs the front and the workers less per request under "
             "saturation (each wake-up serves a batch), but a request waiting in a ring "
             "waits for the ones ahead of it even when another worker frees up. Unset, each "
             "worker's depth follows its recent service time: as many as it serves in 2 ms, "
             "at least 2, at most 16. 0 keeps every waiting request in the front's queue, "
             "for the first free worker")
    backlog: int = option(2048, section="server", parse=parse_positive, metavar="N",
                          help="listen backlog")
    spin_ns: int | None = option(
        None, section="server", parse=parse_int, metavar="NS",
        default_doc="40000 with a spare core, else 0",
        help="how long an idle worker spins before sleeping, in nanoseconds")
    worker_sched: str = option(
        "batch", section="server", choices=("batch", "normal"),
        help="CPU scheduling policy of the workers: batch (Linux SCHED_BATCH) keeps a worker "
             "the front wakes from preempting the front, which every request goes through; "
             "normal: the system's default")
    region_size: int = option(
        64 << 20, section="server", parse=parse_size, metavar="SIZE", default_doc="64M",
        help="shared-memory region per worker")

    # -- timeouts
    timeout: float = option(
        30.0, section="timeouts", short="-t", parse=parse_seconds, metavar="SECONDS",
        help="seconds a request may run before its worker is replaced and the client gets "
             "504 (0: none)")
    graceful_timeout: float = option(
        30.0, section="timeouts", parse=parse_seconds, metavar="SECONDS",
        help="seconds to finish requests in flight on TERM or reload")
    drain_delay: float = option(
        0.0, section="timeouts", parse=parse_seconds, metavar="SECONDS",
        help="on TERM, keep serving this long with readiness failing (503) before the "
             "listeners close and the drain starts: time for load balancers to stop sending "
             "new connections (a built-in preStop sleep); a second TERM skips the rest")
    keep_alive: float = option(5.0, section="timeouts", parse=parse_seconds, metavar="SECONDS",
                               help="idle keep-alive timeout")
    header_timeout: float = option(
        10.0, section="timeouts", parse=parse_seconds, metavar="SECONDS",
        help="seconds a client has to send a request head (408 after)")
    body_timeout: float = option(
        30.0, section="timeouts", parse=parse_seconds, metavar="SECONDS",
        help="longest silence while receiving a request body (408 after)")

    # -- recycling and limits
    max_requests: int = option(0, section="limits", parse=parse_int, metavar="N",
                               help="recycle a worker after this many requests (0: never)")
    max_requests_jitter: int = option(
        0, section="limits", parse=parse_int, metavar="N",
        help="add up to this many requests to max_requests, at random per worker")
    max_lifetime: float = option(
        0.0, section="limits", parse=parse_seconds, metavar="SECONDS",
        help="recycle a worker after this many seconds (0: never)")
    max_rss: int = option(0, section="limits", parse=parse_size, metavar="SIZE",
                          help="recycle a worker whose RSS passes this size, e.g. 512M (0: off)")
    memory_limit: int = option(
        0, section="limits", parse=parse_size, metavar="SIZE",
        help="hard memory limit per worker: cgroup v2 memory.max where writable, else "
             "RLIMIT_AS (0: none)")
    cpu_limit: int = option(0, section="limits", parse=parse_int, metavar="SECONDS",
                            help="CPU seconds per worker, RLIMIT_CPU (0: none)")
    max_open_files: int = option(0, section="limits", parse=parse_int, metavar="N",
                                 help="RLIMIT_NOFILE per worker (0: inherit)")

    # -- HTTP limits
    limit_request_line: int = option(
        8190, section="http", parse=parse_positive, metavar="BYTES",
        help="longest request target (414 beyond)")
    limit_request_fields: int = option(100, section="http", parse=parse_positive, metavar="N",
                                       help="most header fields in a request (431 beyond)")
    limit_request_field_size: int = option(
        8190, section="http", parse=parse_positive, metavar="BYTES",
        help="longest header field (431 beyond)")
    max_body_size: int = option(
        1 << 30, section="http", parse=parse_size, metavar="SIZE", default_doc="1G",
        help="largest request body (413 beyond; 0: unlimited)")

    # -- logging
    log_level: str = option(
        "info", section="logging", choices=("critical", "error", "warning", "info", "debug"),
        help="the error log's level")
    access_log: bool = option(False, section="logging", flag=True, parse=parse_bool,
                              help="log every request")
    access_log_format: str = option(
        '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"', section="logging",
        parse=check_access_log_format, metavar="FORMAT",
        help="the access log's line: gunicorn-style atoms (h, r, s, M, {header}i ... see the "
             "logging docs), or json for one JSON object per line")
    access_log_file: str | None = option(
        None, section="logging", metavar="FILE",
        help="write the access log to FILE, - for stdout (setting it turns the access log on); "
             "unset: stderr, with the error log")
    error_log: str | None = option(
        None, section="logging", metavar="FILE",
        help="append the error log, and the workers' stderr, to FILE; unset or -: stderr")
    log_config: str | None = option(
        None, section="logging", metavar="FILE",
        help="a logging configuration applied after Zeus's own: dictConfig as .json or .toml, "
             "or fileConfig as .ini/.conf; what it configures wins")

    # -- sockets and systemd
    reuse_port: bool = option(False, section="sockets", flag=True, parse=parse_bool,
                              help="set SO_REUSEPORT on TCP listeners")
    unix_socket_mode: str | None = option(
        None, section="sockets", parse=parse_mode, metavar="MODE",
        help="permissions of the unix: sockets zeus creates, in octal (e.g. 660; clients "
             "need write permission); unset: from the umask")
    unix_socket_group: str | None = option(
        None, section="sockets", metavar="GROUP",
        help="group (name or id) that owns the unix: sockets zeus creates, e.g. the web "
             "server's, with unix_socket_mode 660")

    # -- privileges
    user: str | None = option(
        None, section="security", metavar="USER",
        help="run the workers as this user (name or uid); needs zeus started as root, which "
             "the front stays")
    group: str | None = option(
        None, section="security", metavar="GROUP",
        help="run the workers with this group (name or gid) instead of the user's primary one")
    umask: str | None = option(
        None, section="security", parse=parse_mode, metavar="MODE",
        help="umask of the worker processes, in octal (e.g. 027); unset: inherited")
    allow_root: bool = option(
        False, section="security", flag=True, parse=parse_bool,
        help="let workers run as root: zeus started as root without --user refuses to start "
             "unless this is set")

    # -- metrics and health
    metrics_bind: str | None = option(
        None, section="metrics", parse=check_bind, metavar="ADDRESS",
        help="serve Prometheus metrics (and the health paths) on this separate address: "
             "HOST:PORT, unix:PATH or fd://N; unset: no metrics endpoint")
    metrics_path: str = option(
        "/metrics", section="metrics", parse=parse_path, metavar="PATH",
        help="path of the metrics on the metrics bind")
    health_path: str | None = option(
        None, section="metrics", parse=parse_path, metavar="PATH",
        help="liveness path the front answers itself (200 while it runs), on the app's binds "
             "too; unset: only /healthz on the metrics bind")
    ready_path: str | None = option(
        None, section="metrics", parse=parse_path, metavar="PATH",
        help="readiness path the front answers itself (200 while a worker is ready and the "
             "server is not draining, else 503), on the app's binds too; unset: only /readyz "
             "on the metrics bind")

    # -- hooks (zeus/hooks.py; docs/hooks.md says when each runs and with what)
    on_starting: str | None = option(
        None, section="hooks", parse=check_hook, metavar="MODULE:FUNCTION",
        help="called with the settings before anything is bound or started; an exception "
             "aborts the start")
    when_ready: str | None = option(
        None, section="hooks", parse=check_hook, metavar="MODULE:FUNCTION",
        help="called once listening with a worker ready")
    pre_spawn: str | None = option(
        None, section="hooks", parse=check_hook, metavar="MODULE:FUNCTION",
        help="called before each worker process is started")
    worker_ready: str | None = option(
        None, section="hooks", parse=check_hook, metavar="MODULE:FUNCTION",
        help="called when a worker has booted and takes requests")
    worker_exit: str | None = option(
        None, section="hooks", parse=check_hook, metavar="MODULE:FUNCTION",
        help="called when a worker process has ended, with how and why")
    on_reload: str | None = option(
        None, section="hooks", parse=check_hook, metavar="MODULE:FUNCTION",
        help="called on SIGHUP, before the rolling reload starts new workers")
    on_exit: str | None = option(
        None, section="hooks", parse=check_hook, metavar="MODULE:FUNCTION",
        help="called when the server has stopped, just before it exits")


FIELDS: Final = {f.name: f for f in dataclasses.fields(Settings)}


def meta(name: str) -> Option:
    """The :class:`Option` of setting ``name``."""
    return cast(Option, FIELDS[name].metadata["zeus"])


def cli_flag(name: str) -> str:
    """``max_requests`` -> ``--max-requests``."""
    return "--" + name.replace("_", "-")


def env_var(name: str) -> str:
    """``max_requests`` -> ``ZEUS_MAX_REQUESTS``."""
    return "ZEUS_" + name.upper()


def parse_value(name: str, text: str) -> object:
    """Parse one textual value of setting ``name`` (choices checked); ConfigError if bad."""
    opt = meta(name)
    value = opt.parse(text)
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"invalid choice {text!r} (choose from {', '.join(opt.choices)})")
    return value
