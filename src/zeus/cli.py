"""The ``zeus`` command: ``zeus serve module:app`` and ``zeus run -- COMMAND``.

Options are named as gunicorn and uvicorn users expect.  A bad option or an application that
cannot be imported is a one-line error and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from typing import NoReturn

from zeus.app import Interface
from zeus.errors import ConfigError
from zeus.exitcodes import ServerExit
from zeus.front.limits import HttpLimits
from zeus.front.server import ServeConfig, parse_bind, run
from zeus.pool import PoolConfig, worker_argv
from zeus.supervisor.balancer import Balance
from zeus.supervisor.limits import Limits
from zeus.supervisor.policy import RecyclePolicy

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``512M``, ``2GiB``, ``1048576`` -> bytes."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 512M, 2G, 65536)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _seconds(text: str) -> float:
    try:
        n = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _bind(text: str) -> str:
    try:
        parse_bind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid bind {text!r} (HOST:PORT, unix:PATH or fd://N)"
        ) from None
    return text


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("-b", "--bind", action="append", type=_bind, metavar="ADDRESS",
                   help="where to listen: HOST:PORT, unix:PATH or fd://N; repeatable "
                        "(default 127.0.0.1:8000)")
    g.add_argument("-w", "--workers", type=_positive_int, default=int(
        os.environ.get("WEB_CONCURRENCY", "2")), help="worker processes (default 2)")
    g.add_argument("--balance", choices=[b.value for b in Balance], default="round-robin",
                   help="how requests are spread over workers (default round-robin)")
    g.add_argument("--concurrency", type=_positive_int, default=None,
                   help="requests in flight per worker (default 1; 64 for ASGI apps)")
    g.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT on listeners")
    g.add_argument("--spin-ns", type=int, default=None,
                   help="how long an idle worker spins before sleeping, in ns (default: 40000 "
                        "when there is a spare core, else 0)")
    g.add_argument("--backlog", type=_positive_int, default=2048, help="listen backlog")
    t = p.add_argument_group("timeouts")
    t.add_argument("-t", "--timeout", type=_seconds, default=30.0,
                   help="seconds a request may run before its worker is replaced and the "
                        "client gets 504 (0: none; default 30)")
    t.add_argument("--graceful-timeout", type=_seconds, default=30.0,
                   help="seconds to finish requests on TERM or reload (default 30)")
    t.add_argument("--keep-alive", type=_seconds, default=5.0,
                   help="idle keep-alive timeout in seconds (default 5)")
    t.add_argument("--header-timeout", type=_seconds, default=10.0,
                   help="seconds a client has to send a request head (default 10)")
    t.add_argument("--body-timeout", type=_seconds, default=30.0,
                   help="longest silence while receiving a body, in seconds (default 30)")
    r = p.add_argument_group("recycling and limits")
    r.add_argument("--max-requests", type=int, default=0,
                   help="recycle a worker after this many requests (0: never)")
    r.add_argument("--max-requests-jitter", type=int, default=0,
                   help="add up to this many requests, at random per worker")
    r.add_argument("--max-lifetime", type=_seconds, default=0.0,
                   help="recycle a worker after this many seconds (0: never)")
    r.add_argument("--max-rss", type=parse_size, default=0,
                   help="recycle a worker whose RSS passes this size, e.g. 512M")
    r.add_argument("--memory-limit", type=parse_size, default=0,
                   help="hard memory limit per worker (cgroup v2 memory.max, else RLIMIT_AS)")
    r.add_argument("--cpu-limit", type=int, default=0, help="CPU seconds per worker (RLIMIT_CPU)")
    r.add_argument("--max-open-files", type=int, default=0, help="RLIMIT_NOFILE per worker")
    r.add_argument("--limit-request-line", type=_positive_int, default=8190,
                   help="longest request target in bytes (414 beyond)")
    r.add_argument("--limit-request-fields", type=_positive_int, default=100,
                   help="most header fields (431 beyond)")
    r.add_argument("--limit-request-field-size", type=_positive_int, default=8190,
                   help="longest header field in bytes (431 beyond)")
    r.add_argument("--max-body-size", type=parse_size, default=1 << 30,
                   help="largest request body (413 beyond; 0: unlimited; default 1G)")
    r.add_argument("--region-size", type=parse_size, default=64 << 20,
                   help="shared-memory region per worker (default 64M)")
    lg = p.add_argument_group("logging")
    lg.add_argument("--log-level", default="info",
                    choices=["critical", "error", "warning", "info", "debug"])
    lg.add_argument("--access-log", action="store_true", help="log every request")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (with a pointer to --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(ServerExit.USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``zeus`` command."""
    parser = _Parser(
        prog="zeus",
        description="Zero-copy process runner for Python web applications: one front process "
                    "owns the network and hands each request to an isolated worker through "
                    "shared memory.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="serve a WSGI, ASGI or native Zeus application",
        description="Serve module:app over HTTP with isolated worker processes.",
    )
    serve.add_argument("app", help="the application, as module:attribute (e.g. myapp:app)")
    serve.add_argument("--interface", choices=[i.value for i in Interface], default="auto",
                       help="how to call the app (default: detect from its signature)")
    serve.add_argument("--chdir", help="change to this directory before loading the app")
    _add_common(serve)
    runp = sub.add_parser(
        "run", help="serve HTTP with workers that are any program calling Worker.connect()",
        description="Serve HTTP; each worker is COMMAND, a program that calls "
                    "zeus.Worker.connect() and serves requests.",
    )
    _add_common(runp)
    runp.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    return parser


