"""Golden outputs of the denoisers for fixed weights and inputs.

Regenerate (only after an intended numeric change, and say so in the commit):
    .venv/bin/python -m tests.policies.regen_goldens
Weights are filled from numpy's seeded generator (independent of torch's init code), so a golden
mismatch means the forward maths changed, not the initialization.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

GOLDEN_FILE = Path(__file__).parent / "goldens" / "denoisers.npz"
B, T, DA, DC = 3, 8, 2, 12


def fill_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            rng = np.random.default_rng(seed + zlib.crc32(name.encode()))
            if p.ndim >= 2:
                val = rng.standard_normal(p.shape) / np.sqrt(p[0].numel())
            elif name.endswith("weight"):  # norm gains
                val = 1.0 + 0.1 * rng.standard_normal(p.shape)
            else:
                val = 0.1 * rng.standard_normal(p.shape)
            p.copy_(torch.from_numpy(np.asarray(val, dtype=np.float32)))
    return model


def cases() -> dict[str, torch.nn.Module]:
    from policies.diffusion.denoisers import ConditionalUnet1D, MLPDenoiser

    return {
        "mlp": fill_weights(MLPDenoiser(T, DA, DC, width=32, depth=2, time_dim=16), seed=1),
        "unet": fill_weights(ConditionalUnet1D(DA, DC, down_dims=(16, 32), kernel_size=5, n_groups=8,
                                               step_embed_dim=16), seed=2),
    }


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    return {"x": rng.standard_normal((B, T, DA)).astype(np.float32),
            "t": np.array([0, 37, 99], dtype=np.int64),
            "cond": rng.standard_normal((B, DC)).astype(np.float32)}


@torch.no_grad()
def outputs() -> dict[str, np.ndarray]:
    inp = inputs()
    x, t, c = (torch.from_numpy(inp[k]) for k in ("x", "t", "cond"))
    return {name: m.eval()(x, t, c).numpy() for name, m in cases().items()}


def main() -> None:
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    out = outputs()
    np.savez(GOLDEN_FILE, **inputs(), **{f"out_{k}": v for k, v in out.items()})
    print(f"wrote {GOLDEN_FILE}: " + ", ".join(f"{k} {v.shape}" for k, v in out.items()))


if __name__ == "__main__":
    main()
