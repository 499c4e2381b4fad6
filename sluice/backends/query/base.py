"""The query engine: SQL in, Arrow out (DuckDB embedded or over S3, Athena on AWS).

Tables are the catalog's; only registered partitions are read (as on Athena), and partition
keys appear as string columns after the data columns.
"""

from __future__ import annotations

from typing import Protocol

import pyarrow as pa


class QueryEngine(Protocol):
    def query(self, sql: str) -> pa.Table:
        """Run one SQL statement and return its result.

        Raises:
            QueryFailed: the engine rejected or failed the statement (message says why).
            TransientError: a remote engine (Athena) throttled or timed out; run it again later.
        """
        ...
