"""Controls for best-of-N (issue 12): is a drop under best-of-N the selection mechanism or the critic?

    python bench/critic_controls.py --policy RUN/checkpoints/latest --scorer CRUN/checkpoints/latest \
        [--rows uniform,random_init,trained] [--episodes 100] [--seed 200000] [--n 32] [--name critic_controls]

Rows, all best-of-N over the same proposal policy, the same N and the same episode seeds as bench_critics (b):
  uniform      scores are uniform noise, not a function of obs or action: the pick is a uniformly random candidate,
               so success must match the proposal alone (a check of the sampling / scoring / execution path).
  random_init  the scorer's network re-initialised (random weights, the trained scorer's normaliser): a fixed
               function whose argmax is a consistent but meaningless preference - what an untrained critic does.
  trained      the scorer as trained.
Run rows in parallel processes with --rows and one --name each; the table of a run lists its own rows.
Results: bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import print_table, write_results  # noqa: E402

ROWS = ("uniform", "random_init", "trained")


def control_scorer(kind: str, scorer, seed: int):
    import torch

    if kind == "trained":
        return scorer
    if kind == "random_init":
        torch.manual_seed(seed)
        for m in scorer.critic.modules():
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()
        return scorer
    gen = torch.Generator().manual_seed(seed)

    class UniformScores(torch.nn.Module):
        """(B, N) uniform noise whatever the obs and candidates."""

        def __init__(self):
            super().__init__()
            self.config = scorer.config

        def forward(self, obs, actions):
            return torch.rand(actions.shape[:2], generator=gen)

    return UniformScores()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True)
    p.add_argument("--scorer", required=True)
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=200_000)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--name", default="critic_controls")
    args = p.parse_args()
    import torch

    from policies.checkpoint import load_checkpoint, read_extra
    from policies.critics.scorer import BestOfNPolicy, load_scorer
    from robotstack.eval.rollout import evaluate

    torch.set_num_threads(1)
    rows = [r for r in args.rows.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"--rows: {bad} not in {ROWS}")
    policy = load_checkpoint(args.policy, weights="auto")
    task = read_extra(args.policy)["task"]
    results = []
    for i, kind in enumerate(rows):
        t0 = time.perf_counter()
        bon = BestOfNPolicy(policy, control_scorer(kind, load_scorer(args.scorer), 123 + i), args.n)
        s = evaluate(bon, task, args.episodes, seed=args.seed, show_progress=False).summary()
        results.append({"row": kind, "task": task, "success_rate": s["success_rate"],
                        "ci95": [s["ci95_low"], s["ci95_high"]], "wall_s": time.perf_counter() - t0})
    table = [[r["task"], r["row"], f"{100 * r['success_rate']:.0f}% [{100 * r['ci95'][0]:.0f}%, "
              f"{100 * r['ci95'][1]:.0f}%]", f"{r['wall_s'] / 60:.1f} min"] for r in results]
    print_table(f"best-of-{args.n} controls ({args.episodes} episodes, seeds {args.seed}+)",
                ["task", "row", "success [95% CI]", "wall"], table)
    write_results(args.name, {"settings": vars(args), "rows": results})


if __name__ == "__main__":
    main()
