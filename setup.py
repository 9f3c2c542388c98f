"""Build the C extensions: zeus._native (atomics, fences, futex, the channel hot path) and
zeus._http (the strict fast-path HTTP/1.x request parser); everything else is Python."""

from setuptools import Extension, setup

CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit"]

setup(
    ext_modules=[
        Extension("zeus._native", sources=["src/zeus/_native.c"], extra_compile_args=CFLAGS),
        Extension("zeus._http", sources=["src/zeus/_http.c"], extra_compile_args=CFLAGS),
    ]
)
