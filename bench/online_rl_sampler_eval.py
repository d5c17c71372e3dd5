"""Did online RL improve the policy it trained, the one it ships, or both? (issue 11)

    python bench/online_rl_sampler_eval.py --run runs/bench_online_rl/reach@weak_il150_sig01_lr1e-5_big \
        [--episodes 200] [--seed 300000] [--name online_rl_sampler_eval]

`train online-rl` trains the stochastic sampler (DDIM eta 1, sigma clipped to the run's [sigma_min, sigma_max]) and
evaluates the deterministic one (DDIM, the checkpoint's ddim_eta) it ships. Its per-update training success comes
from fresh seeds each update, so start and end are never compared on the same episodes. Here both samplers of the
run's starting policy (converted for RL exactly as the run converted it) and of its final checkpoint run on the same
--episodes seeds (away from training's and eval's), 95% Wilson intervals. Results: bench/results/<name>.json.
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

from bench.common import print_table, write_results  # noqa: E402


def training_sampler(policy, eta: float):
    """The policy as online RL samples it (sample_with_trajectory: eta, clipped sigma), with the predict_action
    interface that robotstack.eval.rollout.evaluate drives."""
    import torch

    class TrainingSampler(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.policy, self.config = policy, policy.config

        @torch.no_grad()
        def predict_action(self, obs, sampler=None, steps=None, generator=None):
            return self.policy.sample_with_trajectory(obs, steps=steps, generator=generator, eta=eta)

    return TrainingSampler()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train online-rl run dir")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=300_000)
    p.add_argument("--name", default="online_rl_sampler_eval")
    args = p.parse_args()
    import torch

    from policies.checkpoint import load_checkpoint, read_extra
    from robotstack.core.config import from_dict
    from robotstack.eval.rollout import evaluate
    from robotstack.train.online_rl import OnlineRLConfig, rl_ready

    torch.set_num_threads(1)
    run = Path(args.run)
    resolved = json.loads((run / "config.json").read_text())
    cfg = from_dict(OnlineRLConfig, resolved)
    start = rl_ready(load_checkpoint(cfg.policy, weights=cfg.policy_weights), cfg.rl)
    final_dir = run / "checkpoints" / "latest"
    final = load_checkpoint(final_dir)
    rows = []
    for name, policy in (("start", start), (f"final ({read_extra(final_dir)['env_steps']} env steps)", final)):
        for sampler in ("deterministic DDIM (shipped)", "stochastic (trained)"):
            pol = policy if sampler.startswith("det") else training_sampler(policy, cfg.rl.eta)
            s = evaluate(pol, cfg.task, args.episodes, seed=args.seed, sampler="ddim", steps=cfg.rl.steps,
                         show_progress=False).summary()
            rows.append({"policy": name, "sampler": sampler, "success_rate": s["success_rate"],
                         "ci95": [s["ci95_low"], s["ci95_high"]], "wall_s": s["wall_s"]})
            print(rows[-1], flush=True)
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    print_table(f"online RL: both samplers, start vs final, {args.episodes} episodes, same seeds",
                ["policy", "sampler", "success [95% CI]"],
                [[r["policy"], r["sampler"], f"{pct(r['success_rate'])} [{pct(r['ci95'][0])}, {pct(r['ci95'][1])}]"]
                 for r in rows])
    write_results(args.name, {"run": str(run), "task": cfg.task, "episodes": args.episodes, "seed": args.seed,
                              "rl": resolved["rl"], "rows": rows})


if __name__ == "__main__":
    main()
