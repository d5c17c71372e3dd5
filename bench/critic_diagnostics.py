"""What a trained best-of-N critic knows, without any rollout (issue 12): states or actions?

    python bench/critic_diagnostics.py --critic CRUN --policy RUN/checkpoints/latest \
        [--chunks 2000] [--states 300] [--n 32] [--name critic_diagnostics]

CRUN is a `train critic` run dir: its latest scorer, and its own stores, chunk length and gamma, read through the
stage's own loader (robotstack.train.critic.load_chunks). On chunks drawn from those stores (in distribution):
  auc_success_vs_fail   P(score of a chunk from a successful episode > one from a failed episode): how well the
                        critic tells good *states* apart (an episode's success is any reward > 0 in it)
  corr_q_progress       correlation of the score with -(frames left to the end) inside successful episodes
At the first --states of those chunks, N candidates from the proposal policy (the best-of-N proposal):
  cand_q_spread         mean over states of max - min candidate score: how much the critic separates *actions*
  cand_above_data       share of candidates scored above the recorded chunk (0.5: the data action is a median pick)
A critic can rank states almost perfectly and still not rank the actions at one state, which is all best-of-N asks.
Results: bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import print_table, write_results  # noqa: E402


def rank_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney U / (n_pos n_neg))."""
    scores = np.concatenate([pos, neg])
    ranks = np.empty(len(scores))
    ranks[scores.argsort(kind="mergesort")] = np.arange(1, len(scores) + 1)
    _, tie, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.bincount(tie, ranks) / counts)[tie]  # tied scores share their mean rank
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--critic", required=True, help="a train critic run dir")
    p.add_argument("--policy", required=True, help="the best-of-N proposal")
    p.add_argument("--chunks", type=int, default=2000)
    p.add_argument("--states", type=int, default=300)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="critic_diagnostics")
    args = p.parse_args()
    import torch

    from policies.checkpoint import load_checkpoint
    from policies.critics.scorer import load_scorer
    from robotstack.train.critic import load_chunks, resolve_config

    torch.set_num_threads(1)
    scorer_dir = Path(args.critic) / "checkpoints" / "latest"
    scorer = load_scorer(scorer_dir)
    cfg = resolve_config(None, [], args.critic)
    sampler, _ = load_chunks(cfg, list(scorer.config.obs_shapes), scorer.config.n_obs_steps)
    ends = sampler.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    episode_success = np.array([sampler.rewards[a:b].max() > 0 for a, b in zip(starts, ends)])
    batch = sampler.sample(np.random.default_rng(args.seed), args.chunks)
    success = episode_success[sampler.episode_of[batch.index]]
    h_a = scorer.config.chunk_len
    obs = {k: torch.from_numpy(np.ascontiguousarray(v)).float() for k, v in batch.obs.items()}
    with torch.no_grad():
        q_data = scorer(obs, torch.from_numpy(batch.actions[:, None, :h_a]).float())[:, 0].numpy()
        m = min(args.states, args.chunks)
        policy = load_checkpoint(args.policy, weights="auto")
        sub = {k: v[:m] for k, v in obs.items()}
        rep = {k: v.repeat_interleave(args.n, 0) for k, v in sub.items()}
        gen = torch.Generator().manual_seed(args.seed)
        cand = policy.predict_action(rep, generator=gen).action.reshape(m, args.n, -1, policy.config.action_dim)
        q_cand = scorer(sub, cand)
    above = (q_cand > torch.from_numpy(q_data[:m])[:, None]).float().mean(1).numpy()
    left = (sampler.ep_end[batch.index] - batch.index)[success]
    res = {"scorer": str(scorer_dir), "policy": args.policy, "data": cfg.data.paths, "chunks": int(args.chunks),
           "states": m,
           "n": args.n, "success_chunk_share": float(success.mean()),
           "auc_success_vs_fail": rank_auc(q_data[success], q_data[~success]),
           "q_mean_success": float(q_data[success].mean()), "q_mean_fail": float(q_data[~success].mean()),
           "corr_q_progress": float(np.corrcoef(q_data[success], -left)[0, 1]),
           "cand_q_spread": float((q_cand.max(1).values - q_cand.min(1).values).mean()),
           "cand_above_data": float(above.mean())}
    print_table("critic diagnostics (in-distribution states vs actions)", ["metric", "value"],
                [[k, f"{v:.3f}" if isinstance(v, float) else v] for k, v in res.items()
                 if k not in ("scorer", "policy", "data")])
    write_results(args.name, res)


if __name__ == "__main__":
    main()
