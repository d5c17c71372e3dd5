"""Diffusion policy (diffusion_policy / RL-100 Stage 1): config.py, model.py, loss.py + denoisers."""

from policies.diffusion.config import DenoiserConfig, DiffusionPolicyConfig, EncoderConfig, SchedulerConfig
from policies.diffusion.model import ActionPrediction, DenoisingTrajectory, DiffusionPolicy

__all__ = ["ActionPrediction", "DenoiserConfig", "DenoisingTrajectory", "DiffusionPolicy", "DiffusionPolicyConfig",
           "EncoderConfig", "SchedulerConfig"]
