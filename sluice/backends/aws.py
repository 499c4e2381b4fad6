"""The one AWS client factory: profile, region, optional role to assume, optional endpoint.

Nothing else in sluice creates boto3 sessions or clients; AWS backend classes take a client
built here (tests build theirs the same way, pointed at a moto server).
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from sluice.config import EnvConfig
from sluice.errors import ConfigError

# Standard retry mode backs off on throttling (SlowDown, ThrottlingException) by itself.
_RETRIES = {"max_attempts": 8, "mode": "standard"}


def _parse_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser, with a fast path for ISO 8601 with an offset: a listing
    answer carries one timestamp per object, and dateutil's general parser (botocore's) costs
    more than the rest of the answer (~60% of a 1000-key ListObjectsV2 page's CPU)."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    from botocore.utils import parse_timestamp  # HTTP dates, epoch numbers, naive times

    result: datetime = parse_timestamp(value)
    return result


class AwsClients:
    """Clients for one environment, created lazily and cached (boto3 clients are thread-safe)."""

    def __init__(self, config: EnvConfig) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - boto3 is in the aws and dev extras
            raise ConfigError(
                "the aws backend needs boto3", hint="pip install 'sluice[aws]'"
            ) from exc
        self.config = config
        self._botocore_config = Config(retries=_RETRIES, max_pool_connections=32)
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        session = boto3.Session(profile_name=config.profile, region_name=config.region)
        if config.role_arn and config.assume_role:
            session = self._assumed(session, config.role_arn)
        if session.region_name is None:
            raise ConfigError(
                f"environment {config.name!r} has no AWS region",
                hint=f"set region in [env.{config.name}] of sluice.toml, or AWS_REGION",
            )
        # For every client of the session (boto3 exposes its botocore session as `_session`).
        parsers = session._session.get_component("response_parser_factory")
        parsers.set_parser_defaults(timestamp_parser=_parse_timestamp)
        self.session = session

    def _assumed(self, session: Any, role_arn: str) -> Any:
        import boto3

        sts = session.client("sts", endpoint_url=self.config.endpoint_url)
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="sluice")["Credentials"]
        return boto3.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
            region_name=session.region_name,
        )

    def client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self.session.client(
                    service, endpoint_url=self.config.endpoint_url, config=self._botocore_config
                )
            return self._clients[service]

    def credentials(self) -> Any:
        """Frozen credentials, for pyarrow's S3 filesystem."""
        return self.session.get_credentials().get_frozen_credentials()
