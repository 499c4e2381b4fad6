"""The one place that picks backend implementations, from an environment's configuration.

Everything else receives an `Env` and speaks only the interfaces in `sluice.backends.*.base`.
Implementations are imported lazily, so the embedded default never imports boto3.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from sluice.backends.catalog.base import Catalog
from sluice.backends.lake.base import Lake
from sluice.backends.ledger.base import Ledger
from sluice.backends.query.base import QueryEngine
from sluice.backends.queue.base import Queue, QueueFactory, QueueSettings, RedrivePolicy
from sluice.backends.store.base import ObjectStore
from sluice.config import EnvConfig
from sluice.errors import ConfigError

if TYPE_CHECKING:
    from sluice.backends.aws import AwsClients


@dataclass
class Env:
    config: EnvConfig
    store: ObjectStore
    queues: QueueFactory
    ledger: Ledger
    catalog: Catalog
    aws: AwsClients | None = None

    @cached_property
    def processing_queue(self) -> Queue:
        return self.queues.open(self.config.queues.processing)

    @cached_property
    def processing_dlq(self) -> Queue:
        return self.queues.open(self.config.queues.processing_dlq)

    @cached_property
    def query_engine(self) -> QueryEngine:
        if self.config.query_engine == "athena":
            from sluice.backends.query.athena import AthenaQueryEngine

            return AthenaQueryEngine(
                self._aws().client("athena"),
                workgroup=self.config.athena_workgroup,
                database=self.config.glue_database,
                output_location=self.config.athena_output,
            )
        if self.config.query_engine != "duckdb":
            raise ConfigError(
                f"query_engine must be duckdb or athena, not {self.config.query_engine!r}"
            )
        from sluice.backends.query.duckdb import DuckDBQueryEngine

        return DuckDBQueryEngine(self.catalog, self.store)

    @cached_property
    def lake(self) -> Lake:
        """The Iceberg lake tables: a SQL catalog on SQLite embedded, the Glue catalog on AWS."""
        if self.config.backend == "aws":
            from sluice.backends.lake.glue import GlueLake

            aws = self._aws()
            return GlueLake(
                aws.client("glue"),
                database=self.config.glue_database,
                bucket=self.config.buckets.lake,
                region=aws.session.region_name,
                endpoint_url=self.config.endpoint_url,
                credentials=aws.credentials(),
            )
        from sluice.backends.lake.local import LocalLake

        return LocalLake(self.config.data_dir, self.config.buckets.lake)

    def _aws(self) -> AwsClients:
        from sluice.backends.aws import AwsClients

        if self.aws is None:
            self.aws = AwsClients(self.config)
        return self.aws

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
        if self.aws is not None:
            _create_aws_resources(self)
        for table in verified_table_defs(cfg.buckets.verified):
            self.catalog.ensure_table(table)


def open_env(config: EnvConfig, *, setup: bool | None = None) -> Env:
    """Open the environment's backends.

    `setup` creates what is missing (queues, tables, and on AWS buckets and the ledger table):
    by default for the embedded backend, which needs nothing else; on AWS the SAM template
    deploys them, and `sluice setup` creates them where it did not.

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
    elif config.backend == "aws":
        env = _open_aws(config)
    else:
        raise ConfigError(f"environment {config.name!r} has unknown backend {config.backend!r}")
    if setup or (setup is None and config.backend == "embedded"):
        env.setup()
    return env


def _open_aws(config: EnvConfig) -> Env:
    from sluice.backends.aws import AwsClients
    from sluice.backends.catalog.glue import GlueCatalog
    from sluice.backends.ledger.dynamodb import DynamoDbLedger
    from sluice.backends.queue.sqs import SqsQueueFactory
    from sluice.backends.store.s3 import S3ObjectStore

    clients = AwsClients(config)
    return Env(
        config=config,
        store=S3ObjectStore(
            clients.client("s3"),
            region=clients.session.region_name,
            endpoint_url=config.endpoint_url,
            credentials=clients.credentials,
        ),
        queues=SqsQueueFactory(clients.client("sqs")),
        ledger=DynamoDbLedger(clients.client("dynamodb"), config.ledger_table),
        catalog=GlueCatalog(clients.client("glue"), config.glue_database),
        aws=clients,
    )


def _create_aws_resources(env: Env) -> None:
    """What the SAM template deploys, for an environment set up without it (a moto server, a
    sandbox account): buckets and the ledger table, each only if missing."""
    from botocore.exceptions import ClientError

    from sluice.backends.ledger.dynamodb import DynamoDbLedger

    assert env.aws is not None
    s3 = env.aws.client("s3")
    region = env.aws.session.region_name
    location = (
        {}
        if region == "us-east-1"
        else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    )
    for bucket in vars(env.config.buckets).values():
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError:
            s3.create_bucket(Bucket=bucket, **location)
    if isinstance(env.ledger, DynamoDbLedger):
        env.ledger.create_table()
