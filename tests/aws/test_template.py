"""The SAM template: current with the code, linted, and keeping the queue rules of DESIGN §7."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sluice.aws.template import PARSER_TIMEOUT_SECONDS, build_template, render
from sluice.process.schemas import SPECS

TEMPLATE = Path(__file__).parents[2] / "template.yaml"


def load() -> dict[str, Any]:
    text = TEMPLATE.read_text()
    return json.loads(text[text.index("{") :])  # JSON is YAML: the file is JSON after a comment


def test_committed_template_is_current() -> None:
    assert TEMPLATE.read_text() == render(), "run: python -m sluice.aws.template > template.yaml"


def test_cfn_lint_passes() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")  # the one this project installs
    result = subprocess.run([cfn_lint, str(TEMPLATE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_queues_follow_the_design_rules() -> None:
    resources = build_template()["Resources"]
    source = resources["ProcessingQueue"]["Properties"]
    dlq = resources["ProcessingDLQ"]["Properties"]
    assert dlq["MessageRetentionPeriod"] > source["MessageRetentionPeriod"]
    assert source["VisibilityTimeout"] >= 6 * PARSER_TIMEOUT_SECONDS
    assert resources["ParserFunction"]["Properties"]["Timeout"] == PARSER_TIMEOUT_SECONDS
    assert source["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["ProcessingDLQ", "Arn"]
    }
    event = resources["ParserFunction"]["Properties"]["Events"]["Processing"]["Properties"]
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_glue_tables_have_the_verified_schemas() -> None:
    resources = build_template()["Resources"]
    tables = {
        r["Properties"]["TableInput"]["Name"]: r["Properties"]["TableInput"]
        for r in resources.values()
        if r["Type"] == "AWS::Glue::Table"
    }
    assert set(tables) == {spec.table for spec in SPECS.values()}
    for spec in SPECS.values():
        columns = [c["Name"] for c in tables[spec.table]["StorageDescriptor"]["Columns"]]
        assert columns == spec.schema.names
        assert [k["Name"] for k in tables[spec.table]["PartitionKeys"]] == ["day", "hour"]


@pytest.mark.parametrize("function", ["ParserFunction", "ReconcilerFunction"])
def test_functions_have_least_privilege(function: str) -> None:
    policies = build_template()["Resources"][function]["Properties"]["Policies"]
    for statement in (s for p in policies for s in p["Statement"]):
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        assert all("*" not in a for a in actions), statement
        assert statement["Resource"] != "*"
