"""Small ONNX policies + manifests for runtime tests and bench/bench_control.py (built with torch.onnx.export).

Not trained: each is a fixed function of the observation, exported through the same path a trained policy takes
(one graph input per obs key shaped (1, To, D), output (1, N, Da)), so the runtime cannot tell the difference.

    reach     action = clip(gain * (goal - eef_pos) / max_step), gripper open: solves the reach task
    const     a constant action (hot-swap tests)
    nan       NaN actions (safety tests)
    mlp       a random-weight MLP squashed by tanh (latency checks)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

EEF, GOAL, JP = "robot_eef_pos", "goal", "robot_joint_pos"


def build_policy(out_dir, kind: str = "reach", *, task: str = "reach", use_yaw: bool = False, To: int = 2,
                 Ta: int = 1, T: int | None = None, control_hz: float = 20.0, max_step_pos: float = 0.02,
                 const=None, obs_keys=None, dof: int = 7, extra_manifest: dict | None = None) -> Path:
    import torch

    names = ["dx", "dy", "dz"] + (["dyaw"] if use_yaw else []) + ["gripper"]
    Da = len(names)
    T = T or Ta
    obs = {EEF: [3], GOAL: [3]} if obs_keys is None else dict(obs_keys)
    keys = list(obs)

    class Policy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            din = sum(int(np.prod(obs[k])) for k in keys)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(din, 64), torch.nn.ReLU(), torch.nn.Linear(64, Da))
            self.register_buffer("const", torch.tensor(const if const is not None else [0.0] * Da,
                                                       dtype=torch.float32))

        def forward(self, *xs):
            x = dict(zip(keys, xs))
            # (1, 1) zero tied to every input, so the exporter keeps inputs a function does not use
            ref = sum(v.reshape(1, -1)[:, :1].float() * 0 for v in xs)
            if kind == "reach":
                d = (x[GOAL][:, -1] - x[EEF][:, -1]) * (0.6 / max_step_pos)
                a = torch.clamp(d, -1.0, 1.0)
                parts = [a] + ([ref] if use_yaw else []) + [ref - 1.0]
                a = torch.cat(parts, dim=-1)
            elif kind == "const":
                a = self.const[None] + ref
            elif kind == "nan":
                a = self.const[None] + ref + float("nan")
            else:  # mlp
                flat = torch.cat([x[k][:, -1].reshape(1, -1) for k in keys], dim=-1)
                a = torch.tanh(self.mlp(flat)) * 0.5
            return a[:, None, :].repeat(1, T, 1)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = Policy().eval()
    args = tuple(torch.zeros(1, To, *obs[k]) for k in keys)
    torch.onnx.export(model, args, str(out / "policy.onnx"), input_names=keys, output_names=["action"],
                      dynamo=False, opset_version=17)
    manifest = {
        "format": "robotstack.policy", "format_version": 1, "policy_id": f"{kind}_{out.name}",
        "onnx": "policy.onnx", "sha256": hashlib.sha256((out / "policy.onnx").read_bytes()).hexdigest(),
        "task": {"name": task, "control_hz": control_hz},
        "obs": {k: {"shape": list(obs[k]), "dtype": "float32"} for k in keys},
        "n_obs_steps": To, "n_action_steps": Ta, "horizon": T, "control_hz": control_hz,
        "action": {"names": names, "dim": Da, "kind": "ee_delta", "max_step_pos_m": max_step_pos,
                   "max_step_yaw_rad": 0.15 if use_yaw else 0.0},
        "output": "action", "robot": {"dof": dof, "kinematics": "panda"},
        "note": f"test policy '{kind}' (not trained)",
    }
    manifest.update(extra_manifest or {})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
