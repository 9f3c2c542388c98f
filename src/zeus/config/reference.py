"""Text made from the option declarations: the effective configuration that ``zeus
check-config`` prints (valid TOML, each value's origin in a comment), and the Markdown
reference of every setting that the documentation site includes."""

from __future__ import annotations

import json

from zeus.config.options import (
    FIELDS,
    SECTIONS,
    Option,
    Settings,
    cli_flag,
    env_var,
    meta,
)
from zeus.config.sources import Resolved


def toml_value(value: object) -> str:
    """A Python setting value as TOML text (None has no TOML spelling: shown as a comment)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _by_section() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {section: [] for section in SECTIONS}
    for name in FIELDS:
        groups[meta(name).section].append(name)
    return groups


def effective(resolved: Resolved) -> str:
    """The effective configuration as TOML, grouped by section, with origins as comments."""
    settings = resolved.settings
    out = [f"# effective configuration; file: {resolved.file or 'none'}",
           "# precedence: command line > ZEUS_* environment > file > defaults"]
    for section, names in _by_section().items():
        if not names:
            continue
        out.append(f"\n[{section}]  # {SECTIONS[section]}")
        for name in names:
            value = getattr(settings, name)
            origin = resolved.origins.get(name, "default")
            if value is None:
                out.append(f"# {name} is unset  ({origin})")
            else:
                out.append(f"{name} = {toml_value(value)}  # {origin}")
    return "\n".join(out) + "\n"


def _default_text(name: str, opt: Option) -> str:
    if opt.default_doc is not None:
        return opt.default_doc
    value = getattr(Settings(), name)
    if value is None:
        return "unset"
    if value == ():
        return "none"
    return toml_value(value)


def markdown() -> str:
    """The configuration reference: one table per section, every setting with its command-line
    flag, environment variable, TOML key, default and meaning."""
    out = ["# Configuration reference", "",
           "Every setting can be given on the command line, as a `ZEUS_*` environment variable "
           "or in a TOML file (`--config FILE`, `ZEUS_CONFIG`, else `./zeus.toml`). Precedence: "
           "command line > environment > file > defaults. Sizes take binary units (`512M`, "
           "`2G`); durations are seconds. Lists are repeated flags on the command line, "
           "comma-separated in a variable and arrays in TOML. In the file, keys may sit at the "
           "top level or under their section's table (`[server]`). "
           "This page is generated from the option declarations "
           "(`src/zeus/config/options.py`)."]
    for section, names in _by_section().items():
        if not names:
            continue
        out += ["", f"## {SECTIONS[section]} (`[{section}]`)", "",
                "| TOML key | command line | environment | default | meaning |",
                "|---|---|---|---|---|"]
        for name in names:
            opt = meta(name)
            flags = []
            if opt.cli:
                flags = [f"`{opt.short}`"] if opt.short else []
                flags.append(f"`{cli_flag(name)}`")
            else:
                flags = ["(argument)" if name in ("app", "command") else "—"]
            env = ", ".join(f"`{v}`" for v in (env_var(name), *opt.env_aliases))
            meaning = opt.help[:1].upper() + opt.help[1:]
            if opt.choices:
                meaning += " (" + " \\| ".join(f"`{c}`" for c in opt.choices) + ")"
            commands = "" if len(opt.commands) > 1 else f" *zeus {next(iter(opt.commands))}*"
            out.append(f"| `{name}` | {' '.join(flags)} | {env} | "
                       f"`{_default_text(name, opt)}` | {meaning}.{commands} |")
    return "\n".join(out) + "\n"
