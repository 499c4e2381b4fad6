"""The one compiled module, the parser's line checker; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sluice.process._linecheck",
            sources=["sluice/process/_linecheck.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        )
    ]
)
