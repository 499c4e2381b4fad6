"""A small JSON Schema validator for the messages of queues that are not sluice's own.

jsonschema is not a dependency, and a DLQ message needs only a handful of checks: which keys
must be there and what type they hold. The subset supported is

    type (one name or a list), required, properties, additionalProperties (true/false),
    items, enum, const, minLength, maxLength, minimum, maximum, pattern

plus the annotations that never affect validity ($schema, $id, $comment, title, description,
default, examples). A schema using any other keyword is refused when it is loaded rather than
half-applied: a redrive that trusts a check we silently skipped could send what it should not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError

_CHECKS = {
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "pattern",
}
_ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "default", "examples"}
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def load_schema(path: Path) -> dict[str, Any]:
    """Read and check a schema file.

    Raises:
        ConfigError: unreadable, not a JSON object, or using a keyword outside the subset.
    """
    try:
        schema = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read schema {path}: {exc.strerror}", path=str(path)) from exc
    except ValueError as exc:
        raise ConfigError(f"schema {path} is not JSON: {exc}", path=str(path)) from exc
    if not isinstance(schema, dict):
        raise ConfigError(f"schema {path} must be a JSON object", path=str(path))
    _check_keywords(schema, "$", path)
    return schema


def validate(instance: Any, schema: Mapping[str, Any]) -> list[str]:
    """Every way `instance` breaks `schema`, as `path: problem`; empty when it is valid."""
    problems: list[str] = []
    _validate(instance, schema, "$", problems)
    return problems


def _check_keywords(schema: Any, where: str, path: Path) -> None:
    if not isinstance(schema, dict):
        raise ConfigError(f"schema {path}: {where} must be an object", path=str(path))
    unknown = set(schema) - _CHECKS - _ANNOTATIONS
    if unknown:
        raise ConfigError(
            f"schema {path}: {where} uses {sorted(unknown)}, outside the supported subset",
            hint=f"supported keywords: {', '.join(sorted(_CHECKS))}",
            path=str(path),
        )
    types = schema.get("type", [])
    for name in [types] if isinstance(types, str) else types:
        if name not in _TYPES:
            raise ConfigError(f"schema {path}: {where} has unknown type {name!r}", path=str(path))
    for name, sub in schema.get("properties", {}).items():
        _check_keywords(sub, f"{where}.{name}", path)
    if "items" in schema:
        _check_keywords(schema["items"], f"{where}[]", path)
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except re.error as exc:
            raise ConfigError(f"schema {path}: {where} pattern: {exc}", path=str(path)) from exc


def _is_type(value: Any, name: str) -> bool:
    # bool is an int in Python, but not an integer or a number in JSON.
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[name])


def _validate(value: Any, schema: Mapping[str, Any], where: str, problems: list[str]) -> None:
    if "type" in schema:
        names = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not any(_is_type(value, name) for name in names):
            problems.append(f"{where}: expected {' or '.join(names)}, got {type(value).__name__}")
            return
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where}: must be {schema['const']!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where}: does not match {schema['pattern']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where}: above {schema['maximum']}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{where}: required field {name!r} is missing")
        properties: Mapping[str, Any] = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                _validate(item, properties[name], f"{where}.{name}", problems)
            elif schema.get("additionalProperties") is False:
                problems.append(f"{where}: field {name!r} is not allowed")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _validate(item, schema["items"], f"{where}[{i}]", problems)
