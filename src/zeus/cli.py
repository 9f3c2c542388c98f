"""The ``zeus`` command: ``zeus serve module:app`` and ``zeus run -- COMMAND``.

Options are named as gunicorn and uvicorn users expect.  A bad option or an application that
cannot be imported is a one-line error and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from zeus.app import Interface
from zeus.config import Resolved, Settings, resolve
from zeus.config.options import FIELDS, RUN, SECTIONS, SERVE, cli_flag, env_var, meta, parse_value
from zeus.config.reference import effective
from zeus.errors import ConfigError
from zeus.exitcodes import ServerExit
from zeus.front import logs, systemd
from zeus.front.limits import HttpLimits
from zeus.front.metrics import check_settings as check_metrics
from zeus.front.server import ServeConfig, run
from zeus.hooks import Hooks
from zeus.pool import PoolConfig, worker_argv
from zeus.supervisor.balancer import Balance
from zeus.supervisor.limits import Limits
from zeus.supervisor.policy import RecyclePolicy
from zeus.supervisor.privileges import Privileges, lookup_group
from zeus.supervisor.privileges import resolve as resolve_privileges


def _argtype(name: str) -> Callable[[str], object]:
    """The argparse ``type=`` of setting ``name``: its parser, errors as argparse's."""

    def convert(text: str) -> object:
        try:
            return parse_value(name, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert


def _add_settings(p: argparse.ArgumentParser, command: str) -> None:
    """One flag per setting of ``command``, grouped by section, generated from the
    declarations; defaults are left out so that only what the user typed overrides the
    environment and the file."""
    p.add_argument("-c", "--config", metavar="FILE", default=None,
                   help="TOML configuration file (default: $ZEUS_CONFIG, else ./zeus.toml if "
                        "present)")
    p.add_argument("--check-config", action="store_true",
                   help="print the effective configuration and exit")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name in FIELDS:
        opt = meta(name)
        if not opt.cli or command not in opt.commands:
            continue
        if opt.section not in groups:
            groups[opt.section] = p.add_argument_group(SECTIONS[opt.section].lower())
        flags = [f for f in (opt.short, cli_flag(name)) if f]
        default = getattr(Settings(), name)
        shown = opt.default_doc or ("unset" if default is None else
                                    ", ".join(map(str, default)) if opt.multiple else default)
        help_text = f"{opt.help} (default {shown}; env {env_var(name)})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if opt.flag:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _argtype(name)
            kwargs["metavar"] = opt.metavar or ("{" + ",".join(opt.choices) + "}"
                                                if opt.choices else "VALUE")
            if opt.multiple:
                kwargs["action"] = "append"
        groups[opt.section].add_argument(*flags, **kwargs)


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
        epilog="Every option can also be set in a TOML file or a ZEUS_* environment variable "
               "(precedence: command line > environment > file > defaults); see "
               "`zeus check-config --help`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="serve a WSGI, ASGI or native Zeus application",
        description="Serve module:app over HTTP with isolated worker processes.",
    )
    serve.add_argument("app", nargs="?", default=None,
                       help="the application, as module:attribute (e.g. myapp:app); may also "
                            "come from the config file or ZEUS_APP")
    _add_settings(serve, SERVE)
    runp = sub.add_parser(
        "run", help="serve HTTP with workers that are any program calling Worker.connect()",
        description="Serve HTTP; each worker is COMMAND, a program that calls "
                    "zeus.Worker.connect() and serves requests.",
    )
    _add_settings(runp, RUN)
    runp.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    check = sub.add_parser(
        "check-config", help="validate and print the effective configuration",
        description="Merge the command line, ZEUS_* variables and the TOML file "
                    "(--config, $ZEUS_CONFIG or ./zeus.toml), check every value and the "
                    "application's import, and print the result with each value's origin. "
                    "Exit status 0 when valid, 2 with a one-line error otherwise.",
    )
    check.add_argument("app", nargs="?", default=None, help="the application, as for serve")
    _add_settings(check, SERVE)
    return parser


def _detect(app: str, env: dict[str, str], cwd: str,
            privileges: Privileges | None = None) -> Interface:
    """Import ``app`` in a child process (never in the front) and learn its interface, so a
    typo is a one-line error here rather than a crash loop of workers.  The child runs as the
    workers will (``--user``): an app or interpreter they cannot read fails here too."""
    drop: dict[str, Any] = {}
    if privileges is not None and privileges.changes_identity():
        drop = {"user": privileges.uid, "group": privileges.gid,
                "extra_groups": list(privileges.groups or ())}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "zeus.app", app], env=env, cwd=cwd, capture_output=True,
            text=True, timeout=120, **drop,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"importing {app!r} took over 120 s") from None
    except OSError as exc:
        as_user = f" as user {privileges.user or privileges.uid}" if drop and privileges else ""
        raise ConfigError(f"cannot run {sys.executable}{as_user}: {exc.strerror} (the "
                          f"workers' user must be able to run it and read the app)") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"cannot load {app!r}"]
        raise ConfigError(lines[-1])
    return Interface(proc.stdout.strip().splitlines()[-1])


