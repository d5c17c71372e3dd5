"""Offline fit of a push imitation policy on its own training frames (no rollouts): for every demo frame, the
policy's action for "now" (chunk[action_start], DDIM-10 on the EMA weights, one sample) against the recorded
(noisy) action and against the clean scripted expert's action in the same state (LinePushExpert is memoryless,
so it can be asked at any recorded frame). Floor: recorded vs clean expert (the recording noise).

    python bench/push_il_fit.py --checkpoint RUN/checkpoints/latest --data data/push50.zarr
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def fit_report(checkpoint: str, data: str, samples: int = 1) -> dict:
    import sim
    from policies.checkpoint import load_checkpoint
    from robotstack.core import keys as K
    from robotstack.data.sampler import SequenceSampler, policy_padding
    from robotstack.data.store import load_stores
    from sim.experts import LinePushExpert

    policy = load_checkpoint(checkpoint, weights="ema").eval()
    c = policy.config
    obs_keys = list(c.obs_shapes)
    all_keys = sorted(set(obs_keys) | {K.EEF_POS, K.EEF_QUAT, K.OBJECT_STATE, K.GOAL, K.GRIPPER})
    arrays, ends, _ = load_stores([data], [*all_keys, K.ACTION])
    sampler = SequenceSampler(arrays, ends, c.horizon, **policy_padding(c.horizon, c.n_obs_steps),
                              keys=[*obs_keys, K.ACTION], key_horizons={k: c.n_obs_steps for k in obs_keys})
    # the window whose current frame (index To-1) is frame i: start = i - (To-1)
    now = sampler.indices[:, 2] + c.n_obs_steps - 1
    keep = (now >= sampler.indices[:, 0]) & (now < sampler.indices[:, 1])
    idx = np.flatnonzero(keep)
    batch = sampler.sample_batch(idx)
    obs = {k: torch.from_numpy(np.ascontiguousarray(batch[k])) for k in obs_keys}
    gen = torch.Generator().manual_seed(0)
    preds = []
    for _ in range(samples):
        with torch.no_grad():
            preds.append(policy.predict_action(obs, sampler="ddim", steps=10, generator=gen).chunk[:, c.action_start]
                         .numpy())
    pred = np.mean(preds, 0)
    frames = now[idx]
    recorded = arrays[K.ACTION][frames]
    env = sim.make("push")
    expert = LinePushExpert(env.unwrapped)
    clean = np.stack([expert.act({k: arrays[k][f] for k in all_keys}) for f in frames]).astype(np.float32)
    env.close()
    m = slice(0, 4)  # motion dims (x, y, z, yaw); the gripper is constant on push
    mae = lambda a, b: float(np.abs(a[:, m] - b[:, m]).mean())  # noqa: E731
    starts = np.r_[0, ends[:-1]][np.searchsorted(ends, frames, side="right")]
    rel = (frames - starts) / (ends[np.searchsorted(ends, frames, side="right")] - starts)
    by_phase = {}
    for name, lo, hi in (("first_third", 0, 1 / 3), ("middle", 1 / 3, 2 / 3), ("last_third", 2 / 3, 1.01)):
        s = (rel >= lo) & (rel < hi)
        by_phase[name] = {"policy_vs_clean": float(np.abs(pred[s, m] - clean[s, m]).mean()),
                          "recorded_vs_clean": float(np.abs(recorded[s, m] - clean[s, m]).mean())}
    return {"checkpoint": checkpoint, "frames": int(len(frames)), "samples": samples,
            "policy_vs_recorded": mae(pred, recorded), "policy_vs_clean": mae(pred, clean),
            "recorded_vs_clean": mae(recorded, clean),
            "per_dim_policy_vs_clean": np.abs(pred[:, m] - clean[:, m]).mean(0).round(4).tolist(),
            "by_phase": by_phase}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--samples", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(fit_report(a.checkpoint, a.data, a.samples), indent=1))


if __name__ == "__main__":
    main()
