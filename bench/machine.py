"""What every benchmark result records about the machine and the code it measured."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _git(*command: str) -> str:
    done = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.rstrip("\n")


def machine_info() -> dict[str, Any]:
    import duckdb
    import msgspec
    import pyarrow

    try:
        with open("/proc/cpuinfo") as cpuinfo:
            models = [ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")]
    except OSError:
        models = []
    return {
        "commit": _git("rev-parse", "HEAD"),
        # The code measured: other work may be in progress in sluice/ (uncommitted changes).
        "sluice_uncommitted": [
            line[3:] for line in _git("status", "--porcelain", "--", "sluice").splitlines()
        ],
        "nproc": os.cpu_count(),
        "cpu_model": models[0] if models else "",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "pyarrow": pyarrow.__version__,
        "msgspec": msgspec.__version__,
    }
