"""Counters of what each `sluice dlq` operation did (listed, redriven, refused, failed).

Embedded: cumulative counters in Prometheus text format in `<data_dir>/metrics/dlq.prom`, the
layout of node_exporter's textfile collector (point `--collector.textfile.directory` at that
folder). Each call adds to the counters already in the file and rewrites it atomically (temp file
+ rename) under an exclusive lock, so concurrent commands do not lose each other's counts.

AWS: one CloudWatch embedded-metric-format (EMF) JSON line per operation on stderr, where a
Lambda's log or a CI job's log shipper hands it to CloudWatch Logs, which extracts the metrics
(namespace `sluice`, dimensions environment/queue/operation). There is no local file to keep on
AWS, and stdout stays the command's own output (and `--json`'s).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from sluice.env import Env

METRIC = "sluice_dlq_messages_total"
NAMESPACE = "sluice"
_HELP = f"# HELP {METRIC} DLQ messages by operation and outcome (sluice dlq).\n"
_TYPE = f"# TYPE {METRIC} counter\n"
_SAMPLE = re.compile(r"^" + METRIC + r"\{(?P<labels>[^}]*)\} (?P<value>\d+)$")


def metrics_path(env: Env) -> Path:
    return env.config.data_dir / "metrics" / "dlq.prom"


def record_metrics(
    env: Env,
    operation: str,
    counts: Mapping[str, int],
    *,
    queue: str,
    stream: TextIO | None = None,
) -> None:
    """Add `counts` (outcome → messages) for `operation` on `queue` to the environment's
    metrics: the Prometheus file embedded, an EMF line on `stream` (stderr) on AWS."""
    if env.config.backend == "aws":
        _emit_emf(env, operation, counts, queue, stream or sys.stderr)
    else:
        _add_to_textfile(metrics_path(env), env.config.name, operation, counts, queue)


def read_counters(path: Path) -> dict[str, int]:
    """The counters in a textfile, by their label set as written (`env="local",…`)."""
    out: dict[str, int] = {}
    if not path.exists():
        return out
    for text in path.read_text().splitlines():
        match = _SAMPLE.match(text)
        if match:
            out[match["labels"]] = int(match["value"])
    return out


def _labels(environment: str, queue: str, operation: str, outcome: str) -> str:
    values = {"env": environment, "queue": queue, "operation": operation, "outcome": outcome}
    escaped = {k: v.replace("\\", "\\\\").replace('"', '\\"') for k, v in values.items()}
    return ",".join(f'{k}="{v}"' for k, v in escaped.items())


def _add_to_textfile(
    path: Path, environment: str, operation: str, counts: Mapping[str, int], queue: str
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counters = read_counters(path)
        for outcome, value in counts.items():
            key = _labels(environment, queue, operation, outcome)
            counters[key] = counters.get(key, 0) + value
        lines = [f"{METRIC}{{{labels}}} {value}\n" for labels, value in sorted(counters.items())]
        # The collector reads *.prom only: the temp name keeps a half-written file out of view.
        tmp = path.with_suffix(".prom.tmp")
        tmp.write_text(_HELP + _TYPE + "".join(lines))
        os.replace(tmp, path)


def _emit_emf(
    env: Env, operation: str, counts: Mapping[str, int], queue: str, stream: TextIO
) -> None:
    names = {outcome: f"dlq_{outcome}" for outcome in counts}
    record = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [["environment", "queue", "operation"]],
                    "Metrics": [{"Name": name, "Unit": "Count"} for name in names.values()],
                }
            ],
        },
        "environment": env.config.name,
        "queue": queue,
        "operation": operation,
        **{names[outcome]: value for outcome, value in counts.items()},
    }
    stream.write(json.dumps(record) + "\n")
    stream.flush()
