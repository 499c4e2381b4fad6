"""The embedded lake: pyiceberg's SQL catalog on SQLite at `<data_dir>/lake.sqlite`, the
warehouse at `<data_dir>/buckets/<lake bucket>/lake/` (`file://` URIs).

Differs from the interface only in what SQLite cannot do: commits of concurrent processes
serialise on the database's write lock (waiting up to `BUSY_TIMEOUT_SECONDS`, then `BackendBusy`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sluice.backends.lake.iceberg import IcebergLake
from sluice.errors import BackendBusy, ConfigError, SluiceError

NAMESPACE = "sluice"
BUSY_TIMEOUT_SECONDS = 30
PYARROW_IO = "pyiceberg.io.pyarrow.PyArrowFileIO"


class LocalLake(IcebergLake):
    def __init__(self, data_dir: Path, bucket: str, *, namespace: str = NAMESPACE) -> None:
        try:
            from pyiceberg.catalog.sql import SqlCatalog
        except ImportError as exc:  # pragma: no cover - pyiceberg is a dependency
            raise ConfigError(
                "the lake needs pyiceberg", hint="pip install 'pyiceberg[sql-sqlite,pyarrow]'"
            ) from exc
        root = data_dir.resolve()
        warehouse = root / "buckets" / bucket / "lake"
        warehouse.mkdir(parents=True, exist_ok=True)
        self.path = root / "lake.sqlite"
        catalog = _open_catalog(SqlCatalog, self.path, warehouse)
        super().__init__(catalog, namespace, warehouse.as_uri(), translate=_translate)


def _open_catalog(sql_catalog: Any, path: Path, warehouse: Path) -> Any:
    from sqlalchemy.exc import OperationalError

    def open_once() -> Any:
        return sql_catalog(
            NAMESPACE,
            uri=f"sqlite:///{path}?timeout={BUSY_TIMEOUT_SECONDS}",
            warehouse=warehouse.as_uri(),
            **{"py-io-impl": PYARROW_IO},
        )

    try:
        return open_once()
    except OperationalError as exc:
        # Opening creates the catalog's own tables when missing; two processes doing it at once
        # make the slower one fail with "already exists". Opening again finds them.
        if "already exists" not in str(exc):
            raise
        return open_once()


def _translate(exc: BaseException) -> SluiceError | None:
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, OperationalError) and "locked" in str(exc):
        return BackendBusy(f"the lake catalog is locked: {exc.orig}", hint="run it again")
    if isinstance(exc, OperationalError):
        return ConfigError(f"the lake catalog cannot be used: {exc.orig}")
    if isinstance(exc, PermissionError):
        return ConfigError(f"the lake warehouse cannot be written: {exc}")
    return None
