import dataclasses

import pytest
from policy_testing import tiny_policy  # noqa: F401  (pins torch threads)

from robotstack.core.errors import ConfigError

from policies.diffusion import DiffusionPolicyConfig
from policies.registry import POLICIES, UnknownPolicyError, build_policy, name_of


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_entry_builds_and_round_trips(name):
    entry = POLICIES[name]
    assert dataclasses.is_dataclass(entry.config_cls)
    cfg = entry.config_cls.example()
    assert entry.config_cls.from_dict(cfg.to_dict()) == cfg
    model = build_policy(name, cfg.to_dict())
    assert isinstance(model, entry.model_cls)
    assert name_of(model) == name


def test_registry_contents():
    assert set(POLICIES) == {"diffusion", "consistency", "mlp_bc"}


def test_unknown_policy_names_the_choices():
    with pytest.raises(UnknownPolicyError, match="registered policies: \\['consistency', 'diffusion', 'mlp_bc'\\]"):
        build_policy("difusion", {})


def test_unknown_config_key_names_the_key():
    d = DiffusionPolicyConfig.example().to_dict()
    d["denoiser"]["mlp_widht"] = 3
    with pytest.raises(ConfigError, match="denoiser.mlp_widht"):
        DiffusionPolicyConfig.from_dict(d)
    d = DiffusionPolicyConfig.example().to_dict() | {"horizn": 4}
    with pytest.raises(ConfigError, match="'horizn'"):
        DiffusionPolicyConfig.from_dict(d)


def test_wrong_type_and_bad_values_fail_with_key():
    d = DiffusionPolicyConfig.example().to_dict()
    d["scheduler"]["clip_sample"] = "yes"
    with pytest.raises(ConfigError, match="scheduler.clip_sample"):
        DiffusionPolicyConfig.from_dict(d)
    with pytest.raises(ConfigError, match="action_start"):
        DiffusionPolicyConfig.example().replace(horizon=1, n_action_steps=1)
    with pytest.raises(ConfigError, match="divisible by 4"):
        DiffusionPolicyConfig.example().replace(horizon=6, denoiser=dataclasses.replace(
            DiffusionPolicyConfig.example().denoiser, kind="unet"))
    with pytest.raises(ConfigError, match="obs_shapes.image_front"):
        DiffusionPolicyConfig(obs_shapes={"image_front": (8, 8)}, action_dim=2)
    with pytest.raises(ConfigError, match="missing required key 'action_dim'"):
        DiffusionPolicyConfig.from_dict({"obs_shapes": {"a": [1]}})


def test_single_step_mode_runs():
    import torch
    from policy_testing import fit_random_stats, random_obs

    cfg = DiffusionPolicyConfig.example().replace(horizon=1, n_action_steps=1, action_start=0)
    policy = build_policy("diffusion", cfg)
    fit_random_stats(policy)
    assert policy.executed_slice == slice(0, 1)
    obs = random_obs(cfg, 2)
    loss, _ = policy.compute_loss({"obs": obs, "action": torch.zeros(2, 1, 4)})
    assert torch.isfinite(loss)
    tr = policy.sample_with_trajectory(obs, steps=4)
    assert tr.action.shape == (2, 1, 4) and tr.log_probs.shape == (2, 4)


def test_bad_batch_shapes_name_the_key():
    import torch
    from policy_testing import random_obs, tiny_policy as make

    policy = make()
    obs = random_obs(policy.config, 2)
    with pytest.raises(ValueError, match=r"batch\['action'\] has shape \(2, 7, 4\), expected \(2, 8, 4\)"):
        policy.compute_loss({"obs": obs, "action": torch.zeros(2, 7, 4)})
    obs["object_state"] = obs["object_state"][:, :1]
    with pytest.raises(ValueError, match=r"obs\['object_state'\] has shape \(2, 1, 7\), expected \(B, 2, 7\)"):
        policy.predict_action(obs)
    with pytest.raises(KeyError, match="missing key 'robot_eef_pos'"):
        policy.predict_action({"object_state": obs["object_state"]})
