"""Denoiser outputs for fixed weights/inputs vs stored goldens (regen: python -m tests.policies.regen_goldens)."""

import importlib.util
from pathlib import Path

import numpy as np
import policy_testing  # noqa: F401
import pytest

_spec = importlib.util.spec_from_file_location("_policy_goldens", Path(__file__).with_name("regen_goldens.py"))
goldens = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(goldens)


@pytest.fixture(scope="module")
def stored():
    return np.load(goldens.GOLDEN_FILE)


def test_inputs_are_reproducible(stored):
    for k, v in goldens.inputs().items():
        np.testing.assert_array_equal(stored[k], v)


@pytest.mark.parametrize("name", ["mlp", "unet"])
def test_denoiser_matches_golden(stored, name):
    out = goldens.outputs()[name]
    assert out.shape == (goldens.B, goldens.T, goldens.DA)
    assert np.abs(out).max() > 1e-2  # the golden is not trivially zero
    np.testing.assert_allclose(out, stored[f"out_{name}"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "unet"])
def test_one_shared_context_equals_the_context_per_row(name):
    """cond (1, Dc) with one step for all rows (best-of-N candidates of one observation) gives what the same
    context repeated per row gives; the MLP computes it in its split form (policies/diffusion/mlp_denoiser.py)."""
    import torch

    model = goldens.cases()[name].eval()
    inp = goldens.inputs()
    x, cond = torch.from_numpy(inp["x"]), torch.from_numpy(inp["cond"][:1])
    with torch.no_grad():
        shared = model(x, torch.tensor([37]), cond)
        per_row = model(x, torch.full((goldens.B,), 37), cond.expand(goldens.B, -1))
    assert shared.shape == per_row.shape == (goldens.B, goldens.T, goldens.DA)
    np.testing.assert_allclose(shared.numpy(), per_row.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(shared[0].numpy(), shared[1].numpy())  # the rows still differ by their x
