"""Checkpoint dir: `model.safetensors` + `config.json` (+ `ema.safetensors`). No pickle anywhere.

The one save/load for every registered policy (diffusion teachers and consistency students alike): the
`policy` field of config.json picks the registry entry, so eval, export and distill open any checkpoint the
same way. Weights: "model", "ema" (the file must exist) or "auto" (EMA when the dir has it, else the model).

config.json = {"format": "robotstack.policy", "version": 1, "policy": <registry name>,
               "config": <resolved config dict>, "extra": {...}}.
The normalizer stats are buffers of the model, so they are inside model.safetensors (and ema.safetensors).
Loading rebuilds the model from the validated config and refuses missing, unexpected or mis-shaped tensors,
naming them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from robotstack.core.errors import ConfigError, RobotstackError
from robotstack.core.jsondoc import check_format, read_object

from policies.registry import build_policy, get_entry, name_of

MODEL_FILE, EMA_FILE, CONFIG_FILE = "model.safetensors", "ema.safetensors", "config.json"
FORMAT, VERSION = "robotstack.policy", 1


class CheckpointError(RobotstackError):
    """A checkpoint dir is missing files, has an unknown format, or its tensors do not match its config."""


def _tensors(model: nn.Module) -> dict:
    # contiguous clones: safetensors rejects views and aliased storage
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _str(meta: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in meta.items()}  # safetensors header metadata is str -> str


def save_checkpoint(path: str | Path, model: nn.Module, ema_model: nn.Module | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint dir (created if needed; files are overwritten). Returns the dir."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    name = name_of(model)
    meta = {"format": FORMAT, "version": VERSION, "policy": name}
    save_file(_tensors(model), str(path / MODEL_FILE), metadata=_str(meta | {"kind": "model"}))
    if ema_model is not None:
        save_file(_tensors(ema_model), str(path / EMA_FILE), metadata=_str(meta | {"kind": "ema"}))
    doc = meta | {"config": model.config.to_dict(), "extra": extra or {}}
    (path / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def read_checkpoint_doc(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """-> (config.json path, its parsed document), with format/version checked; shared by every loader."""
    cfg_file = Path(path) / CONFIG_FILE
    doc = read_object(cfg_file, CheckpointError, f"a checkpoint dir needs {CONFIG_FILE} and {MODEL_FILE}")
    check_format(doc, cfg_file, FORMAT, VERSION, CheckpointError)
    return cfg_file, doc


def read_config(path: str | Path) -> tuple[str, Any, dict[str, Any]]:
    """-> (policy name, validated config object, extra)."""
    path = Path(path)
    cfg_file, doc = read_checkpoint_doc(path)
    for key in ("policy", "config"):
        if key not in doc:
            raise CheckpointError(f"{cfg_file}: missing key {key!r}")
    entry = get_entry(doc["policy"])
    config = entry.config_cls.from_dict(doc["config"], str(cfg_file), path="config")
    return doc["policy"], config, doc.get("extra", {})


def read_extra(path: str | Path) -> dict[str, Any]:
    """The checkpoint's `extra` dict (task, action_scale, stage, ...), config validated on the way."""
    return read_config(path)[2]


def policy_name(path: str | Path) -> str:
    cfg_file, doc = read_checkpoint_doc(path)
    if "policy" not in doc:
        raise CheckpointError(f"{cfg_file}: missing key 'policy'")
    return str(doc["policy"])


WEIGHTS = ("model", "ema", "auto")


def resolve_weights(path: str | Path, weights: str) -> str:
    """"auto" -> "ema" when the dir has an EMA file, else "model"; "model" / "ema" pass through."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if weights == "auto":
        return "ema" if (Path(path) / EMA_FILE).is_file() else "model"
    return weights


def load_checkpoint(path: str | Path, weights: str = "model") -> nn.Module:
    """Rebuild the policy from config.json and load `weights` ("model", "ema" or "auto"); returns it in eval
    mode. Works for every registered policy."""
    path = Path(path)
    name, config, _ = read_config(path)
    weights = resolve_weights(path, weights)
    fname = MODEL_FILE if weights == "model" else EMA_FILE
    if not (path / fname).is_file():
        raise CheckpointError(f"{path / fname}: missing (asked for {weights!r} weights)")
    model = build_policy(name, config)
    state = load_file(str(path / fname))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if mismatched:
            parts.append(f"shape mismatches {mismatched[:8]}")
        raise CheckpointError(f"{path / fname} does not match {path / CONFIG_FILE} ({name!r}): " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model.eval()


def checkpoint_action_mode(extra: dict[str, Any]) -> str:
    """The end-effector action mode a checkpoint's policy emits: extra.task_spec.ee_action (absent: delta)."""
    ee_dict = (extra.get("task_spec") or {}).get("ee_action")
    return str(ee_dict.get("action_mode", "delta")) if isinstance(ee_dict, dict) else "delta"


def require_delta_actions(extra: dict[str, Any], where: str) -> None:
    """The RL and critic stages roll policies out in delta-action envs only (absolute end-effector targets are an
    IL + export + runtime option so far): refuse an absolute-mode checkpoint by name instead of driving the wrong
    env."""
    mode = checkpoint_action_mode(extra)
    if mode != "delta":
        raise ConfigError(f"{where}: the checkpoint's policy emits action_mode {mode!r}; this stage supports "
                          "'delta' actions only (train the policy with action_mode: delta)")
