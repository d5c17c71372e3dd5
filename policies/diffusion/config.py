"""DiffusionPolicyConfig: one plain dataclass (with small nested sections) for the diffusion policy.

Defaults follow diffusion_policy (To=2, T=16, Ta=8; DDPM/DDIM, squaredcos_cap_v2, 100 train steps,
clip_sample, epsilon prediction) with a CPU-sized denoiser (MLP 256x3). RL-100 values are presets:
`DenoiserConfig.rl100_skipnet()` and the `rl_*` scheduler fields (eta 1, sigma clip).

Chunk alignment: the predicted chunk (length T) starts at the first observation step, so "now" is index
`action_start` (= To-1 in diffusion_policy) and the executed actions are chunk[action_start : action_start+Ta].
Single-step mode (RL-100 single action): T small (e.g. 1-2), Ta=1, action_start=0 when T=1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from robotstack.core import config as config_reader
from robotstack.core.errors import ConfigError
from robotstack.core.keys import is_image_key

from policies.encoders import derived


DENOISERS = ("mlp", "unet")
SAMPLERS = ("ddim", "ddpm")


@dataclass
class DenoiserConfig:
    kind: str = "mlp"  # "mlp" (skip-net, CPU default) | "unet" (ConditionalUnet1D)
    # MLP skip-net
    mlp_width: int = 256
    mlp_depth: int = 3  # residual blocks
    mlp_time_dim: int = 64
    # ConditionalUnet1D (diffusion_policy defaults: state (256,512,1024)/256; image (512,1024,2048)/128)
    unet_down_dims: tuple[int, ...] = (64, 128, 256)
    unet_kernel_size: int = 5
    unet_n_groups: int = 8
    unet_step_embed_dim: int = 128

    def __post_init__(self) -> None:
        if self.kind not in DENOISERS:
            raise ConfigError(f"config denoiser.kind: {self.kind!r} is not one of {DENOISERS}")
        if self.mlp_width < 1 or self.mlp_depth < 0:
            raise ConfigError("config denoiser.mlp_width must be >= 1 and denoiser.mlp_depth >= 0")
        if not self.unet_down_dims or any(d % self.unet_n_groups for d in self.unet_down_dims):
            raise ConfigError(f"config denoiser.unet_down_dims {self.unet_down_dims} must be non-empty and "
                              f"divisible by unet_n_groups={self.unet_n_groups}")
        if self.unet_kernel_size % 2 == 0:
            raise ConfigError(f"config denoiser.unet_kernel_size must be odd, got {self.unet_kernel_size}")

    @classmethod
    def rl100_skipnet(cls) -> DenoiserConfig:
        """~3.98 M denoiser params for a 16x7 chunk with 2x64 obs features (RL-100 reports a 3.9 M Skip-Net;
        its exact layout is not public in our sources, so only the size is matched)."""
        return cls(kind="mlp", mlp_width=512, mlp_depth=6, mlp_time_dim=64)


@dataclass
class EncoderConfig:
    # low-dim keys: normalized and concatenated per step; "mlp" maps them to state_feature_dim
    state_encoder: str = "mlp"  # "mlp" | "identity"
    state_hidden: tuple[int, ...] = (256,)
    state_feature_dim: int = 64
    # cameras (keys image_<cam>, uint8 HxWx3)
    # conv widths and strides: early stride-2 convs keep an 84x84, 2-camera, To=2 batch affordable on CPU
    rgb_channels: tuple[int, ...] = (32, 32, 32)
    rgb_strides: tuple[int, ...] = (2, 2, 1)
    rgb_num_keypoints: int = 32
    rgb_feature_dim: int = 64
    rgb_groups: int = 8
    rgb_crop: tuple[int, ...] | None = None  # (h, w): random crop in train, centre crop in eval
    share_rgb_encoder: bool = False
    # RL-100 regularizers (rl100.md §3)
    vib: bool = False
    vib_dim: int | None = None  # None: same width as the per-step feature
    recon: bool = False
    recon_hidden: tuple[int, ...] = (256,)

    def __post_init__(self) -> None:
        if self.state_encoder not in ("mlp", "identity"):
            raise ConfigError(f"config encoder.state_encoder: {self.state_encoder!r} is not 'mlp' or 'identity'")
        if any(c % self.rgb_groups for c in self.rgb_channels):
            raise ConfigError(f"config encoder.rgb_channels {self.rgb_channels} must be divisible by "
                              f"rgb_groups={self.rgb_groups}")
        if len(self.rgb_strides) != len(self.rgb_channels):
            raise ConfigError(f"config encoder.rgb_strides {self.rgb_strides} needs one stride per rgb_channels "
                              f"entry {self.rgb_channels}")
        if self.rgb_crop is not None and len(self.rgb_crop) != 2:
            raise ConfigError(f"config encoder.rgb_crop must be [h, w], got {self.rgb_crop}")


@dataclass
class SchedulerConfig:
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"
    set_alpha_to_one: bool = True
    steps_offset: int = 0  # RL-100 code uses 1 (with leading spacing) -> DDIM steps [91, 81, ..., 1]
    timestep_spacing: str = "trailing"  # diffusers' name; trailing starts every K at t=N-1 (noise.py)
    num_inference_steps: int = 10  # default K for predict_action / sample_with_trajectory
    default_sampler: str = "ddim"
    ddim_eta: float = 0.0  # eta used by predict_action (deterministic DDIM as in diffusion_policy)
    # RL interface (rl100.md §2): stochastic DDIM step as a Gaussian with clipped sigma
    rl_eta: float = 1.0
    sigma_min: float = 0.01
    sigma_max: float | None = None  # None -> RL-100 paper value: 0.8 if n_action_steps == 1, else 0.1 (chunks)
    prev_timestep_clamp: bool = False  # RL-100 code quirk: last DDIM step targets abar_0, not 1

    def __post_init__(self) -> None:
        if self.prediction_type != "epsilon":
            raise ConfigError(f"config scheduler.prediction_type: only 'epsilon' is implemented, "
                              f"got {self.prediction_type!r}")
        if self.default_sampler not in SAMPLERS:
            raise ConfigError(f"config scheduler.default_sampler: {self.default_sampler!r} not in {SAMPLERS}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ConfigError(f"config scheduler.num_inference_steps must be in [1, num_train_timesteps], "
                              f"got {self.num_inference_steps}")
        if not self.sigma_min > 0 or (self.sigma_max is not None and not self.sigma_max >= self.sigma_min):
            raise ConfigError(f"config scheduler: need 0 < sigma_min <= sigma_max, got sigma_min={self.sigma_min}, "
                              f"sigma_max={self.sigma_max} (sigma_min = 0 gives a NaN log-prob at the last step)")
        if self.timestep_spacing not in ("trailing", "leading") or (
                self.steps_offset and self.timestep_spacing != "leading"):
            raise ConfigError(f"config scheduler.timestep_spacing: {self.timestep_spacing!r} with steps_offset="
                              f"{self.steps_offset}: expected 'trailing' or 'leading' (steps_offset needs 'leading')")


@dataclass
class DiffusionPolicyConfig(config_reader.ConfigIO):
    obs_shapes: dict[str, tuple[int, ...]]  # key -> per-step shape; image_<cam> keys are (H, W, 3) uint8
    action_dim: int
    n_obs_steps: int = 2  # To
    horizon: int = 16  # T
    n_action_steps: int = 8  # Ta
    action_start: int = 1  # index of "now" in the chunk (To-1 in diffusion_policy)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    obs_norm: str = "minmax"  # for low-dim obs keys: minmax | meanstd | identity
    # meanstd's std floor, in env units. 1e-6 (the old fixed value) lets a near-constant dim (push's cube height
    # std 0.7 mm, cube tilt quaternion ~0.01) be scaled by 100-1000x, so a millimetre of tilt in a rollout reads as
    # tens of sigma; 0.01 (1 cm, ~1 deg of quaternion) keeps such dims near their physical size.
    obs_std_floor: float = 1e-6
    # derived features (policies/encoders/derived.py), extra state-encoder inputs computed from the raw obs keys
    obs_features: list[str] = field(default_factory=list)
    action_norm: str = "minmax"  # minmax keeps actions in [-1, 1], which clip_sample assumes
    beta_kl: float = 1e-3  # RL-100: 1e-3 (yaml); divide by 10 in RL stages
    beta_recon: float = 0.5
    # RTI "scale" mode (rti_consistency.md §1): >1 makes the action normalizer map the gripper (the last action
    # dim) to env / gripper_factor instead of minmax, so its two modes sit 2/factor apart in model space and RTI's
    # small-K' warm start can switch it (the paper retrains with factor 10). 1 = plain action_norm.
    gripper_factor: float = 1.0

    def __post_init__(self) -> None:
        self.obs_shapes = {str(k): tuple(int(d) for d in v) for k, v in dict(self.obs_shapes).items()}
        if not self.obs_shapes:
            raise ConfigError("config obs_shapes: at least one observation key is required")
        for key, shape in self.obs_shapes.items():
            if is_image_key(key) and (len(shape) != 3 or shape[2] != 3):
                raise ConfigError(f"config obs_shapes.{key}: camera keys must be (H, W, 3), got {shape}")
            if not is_image_key(key) and len(shape) != 1:
                raise ConfigError(f"config obs_shapes.{key}: low-dim keys must be 1-D (D,), got {shape}")
        if self.action_dim < 1:
            raise ConfigError(f"config action_dim must be >= 1, got {self.action_dim}")
        if self.n_obs_steps < 1 or self.horizon < 1 or self.n_action_steps < 1:
            raise ConfigError("config n_obs_steps, horizon and n_action_steps must be >= 1")
        if self.action_start < 0 or self.action_start + self.n_action_steps > self.horizon:
            raise ConfigError(
                f"config: action_start ({self.action_start}) + n_action_steps ({self.n_action_steps}) must be "
                f"<= horizon ({self.horizon}); for single-step mode with horizon=1 set action_start=0")
        for name in ("obs_norm", "action_norm"):
            if getattr(self, name) not in ("minmax", "meanstd", "identity"):
                raise ConfigError(f"config {name}: {getattr(self, name)!r} not in minmax|meanstd|identity")
        self.obs_features = [str(n) for n in self.obs_features]
        problem = derived.check_features(self.obs_features, self.low_dim_keys)
        if problem:
            raise ConfigError(f"config obs_features: {problem}")
        if not self.obs_std_floor > 0:
            raise ConfigError(f"config obs_std_floor: {self.obs_std_floor!r}, expected > 0 (e.g. 1e-6 or 0.01)")
        if not self.gripper_factor >= 1.0:
            raise ConfigError(f"config gripper_factor: {self.gripper_factor!r}, expected >= 1 (1 = off, RTI's 10)")
        if self.denoiser.kind == "unet":
            factor = 2 ** (len(self.denoiser.unet_down_dims) - 1)
            if self.horizon % factor:
                raise ConfigError(f"config: the U-Net halves the horizon {len(self.denoiser.unet_down_dims) - 1} "
                                  f"times, so horizon ({self.horizon}) must be divisible by {factor}; use "
                                  f"denoiser.kind='mlp' for short horizons")
        if self.scheduler.sigma_max is None:  # rl100.md §2 defaults; saved resolved with the checkpoint
            self.scheduler = dataclasses.replace(self.scheduler, sigma_max=0.8 if self.n_action_steps == 1 else 0.1)
        if self.encoder.recon and not self.low_dim_keys:
            raise ConfigError("config encoder.recon: reconstruction targets the low-dim obs, but obs_shapes has none")

    # ------------------------------------------------------------------ derived
    @property
    def image_keys(self) -> list[str]:
        return [k for k in self.obs_shapes if is_image_key(k)]

    @property
    def low_dim_keys(self) -> list[str]:
        return [k for k in self.obs_shapes if not is_image_key(k)]

    @property
    def low_dim_size(self) -> int:
        return sum(self.obs_shapes[k][0] for k in self.low_dim_keys)

    @property
    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """What the state encoder reads, in order: the low-dim obs keys, then the derived features."""
        low_dim = self.low_dim_keys
        return {k: self.obs_shapes[k] for k in low_dim} | derived.feature_shapes(self.obs_features, low_dim)

    @classmethod
    def example(cls) -> DiffusionPolicyConfig:
        """Tiny low-dim config used by tests and docs."""
        return cls(obs_shapes={"robot_eef_pos": (3,), "object_state": (7,)}, action_dim=4,
                   n_obs_steps=2, horizon=8, n_action_steps=4,
                   denoiser=DenoiserConfig(mlp_width=64, mlp_depth=2, mlp_time_dim=32),
                   encoder=EncoderConfig(state_hidden=(64,), state_feature_dim=32))
