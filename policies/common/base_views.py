"""Read-only views of a wrapped DiffusionPolicyConfig, for policy configs that hold one as `base`.

The MLP BC baseline and the consistency student keep the teacher-shaped DiffusionPolicyConfig as `base`; these
properties let rollout, evaluation and export code written for a DiffusionPolicy read the same names on them.
"""

from __future__ import annotations


class BaseConfigViews:
    """Mixin: `obs_shapes`, `action_dim`, To/T/Ta, `action_start`, `scheduler` and the key lists of `self.base`."""

    obs_shapes = property(lambda self: self.base.obs_shapes)
    action_dim = property(lambda self: self.base.action_dim)
    n_obs_steps = property(lambda self: self.base.n_obs_steps)
    horizon = property(lambda self: self.base.horizon)
    n_action_steps = property(lambda self: self.base.n_action_steps)
    action_start = property(lambda self: self.base.action_start)
    scheduler = property(lambda self: self.base.scheduler)  # rollout reads default_sampler from it
    low_dim_keys = property(lambda self: self.base.low_dim_keys)
    image_keys = property(lambda self: self.base.image_keys)
