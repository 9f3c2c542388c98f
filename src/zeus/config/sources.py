"""Where settings come from, and which wins: command line > ``ZEUS_*`` environment > TOML file
> defaults.

The TOML file is ``--config PATH`` (or ``ZEUS_CONFIG``), else ``zeus.toml`` in the working
directory when there is one.  Its keys are the settings' names at the top level; a table is
allowed only for ``[hooks]``-style grouping by section name (``[server] workers = 4`` is the
same as ``workers = 4``), so a long file can be organised as the reference is.  A key that is
not a setting, or a value its parser refuses, is a one-line :class:`ConfigError` naming the key
and ``file:line``.  ``ZEUS_*`` variables that are not settings are reported (a typo there
would otherwise be silently ignored) with a warning, except the few Zeus sets for its own
workers.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from zeus.config.options import (
    FIELDS,
    SECTIONS,
    Settings,
    env_var,
    meta,
    parse_value,
)
from zeus.errors import ConfigError

DEFAULT_FILE: Final = "zeus.toml"
CONFIG_ENV: Final = "ZEUS_CONFIG"
#: Variables Zeus itself sets for its workers, or reads elsewhere: not settings, not typos.
RESERVED_ENV: Final = frozenset({
    CONFIG_ENV, "ZEUS_CHANNEL_FD", "ZEUS_DOORBELL_FD", "ZEUS_WORKER_DOORBELL_FD",
    "ZEUS_SPIN_NS", "ZEUS_WORKER_ID",
})


@dataclass(frozen=True, slots=True)
class Resolved:
    """The effective settings and, for each one not at its default, where it came from
    (``"command line"``, ``"env ZEUS_WORKERS"``, ``"zeus.toml:3"``)."""

    settings: Settings
    origins: Mapping[str, str]
    file: Path | None
    warnings: tuple[str, ...] = ()


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(FIELDS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _key_line(lines: list[str], key: str, table: str | None) -> int:
    """The 1-based line where ``key`` is assigned (in ``[table]`` if given); 0 if not found.
    tomllib keeps no positions, so find it in the text: good enough for an error message."""
    pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*=""")
    current: str | None = None
    for number, line in enumerate(lines, 1):
        header = re.match(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
        if header:
            current = header.group(1)
        elif current == table and pattern.match(line):
            return number
    return 0


def _table_line(lines: list[str], table: str) -> int:
    """The 1-based line of the ``[table]`` header; 0 if not found."""
    pattern = re.compile(rf"^\s*\[\s*{re.escape(table)}\s*\]")
    return next((n for n, line in enumerate(lines, 1) if pattern.match(line)), 0)


def _from_toml_value(name: str, value: Any) -> object:
    """Turn a TOML value into the setting's value through the same parser as text."""
    opt = meta(name)
    if opt.multiple:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            raise ConfigError(f"expected a string or an array of strings, got {value!r}")
        return tuple(parse_value(name, v) for v in items)
    if opt.flag:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"expected a {'string' if opt.metavar is None else opt.metavar}, "
                          f"got {value!r}")
    return parse_value(name, str(value))


def read_file(path: Path) -> tuple[dict[str, object], dict[str, str]]:
    """Parse a TOML config file into (values, origins); ConfigError with file:line if bad."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    lines = text.splitlines()
    values: dict[str, object] = {}
    origins: dict[str, str] = {}

    def take(key: str, value: Any, table: str | None) -> None:
        where = f"{path}:{_key_line(lines, key, table) or '?'}"
        if key not in FIELDS:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key)}")
        if key in values:
            raise ConfigError(f"{where}: {key!r} is set twice")
        try:
            values[key] = _from_toml_value(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None
        origins[key] = where

    for key, value in data.items():
        if isinstance(value, dict):
            if key not in SECTIONS:
                where = f"{path}:{_table_line(lines, key) or '?'}"
                raise ConfigError(
                    f"{where}: unknown table [{key}] (tables are sections: "
                    f"{', '.join(SECTIONS)})"
                )
            for sub, subvalue in value.items():
                take(sub, subvalue, key)
        else:
            take(key, value, None)
    return values, origins


def unknown_env(environ: Mapping[str, str]) -> list[str]:
    """Warnings for ``ZEUS_*`` variables that are no setting: probably typos, but other tools
    may own the prefix too, so they are reported rather than refused."""
    known = {env_var(name) for name in FIELDS} | RESERVED_ENV
    return [f"environment variable {var} is not a Zeus setting{_suggest(var[5:].lower())}"
            for var in sorted(environ) if var.startswith("ZEUS_") and var not in known]


def read_env(environ: Mapping[str, str]) -> tuple[dict[str, object], dict[str, str]]:
    """Settings given as ``ZEUS_*`` variables (and their aliases, e.g. WEB_CONCURRENCY)."""
    values: dict[str, object] = {}
    origins: dict[str, str] = {}
    for name in FIELDS:
        opt = meta(name)
        for var in (env_var(name), *opt.env_aliases):
            if var not in environ:
                continue
            text = environ[var]
            try:
                if opt.multiple:
                    value: object = tuple(
                        parse_value(name, part.strip()) for part in text.split(",")
                        if part.strip()
                    )
                elif opt.flag:
                    value = opt.parse(text)
                else:
                    value = parse_value(name, text)
            except ConfigError as exc:
                raise ConfigError(f"environment variable {var}: {exc}") from None
            values[name] = value
            origins[name] = f"env {var}"
            break
    return values, origins


def find_file(explicit: str | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file to read: ``--config``, else ``ZEUS_CONFIG``, else ``./zeus.toml``."""
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    default = cwd / DEFAULT_FILE
    return default if default.is_file() else None


def resolve(cli: Mapping[str, object], *, config_file: str | None = None,
            environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Resolved:
    """Merge the sources (command line > environment > file > defaults) into Settings."""
    environ = os.environ if environ is None else environ
    path = find_file(config_file, environ, cwd or Path.cwd())
    values: dict[str, object] = {}
    origins: dict[str, str] = {}
    if path is not None:
        file_values, file_origins = read_file(path)
        values.update(file_values)
        origins.update(file_origins)
    env_values, env_origins = read_env(environ)
    values.update(env_values)
    origins.update(env_origins)
    for name, value in cli.items():
        values[name] = value
        origins[name] = "command line"
    return Resolved(settings=Settings(**values), origins=origins,  # type: ignore[arg-type]
                    file=path, warnings=tuple(unknown_env(environ)))