def settings_from_args(args: argparse.Namespace) -> Resolved:
    """Merge what was typed with the environment and the config file; ConfigError if bad."""
    typed = {name: value for name, value in vars(args).items()
             if name in FIELDS and name not in ("app", "command")}
    for name, value in list(typed.items()):
        if isinstance(value, list):
            typed[name] = tuple(value)
    if getattr(args, "app", None):
        typed["app"] = args.app
    cmd = list(getattr(args, "cmd", None) or [])
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if cmd:
        typed["command"] = tuple(cmd)
    return resolve(typed, config_file=args.config)


def config_from_settings(settings: Settings, command: str) -> ServeConfig:
    """Turn settings into a ServeConfig (importing the app in a child process to detect its
    interface); ConfigError on an invalid combination."""
    env = systemd.worker_environment(os.environ)  # LISTEN_*, NOTIFY_SOCKET: the front's
    cwd = os.getcwd()
    if settings.chdir:
        try:
            os.chdir(settings.chdir)
        except OSError as exc:
            raise ConfigError(f"chdir {settings.chdir}: {exc.strerror}") from None
        cwd = os.getcwd()
    privileges = resolve_privileges(
        settings.user, settings.group, int(settings.umask, 8) if settings.umask else None,
        allow_root=settings.allow_root)
    unix_gid = lookup_group(settings.unix_socket_group) if settings.unix_socket_group else None
    check_metrics(settings)
    if settings.log_config:
        logs.read_log_config(settings.log_config)  # applied by setup_logging; checked now
    hooks = Hooks.from_settings(settings, cwd)  # imported now: a typo is a one-line error
    if command == SERVE:
        if not settings.app:
            raise ConfigError("no application: give module:app, or app = ... in the config")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [cwd, env.get("PYTHONPATH")]))
        detected = _detect(settings.app, env, cwd, privileges)  # also checks that it imports
        interface = Interface(settings.interface)
        if interface is Interface.AUTO:
            interface = detected
        argv = worker_argv(settings.app, interface.value)
        concurrency = settings.concurrency or (64 if interface is Interface.ASGI else 1)
    else:
        if not settings.command:
            raise ConfigError("zeus run needs a command after --")
        argv = list(settings.command)
        concurrency = settings.concurrency or 1
    pool = PoolConfig(
        argv=argv,
        workers=settings.workers,
        balance=Balance(settings.balance),
        concurrency=concurrency,
        prefetch=settings.prefetch,
        timeout=settings.timeout,
        graceful_timeout=settings.graceful_timeout,
        region_size=settings.region_size,
        spin_ns=settings.spin_ns,
        recycle=RecyclePolicy(
            max_requests=settings.max_requests,
            max_requests_jitter=settings.max_requests_jitter,
            max_lifetime=settings.max_lifetime,
            max_rss=settings.max_rss,
        ),
        limits=Limits(
            cpu_seconds=settings.cpu_limit, open_files=settings.max_open_files,
            memory=settings.memory_limit, privileges=privileges,
            sched_batch=settings.worker_sched == "batch",
        ),
        env=env,
        cwd=cwd,
    )
    limits = HttpLimits(
        max_request_line=settings.limit_request_line,
        max_headers=settings.limit_request_fields,
        max_header_size=settings.limit_request_field_size,
        max_body=settings.max_body_size,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        keepalive_timeout=settings.keep_alive,
    )
    return ServeConfig(
        pool=pool,
        binds=list(settings.bind),
        limits=limits,
        access_log=settings.access_log or bool(settings.access_log_file),
        backlog=settings.backlog,
        reuse_port=settings.reuse_port,
        unix_socket_mode=int(settings.unix_socket_mode, 8) if settings.unix_socket_mode else None,
        unix_socket_gid=unix_gid,
        settings=settings,
        hooks=hooks,
    )


def setup_logging(settings: Settings) -> None:
    """The error log (stderr or ``error_log``), the access log's destination, and
    ``log_config`` on top (see front/logs.py); ConfigError if one cannot be set up."""
    logs.setup(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zeus`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ServerExit.USAGE
    command = RUN if args.command == RUN else SERVE
    try:
        resolved = settings_from_args(args)
        settings = resolved.settings
        for warning in resolved.warnings:
            print(f"zeus: warning: {warning}", file=sys.stderr)
        if args.command == "check-config" or args.check_config:
            config_from_settings(settings, command)  # the app must import, too
            sys.stdout.write(effective(resolved))
            return ServerExit.OK
        config = config_from_settings(settings, command)
        setup_logging(settings)  # after the checks: their errors reach the terminal
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
