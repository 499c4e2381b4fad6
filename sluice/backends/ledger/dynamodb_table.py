"""The DynamoDB ledger's table and the plain requests sent to it, which know nothing of claims:
`DynamoDbTable` holds the low-level client and the table name, creates the table (from
`table_definition`), reads one item consistently, pages through a query lazily and deletes items
in batches, retrying what DynamoDB leaves unprocessed. Every request goes through `call`, so
DynamoDB's errors arrive translated; `DynamoDbLedger` builds the ledger's verbs on these.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from sluice.backends.ledger.dynamodb_items import (
    Item,
    Refused,
    call,
    item_key,
    table_definition,
)
from sluice.errors import BackendBusy

# How often a claim (or a pending-outputs merge) re-reads and retries after losing its
# conditional write before it reports BackendBusy; a batch delete re-sends what DynamoDB left
# unprocessed as often.
TRIES = 5


class DynamoDbTable:
    """The ledger's one table, through a low-level boto3 DynamoDB client."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self.table = table

    def create_table(self) -> None:
        """Create the table and its indexes (`table_definition`); nothing if it exists."""
        try:
            answer = self._call("create_table", **table_definition(self.table))
            active = answer["TableDescription"].get("TableStatus") == "ACTIVE"
        except Refused:
            active = False  # it exists already (perhaps still being created)
        if not active:
            self._client.get_waiter("table_exists").wait(TableName=self.table)

    def _get_item(self, bucket: str, key: str, sk: str) -> Item | None:
        args = {"TableName": self.table, "Key": item_key(bucket, key, sk), "ConsistentRead": True}
        item: Item | None = self._call("get_item", **args).get("Item")
        return item

    def _query(self, **args: Any) -> Iterator[Item]:
        """Every item a Query matches, a page at a time (lazily)."""
        while True:
            answer = self._call("query", TableName=self.table, **args)
            yield from answer.get("Items", [])
            if "LastEvaluatedKey" not in answer:
                return
            args["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def _delete_items(self, keys: Sequence[Item]) -> None:
        """Delete items by key, 25 to a BatchWriteItem (its limit), retrying what it leaves
        unprocessed (throttled) with backoff. Raises: BackendBusy."""
        for start in range(0, len(keys), 25):
            requests = [{"DeleteRequest": {"Key": k}} for k in keys[start : start + 25]]
            pending: Item = {self.table: requests}
            for attempt in range(TRIES):
                answer = self._call("batch_write_item", RequestItems=pending)
                pending = answer.get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(0.05 * 2**attempt)
            else:
                raise BackendBusy("deletes kept being throttled; retry", table=self.table)

    def _call(self, operation: str, **args: Any) -> Item:
        return call(self._client, self.table, operation, **args)
