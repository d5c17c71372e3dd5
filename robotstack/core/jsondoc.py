"""Versioned JSON documents (a checkpoint's config.json, an artifact's manifest.json): reading and the
format/version check, written once. Each format keeps its own schema and error class; this module only opens the
file and checks the two fields every such document starts with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_object(path: Path, error: type[Exception], missing_hint: str) -> dict[str, Any]:
    """The JSON object in `path`; `error` (naming the file) when it is missing, not JSON or not an object."""
    if not path.is_file():
        raise error(f"{path}: missing; {missing_hint}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise error(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def check_format(doc: dict[str, Any], path: Path, fmt: str, version: int, error: type[Exception],
                 hint: str = "") -> None:
    """`error` unless doc's `format` and `version` are `fmt` and `version`; `hint` says how to get a current one."""
    if doc.get("format") != fmt or doc.get("version") != version:
        raise error(f"{path}: format {doc.get('format')!r} version {doc.get('version')!r}, expected {fmt!r} "
                    f"version {version}{f' ({hint})' if hint else ''}")
