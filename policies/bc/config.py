"""MLPBCConfig: a regression BC baseline that shares everything but the objective with a diffusion policy.

`base` is the DiffusionPolicyConfig the same `robotstack train il` config would build (obs keys and shapes,
To/T/Ta, action_start, observation encoder, obs/action normalization). The MLP head has the width and depth of
`base.denoiser` (mlp_width x mlp_depth), so BC and diffusion differ in the objective (one MSE regression of the
chunk vs. denoising), not in what they see or how big they are. The scheduler fields of `base` are unused.
"""

from __future__ import annotations

from dataclasses import dataclass

from robotstack.core import config as config_reader
from robotstack.core.errors import ConfigError

from policies.common.base_views import BaseConfigViews
from policies.diffusion.config import DiffusionPolicyConfig


@dataclass
class MLPBCConfig(BaseConfigViews, config_reader.ConfigIO):
    base: DiffusionPolicyConfig

    def __post_init__(self) -> None:
        e = self.base.encoder
        if e.vib or e.recon:  # the regularizers belong to RL-100's diffusion stages, not to this baseline
            raise ConfigError(f"config policy.encoder: vib={e.vib} recon={e.recon}; the mlp_bc policy supports "
                              "neither (set both to false)")
        if self.base.gripper_factor != 1.0:  # RTI's scale mode: a diffusion-sampler setting, meaningless here
            raise ConfigError(f"config policy.gripper_factor: {self.base.gripper_factor}; the mlp_bc policy trains "
                              "with plain action normalization (set it to 1)")

    # the base config's views (obs spec, To/T/Ta, scheduler: BC ignores it) come from BaseConfigViews
    width = property(lambda self: self.base.denoiser.mlp_width)
    depth = property(lambda self: self.base.denoiser.mlp_depth)

    @classmethod
    def example(cls) -> MLPBCConfig:
        return cls(base=DiffusionPolicyConfig.example())
