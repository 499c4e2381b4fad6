"""Environments from `sluice.toml` (DESIGN §7).

`local` needs no file at all: it is the embedded backend in `./sluice-data` (or `--data-dir`,
or `SLUICE_DATA_DIR`). A file names more environments::

    [env.local]
    data_dir = "./sluice-data"

    [env.prod]
    backend = "aws"
    protected = true
    region = "eu-west-1"
    [env.prod.buckets]
    raw = "acme-telemetry-raw"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError

DEFAULT_ENV = "local"
DEFAULT_DATA_DIR = "./sluice-data"
CONFIG_FILE = "sluice.toml"
BACKENDS = ("embedded", "aws")


@dataclass(frozen=True)
class Buckets:
    raw: str = "raw"
    verified: str = "verified"
    quarantine: str = "quarantine"
    lake: str = "lake"


@dataclass(frozen=True)
class QueueNames:
    processing: str = "processing"
    processing_dlq: str = "processing-dlq"


@dataclass(frozen=True)
class EnvConfig:
    name: str = DEFAULT_ENV
    backend: str = "embedded"
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    protected: bool = False
    buckets: Buckets = field(default_factory=Buckets)
    queues: QueueNames = field(default_factory=QueueNames)
    # A killed worker's object is taken up again once both run out (well within a minute);
    # a live worker extends both every third of the lease, so large objects are never cut off.
    visibility_timeout_seconds: int = 30
    lease_seconds: int = 30
    max_receive_count: int = 5
    retention_seconds: int = 4 * 24 * 3600
    dlq_retention_seconds: int = 14 * 24 * 3600
    # Ingest closes a raw object at this many uncompressed bytes.
    raw_object_max_bytes: int = 64 * 1024 * 1024
    # AWS settings (used by the aws backend).
    region: str | None = None
    profile: str | None = None
    role_arn: str | None = None
    assume_role: bool = True  # `--no-assume-role` turns it off for one command
    endpoint_url: str | None = None  # e.g. a moto server or LocalStack
    ledger_table: str = "sluice-ledger"
    glue_database: str = "sluice"
    athena_workgroup: str = "primary"
    athena_output: str | None = None  # s3://bucket/prefix/ for Athena results
    query_engine: str = "duckdb"  # duckdb | athena


def _section(raw: dict[str, Any], cls: type[Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} in {where}", hint=f"known keys: {sorted(known)}"
        )
    return cls(**raw)


def _from_table(name: str, raw: dict[str, Any], where: str) -> EnvConfig:
    raw = dict(raw)
    buckets = _section(raw.pop("buckets", {}), Buckets, f"{where}.buckets")
    queues = _section(raw.pop("queues", {}), QueueNames, f"{where}.queues")
    if "data_dir" in raw:
        raw["data_dir"] = Path(raw["data_dir"])
    cfg: EnvConfig = _section(raw, EnvConfig, where)
    cfg = replace(cfg, name=name, buckets=buckets, queues=queues)
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"{where}: backend must be one of {BACKENDS}, not {cfg.backend!r}")
    return cfg


def find_config_file(start: Path | None = None) -> Path | None:
    explicit = os.environ.get("SLUICE_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"SLUICE_CONFIG names {path}, which is not a file")
        return path
    path = (start or Path.cwd()) / CONFIG_FILE
    return path if path.is_file() else None


def load_config(
    env: str = DEFAULT_ENV, *, config_file: Path | None = None, data_dir: Path | None = None
) -> EnvConfig:
    """The named environment, with `data_dir` (flag, then SLUICE_DATA_DIR) applied last.

    Raises:
        ConfigError: unreadable file, unknown environment or key, bad values.
    """
    path = config_file or find_config_file()
    envs: dict[str, Any] = {}
    if path is not None:
        try:
            envs = tomllib.loads(path.read_text()).get("env", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
    if env in envs:
        cfg = _from_table(env, envs[env], f"{path}: [env.{env}]")
    elif env == DEFAULT_ENV:
        cfg = EnvConfig()
    else:
        known = sorted({DEFAULT_ENV, *envs})
        raise ConfigError(
            f"unknown environment {env!r}",
            hint=f"use one of {known} or add [env.{env}] to {CONFIG_FILE}",
        )
    override = data_dir or (
        Path(os.environ["SLUICE_DATA_DIR"]) if os.environ.get("SLUICE_DATA_DIR") else None
    )
    if override is not None:
        cfg = replace(cfg, data_dir=override)
    return cfg


def _coerce(raw: str, default: Any, name: str) -> Any:
    if isinstance(default, bool):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError(f"{name} must be true or false, not {raw!r}")
        return raw.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if isinstance(default, Path):
        return Path(raw)
    return raw


def config_from_environ(environ: dict[str, str] | None = None) -> EnvConfig:
    """An environment described by SLUICE_* variables (how Lambda functions are configured).

    Every EnvConfig field is `SLUICE_<FIELD>` (e.g. SLUICE_BACKEND, SLUICE_LEASE_SECONDS),
    buckets are `SLUICE_BUCKET_<NAME>` and queues `SLUICE_QUEUE_<NAME>` (names or URLs); the
    region falls back to AWS_REGION.
    """
    environ = dict(os.environ if environ is None else environ)
    base = EnvConfig(name=environ.get("SLUICE_ENV_NAME", "lambda"))
    values: dict[str, Any] = {}
    for f in fields(EnvConfig):
        name = f"SLUICE_{f.name.upper()}"
        if name in environ and f.name not in ("buckets", "queues", "name"):
            values[f.name] = _coerce(environ[name], getattr(base, f.name), name)
    buckets = {
        f.name: environ[f"SLUICE_BUCKET_{f.name.upper()}"]
        for f in fields(Buckets)
        if f"SLUICE_BUCKET_{f.name.upper()}" in environ
    }
    queues = {
        f.name: environ[f"SLUICE_QUEUE_{f.name.upper()}"]
        for f in fields(QueueNames)
        if f"SLUICE_QUEUE_{f.name.upper()}" in environ
    }
    values.setdefault("region", environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION"))
    cfg = replace(base, buckets=Buckets(**buckets), queues=QueueNames(**queues), **values)
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"SLUICE_BACKEND must be one of {BACKENDS}, not {cfg.backend!r}")
    return cfg
