"""Lambda entry points. They only wire stages together; the stages are the same code the
embedded worker runs.

- `parser_handler`: SQS-triggered (batch, ReportBatchItemFailures). A message whose objects are
  done is reported as success (Lambda deletes it); a transient failure or a busy object is
  reported in `batchItemFailures` (SQS redelivers it, and its redrive policy sends it to the DLQ
  after maxReceiveCount); a terminal failure is sent to the DLQ at once, body and attributes
  unchanged, and then reported as success.
- `reconciler_handler`: EventBridge-scheduled (every 15 minutes).

Configuration comes from SLUICE_* environment variables (`sluice.config.config_from_environ`).
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from typing import Any

from sluice.catalog.reconcile import DEFAULT_LOOKBACK_HOURS, reconcile
from sluice.config import config_from_environ
from sluice.env import Env, open_env
from sluice.messages import CORRELATION_ID
from sluice.process.worker import Disposition, WorkerStats, decide, near_dead_letter
from sluice.serialize import to_jsonable


@cache
def _env() -> Env:
    # One environment per Lambda container: clients are reused across invocations.
    return open_env(config_from_environ(), setup=False)


def _string_attributes(record: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in (record.get("messageAttributes") or {}).items():
        if "stringValue" in value:
            out[name] = value["stringValue"]
    return out


def parser_handler(event: dict[str, Any], context: Any, env: Env | None = None) -> dict[str, Any]:
    env = env or _env()
    owner = f"lambda:{getattr(context, 'aws_request_id', 'local')}"
    failures = []
    stats = WorkerStats()
    for record in event.get("Records", []):
        attributes = _string_attributes(record)
        correlation_id = attributes.get(CORRELATION_ID, record["messageId"])
        receive_count = int((record.get("attributes") or {}).get("ApproximateReceiveCount", 1))
        decision = decide(env, record["body"], correlation_id, receive_count, owner)
        stats.record(decision)
        if decision.disposition is Disposition.DEAD_LETTER:
            env.processing_dlq.send(record["body"], attributes)
        elif decision.busy and near_dead_letter(env.processing_queue, receive_count):
            env.processing_queue.send(record["body"], attributes)  # see worker.requeue
        elif decision.disposition is Disposition.RETRY:
            failures.append({"itemIdentifier": record["messageId"]})
    print({"sluice": "parser", **to_jsonable(stats)})  # one structured log line per batch
    return {"batchItemFailures": failures}


def reconciler_handler(
    event: dict[str, Any], context: Any, env: Env | None = None
) -> dict[str, Any]:
    """`event` may set `lookback_hours` and `min_age_minutes` (the schedule's input)."""
    result = reconcile(
        env or _env(),
        lookback_hours=int(event.get("lookback_hours", DEFAULT_LOOKBACK_HOURS)),
        min_age=timedelta(minutes=float(event.get("min_age_minutes", 10))),
    )
    out: dict[str, Any] = to_jsonable(result)
    return out
