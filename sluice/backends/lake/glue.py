"""The AWS lake: pyiceberg's Glue catalog (tables in the environment's Glue database, beside
the verified tables) with the warehouse at `s3://<lake bucket>/lake/`, read and written through
pyarrow's S3 filesystem.

The Glue client is injected (built by `sluice.backends.aws.AwsClients`, like every AWS client);
the S3 FileIO is configured from the same environment: region, endpoint (a moto server or
LocalStack) and the session's credentials, frozen when the lake is opened.

Where it differs from the embedded lake:

- pyiceberg copies an Iceberg table's properties into the Glue table's `Parameters`, so the
  per-day properties sluice keeps (a short JSON value per day) live there too; Glue allows
  values up to 512,000 bytes each.
- Commits are optimistic (`UpdateTable` with the table's `VersionId`): a concurrent commit makes
  pyiceberg retry on the new metadata, or fail with `BackendBusy` when it replaced the same day.
"""

from __future__ import annotations

from typing import Any

from sluice.backends.lake.iceberg import IcebergLake
from sluice.errors import BackendBusy, ConfigError, SluiceError

PYARROW_IO = "pyiceberg.io.pyarrow.PyArrowFileIO"
_TRANSIENT = {
    "ThrottlingException",
    "InternalServiceException",
    "OperationTimeoutException",
    "ConcurrentModificationException",
    "SlowDown",
    "RequestTimeout",
    "ServiceUnavailable",
    "InternalError",
}


class GlueLake(IcebergLake):
    def __init__(
        self,
        glue_client: Any,
        *,
        database: str,
        bucket: str,
        region: str | None,
        endpoint_url: str | None = None,
        credentials: Any = None,
    ) -> None:
        try:
            from pyiceberg.catalog.glue import GlueCatalog
        except ImportError as exc:  # pragma: no cover - pyiceberg is a dependency
            raise ConfigError(
                "the lake needs pyiceberg", hint="pip install 'pyiceberg[sql-sqlite,pyarrow]'"
            ) from exc
        properties = {"py-io-impl": PYARROW_IO, **s3_properties(region, endpoint_url, credentials)}
        # With an injected client pyiceberg never builds its own, so `glue.endpoint` and
        # `glue.region` would be dead settings: the client already carries both.
        catalog = GlueCatalog("sluice", client=glue_client, **properties)
        super().__init__(catalog, database, f"s3://{bucket}/lake", translate=_translate)


def s3_properties(region: str | None, endpoint_url: str | None, credentials: Any) -> dict[str, str]:
    """pyiceberg FileIO properties for pyarrow's S3 filesystem in this environment."""
    props: dict[str, str] = {}
    if region:
        props["s3.region"] = region
    if endpoint_url:
        props["s3.endpoint"] = endpoint_url
    if credentials is not None:
        props["s3.access-key-id"] = credentials.access_key
        props["s3.secret-access-key"] = credentials.secret_key
        if credentials.token:
            props["s3.session-token"] = credentials.token
    return props


def _translate(exc: BaseException) -> SluiceError | None:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
        message = f"lake (Glue/S3): {code}: {exc}"
        if code in _TRANSIENT:
            return BackendBusy(message, hint="run it again")
        return ConfigError(message)
    if isinstance(exc, BotoCoreError):
        return BackendBusy(f"lake (Glue/S3): {exc}", hint="run it again")
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | PermissionError):
        # pyarrow's S3 filesystem reports network failures and throttling as OSError.
        return BackendBusy(f"lake storage: {exc}", hint="run it again")
    return None
