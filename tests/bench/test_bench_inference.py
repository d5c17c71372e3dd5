"""bench/bench_inference.py: strided RTI rows are built from their names (the README's RTI columns)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distill"))
from fast_policy_testing import tiny_teacher  # noqa: E402

from bench.bench_inference import STRIDED_RTI_ROWS, rti_row_config  # noqa: E402
from policies.diffusion.rti import DEFAULT_EXPORT_STEPS, RTIConfig, RTISampler  # noqa: E402


def test_rti_row_names_map_to_sampler_configs():
    cfg = rti_row_config("RTI 20-10-0")
    assert cfg == {"k_start": 20, "steps": (20, 10, 0), "step_semantics": "jump", "stochastic": True, "n_exec": 1}
    assert cfg["steps"] == DEFAULT_EXPORT_STEPS and "RTI 20-10-0" in STRIDED_RTI_ROWS  # the export default is a row
    assert rti_row_config("RTI 5-2-0 det")["stochastic"] is False
    assert rti_row_config("RTI 8-4-0 n2")["n_exec"] == 2
    for name in ("RTI K'=2", "DDIM-10", "RTI 5", "RTI 5-2-0 x"):
        assert rti_row_config(name) is None, name
    policy = tiny_teacher()  # every default row is a valid 3-call sampler config (descending, ends in 0)
    for name in STRIDED_RTI_ROWS:
        assert len(RTISampler(policy, RTIConfig(**rti_row_config(name))).steps) == 3, name
