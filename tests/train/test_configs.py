"""Stage configs: every configs/il/<task>.yaml (a `base: _base.yaml` file plus what differs) loads to exactly
the config it resolved to when each was a stand-alone file (tests/train/data/il_configs_resolved.json, taken
before the refactor; regenerate only on a deliberate config change). Likewise configs/distill/*.yaml
(distill_configs_resolved.json, taken before the shared `train:` fields moved to train/common.py LoopConfig)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robotstack.core.config import load_config, to_dict
from robotstack.core.errors import ConfigError
from robotstack.train.common import LoopConfig
from robotstack.train.distill import DistillConfig
from robotstack.train.distill import TrainConfig as DistillTrainConfig
from robotstack.train.il import ILConfig
from robotstack.train.il import TrainConfig as ILTrainConfig

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = json.loads((Path(__file__).parent / "data" / "il_configs_resolved.json").read_text())
TASK_FILES = sorted(p for p in (ROOT / "configs" / "il").glob("*.yaml") if not p.name.startswith("_"))
DISTILL_SNAPSHOT = json.loads((Path(__file__).parent / "data" / "distill_configs_resolved.json").read_text())
DISTILL_FILES = sorted((ROOT / "configs" / "distill").glob("*.yaml"))


def il_view(cfg: ILConfig) -> dict:
    """The resolved dict in the snapshot's shape (the policy section minus what is read from the store)."""
    doc = to_dict(cfg)
    for key in ("obs_shapes", "action_dim"):
        doc["policy"].pop(key, None)
    assert doc.pop("action_mode") == "delta"  # added after the snapshot (issue 10 item 3); delta = as before
    assert doc["data"].pop("episodes") == "all"  # added after the snapshot: every episode, as before
    assert doc["policy"].pop("kind") == "diffusion"  # every shipped config trains the diffusion policy
    assert doc["policy"].pop("gripper_factor") == 1.0  # added after the snapshot (RTI scale mode); 1 = off
    return doc


def test_every_task_file_is_in_the_snapshot():
    assert sorted(p.name for p in TASK_FILES) == sorted(SNAPSHOT)


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.stem)
def test_task_config_resolves_as_before(path):
    assert il_view(load_config(ILConfig, path)) == SNAPSHOT[path.name]
    text = path.read_text()
    assert "base: _base.yaml" in text and "T=16" not in text  # short files, no stale headers
    assert len(text.splitlines()) <= 15


def test_base_include_merges_mappings_and_replaces_lists(tmp_path):
    (tmp_path / "_base.yaml").write_text("task: reach\ndata: {paths: [a.zarr, b.zarr], obs_keys: [goal]}\n"
                                         "train: {steps: 7, lr: 0.5}\n")
    (tmp_path / "mid.yaml").write_text("base: _base.yaml\ntrain: {steps: 9}\n")
    (tmp_path / "top.yaml").write_text("base: mid.yaml\ndata: {paths: [c.zarr]}\n")
    cfg = load_config(ILConfig, tmp_path / "top.yaml", ["train.batch_size=4"])
    assert cfg.data.paths == ["c.zarr"] and cfg.data.obs_keys == ["goal"]
    assert (cfg.train.steps, cfg.train.lr, cfg.train.batch_size) == (9, 0.5, 4)


def test_base_include_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(ILConfig, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_config(ILConfig, tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [x]\n")
    with pytest.raises(ConfigError, match=r"d.yaml: base: expected a YAML file path"):
        load_config(ILConfig, tmp_path / "d.yaml")


def test_policy_sections_are_the_policies_own_configs():
    """IL: DiffusionPolicyConfig's fields and defaults minus the two read from the store (derived, so a new
    policy field is configurable without an edit here). distill: the student's ConsistencyConfig itself."""
    import dataclasses

    from policies.consistency.config import ConsistencyConfig
    from policies.diffusion.config import DiffusionPolicyConfig
    from robotstack.train.distill import DistillConfig
    from robotstack.train.il import DATA_FIELDS, PolicySection

    ours = {f.name: f for f in dataclasses.fields(PolicySection)}
    theirs = {f.name: f for f in dataclasses.fields(DiffusionPolicyConfig) if f.name not in DATA_FIELDS}
    assert list(ours) == [*theirs, "kind"]  # + which registry entry train il builds (diffusion | mlp_bc)
    for name, f in theirs.items():
        assert (ours[name].default, ours[name].default_factory) == (f.default, f.default_factory), name
    assert {f.name: f.type for f in dataclasses.fields(DistillConfig)}["policy"] in (ConsistencyConfig,
                                                                                     "ConsistencyConfig")


def test_distill_configs_resolve_as_before():
    assert sorted(p.name for p in DISTILL_FILES) == sorted(DISTILL_SNAPSHOT)
    for path in DISTILL_FILES:
        assert to_dict(load_config(DistillConfig, path)) == DISTILL_SNAPSHOT[path.name], path.name


def test_stage_train_sections_share_one_loop_config():
    """The loop fields and their checks are LoopConfig's (train/common.py), once; each stage adds its own."""
    import dataclasses

    loop = [f.name for f in dataclasses.fields(LoopConfig)]
    for cls in (ILTrainConfig, DistillTrainConfig):
        assert issubclass(cls, LoopConfig) and [f.name for f in dataclasses.fields(cls)][:len(loop)] == loop
    assert [f.name for f in dataclasses.fields(DistillTrainConfig)] == loop  # distill adds no field
    cases = [  # (stage, overrides, message): the same checks and messages in both stages
        ("train.steps=0", r"in 'train': steps: expected >= 1, got 0"),
        ("train.batch_size=0", r"in 'train': batch_size: expected >= 1, got 0"),
        ("train.keep_checkpoints=-1", r"in 'train': keep_checkpoints: expected >= 0, got -1"),
        ("train.lr_schedule=linear", r"key 'train.lr_schedule' = 'linear': expected one of \['cosine', 'constant'\]"),
        ("train.lr=fast", r"key 'train.lr' = 'fast': expected float"),
    ]
    for override, match in cases:
        with pytest.raises(ConfigError, match=match):
            load_config(DistillConfig, ROOT / "configs/distill/ctm.yaml", [override])
        with pytest.raises(ConfigError, match=match):
            load_config(ILConfig, TASK_FILES[0], [override])
    with pytest.raises(ConfigError, match=r"in 'train': eval_every: expected >= 0, got -1"):  # IL's own field
        load_config(ILConfig, TASK_FILES[0], ["train.eval_every=-1"])
    with pytest.raises(ConfigError, match=r"key 'train.device' = 'gpu': expected one of"):
        load_config(ILConfig, TASK_FILES[0], ["train.device=gpu"])
    t = DistillTrainConfig(steps=10, warmup_steps=2, log_every=4, checkpoint_every=0)
    assert t.lr_at(0) == pytest.approx(t.lr / 2) and t.lr_at(10) == pytest.approx(0.0)
    assert [d for d in range(1, 11) if t.log_due(d)] == [4, 8, 10]
    assert [d for d in range(1, 11) if t.checkpoint_due(d, end=7, interrupted=False)] == [7, 10]
    assert t.checkpoint_due(3, end=7, interrupted=True)