def _detect(app: str, env: dict[str, str], cwd: str) -> Interface:
    """Import ``app`` in a child process (never in the front) and learn its interface, so a
    typo is a one-line error here rather than a crash loop of workers."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "zeus.app", app], env=env, cwd=cwd, capture_output=True,
            text=True, timeout=120,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"importing {app!r} took over 120 s") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"cannot load {app!r}"]
        raise ConfigError(lines[-1])
    return Interface(proc.stdout.strip().splitlines()[-1])


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """Turn parsed options into a ServeConfig; ConfigError on an invalid combination."""
    env = dict(os.environ)
    cwd = os.getcwd()
    if args.command == "serve":
        if args.chdir:
            try:
                os.chdir(args.chdir)
            except OSError as exc:
                raise ConfigError(f"--chdir {args.chdir}: {exc.strerror}") from None
            cwd = os.getcwd()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [cwd, env.get("PYTHONPATH")]))
        detected = _detect(args.app, env, cwd)  # also checks that it imports at all
        interface = Interface(args.interface)
        if interface is Interface.AUTO:
            interface = detected
        argv = worker_argv(args.app, interface.value)
        concurrency = args.concurrency or (64 if interface is Interface.ASGI else 1)
    else:
        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            raise ConfigError("zeus run needs a command after --")
        argv = cmd
        concurrency = args.concurrency or 1
    pool = PoolConfig(
        argv=argv,
        workers=args.workers,
        balance=Balance(args.balance),
        concurrency=concurrency,
        timeout=args.timeout,
        graceful_timeout=args.graceful_timeout,
        region_size=args.region_size,
        spin_ns=args.spin_ns,
        recycle=RecyclePolicy(
            max_requests=args.max_requests,
            max_requests_jitter=args.max_requests_jitter,
            max_lifetime=args.max_lifetime,
            max_rss=args.max_rss,
        ),
        limits=Limits(
            cpu_seconds=args.cpu_limit, open_files=args.max_open_files, memory=args.memory_limit
        ),
        env=env,
        cwd=cwd,
    )
    limits = HttpLimits(
        max_request_line=args.limit_request_line,
        max_headers=args.limit_request_fields,
        max_header_size=args.limit_request_field_size,
        max_body=args.max_body_size,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keepalive_timeout=args.keep_alive,
    )
    return ServeConfig(
        pool=pool,
        binds=args.bind or ["127.0.0.1:8000"],
        limits=limits,
        access_log=args.access_log,
        backlog=args.backlog,
        reuse_port=args.reuse_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zeus`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ServerExit.USAGE
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"zeus: error: {exc}", file=sys.stderr)
        return ServerExit.USAGE
    except Exception as exc:  # the app's import raised something of its own
        print(f"zeus: error: cannot load {getattr(args, 'app', '?')}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return ServerExit.BOOT_FAILURE
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
