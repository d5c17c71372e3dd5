"""Consistency-distilled students of the diffusion policy (one-step / chained sampling)."""
