"""Build the C extensions, and compile the per-request path with mypyc.

* zeus._native -- atomics, fences, futex, the channel hot path (hand-written C)
* zeus._http -- the strict fast-path HTTP/1.x request parser and response framing (C)
* the modules in COMPILED -- the Python the front runs for every request (parse, dispatch,
  drain, answer), compiled to C by mypyc from the same type-checked source.  In an interpreted
  front that per-request Python was three quarters of the CPU above the syscalls; compiled it
  runs about a third faster (BENCHMARKS.md).  The source stays the reference: without mypyc,
  or with ZEUS_PURE_PYTHON=1 at build time, the same modules run interpreted, with the same
  behaviour, only slower.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit"]

COMPILED = [
    "src/zeus/front/http.py",
    "src/zeus/front/metrics.py",
    "src/zeus/front/limits.py",
    "src/zeus/pool/config.py",
    "src/zeus/pool/core.py",
    "src/zeus/pool/exchange.py",
    "src/zeus/pool/handle.py",
    "src/zeus/supervisor/balancer.py",
    "src/zeus/aiochannel.py",
    "src/zeus/core/codec.py",
]


def compiled() -> list[Extension]:
    """The mypyc extensions of COMPILED, or none (interpreted) if mypyc is not there."""
    if os.environ.get("ZEUS_PURE_PYTHON") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("zeus: mypyc (from mypy) not found: the per-request path stays interpreted "
              "(same behaviour, slower)", file=sys.stderr)
        return []
    return list(mypycify(COMPILED, opt_level="3", group_name="zeus_compiled"))


setup(
    ext_modules=[
        Extension("zeus._native", sources=["src/zeus/_native.c"], extra_compile_args=CFLAGS),
        Extension("zeus._http", sources=["src/zeus/_http.c"], extra_compile_args=CFLAGS),
        *compiled(),
    ]
)
