"""Training and evaluation verbs: `train il | offline-rl | online-rl | critic`, `eval` (a checkpoint in sim),
`plot` (a run dir)."""

from __future__ import annotations

import argparse


def run_stage(module: str, args: argparse.Namespace, extra_overrides: list[str] | None = None) -> int:
    """Every training stage has the same entry point: robotstack.train.<module>.main(config, overrides, resume,
    out, show_progress) -> summary; Ctrl-C there saves and returns summary["interrupted"] (exit code 130)."""
    import importlib

    from robotstack.train.common import INTERRUPTED_EXIT_CODE

    stage = importlib.import_module(f"robotstack.train.{module}")
    overrides = list(extra_overrides or []) + list(args.overrides)  # explicit dotted overrides win
    summary = stage.main(args.config, overrides, resume=args.resume, out=args.out, show_progress=not args.quiet)
    return INTERRUPTED_EXIT_CODE if summary.get("interrupted") else 0


def cmd_train_il(args: argparse.Namespace) -> int:
    return run_stage("il", args)


def cmd_train_offline_rl(args: argparse.Namespace) -> int:
    return run_stage("offline_rl", args)


def cmd_train_online_rl(args: argparse.Namespace) -> int:
    return run_stage("online_rl", args, [f"ray.address={args.ray}"] if args.ray else [])


def cmd_train_critic(args: argparse.Namespace) -> int:
    return run_stage("critic", args)


def cmd_eval(args: argparse.Namespace) -> int:
    from robotstack.core.progress import print_summary
    from robotstack.eval.rollout import evaluate_checkpoint

    result, out = evaluate_checkpoint(args.checkpoint, args.episodes, ema=args.ema, task=args.task or None,
                                      out_dir=args.out or None, seed=args.seed, num_envs=args.num_envs,
                                      sampler=args.sampler, steps=args.steps,
                                      max_episode_steps=args.max_episode_steps or None,
                                      video_episodes=args.video_episodes if args.video else 0,
                                      show_progress=not args.quiet)
    s = result.summary()
    print_summary(f"eval {args.checkpoint}", {
        "success rate": f"{s['success_rate']:.1%} ({s['successes']}/{s['episodes']})",
        "95% CI (Wilson)": f"[{s['ci95_low']:.1%}, {s['ci95_high']:.1%}]",
        "mean episode length": f"{s['mean_length']:.1f}",
        "mean return": f"{s['mean_return']:.3f}",
        "wall time": f"{s['wall_s']:.1f} s ({s['env_steps_per_s']:.0f} env steps/s)"})
    print(f"per-episode results: {out / 'episodes.json'}"
          + (f"; videos: {out / 'videos'}" if result.videos else ""))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from robotstack.eval.plots import plot_run

    for path in plot_run(args.run_dir):
        print(f"wrote {path}")
    return 0


def add_stage_arguments(parser, *, config_help: str, example: str, default_run: str) -> None:
    """What every training stage takes (design.md §7): --config, dotted overrides, --resume, --out."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {example}")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue RUN_DIR from checkpoints/latest")
    parser.add_argument("--out", default=None, metavar="RUN_DIR", help=f"run dir (default {default_run})")


def add_verbs(sub) -> None:
    train = sub.add_parser("train", help="training stages")
    train_sub = train.add_subparsers(dest="train_verb", required=True)
    il = train_sub.add_parser("il", help="imitation learning of a diffusion policy from an episode store",
                              description="robotstack train il --config configs/il/push.yaml [dotted.key=value ...]"
                                          " ; under torchrun the same command trains with DDP")
    add_stage_arguments(il, config_help="YAML config (configs/il/*.yaml); not needed with --resume",
                        example="train.steps=500 train.lr=3e-4", default_run="runs/il/<task>_<time>")
    il.add_argument("--quiet", action="store_true", help="no progress bar")
    il.set_defaults(func=cmd_train_il)
    orl = train_sub.add_parser("offline-rl", help="RL-100 offline round: IQL critics, transition model, PPO over "
                               "the denoising steps with the AM-Q gate",
                               description="robotstack train offline-rl --config configs/offline_rl/push.yaml "
                                           "policy=runs/il/push/checkpoints/latest [dotted.key=value ...]")
    add_stage_arguments(orl, config_help="YAML config (configs/offline_rl/*.yaml); not needed with --resume",
                        example="train.steps=200 gate.every=25", default_run="runs/offline_rl/<task>_<time>")
    orl.add_argument("--quiet", action="store_true", help="no progress bar")
    orl.set_defaults(func=cmd_train_offline_rl)
    onl = train_sub.add_parser("online-rl", help="RL-100 stage 3: online PPO over the denoising steps (+ joint CD)",
                               description="robotstack train online-rl --config configs/online_rl/reach.yaml "
                                           "[dotted.key=value ...] [--ray ADDRESS]")
    add_stage_arguments(onl, config_help="YAML config (configs/online_rl/*.yaml); not needed with --resume",
                        example="policy=runs/il/reach/checkpoints/latest train.env_steps=50000",
                        default_run="runs/online_rl/<task>_<time>")
    onl.add_argument("--ray", default="", metavar="ADDRESS",
                     help="rollout workers on Ray ('local' starts one; optional extra robotstack[ray])")
    onl.add_argument("--quiet", action="store_true", help="no progress bar")
    onl.set_defaults(func=cmd_train_online_rl)
    critic = train_sub.add_parser("critic", help="chunked critics (DQC / QC / NS / OS, ALOE + AWR) on episode stores")
    add_stage_arguments(critic, config_help="YAML config (configs/critic/*.yaml); not needed with --resume",
                        example="policy=RUN/checkpoints/latest data.paths=[a.zarr]", default_run="runs/critic/...")
    critic.add_argument("--quiet", action="store_true", help="no progress bar")
    critic.set_defaults(func=cmd_train_critic)

    ev = sub.add_parser("eval", help="roll out a checkpoint in sim: success rate (95%% Wilson CI), lengths")
    ev.add_argument("--checkpoint", required=True, help="checkpoint dir, e.g. RUN_DIR/checkpoints/latest")
    ev.add_argument("--episodes", type=int, default=100)
    ev.add_argument("--task", default="", help="override the task stored in the checkpoint")
    ev.add_argument("--seed", type=int, default=100_000, help="seed of the first episode (then seed+1, ...)")
    ev.add_argument("--sampler", default=None, choices=["ddim", "ddpm"], help="default: the policy's")
    ev.add_argument("--steps", type=int, default=None, help="denoising steps (default: the policy's)")
    ev.add_argument("--num-envs", type=int, default=1, help="> 1: parallel envs in subprocesses")
    ev.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                    help="EMA weights (default: EMA when the checkpoint has them)")
    ev.add_argument("--max-episode-steps", type=int, default=0, help="0 = the task's time limit")
    ev.add_argument("--video", action="store_true", help="write rollout videos (mp4 with imageio-ffmpeg, else GIF)")
    ev.add_argument("--video-episodes", type=int, default=4, help="how many episodes --video records")
    ev.add_argument("--out", default="", help="output dir (default CHECKPOINT/eval)")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)

    plot = sub.add_parser("plot", help="learning curves and success over training as PNG (RUN_DIR/plots)")
    plot.add_argument("run_dir")
    plot.set_defaults(func=cmd_plot)
