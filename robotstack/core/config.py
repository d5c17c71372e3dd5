"""Typed configs: the one strict dataclass reader, YAML loading and dotted command-line overrides.

Every config (stage configs, policy configs and their checkpoint config.json, ServoConfig, ObjectSpec) is read
here, so unknown keys and wrongly typed values fail at load time with the source, the dotted key, the value and
the expected type, not later when something is instantiated (design.md §4, §7).

    from_dict(cls, data, where="", *, path="")  dict -> dataclass; `where` names the file, `path` the key prefix
    to_dict(cfg)                                 dataclass -> JSON-ready dict (tuples/arrays -> lists)
    load_config(cls, path, overrides)            YAML file (or None) + ["a.b=value", ...] -> dataclass
    read_yaml(path) / apply_overrides(data, overrides) / save_config(cfg, path) / type_name(annotation)
    ConfigIO                                     mixin: cfg.to_dict(), Cls.from_dict(d, where, path), cfg.replace(...)

Field annotations read: bool, int, float (ints accepted; bools never count as numbers), str, Path, None,
X | None and other unions (first arm that takes the value wins), Literal[...], list[X], tuple[X, ...],
tuple[X, Y], dict[K, V], nested dataclasses, np.ndarray (numbers -> float64) and Any. Other annotations are a
programming error (TypeError). Domain checks ("shape must be box/sphere/cylinder") stay in each class's
__post_init__; a ConfigError raised there is re-raised with the source prepended.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
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


def type_name(tp: Any) -> str:
    """Readable annotation: `tuple[int, ...] | None`, `Literal['a', 'b']`, `dict[str, float]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if args else origin.__name__
    return getattr(tp, "__name__", None) or str(tp)


def _join(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))


def _wrong(where: str, path: str, value: Any, tp: Any, detail: str = "") -> ConfigError:
    key = f"key {path!r}" if path else "value"
    return ConfigError(f"{where}: {key} = {value!r}: expected {type_name(tp)}{detail}")


def _is_int(value: Any) -> bool:  # bools are ints to Python; never to a config
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _coerce(value: Any, tp: Any, where: str, path: str) -> Any:
    """`value` checked (and normalized: int -> float, list -> tuple, list -> ndarray) against annotation `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is not None:
            raise _wrong(where, path, value, tp)
        return None
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # Optional[X]: X's own message is the most precise one
            return _coerce(value, arms[0], where, path)
        for arm in arms:  # first arm that takes the value wins (write `int | float`, not `float | int`)
            try:
                return _coerce(value, arm, where, path)
            except ConfigError:
                continue
        raise _wrong(where, path, value, tp)
    if origin is typing.Literal:
        for choice in args:  # compare types too: True must not match Literal[1]
            if type(value) is type(choice) and value == choice:
                return value
        raise _wrong(where, path, value, tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _wrong(where, path, value, tp, " (a mapping)")
        return from_dict(tp, value, where, path=path)
    if tp in (list, tuple) or origin in (list, tuple):
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise _wrong(where, path, value, tp, " (a list)")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _wrong(where, path, value, tp, f" ({len(args)} items, got {len(value)})")
            return tuple(_coerce(v, a, where, _join(path, i)) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, where, _join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise _wrong(where, path, value, tp, " (a mapping)")
        kt, vt = args if len(args) == 2 else (Any, Any)
        return {_coerce(k, kt, where, path): _coerce(v, vt, where, _join(path, k)) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise _wrong(where, path, value, tp)
        return bool(value)
    if tp is int:
        if not _is_int(value):
            raise _wrong(where, path, value, tp)
        return int(value)
    if tp is float:  # ints are fine where a float is expected (`lr: 1` in YAML)
        if not (_is_int(value) or isinstance(value, (float, np.floating))):
            raise _wrong(where, path, value, tp)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _wrong(where, path, value, tp)
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise _wrong(where, path, value, tp)
        return Path(value)
    if tp is np.ndarray:  # a (nested) list of numbers -> float64 array; shape checks belong to __post_init__
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise _wrong(where, path, value, tp, " (numbers)") from None
        if isinstance(value, (str, bytes)) or np.asarray(value).dtype.kind not in "iuf":
            raise _wrong(where, path, value, tp, " (numbers)")
        return arr
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise _wrong(where, path, value, tp)
        return value
    raise TypeError(f"robotstack.core.config cannot read fields annotated {tp!r} ({where}: {path})")


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def from_dict(cls: type[C], data: Mapping[str, Any], where: str = "", *, path: str = "") -> C:
    """Build dataclass `cls` from a plain mapping, strictly.

    `where` names the source in messages (a file, "servo config", ...; default: the class name) and `path` the
    dotted position of `data` inside it (e.g. "config" for a checkpoint's config.json). Raises ConfigError on an
    unknown key (naming the dotted key and the allowed keys), a missing required key, a value of the wrong type
    (naming key, value and expected type), or a failed domain check in the class's __post_init__.
    """
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise _wrong(where, path, data, cls, " (a mapping)")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        keys = ", ".join(repr(_join(path, k)) for k in unknown)
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {keys}; allowed keys"
                          f"{f' in {path!r}' if path else ''} ({cls.__name__}): {', '.join(sorted(fields))}")
    missing = [n for n, f in fields.items() if _required(f) and n not in data]
    if missing:
        keys = ", ".join(repr(_join(path, k)) for k in missing)
        raise ConfigError(f"{where}: missing required key{'s' if len(missing) > 1 else ''} {keys} ({cls.__name__})")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], where, _join(path, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a domain check in __post_init__: add the source unless it names it already
        if str(exc).startswith(f"{where}:"):
            raise
        raise ConfigError(f"{where}: {f'in {path!r}: ' if path else ''}{exc}") from exc


class ConfigIO:
    """The strict reader as methods of a config dataclass (the policy configs, which checkpoints store and read)."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "", path: str = "") -> typing.Self:
        """Strict read (from_dict above); `where`/`path` name the file and key in errors."""
        return from_dict(cls, data, where, path=path)

    def replace(self, **changes: Any) -> typing.Self:
        return dataclasses.replace(self, **changes)


def to_dict(cfg: Any) -> Any:
    """Dataclass -> JSON-ready plain data (tuples and arrays become lists); from_dict(cls, to_dict(c)) == c."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, np.ndarray):
        return cfg.tolist()
    if isinstance(cfg, np.generic):
        return cfg.item()
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


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


def read_yaml(path: str | Path) -> dict:
    """A YAML (or JSON) file whose top level is a mapping, read with the `1e-4`-is-a-float loader."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = _yaml_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
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
    data = read_yaml(path)
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
    """`cls` from a YAML file (None: defaults only; its `base:` chain merged in) plus `a.b=value` overrides,
    validated once on the result (so a required key may come from an override)."""
    data: dict = {}
    if path is not None:
        if BASE_KEY in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError(f"{cls.__name__} has a field {BASE_KEY!r}, which YAML files reserve for includes")
        data = read_yaml_with_base(path)
    where = str(path) if path is not None else cls.__name__
    if overrides:
        data, where = apply_overrides(data, list(overrides)), f"{where} + overrides {list(overrides)}"
    return from_dict(cls, data, where)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
