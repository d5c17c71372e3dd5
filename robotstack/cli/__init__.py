"""The `robotstack` command: the only top layer (nothing below imports it).

One module per verb group; each verb imports its heavy dependencies lazily so `--help` stays fast:
  data.py       record, data info|merge, tasks
  train.py      train il, eval, plot
  inference.py  distill, export, rti choose-k, eval-artifact
  arm.py        serve-arm, deploy, keys generate
  critic.py     critic evaluate
  pipeline.py   pipeline (RL-100 end to end)
  record.py / deploy.py  the recording loop and the controller driver behind those verbs; demo.py is `make demo`.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering must be chosen before mujoco is imported
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


def build_parser() -> argparse.ArgumentParser:
    from robotstack.cli import arm, critic, data, inference, pipeline, train

    parser = argparse.ArgumentParser(prog="robotstack", description="robot learning control stack: teleop capture "
                                     "-> diffusion policies -> one-step ONNX -> real-time control")
    sub = parser.add_subparsers(dest="verb", required=True)
    for group in (data, train, inference, arm, critic, pipeline):
        group.add_verbs(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from robotstack.core.errors import RobotstackError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RobotstackError as exc:
        print(f"robotstack: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robotstack: interrupted", file=sys.stderr)
        return 130
