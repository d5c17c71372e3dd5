"""Student checkpoint dirs, sibling of policies/checkpoint.py, in the same format (no pickle):

    model.safetensors + config.json = {"format": "robotstack.policy", "version": 1, "policy": "consistency",
                                       "config": <ConsistencyPolicyConfig dict>, "extra": {...}}

Why a sibling loader: the shared registry (policies/registry.py) and its test pin the registered names, so the
student is not registered there yet; `load_any_checkpoint` opens both kinds by the "policy" field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from policies.checkpoint import (CONFIG_FILE, FORMAT, MODEL_FILE, VERSION, CheckpointError, load_checkpoint,
                                 read_checkpoint_doc)
from policies.consistency.config import ConsistencyPolicyConfig
from policies.consistency.model import ConsistencyPolicy

NAME = "consistency"


def save_student(path: str | Path, model: ConsistencyPolicy, extra: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": str(VERSION), "policy": NAME, "kind": "model"}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path / MODEL_FILE), metadata=meta)
    doc = {"format": FORMAT, "version": VERSION, "policy": NAME, "config": model.config.to_dict(),
           "extra": extra or {}}
    (path / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return path


def policy_name(path: str | Path) -> str:
    cfg_file, doc = read_checkpoint_doc(path)
    if "policy" not in doc:
        raise CheckpointError(f"{cfg_file}: missing key 'policy'")
    return str(doc["policy"])


def load_student(path: str | Path) -> ConsistencyPolicy:
    path = Path(path)
    if policy_name(path) != NAME:
        raise CheckpointError(f"{path / CONFIG_FILE}: policy {policy_name(path)!r} is not {NAME!r}")
    doc = json.loads((path / CONFIG_FILE).read_text())
    config = ConsistencyPolicyConfig.from_dict(doc["config"], str(path / CONFIG_FILE), path="config")
    model = ConsistencyPolicy(config)
    if not (path / MODEL_FILE).is_file():
        raise CheckpointError(f"{path / MODEL_FILE}: missing")
    state = load_file(str(path / MODEL_FILE))
    expected = model.state_dict()
    bad = sorted(set(expected) ^ set(state)) + [k for k in expected if k in state
                                                  and tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise CheckpointError(f"{path / MODEL_FILE} does not match {path / CONFIG_FILE}: tensors {bad[:8]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def read_extra(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / CONFIG_FILE).read_text()).get("extra", {})


def load_any_checkpoint(path: str | Path, weights: str = "ema") -> nn.Module:
    """DiffusionPolicy (EMA weights when present and asked for) or ConsistencyPolicy, by config.json's policy."""
    path = Path(path)
    if policy_name(path) == NAME:
        return load_student(path)
    if weights == "ema" and not (path / "ema.safetensors").is_file():
        weights = "model"
    return load_checkpoint(path, weights=weights)
