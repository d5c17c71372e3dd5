"""ConsistencyPolicyConfig: a one-step (or chained few-step) student distilled from a DiffusionPolicy.

`base` is the teacher's DiffusionPolicyConfig (obs spec, To/T/Ta, encoder, denoiser architecture, schedule);
`consistency` holds the student's own settings. Two parameterizations (`method`):
- "rl100" (rl100.md §6): same architecture as the teacher's denoiser, predicting the clean sample directly,
  x0 = clip(F(x_t, t, cond)), evaluated at DDIM grid timesteps (1 step: t = the first DDIM timestep).
- "ctm" (CP-style, rti_consistency.md §2.2): EDM boundary-scaled jump G(x_t, t, s) with the target time s
  embedded and appended to the global condition (its FiLM/input columns zero-initialized on warm start).
How ctm reads its network (`parameterization`, issue 10 item 5; model.py docstring):
- "edm": EDM c_skip/c_out/c_in with time input c_noise = 250 ln(sigma) (CP's student). Warm-started from an
  epsilon-teacher this is an unrelated function at step 0 (the teacher was trained on steps 0..N-1).
- "teacher_eps": the network is read as the teacher reads its epsilon-model (nearest training step, x0 = x -
  sigma eps), so the warm-started student IS the teacher's x0 prediction at step 0. sigma_max must lie inside
  the teacher's range of sigma_t (checked when the student is built).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from robotstack.core import config as config_reader
from robotstack.core.errors import ConfigError

from policies.common.base_views import BaseConfigViews
from policies.diffusion.config import DiffusionPolicyConfig

METHODS = ("rl100", "ctm")
PARAMETERIZATIONS = ("edm", "teacher_eps")
INITS = ("sigma_max", "unit")


@dataclass
class ConsistencyConfig:
    method: str = "ctm"
    default_steps: int = 1  # 1 = one-step; 3 = CP's chained sampling
    parameterization: str = "edm"  # ctm: edm | teacher_eps (see the module docstring)
    # EDM / Karras (ctm)
    sigma_min: float = 0.02
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    rho: float = 7.0
    bins: int = 80
    s_embed_dim: int = 32  # width of the target-time (s) embedding appended to the condition
    init: str = "sigma_max"  # first sample x = z * sigma_max (standard) | "unit": x = z (CP's low-variance start)
    gripper_dims: tuple[int, ...] = ()  # executed dims thresholded to {-1, +1} (> 0 -> +1); () = none

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"config consistency.method: {self.method!r} not in {METHODS}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ConfigError(f"config consistency.parameterization: {self.parameterization!r} not in "
                              f"{PARAMETERIZATIONS}")
        if self.parameterization == "teacher_eps" and self.method != "ctm":
            raise ConfigError(f"config consistency.parameterization: 'teacher_eps' is implemented for method 'ctm', "
                              f"got method {self.method!r} (use parameterization 'edm')")
        if self.init not in INITS:
            raise ConfigError(f"config consistency.init: {self.init!r} not in {INITS}")
        if not 0 < self.sigma_min < self.sigma_max or self.bins < 2 or self.sigma_data <= 0:
            raise ConfigError("config consistency: need 0 < sigma_min < sigma_max, bins >= 2, sigma_data > 0")
        if self.default_steps < 1 or self.s_embed_dim % 2 or self.s_embed_dim < 4:
            raise ConfigError("config consistency: need default_steps >= 1 and an even s_embed_dim >= 4")


@dataclass
class ConsistencyPolicyConfig(BaseConfigViews, config_reader.ConfigIO):
    base: DiffusionPolicyConfig
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)

    def __post_init__(self) -> None:
        da = self.base.action_dim
        if any(not -da <= d < da for d in self.consistency.gripper_dims):
            raise ConfigError(f"config consistency.gripper_dims {self.consistency.gripper_dims} out of range "
                              f"for action_dim {da}")

    @classmethod
    def example(cls) -> ConsistencyPolicyConfig:
        return cls(base=DiffusionPolicyConfig.example())
