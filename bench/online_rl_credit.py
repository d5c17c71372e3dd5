"""Online-RL credit check: do the GAE advantages of one real collection separate the decisions of successful
episodes from those of failed ones? (A sign or alignment bug between chains, rewards and values would show here.)

    python bench/online_rl_credit.py --policy runs/exp/reach_weak/checkpoints/latest [--task reach] [--env-steps 2048]

Collects one update's worth of decisions with `train online-rl`'s own Collector and config (configs/online_rl/
<task>.yaml: stochastic DDIM on the RL grid, sparse reward), then computes the advantages exactly as the PPO update
does (online_rl.advantages: GAE over decision chunks) twice: with the fresh value net the first update sees, and
with a value net regressed onto the Monte Carlo returns (what warm-up would give). Reports the mean advantage of
decisions in successful vs failed episodes and their correlation with success. Writes
bench/results/online_rl_credit.json (merged per task).
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

from bench.common import RESULTS, print_table, write_results  # noqa: E402

NAME = "online_rl_credit"


def episode_success(roll) -> np.ndarray:
    """(N,) bool: the decision belongs to an episode that ended in success (terminated = success, sparse reward)."""
    out = np.zeros(len(roll), bool)
    start = 0
    for n in roll.lengths:
        first = start
        for i in range(start, start + n):
            if roll.terminated[i] or roll.truncated[i] or i == start + n - 1:
                out[first:i + 1] = bool(roll.terminated[i])
                first = i + 1
        start += n
    return out


def main() -> None:
    import torch

    from robotstack.core.config import load_config
    from robotstack.train import online_rl
    from robotstack.train.rollouts import Collector

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--task", default="reach")
    ap.add_argument("--env-steps", type=int, default=2048)
    args = ap.parse_args()
    cfg = load_config(online_rl.OnlineRLConfig, ROOT / "configs" / "online_rl" / f"{args.task}.yaml",
                      [f"policy={args.policy}", "distill.enabled=false"])
    policy, _ = online_rl.load_policy(cfg)
    value, _ = online_rl.load_value(cfg, policy)
    collector = Collector(cfg.task, 2, policy.config)
    try:
        roll = collector.collect(policy, args.env_steps, 0, cfg.gae.gamma, torch.Generator().manual_seed(0),
                                 steps=cfg.rl.steps, eta=cfg.rl.eta)
    finally:
        collector.close()
    succ = episode_success(roll)
    cond, next_cond = torch.from_numpy(roll.cond), torch.from_numpy(roll.next_cond)
    _, mc_return = online_rl.advantages(roll, np.zeros(len(roll)), np.zeros(len(roll)), cfg.gae)
    rows, out = [], {}
    for label in ("fresh V", "V fitted to the returns"):
        if label != "fresh V":
            opt = torch.optim.Adam(value.parameters(), lr=1e-3)
            target = torch.from_numpy(mc_return).float()
            for _ in range(300):
                loss = ((value(cond).reshape(-1) - target) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            v, nv = value(cond).double().numpy().reshape(-1), value(next_cond).double().numpy().reshape(-1)
        adv, _ = online_rl.advantages(roll, v, nv, cfg.gae)
        r = {"adv_success": float(adv[succ].mean()), "adv_failed": float(adv[~succ].mean()),
             "corr": float(np.corrcoef(adv, succ)[0, 1]), "adv_std": float(adv.std())}
        out[label] = r
        rows.append([label, f"{r['adv_success']:+.3f}", f"{r['adv_failed']:+.3f}", f"{r['corr']:+.2f}"])
    success_rate = float(np.mean([e["success"] for e in roll.episodes]))
    table = print_table(f"{NAME}: {args.task}, {len(roll)} decisions, {len(roll.episodes)} episodes "
                        f"({success_rate:.0%} success), {int(succ.sum())} decisions in successful episodes",
                        ["value net", "mean A (successful episodes)", "mean A (failed)", "corr(A, success)"], rows)
    path = RESULTS / f"{NAME}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    row = {"policy": args.policy, "decisions": len(roll), "episodes": len(roll.episodes),
           "success_rate": success_rate, **out}
    write_results(NAME, {"results": old.get("results", {}) | {args.task: row}, "table": table})


if __name__ == "__main__":
    main()
