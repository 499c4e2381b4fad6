"""Catalog repair: make a verified table's registered partitions exactly those holding Parquet.

`MSCK REPAIR TABLE` only adds partitions (and on a large table times out); sluice never runs
it. `repair` lists the table's location once, keeping only the set of partitions that hold at
least one Parquet file (never the keys, so memory does not grow with the number of files),
compares it with the catalog, adds the missing partitions and drops the empty ones through the
`Catalog` interface, whose implementations batch within the backend's limits.

Why the order of the steps matters, against a worker publishing at the same time: the processor
writes a file before it registers the file's partition. Registered partitions are read before
the store is listed, so a partition registered by then whose file exists is seen holding it,
and one registered later is not in the plan at all. A partition planned for dropping is listed
again just before the drop (one small request each), since a worker may have written into it
meanwhile. A partition that a worker fills after that last look is dropped with a file in it;
the reconciler registers it again on its next run (every 15 minutes).

Keys under a table's location that are not verified files of that table in the layout of
`sluice.layout` (a stray `.txt`, a file outside `day=/hour=`, a temporary upload) are reported,
never registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sluice.backends.catalog.base import Partition, TableDef
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.layout import ObjectUri, parse_uri, parse_verified_key
from sluice.process.schemas import verified_table_defs

# Strays are reported by a sample and a count: a bucket full of foreign files must not fill the
# memory of the command that reports them.
MAX_STRAY_SAMPLES = 100
PROGRESS_EVERY = 1000
PARTITION_KEYS = ("day", "hour")

OnProgress = Callable[[str, int], None]
"""Called with what is being done ("listing telemetry_lock_flat") and how many items so far."""


@dataclass
class TableRepair:
    """The plan for one table and what was done of it.

    Partitions are written `day=2025-11-24/hour=21`, as in their location.
    """

    table: str
    location: str
    objects_listed: int = 0
    parquet_files: int = 0
    registered: int = 0  # partitions registered before the repair
    with_files: int = 0  # partitions holding at least one Parquet file
    to_add: list[str] = field(default_factory=list)
    to_drop: list[str] = field(default_factory=list)
    added: int = 0
    dropped: int = 0
    # Planned drops that held a Parquet file when looked at again just before dropping.
    kept: list[str] = field(default_factory=list)
    stray_keys: list[str] = field(default_factory=list)  # the first MAX_STRAY_SAMPLES
    stray_count: int = 0


@dataclass
class RepairResult:
    tables: list[TableRepair] = field(default_factory=list)
    dry_run: bool = False
    # A protected environment without `yes`: the drops were planned but not made.
    drops_refused: bool = False

    @property
    def planned(self) -> int:
        return sum(len(t.to_add) + len(t.to_drop) for t in self.tables)

    @property
    def stray_count(self) -> int:
        return sum(t.stray_count for t in self.tables)


def partition_spec(partition: Partition) -> str:
    return "/".join(f"{k}={v}" for k, v in zip(PARTITION_KEYS, partition.values, strict=True))


def verified_tables(env: Env, table: str | None = None) -> list[TableDef]:
    """The verified tables as the catalog holds them (all, or the one named).

    Raises:
        ConfigError: `table` is not a verified table, or the catalog lacks it (`sluice setup`
            creates it), or holds it with other partition keys.
    """
    names = [t.name for t in verified_table_defs(env.config.buckets.verified)]
    if table is not None and table not in names:
        # repr: the name comes from the command line and may hold anything.
        raise ConfigError(
            f"unknown table {table!r}",
            hint=f"verified tables: {', '.join(names)}",
            table=table,
        )
    out = []
    for name in [table] if table is not None else names:
        tdef = env.catalog.get_table(name)
        if tdef is None:
            raise ConfigError(
                f"table {name} is not in the catalog of environment {env.config.name}",
                hint=f"sluice --env {env.config.name} setup",
                table=name,
            )
        if tdef.partition_keys != PARTITION_KEYS:
            raise ConfigError(
                f"table {name} is partitioned by {tdef.partition_keys}, not {PARTITION_KEYS}",
                hint="drop the table and run `sluice setup` to create it again",
                table=name,
            )
        out.append(tdef)
    return out


def table_root(table: TableDef) -> ObjectUri:
    """Bucket and key prefix (ending in `/`) of a table's location."""
    root = parse_uri(table.location)
    prefix = root.key if not root.key or root.key.endswith("/") else root.key + "/"
    return ObjectUri(root.bucket, prefix)


