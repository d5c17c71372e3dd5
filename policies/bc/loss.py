"""The BC objective: MSE between the predicted and the demonstrated action chunk, in normalized action units
(so every action dim weighs the same, as in the diffusion policy's epsilon loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def chunk_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target (B, T, Da) normalized -> scalar mean squared error over every element."""
    return F.mse_loss(pred, target)
