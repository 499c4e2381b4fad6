"""The one place that picks backend implementations, from an environment's configuration.

Everything else receives an `Env` and speaks only the interfaces in `sluice.backends.*.base`.
Implementations are imported lazily, so the embedded default never imports boto3.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from sluice.backends.catalog.base import Catalog
from sluice.backends.ledger.base import Ledger
from sluice.backends.query.base import QueryEngine
from sluice.backends.queue.base import Queue, QueueFactory, QueueSettings, RedrivePolicy
from sluice.backends.store.base import ObjectStore
from sluice.config import EnvConfig
from sluice.errors import ConfigError


@dataclass
class Env:
    config: EnvConfig
    store: ObjectStore
    queues: QueueFactory
    ledger: Ledger
    catalog: Catalog

    @cached_property
    def processing_queue(self) -> Queue:
        return self.queues.open(self.config.queues.processing)

    @cached_property
    def processing_dlq(self) -> Queue:
        return self.queues.open(self.config.queues.processing_dlq)

    @cached_property
    def query_engine(self) -> QueryEngine:
        from sluice.backends.query.duckdb import DuckDBQueryEngine

        return DuckDBQueryEngine(self.catalog, self.store)

    def setup(self) -> None:
        """Create the queues and verified tables this environment needs (idempotent)."""
        from sluice.process.schemas import verified_table_defs

        cfg = self.config
        self.queues.create(
            cfg.queues.processing_dlq,
            QueueSettings(cfg.visibility_timeout_seconds, cfg.dlq_retention_seconds),
        )
        self.queues.create(
            cfg.queues.processing,
            QueueSettings(
                cfg.visibility_timeout_seconds,
                cfg.retention_seconds,
                RedrivePolicy(cfg.queues.processing_dlq, cfg.max_receive_count),
            ),
        )
        for table in verified_table_defs(cfg.buckets.verified):
            self.catalog.ensure_table(table)


def open_env(config: EnvConfig, *, setup: bool = True) -> Env:
    """Open (and by default set up) the environment's backends.

    Raises:
        ConfigError: the backend is unknown or not available here.
    """
    if config.backend == "embedded":
        from sluice.backends.catalog.sqlite import SqliteCatalog
        from sluice.backends.ledger.sqlite import SqliteLedger
        from sluice.backends.queue.sqlite import SqliteQueueFactory
        from sluice.backends.store.local import LocalObjectStore

        root = config.data_dir
        env = Env(
            config=config,
            store=LocalObjectStore(root / "buckets"),
            queues=SqliteQueueFactory(root / "queues.sqlite"),
            ledger=SqliteLedger(root / "ledger.sqlite"),
            catalog=SqliteCatalog(root / "catalog.sqlite"),
        )
    else:
        raise ConfigError(
            f"environment {config.name!r} uses backend {config.backend!r}, not built yet",
            hint="use the embedded backend (the default `local` environment)",
        )
    if setup:
        env.setup()
    return env
