"""Camera observations: shape, dtype, and that the images see the arm move."""

import numpy as np

from robotstack.core import keys


def test_camera_obs_shape_dtype_and_change_when_arm_moves(env_factory):
    env = env_factory("push", cameras=("front", "wrist"), image_size=96)
    obs, _ = env.reset(seed=0)
    for cam in ("front", "wrist"):
        img = obs[keys.image_key(cam)]
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert img.std() > 5  # not a blank frame
        assert env.observation_space[keys.image_key(cam)].contains(img)
    before = {c: obs[keys.image_key(c)].astype(int) for c in ("front", "wrist")}
    for _ in range(6):
        obs = env.step(np.array([0.0, 1.0, -1.0, 0.0, -1.0], np.float32))[0]
    for cam in ("front", "wrist"):
        assert np.abs(obs[keys.image_key(cam)].astype(int) - before[cam]).mean() > 1.0, cam


def test_render_returns_rgb_array(env_factory):
    env = env_factory("reach")
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.shape[:2] == env.unwrapped.render_size
