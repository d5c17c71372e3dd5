"""One optimizer step, the same in every training stage.

    gradient_step(optimizer, loss, params, max_norm)   zero_grad -> backward -> clip -> step

Clipping is by the global L2 norm of `params`' gradients; `max_norm` None or 0 turns it off (a norm of 0 would
zero every update, never what a config means by 0).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def gradient_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                  params: Iterable[nn.Parameter] = (), max_norm: float | None = None) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_norm:
        nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
