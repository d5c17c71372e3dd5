import json

import pytest
import torch
from policy_testing import random_obs, tiny_policy

from robotstack.core.errors import ConfigError

from policies.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from policies.common.ema import EMA


def test_round_trip_gives_identical_outputs(tmp_path):
    policy = tiny_policy().eval()
    ema = EMA(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    ema.update(policy)
    ema.update(policy)
    save_checkpoint(tmp_path / "ck", policy, ema_model=ema.averaged, extra={"step": 7})
    assert sorted(f.name for f in (tmp_path / "ck").iterdir()) == ["config.json", "ema.safetensors",
                                                                   "model.safetensors"]
    obs = random_obs(policy.config, 3)
    loaded = load_checkpoint(tmp_path / "ck")
    for sampler in ("ddim", "ddpm"):
        a = policy.predict_action(obs, sampler=sampler, steps=5, generator=torch.Generator().manual_seed(1))
        b = loaded.predict_action(obs, sampler=sampler, steps=5, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a.chunk, b.chunk, rtol=0, atol=0)
    ema_loaded = load_checkpoint(tmp_path / "ck", weights="ema")
    for k, v in ema.averaged.state_dict().items():
        torch.testing.assert_close(ema_loaded.state_dict()[k], v, rtol=0, atol=0)
    name, cfg, extra = read_config(tmp_path / "ck")
    assert name == "diffusion" and cfg == policy.config and extra == {"step": 7}


def test_mismatched_tensors_are_named(tmp_path):
    save_checkpoint(tmp_path, tiny_policy())
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["config"]["denoiser"]["mlp_width"] = 48
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"shape mismatches.*denoiser\.inp\.weight"):
        load_checkpoint(tmp_path)
    doc["config"]["denoiser"]["mlp_width"] = 64
    doc["config"]["denoiser"]["mlp_depth"] = 3
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"missing tensors \['denoiser\.blocks\.2"):
        load_checkpoint(tmp_path)


def test_bad_config_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, tiny_policy())
    with pytest.raises(CheckpointError, match="ema.safetensors: missing"):
        load_checkpoint(tmp_path, weights="ema")
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["config"]["bogus"] = 1
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="unknown key 'config.bogus'"):
        load_checkpoint(tmp_path)


def test_ema_decay_and_buffers():
    policy = tiny_policy()
    ema = EMA(policy)
    assert ema.decay(0) == 0.0 and ema.decay(1) == 0.0
    assert abs(ema.decay(11) - (1 - 11 ** -0.75)) < 1e-12 and ema.decay(10 ** 9) == 0.9999
    before = {k: v.clone() for k, v in ema.averaged.state_dict().items()}
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
        policy.normalizer.stats["action"].scale.mul_(2.0)
    ema.update(policy)  # decay 0: copies
    ema.update(policy)  # decay 0 again at step 1
    sd = ema.averaged.state_dict()
    torch.testing.assert_close(sd["normalizer.stats.action.scale"], 2 * before["normalizer.stats.action.scale"])
    name = "denoiser.inp.weight"
    torch.testing.assert_close(sd[name], before[name] + 1.0)


def test_one_loader_for_every_registered_policy_and_auto_weights(tmp_path):
    """Teacher and consistency student go through the same save/load; "auto" picks EMA only when present."""
    from policies.checkpoint import policy_name, read_extra, resolve_weights
    from policies.consistency.config import ConsistencyPolicyConfig
    from policies.registry import build_policy

    teacher = tiny_policy().eval()
    student = build_policy("consistency", ConsistencyPolicyConfig(base=teacher.config)).eval()
    save_checkpoint(tmp_path / "t", teacher, ema_model=teacher, extra={"task": "reach"})
    save_checkpoint(tmp_path / "s", student, extra={"task": "reach", "stage": "distill"})
    assert (policy_name(tmp_path / "t"), policy_name(tmp_path / "s")) == ("diffusion", "consistency")
    assert resolve_weights(tmp_path / "t", "auto") == "ema" and resolve_weights(tmp_path / "s", "auto") == "model"
    assert read_extra(tmp_path / "s") == {"task": "reach", "stage": "distill"}
    back = load_checkpoint(tmp_path / "s", weights="auto")
    assert type(back) is type(student) and back.config == student.config
    for k, v in student.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="ema.safetensors: missing"):
        load_checkpoint(tmp_path / "s", weights="ema")
    with pytest.raises(ValueError, match="weights must be one of"):
        load_checkpoint(tmp_path / "s", weights="best")
