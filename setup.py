"""Build the one C extension, zeus._native (atomics, fences, futex); everything else is Python."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "zeus._native",
            sources=["src/zeus/_native.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit"],
        )
    ]
)
