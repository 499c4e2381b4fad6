"""Fuzz the compiled line checker under AddressSanitizer and UBSan (`make fuzz`; not part of
`make test`, which runs its property tests).

Builds `sluice/process/_linecheck.c` with the sanitizers into a scratch directory, then feeds it
generated lines mutated byte by byte (inserted, deleted, replaced, cut). It stops at the first
read outside a line (the sanitizer's report) or at the first line it vouches for that
`fast_check` does not pass.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "sluice" / "process" / "_linecheck.c"
MODULE = "sluice.process._linecheck"
ALPHABET = b' \t\r\n"\\{}[]:,-+.eE0159tfnulx\x00\x7f\xc3\xff'


def build(scratch: Path) -> Path:
    target = scratch / f"_linecheck{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    flags = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    subprocess.run(
        ["gcc", *flags, "-shared", "-fPIC", f"-I{include}", str(SOURCE), "-o", str(target)],
        check=True,
    )
    return target


def runtime(name: str) -> str:
    return subprocess.run(
        ["gcc", f"-print-file-name={name}"], check=True, capture_output=True, text=True
    ).stdout.strip()


def fuzz(module_path: Path, seconds: float, seed: int) -> int:
    spec = importlib.util.spec_from_file_location(MODULE, module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[MODULE] = module  # linecheck.line_checker() now builds the sanitized checker
    from sluice.generate import generate
    from sluice.process.linecheck import line_checker
    from sluice.process.parse import fast_check

    checker = line_checker()
    assert type(checker) is module.LineChecker
    out = io.BytesIO()
    generate(out, events=3000, days=1, bad_fraction=0.1, seed=seed)
    seeds = [line for line in out.getvalue().splitlines() if line]
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    lines = vouched = 0
    while time.monotonic() < deadline:
        batch = [mutate(bytearray(rng.choice(seeds)), rng) for _ in range(1000)]
        for line, verdict in zip(batch, checker.check(batch), strict=True):
            if verdict is True:
                vouched += 1
                if fast_check(line) is not True:
                    print(f"vouched for a line fast_check does not pass: {line!r}")
                    return 1
        lines += len(batch)
    print(f"{lines:,} mutated lines, {vouched:,} vouched for, no fault")
    return 0


def mutate(data: bytearray, rng: random.Random) -> bytes:
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(data)) if data else 0
        byte = rng.choice(ALPHABET) if rng.random() < 0.8 else rng.randrange(256)
        op = rng.random()
        if op < 0.3:
            data.insert(at, byte)
        elif op < 0.6 and data:
            del data[at]
        elif op < 0.8 and data:
            data[at] = byte
        else:
            del data[at:]
    return bytes(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--module", type=Path, help=argparse.SUPPRESS)  # the re-executed run
    args = parser.parse_args()
    if args.module:
        return fuzz(args.module, args.seconds, args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        module = build(Path(scratch))
        env = {
            **os.environ,
            # One allocation per object, so a read past a line's end leaves its allocation.
            "PYTHONMALLOC": "malloc",
            "LD_PRELOAD": f"{runtime('libasan.so')} {runtime('libubsan.so')}",
            "ASAN_OPTIONS": "detect_leaks=0",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        }
        command = [sys.executable, __file__, f"--seconds={args.seconds}", f"--seed={args.seed}"]
        return subprocess.run([*command, f"--module={module}"], env=env, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
