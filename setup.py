"""The one compiled module, the parser's line checker; everything else is in pyproject.toml.

Optional: without a C compiler the install goes on without it, and the parser checks every line
with msgspec instead (same results, slower; `tests/process/test_linecheck.py` fails on purpose).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sluice.process._linecheck",
            sources=["sluice/process/_linecheck.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        )
    ]
)
