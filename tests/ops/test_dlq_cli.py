"""`sluice dlq …` through the command line (embedded), and a foreign queue pair with a schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluice.cli.app import main
from sluice.env import Env
from sluice.ops.dlq.schema import validate
from tests.ops.test_dlq import contents, fix, poison, snapshot


def cli(capsys: pytest.CaptureFixture[str], env: Env, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["--data-dir", str(env.config.data_dir), *args])
    out, err = capsys.readouterr()
    # Rich wraps long lines at the terminal's width; compare words, not line breaks.
    return int(exited.value.code or 0), out, " ".join(err.split())


def test_every_dlq_command_through_the_cli(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    poisoned = poison(env)
    before = snapshot(env.processing_dlq)

    code, out, err = cli(capsys, env, "dlq", "list")
    assert code == 0 and "4 of 4 visible message(s) shown" in out and "4 receive(s)" in err
    code, out, _ = cli(capsys, env, "dlq", "list", "--json")
    listing = json.loads(out)
    assert code == 0 and len(listing["messages"]) == 4 and listing["cost"]["messages_received"]
    code, out, _ = cli(capsys, env, "dlq", "inspect", "--message-id", poisoned.not_json)
    assert code == 0 and "this is not json" in out and "not JSON" in " ".join(out.split())
    code, out, _ = cli(capsys, env, "--json", "dlq", "explain")
    categories = {g["category"]: g["count"] for g in json.loads(out)["groups"]}
    assert categories == {
        "corrupt_raw_object": 1,
        "missing_raw_object": 1,
        "missing_correlation_id": 1,
        "invalid_message": 1,
    }
    code, out, _ = cli(capsys, env, "dlq", "explain")
    assert code == 0 and "redrive-all" in out
    assert snapshot(env.processing_dlq) == before

    code, _, err = cli(capsys, env, "dlq", "inspect", "--message-id", "nope")
    assert code == 1 and "no message 'nope'" in err and "next:" in err
    code, _, err = cli(capsys, env, "dlq", "list", "--max-messages", "99")
    assert code == 1 and "--all" in err
    code, _, err = cli(capsys, env, "dlq", "list", "--dlq-url", "no-such-queue")
    assert code == 1 and "does not exist" in err

    fix(env, poisoned)
    code, out, _ = cli(capsys, env, "dlq", "redrive-all", "--dry-run")
    assert code == 0 and "dry run" in out and env.processing_queue.counts().visible == 0
    code, out, err = cli(capsys, env, "dlq", "redrive-all", "--rate", "50")
    assert code == 0 and "missing_correlation_id" in err and "invalid_message" in err
    assert env.processing_queue.counts().visible == 2
    code, _, err = cli(capsys, env, "dlq", "redrive", "--message-id", poisoned.no_correlation)
    assert code == 1 and "correlation_id" in err

    left = contents(env.processing_dlq)
    backup = tmp_path / "dlq.jsonl"
    code, out, _ = cli(capsys, env, "--json", "dlq", "purge", "--backup", str(backup))
    assert code == 0 and json.loads(out)["deleted"] == 2
    assert env.processing_dlq.counts().visible == 0
    code, out, _ = cli(capsys, env, "dlq", "restore", str(backup))
    assert code == 0 and contents(env.processing_dlq) == left


def test_a_foreign_queue_pair_with_a_schema(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = env.processing_dlq.settings()
    dlq = env.queues.create("orders-dlq", settings)
    target = env.queues.create("orders", settings)
    schema = {
        "type": "object",
        "required": ["order_id", "total"],
        "properties": {"order_id": {"type": "integer"}, "total": {"type": "number"}},
    }
    path = tmp_path / "order.schema.json"
    path.write_text(json.dumps(schema))
    good = dlq.send(json.dumps({"order_id": 7, "total": 9.5}), {"correlation_id": "c-1"})
    bad = dlq.send(json.dumps({"order_id": "7"}), {"correlation_id": "c-2"})
    pair = ["--dlq-url", "orders-dlq", "--target-url", "orders", "--schema", str(path)]

    code, out, _ = cli(capsys, env, "--json", "dlq", "list", *pair[:2], *pair[4:])
    valid = {m["message_id"]: m["valid"] for m in json.loads(out)["messages"]}
    assert code == 0 and valid == {good: True, bad: False}
    code, out, _ = cli(capsys, env, "--json", "dlq", "redrive-all", *pair)
    result = json.loads(out)
    assert code == 0 and list(result["redriven"]) == [good]
    assert result["refused"][0]["category"] == "schema_failure"
    assert "required field 'total'" in result["refused"][0]["reason"]
    assert target.counts().visible == 1 and dlq.counts().visible == 1
    # Without a target, a foreign DLQ's messages have nowhere to go.
    code, _, err = cli(capsys, env, "dlq", "redrive-all", "--dlq-url", "orders-dlq")
    assert code == 1 and "--target-url" in err


def test_the_schema_subset() -> None:
    schema = {
        "type": "object",
        "required": ["id"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "minLength": 2, "pattern": "^o-"},
            "n": {"type": ["integer", "null"], "minimum": 0, "maximum": 9},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
            "v": {"const": 1},
        },
    }
    assert validate({"id": "o-1", "n": None, "tags": ["a"], "v": 1}, schema) == []
    problems = validate({"id": "x", "n": True, "tags": ["c"], "v": 2, "z": 0}, schema)
    assert len(problems) == 6, problems
    assert validate({"n": 10}, schema) == [
        "$: required field 'id' is missing",
        "$.n: above 9",
    ]
    assert validate({"id": "o-1", "n": 3.0}, schema) == []  # 3.0 is an integer in JSON
