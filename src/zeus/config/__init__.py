"""Zeus's settings: declared once (:mod:`zeus.config.options`), read from the command line,
``ZEUS_*`` variables and a TOML file (:mod:`zeus.config.sources`), and shown back as the
effective configuration and the documentation's reference (:mod:`zeus.config.reference`)."""

from zeus.config.options import Settings, parse_bind, parse_size
from zeus.config.sources import Resolved, resolve

__all__ = ["Resolved", "Settings", "parse_bind", "parse_size", "resolve"]
