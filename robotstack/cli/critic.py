"""Critic verbs: `critic evaluate` (ALOE-style value of a policy next to its Monte Carlo return).
`train critic` (the stage) lives with the other training verbs in train.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ALOE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "critic" / "aloe.yaml"


def train_aloe_critic(checkpoint: str, data: list[str], steps: int, run: Path, show_progress: bool) -> Path:
    """No --critic: train one with configs/critic/aloe.yaml (the checkpoint as the current policy) on --data;
    an existing run dir there is resumed (a finished one is reused as is)."""
    from robotstack.train.critic import main as train_critic

    overrides = [f"policy={checkpoint}", f"data.paths=[{','.join(data)}]", f"train.steps={steps}"]
    resume = str(run) if (run / "config.json").is_file() else None
    train_critic(None if resume else str(ALOE_CONFIG), overrides, resume=resume, out=str(run),
                 show_progress=show_progress)
    return run / "checkpoints" / "latest"


def cmd_critic_evaluate(args: argparse.Namespace) -> int:
    from robotstack.core.progress import print_summary
    from robotstack.eval.critic_eval import evaluate_policy_value

    out = Path(args.out) if args.out else Path(args.checkpoint).resolve() / "critic_eval"
    critic = args.critic or train_aloe_critic(args.checkpoint, args.data, args.critic_steps, out / "critic",
                                              not args.quiet)
    r = evaluate_policy_value(args.checkpoint, critic, episodes=args.episodes, seed=args.seed,
                              num_samples=args.samples, out=out, max_episode_steps=args.max_episode_steps or None,
                              show_progress=not args.quiet)
    print_summary(f"critic evaluate {args.checkpoint}", {
        "task": r["task"],
        "estimated value (ALOE critic)": f"{r['estimate']:.4f}  95% CI [{r['estimate_ci95'][0]:.4f}, "
                                         f"{r['estimate_ci95'][1]:.4f}]",
        "Monte Carlo return": f"{r['mc_return']:.4f}  95% CI [{r['mc_ci95'][0]:.4f}, {r['mc_ci95'][1]:.4f}]",
        "|estimate - MC| / |MC|": f"{r['rel_error']:.1%}",
        "gamma / episodes": f"{r['gamma']} / {r['episodes']} (success {r['success_rate']:.1%})",
        "critic": r["critic"]})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


def add_verbs(sub) -> None:
    critic = sub.add_parser("critic", help="chunked-critic tools (ALOE policy evaluation)")
    critic_sub = critic.add_subparsers(dest="critic_verb", required=True)
    ev = critic_sub.add_parser("evaluate", help="ALOE value estimate of a policy vs its MC return, with intervals")
    ev.add_argument("--checkpoint", required=True, help="diffusion policy checkpoint dir (the current policy)")
    ev.add_argument("--data", required=True, nargs="+", help="episode store(s) with rewards (mixed sources)")
    ev.add_argument("--critic", default=None, help="a trained ALOE critic dir (RUN/checkpoints/latest); "
                                                  "default: train one on --data (configs/critic/aloe.yaml)")
    ev.add_argument("--episodes", type=int, default=50, help="fresh rollouts for the MC return")
    ev.add_argument("--samples", type=int, default=16, help="policy chunks per start state for the estimate")
    ev.add_argument("--critic-steps", type=int, default=5000, help="training steps when no --critic is given "
                                                                   "(configs/critic/aloe.yaml's)")
    ev.add_argument("--seed", type=int, default=100_000)
    ev.add_argument("--max-episode-steps", type=int, default=0)
    ev.add_argument("--out", default="", help="output dir (default CHECKPOINT/critic_eval)")
    ev.add_argument("--json", default="", help="also write the result as JSON here")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_critic_evaluate)
