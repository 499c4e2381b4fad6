"""`sluice query`: SQL over the environment's tables, on its engine."""

from __future__ import annotations

import pyarrow as pa

from sluice.env import Env
from sluice.errors import ConfigError


def run_query(env: Env, sql: str) -> pa.Table:
    """Run one SQL statement on the environment's engine.

    Raises:
        ConfigError: empty SQL.
        QueryFailed: the engine rejected or failed the statement.
    """
    if not sql.strip():
        raise ConfigError(
            "empty SQL", hint='sluice query "SELECT count(*) FROM telemetry_lock_flat"'
        )
    return env.query_engine.query(sql)
