"""Typed configs: dataclasses loaded from YAML, validated on load, with dotted command-line overrides.

Unknown keys and wrongly typed values fail at load time with the file, the dotted key and the expected type,
not later when something is instantiated (shared/design.md §6: no `_target_` strings resolved at run time).
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from robotstack.core.errors import ConfigError

C = TypeVar("C")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float: PyYAML follows YAML 1.1, where a float needs a dot, so
    `lr: 1e-4` (and the JSON we write ourselves) would otherwise come back as the string '1e-4'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: value {value!r} matches none of {[_type_name(a) for a in args]}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        seq = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict, where: str = "config") -> C:
    """Build dataclass `cls` from a plain dict; unknown keys and bad types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected keys of {cls.__name__}: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists: what YAML/JSON round-trip gives


def apply_overrides(data: dict, overrides: list[str], where: str = "override") -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML scalars/lists) to a nested dict copy."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where}: {item!r} is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"{where}: {key!r}: {part!r} is not a section")
            node = node.setdefault(part, {})
        node[parts[-1]] = _yaml_load(raw)
    return data


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = _yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


# ------------------------------------------------------------------ `base:` include (the only include rule)
# A YAML file may start with `base: <file>` (a path relative to the including file): the base is read first
# (bases may chain), then this file's keys are merged over it: mappings key by key, anything else (lists,
# scalars) replaced whole. So a per-task file holds only what differs from a shared `_base.yaml`.
BASE_KEY = "base"


def _merge(under: dict, over: dict) -> dict:
    out = dict(under)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml_with_base(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The file's mapping with its `base:` chain merged in (cycles and non-string bases are errors)."""
    path = Path(path)
    data = _read_yaml(path)
    if BASE_KEY not in data:
        return data
    ref = data.pop(BASE_KEY)
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{path}: {BASE_KEY}: expected a YAML file path relative to {path.parent}, got {ref!r}")
    base_path = (path.parent / ref).resolve()
    if base_path in _chain or base_path == path.resolve():
        raise ConfigError(f"{path}: {BASE_KEY}: {ref} includes itself (chain {[str(p) for p in _chain]})")
    return _merge(read_yaml_with_base(base_path, (*_chain, path.resolve())), data)
# ------------------------------------------------------------------------------------------------------


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] = ()) -> C:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if BASE_KEY in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError(f"{cls.__name__} has a field {BASE_KEY!r}, which YAML files reserve for includes")
        data = read_yaml_with_base(path)
    base = to_dict(from_dict(cls, data, where=str(path or cls.__name__)))
    return from_dict(cls, apply_overrides(base, list(overrides)), where=f"{path or cls.__name__} + overrides")


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
