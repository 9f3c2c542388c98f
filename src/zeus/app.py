"""Loading ``module:attribute`` applications and telling which interface they speak."""

from __future__ import annotations

import enum
import importlib
import inspect
import sys
from typing import Any

from zeus.errors import ZeusError


class AppLoadError(ZeusError):
    """The application named on the command line cannot be imported or is not callable."""


class Interface(enum.Enum):
    """How the worker calls the application."""

    AUTO = "auto"
    NATIVE = "native"  # handler(request) -> zeus.Response
    WSGI = "wsgi"  # app(environ, start_response) -> iterable (PEP 3333)
    ASGI = "asgi"  # async app(scope, receive, send) (ASGI 3)


def load(spec: str) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted, or a factory call ``attr()``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"application {spec!r} must look like 'module:attribute'")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name == module_name or (exc.name and module_name.startswith(exc.name + ".")):
            raise AppLoadError(f"cannot import module {module_name!r}: {exc}") from exc
        raise
    factory = attr.endswith("()")
    obj: Any = module
    for part in attr.removesuffix("()").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if factory:
        obj = obj()
    if not callable(obj):
        raise AppLoadError(f"{spec!r} is not callable")
    return obj


def detect(app: Any) -> Interface:
    """Guess the interface from the callable's signature: 3 args or async -> ASGI,
    2 -> WSGI, 1 -> native."""
    call = app if inspect.isroutine(app) or inspect.isclass(app) else app.__call__
    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(app):
        return Interface.ASGI
    try:
        params = [
            p for p in inspect.signature(app).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return Interface.WSGI
    if len(params) >= 3:
        return Interface.ASGI
    if len(params) == 2:
        return Interface.WSGI
    return Interface.NATIVE


def main(argv: list[str] | None = None) -> int:
    """``python -m zeus.app module:app``: print the interface, or one error line (exit 4).

    The ``zeus`` command runs this in a child process so that checking an application never
    runs application code in the front (imports can have side effects: Django sets TZ).
    """
    import traceback

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m zeus.app module:app", file=sys.stderr)
        return 2
    try:
        print(detect(load(args[0])).value)
    except AppLoadError as exc:
        print(exc, file=sys.stderr)
        return 4
    except Exception as exc:
        traceback.print_exc()
        print(f"importing {args[0]!r} raised {type(exc).__name__}: {exc}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
