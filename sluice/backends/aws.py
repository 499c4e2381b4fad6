"""The one AWS client factory: profile, region, optional role to assume, optional endpoint.

Nothing else in sluice creates boto3 sessions or clients; AWS backend classes take a client
built here (tests build theirs the same way, pointed at a moto server).
"""

from __future__ import annotations

import threading
from typing import Any

from sluice.config import EnvConfig
from sluice.errors import ConfigError

# Standard retry mode backs off on throttling (SlowDown, ThrottlingException) by itself.
_RETRIES = {"max_attempts": 8, "mode": "standard"}


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
