import numpy as np
import torch
from policy_testing import fit_random_stats, random_obs

from policies.checkpoint import load_checkpoint, save_checkpoint
from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig, EncoderConfig
from policies.encoders import RgbEncoder, SpatialSoftmax, gaussian_kl


def _image_cfg(**enc):
    return DiffusionPolicyConfig(
        obs_shapes={"image_front": (24, 24, 3), "image_wrist": (24, 24, 3), "robot_eef_pos": (3,)},
        action_dim=2, n_obs_steps=2, horizon=4, n_action_steps=2,
        encoder=EncoderConfig(rgb_channels=(8, 8), rgb_strides=(2, 1), rgb_num_keypoints=4, rgb_feature_dim=16, rgb_groups=4,
                              state_hidden=(32,), state_feature_dim=8, recon_hidden=(32,), **enc))


def test_spatial_softmax_finds_the_peak():
    ss = SpatialSoftmax(1, 1)
    with torch.no_grad():
        ss.keypoints.weight.fill_(1.0)
        ss.keypoints.bias.zero_()
        ss.log_temperature.fill_(-5.0)  # sharp
    feat = torch.zeros(1, 1, 5, 9)
    feat[0, 0, 4, 0] = 1.0  # bottom-left
    np.testing.assert_allclose(ss(feat).detach().numpy(), [[-1.0, 1.0]], atol=1e-3)


def test_rgb_encoder_uint8_and_crop():
    enc = RgbEncoder(channels=(8,), num_keypoints=4, out_dim=5, groups=4, crop=(20, 20))
    img = torch.randint(0, 256, (6, 24, 24, 3), dtype=torch.uint8)
    assert enc.train()(img).shape == (6, 5)
    out1, out2 = enc.eval()(img), enc(img)
    torch.testing.assert_close(out1, out2)  # centre crop in eval is deterministic


def test_two_cameras_history_vib_recon_loss_and_checkpoint(tmp_path):
    cfg = _image_cfg(vib=True, recon=True, share_rgb_encoder=True)
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg)
    fit_random_stats(policy)
    # features concatenated over 2 cameras x (16) + state 8 = 40 per step, x To=2
    assert policy.obs_encoder.out_dim == 2 * (2 * 16 + 8)
    obs = random_obs(cfg, 3)
    loss, metrics = policy.compute_loss({"obs": obs, "action": torch.rand(3, 4, 2)})
    assert {"loss_eps", "loss_kl", "loss_recon", "loss"} <= set(metrics)
    loss.backward()
    assert policy.obs_encoder.recon.net[0].weight.grad is not None
    # stochastic in train mode, deterministic in eval / on request
    e1, e2 = policy.encode_obs(obs).cond, policy.encode_obs(obs).cond
    assert not torch.allclose(e1, e2)
    d1, d2 = policy.encode_obs(obs, deterministic=True).cond, policy.eval().encode_obs(obs).cond
    torch.testing.assert_close(d1, d2)
    save_checkpoint(tmp_path, policy)  # the shared CNN must not alias tensors in the state dict
    torch.testing.assert_close(load_checkpoint(tmp_path).encode_obs(obs).cond, d1)


def test_gaussian_kl_matches_torch():
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(4, 6), torch.ones(4, 6))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(-1))


def test_identity_state_encoder():
    cfg = DiffusionPolicyConfig(obs_shapes={"robot_eef_pos": (3,), "goal": (2,)}, action_dim=2,
                                encoder=EncoderConfig(state_encoder="identity"))
    policy = DiffusionPolicy(cfg)
    assert policy.obs_encoder.out_dim == 2 * 5
