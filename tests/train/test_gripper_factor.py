"""`policy.gripper_factor` (issue 10 item 6): IL training in RTI's scale mode, so an exported or torch RTI
resolves "auto" to scale and can switch the gripper (tests/distill/test_rti_gripper_switch.py shows why)."""

from __future__ import annotations

import pytest
import torch
from store_testing import TINY_IL as TINY
from store_testing import train_tiny_il

from policies.checkpoint import load_checkpoint
from policies.diffusion.rti import RTIConfig, RTISampler, trained_gripper_factor
from robotstack.core.errors import ConfigError

KEYS = ["robot_eef_pos", "robot_gripper", "goal"]


def test_il_trained_with_gripper_factor_is_an_rti_scale_policy(tiny_store, tmp_path):
    doc = {**TINY, "policy": {**TINY["policy"], "gripper_factor": 10.0}}
    policy = load_checkpoint(train_tiny_il(doc, tiny_store, KEYS, tmp_path / "run"))
    grip = policy.config.action_dim - 1
    env_action = torch.zeros(2, policy.config.action_dim)
    env_action[:, grip] = torch.tensor([1.0, -1.0])
    assert policy.normalizer.normalize("action", env_action)[:, grip].tolist() == pytest.approx([0.1, -0.1])
    assert trained_gripper_factor(policy, [grip]) == 10.0
    rti = RTISampler(policy, RTIConfig(gripper_mode="auto"))
    assert (rti.config.gripper_mode, rti.config.factor) == ("scale", 10.0)
    # the other action dims keep the stats a plain (factor 1) run fits on the same data
    plain = load_checkpoint(train_tiny_il(TINY, tiny_store, KEYS, tmp_path / "plain"))
    assert trained_gripper_factor(plain, [grip]) is None
    scaled, ref = policy.normalizer.stats["action"], plain.normalizer.stats["action"]
    assert torch.equal(scaled.scale[:grip], ref.scale[:grip]) and torch.equal(scaled.offset[:grip], ref.offset[:grip])
    assert scaled.scale[grip] != ref.scale[grip]


def test_gripper_factor_below_one_is_refused():
    from policies.diffusion.config import DiffusionPolicyConfig

    with pytest.raises(ConfigError, match="gripper_factor"):
        DiffusionPolicyConfig.example().replace(gripper_factor=0.5)


def test_mlp_bc_refuses_a_gripper_factor():
    """The BC baseline would silently ignore it (it has no RTI sampler): refused, naming the key."""
    from policies.bc.config import MLPBCConfig
    from policies.diffusion.config import DiffusionPolicyConfig

    with pytest.raises(ConfigError, match="gripper_factor"):
        MLPBCConfig(base=DiffusionPolicyConfig.example().replace(gripper_factor=10.0))
