"""Exponential moving average of a model's weights, used as the evaluation weights.

Decay warm-up as in diffusion_policy's EMA (power 0.75, inv_gamma 1, max 0.9999): early steps track the live
weights closely, later steps average over longer windows:
    decay(step) = clamp(1 - (1 + step / inv_gamma) ** -power, min_decay, max_decay)
Buffers (normalizer stats, fitted flags) are copied, never averaged: averaging stats would be meaningless.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds `averaged` (a frozen deep copy of the model); call `update(model)` after each optimizer step."""

    def __init__(self, model: nn.Module, power: float = 0.75, inv_gamma: float = 1.0,
                 min_decay: float = 0.0, max_decay: float = 0.9999, update_after_step: int = 0):
        self.averaged = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.inv_gamma = power, inv_gamma
        self.min_decay, self.max_decay = min_decay, max_decay
        self.update_after_step = update_after_step
        self.step = 0

    def decay(self, step: int) -> float:
        s = max(0, step - self.update_after_step - 1)
        if s <= 0:
            return 0.0
        value = 1.0 - (1.0 + s / self.inv_gamma) ** -self.power
        return min(max(value, self.min_decay), self.max_decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay(self.step)
        live = dict(model.named_parameters())
        for name, p_avg in self.averaged.named_parameters():
            p = live[name]
            if p.requires_grad:
                p_avg.mul_(d).add_(p.detach(), alpha=1.0 - d)
            else:  # frozen parts (e.g. a frozen encoder) are mirrored, not averaged
                p_avg.copy_(p.detach())
        live_buffers = dict(model.named_buffers())
        for name, b_avg in self.averaged.named_buffers():
            b_avg.copy_(live_buffers[name])
        self.step += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state)
