"""`robotstack pipeline --config configs/pipeline/<task>.yaml [dotted.key=value ...] [--out PIPELINE_DIR]`:
RL-100's recipe end to end (robotstack/pipeline). The same command with the same --out resumes: finished stages
are skipped, an interrupted one continues from its last checkpoint."""

from __future__ import annotations

import argparse


def cmd_pipeline(args: argparse.Namespace) -> int:
    from robotstack.pipeline.runner import run_pipeline
    from robotstack.train.common import INTERRUPTED_EXIT_CODE

    doc = run_pipeline(args.config, args.overrides, out=args.out, show_progress=not args.quiet)
    return INTERRUPTED_EXIT_CODE if doc["status"] == "interrupted" else 0


def add_verbs(sub) -> None:
    p = sub.add_parser("pipeline", help="demos -> IL -> offline RL rounds -> online RL -> distill -> [chunked "
                                        "critic] -> export -> evaluate, resumable stage by stage",
                       description="robotstack pipeline --config configs/pipeline/push.yaml [rounds=1 "
                                   "online.enabled=false critic.kind=dqc critic.best_of_n=8 ...] [--out PIPELINE_DIR]; "
                                   "re-run with the same --out to resume")
    p.add_argument("--config", required=True, help="pipeline YAML (configs/pipeline/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rounds=1 demos.episodes=20 "
                                                "'il.overrides=[train.steps=500]'")
    p.add_argument("--out", default=None, metavar="PIPELINE_DIR",
                   help="pipeline dir (default runs/pipeline/<task>_<time>); the same dir resumes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pipeline)