def partition_of(table: TableDef, key: str) -> Partition | None:
    """The partition a key is a verified Parquet file of, or None for a stray key."""
    parsed = parse_verified_key(key)
    if parsed is None or parsed.table != table.name or not key.startswith(table_root(table).key):
        return None
    return Partition((parsed.day, parsed.hour))


def repair(
    env: Env,
    *,
    table: str | None = None,
    dry_run: bool = False,
    yes: bool = False,
    on_progress: OnProgress | None = None,
) -> RepairResult:
    """Register every partition that holds a Parquet file, unregister every one that holds none.

    `dry_run` plans and changes nothing. In a protected environment partitions are dropped only
    with `yes` (adding is always safe); without it the drops are planned, not made, and
    `drops_refused` is set. Repeating a repair finds nothing to do.

    Raises:
        ConfigError: an unknown table, or one missing from the catalog.
        TransientError: the store or the catalog is busy (repeat the repair: it is idempotent).
    """
    tables = verified_tables(env, table)
    result = RepairResult(dry_run=dry_run)
    may_drop = yes or not env.config.protected
    for tdef in tables:
        plan = _plan(env, tdef, on_progress)
        result.tables.append(plan)
        if dry_run:
            continue
        if plan.to_add:
            to_add = [_partition(spec) for spec in plan.to_add]
            plan.added = env.catalog.add_partitions(tdef.name, to_add)
        if plan.to_drop and not may_drop:
            result.drops_refused = True
        elif plan.to_drop:
            empty = []
            for spec in plan.to_drop:
                if _holds_parquet(env, tdef, _partition(spec)):
                    plan.kept.append(spec)
                else:
                    empty.append(_partition(spec))
            if empty:
                plan.dropped = env.catalog.drop_partitions(tdef.name, empty)
    return result


def _plan(env: Env, table: TableDef, on_progress: OnProgress | None) -> TableRepair:
    root = table_root(table)
    plan = TableRepair(table=table.name, location=table.location)
    # Registered first, listing second: see the module docstring.
    registered = set(env.catalog.list_partitions(table.name))
    plan.registered = len(registered)
    with_files: set[Partition] = set()
    what = f"listing {table.name}"
    for info in env.store.list(root.bucket, root.key):
        plan.objects_listed += 1
        if on_progress is not None and plan.objects_listed % PROGRESS_EVERY == 0:
            on_progress(what, plan.objects_listed)
        partition = partition_of(table, info.key)
        if partition is None:
            plan.stray_count += 1
            if len(plan.stray_keys) < MAX_STRAY_SAMPLES:
                plan.stray_keys.append(info.uri)
            continue
        plan.parquet_files += 1
        with_files.add(partition)
    if on_progress is not None:
        on_progress(what, plan.objects_listed)
    plan.with_files = len(with_files)
    plan.to_add = _specs(with_files - registered)
    plan.to_drop = _specs(registered - with_files)
    return plan


def _holds_parquet(env: Env, table: TableDef, partition: Partition) -> bool:
    root = table_root(table)
    prefix = partition.location(table)[len(f"s3://{root.bucket}/") :]
    return any(
        partition_of(table, info.key) == partition
        for info in env.store.list(root.bucket, prefix, page_size=100)
    )


def _specs(partitions: Iterable[Partition]) -> list[str]:
    return [partition_spec(p) for p in sorted(partitions)]


def _partition(spec: str) -> Partition:
    return Partition(tuple(part.split("=", 1)[1] for part in spec.split("/")))
