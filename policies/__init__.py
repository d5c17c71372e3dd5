"""Torch policy models: denoisers, observation encoders, the diffusion policy, a registry, checkpoints.

Layering: this package imports only `robotstack.core`, torch, diffusers (lazily), safetensors and numpy
(checked by tests/policies/test_policy_layering.py). A policy is a folder with fixed file names
(`config.py`, `model.py`, `loss.py`) registered in `policies/registry.py`.
"""
