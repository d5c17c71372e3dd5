"""Observation encoders: (B, To, ...) obs dict -> (B, To * D) global condition for the denoiser."""

from policies.encoders.obs_encoder import EncoderOutput, ObsEncoder
from policies.encoders.rgb import RgbEncoder, SpatialSoftmax
from policies.encoders.state import StateEncoder
from policies.encoders.vib import ReconHead, VIBHead, gaussian_kl

__all__ = ["EncoderOutput", "ObsEncoder", "ReconHead", "RgbEncoder", "SpatialSoftmax", "StateEncoder", "VIBHead",
           "gaussian_kl"]
