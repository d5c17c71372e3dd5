"""Failure modes of a push imitation policy: roll a checkpoint out and log what each episode did.

    python bench/push_il_diag.py --checkpoint RUN/checkpoints/latest [--episodes 30] [--seed 100000]
                                 [--out runs/diag/NAME.json]

--seed 0 with --episodes 50 replays the seeds the 50 bench demos were recorded with (memorisation check);
the default 100000 is the evaluation seeds of bench_il / bench_ladder. Per episode it logs the cube-goal
distance (start, min, final), how far the cube moved, the hand's height and distance to the cube at the end,
the hand's path length vs net displacement over the last 40 steps (oscillation / stall), and the gap between
the policy's executed action and the clean scripted expert's action in the same state (motion dims, action
units; the expert is memoryless, so it can be asked in any state). Episodes are classified as
success | overshoot (cube got within 2xTOL and left) | no_push (cube moved < 1 cm) | stall (hand still, near the
cube) | wander.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from robotstack.core import keys as K  # noqa: E402

TOL = 0.02


class DiagObserver:
    def __init__(self, experts):
        self.experts = experts  # env index -> clean expert
        self.cur: dict[int, dict] = {}
        self.done: list[dict] = []

    def on_reset(self, env, episode, seed, obs):
        self.cur[env] = {"episode": episode, "seed": seed, "obs": obs, "cube0": np.array(obs[K.OBJECT_STATE][:2]),
                         "dist": [], "tcp": [], "gap": [], "cube": []}

    def on_step(self, env, action, next_obs, reward, terminated, truncated, success):
        c = self.cur[env]
        expert_a = self.experts[env].act(c["obs"])
        c["gap"].append(float(np.abs(np.asarray(action[:4]) - expert_a[:4]).mean()))
        c["obs"] = next_obs
        cube, goal = np.asarray(next_obs[K.OBJECT_STATE][:2]), np.asarray(next_obs[K.GOAL][:2])
        c["dist"].append(float(np.linalg.norm(cube - goal)))
        c["tcp"].append(np.asarray(next_obs[K.EEF_POS], float))
        c["cube"].append(cube)
        c["success"] = c.get("success", False) or success
        if terminated or truncated:
            self.done.append(self._finish(c))

    @staticmethod
    def _finish(c) -> dict:
        d, tcp, cube = np.array(c["dist"]), np.array(c["tcp"]), np.array(c["cube"])
        tail = tcp[-40:]
        path = float(np.linalg.norm(np.diff(tail, axis=0), axis=1).sum()) if len(tail) > 1 else 0.0
        net = float(np.linalg.norm(tail[-1] - tail[0]))
        moved = float(np.linalg.norm(cube - c["cube0"], axis=1).max())
        hand_cube = float(np.linalg.norm(tcp[-1, :2] - cube[-1]))
        if c["success"]:
            mode = "success"
        elif d.min() < 2 * TOL:
            mode = "overshoot"
        elif moved < 0.01:
            mode = "no_push"
        elif path < 0.03 and hand_cube < 0.08:
            mode = "stall"
        else:
            mode = "wander"
        return {"episode": c["episode"], "seed": c["seed"], "success": bool(c["success"]), "length": len(d),
                "mode": mode, "dist_start": float(d[0]),
                "dist_min": float(d.min()), "dist_final": float(d[-1]), "cube_moved": moved,
                "tcp_z_final": float(tcp[-1, 2]), "hand_cube_final": hand_cube, "tail_path": path,
                "tail_net": net, "gap_mean": float(np.mean(c["gap"])),
                "gap_first10": float(np.mean(c["gap"][:10]))}


def summarize(eps: list[dict]) -> dict:
    from robotstack.eval.metrics import wilson_interval

    n, s = len(eps), sum(e["success"] for e in eps)
    lo, hi = wilson_interval(s, n)
    modes = {}
    for e in eps:
        modes[e["mode"]] = modes.get(e["mode"], 0) + 1
    fail = [e for e in eps if not e["success"]]
    mean = lambda k, xs: float(np.mean([e[k] for e in xs])) if xs else None  # noqa: E731
    return {"episodes": n, "successes": s, "success_rate": s / n, "ci95": [lo, hi], "modes": modes,
            "mean_length": mean("length", eps), "fail_dist_final": mean("dist_final", fail),
            "fail_dist_min": mean("dist_min", fail), "fail_tcp_z_final": mean("tcp_z_final", fail),
            "fail_tail_path": mean("tail_path", fail), "gap_mean": mean("gap_mean", eps),
            "gap_mean_success": mean("gap_mean", [e for e in eps if e["success"]]),
            "gap_mean_fail": mean("gap_mean", fail)}


def run(checkpoint: str, episodes: int, seed: int, sampler: str = "ddim", steps: int = 10, ta: int = 0) -> dict:
    import sim
    from policies.checkpoint import load_checkpoint
    from robotstack.eval.rollout import evaluate
    from sim.experts import LinePushExpert

    policy = load_checkpoint(checkpoint, weights="ema")
    if ta:  # execute fewer (or more) of the predicted chunk before replanning; the training is unchanged
        policy.config.n_action_steps = ta
    helper_env = sim.make("push")  # the expert reads only env.max_step_* / action names / task flags
    obs = DiagObserver({0: LinePushExpert(helper_env.unwrapped)})
    res = evaluate(policy, "push", episodes=episodes, seed=seed, sampler=sampler, steps=steps, observer=obs,
                   show_progress=False)
    helper_env.close()
    eps = sorted(obs.done, key=lambda e: e["episode"])
    return {"checkpoint": checkpoint, "seed": seed, "n_action_steps": policy.config.n_action_steps,
            "summary": summarize(eps), "eval_summary": res.summary(), "episodes": eps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--ta", type=int, default=0, help="executed actions per decision (0 = the checkpoint's Ta)")
    p.add_argument("--out", default="")
    a = p.parse_args()
    import torch
    torch.set_num_threads(1)
    r = run(a.checkpoint, a.episodes, a.seed, steps=a.steps, ta=a.ta)
    print(json.dumps(r["summary"], indent=1))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
