"""Explicit policy registry: name -> (config class, model class). No string class paths, no import magic.

Every entry's config class provides `to_dict()`, `from_dict(dict)` and `example()`; the model class takes the
config as its only constructor argument (checked by tests/policies/test_policy_registry.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import nn

from robotstack.core.errors import ConfigError, UnknownTaskError

from policies.bc.config import MLPBCConfig
from policies.bc.model import MLPBCPolicy
from policies.consistency.config import ConsistencyPolicyConfig
from policies.consistency.model import ConsistencyPolicy
from policies.diffusion.config import DiffusionPolicyConfig
from policies.diffusion.model import DiffusionPolicy


class PolicyEntry(NamedTuple):
    config_cls: type
    model_cls: type[nn.Module]


POLICIES: dict[str, PolicyEntry] = {
    "diffusion": PolicyEntry(DiffusionPolicyConfig, DiffusionPolicy),
    "consistency": PolicyEntry(ConsistencyPolicyConfig, ConsistencyPolicy),  # distilled student (train/distill)
    "mlp_bc": PolicyEntry(MLPBCConfig, MLPBCPolicy),  # regression BC baseline (train il with policy.kind=mlp_bc)
}


class UnknownPolicyError(UnknownTaskError):
    """A policy name is not in POLICIES."""


def get_entry(name: str) -> PolicyEntry:
    if name not in POLICIES:
        raise UnknownPolicyError(f"unknown policy {name!r}; registered policies: {sorted(POLICIES)}")
    return POLICIES[name]


def build_policy(name: str, config: Any) -> nn.Module:
    """config: an instance of the entry's config class or a plain dict (validated by from_dict)."""
    entry = get_entry(name)
    if isinstance(config, dict):
        config = entry.config_cls.from_dict(config)
    if not isinstance(config, entry.config_cls):
        raise ConfigError(f"policy {name!r} needs a {entry.config_cls.__name__} or dict, got {type(config).__name__}")
    return entry.model_cls(config)


def name_of(model: nn.Module) -> str:
    for name, entry in POLICIES.items():
        if type(model) is entry.model_cls:
            return name
    raise UnknownPolicyError(f"{type(model).__name__} is not a registered policy class")
