"""`sluice dlq`: working a dead-letter queue (DESIGN §5, issue 6).

- `scan`: `list_messages`, `inspect_message`, `explain` — read without consuming;
- `move`: `redrive_message`, `redrive_all` — valid messages back to their source queue;
- `backup`: `purge` (backup, verify, delete) and `restore`;
- `model`: the queue pair (`open_pair`), a message's validity and failure category;
- `schema`: the JSON Schema subset for foreign messages; `metrics`: counters per operation.

Everything works through the `Queue` and `Ledger` interfaces, so on both backends.
"""

from sluice.ops.dlq.backup import PurgeResult, RestoreResult, purge, read_backup, restore
from sluice.ops.dlq.metrics import record_metrics
from sluice.ops.dlq.model import (
    Category,
    DlqMessage,
    DlqPair,
    Refused,
    ScanCost,
    Validation,
    open_pair,
)
from sluice.ops.dlq.move import RedriveResult, redrive_all, redrive_message
from sluice.ops.dlq.scan import (
    DlqExplanation,
    DlqInspection,
    DlqListing,
    explain,
    inspect_message,
    list_messages,
)

__all__ = [
    "Category",
    "DlqExplanation",
    "DlqInspection",
    "DlqListing",
    "DlqMessage",
    "DlqPair",
    "PurgeResult",
    "RedriveResult",
    "Refused",
    "RestoreResult",
    "ScanCost",
    "Validation",
    "explain",
    "inspect_message",
    "list_messages",
    "open_pair",
    "purge",
    "read_backup",
    "record_metrics",
    "redrive_all",
    "redrive_message",
    "restore",
]
