"""The one AWS client factory: region, endpoint, role assumption."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sluice.backends.aws import AwsClients
from sluice.config import EnvConfig
from sluice.errors import ConfigError
from tests.moto_server import REGION

pytestmark = pytest.mark.aws

ROLE = "arn:aws:iam::123456789012:role/sluice-operator"


def test_assumes_the_environments_role(moto_endpoint: str) -> None:
    config = EnvConfig(backend="aws", region=REGION, endpoint_url=moto_endpoint, role_arn=ROLE)
    clients = AwsClients(config)
    identity = clients.client("sts").get_caller_identity()
    assert ":assumed-role/sluice-operator/sluice" in identity["Arn"]
    assert clients.credentials().access_key != "testing"


def test_no_assume_role_uses_the_callers_own_credentials(moto_endpoint: str) -> None:
    config = EnvConfig(backend="aws", region=REGION, endpoint_url=moto_endpoint, role_arn=ROLE)
    clients = AwsClients(replace(config, assume_role=False))
    assert ":assumed-role/" not in clients.client("sts").get_caller_identity()["Arn"]
    assert clients.credentials().access_key == "testing"


def test_a_region_is_required(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="no AWS region"):
        AwsClients(EnvConfig(name="prod", backend="aws", endpoint_url=moto_endpoint))
