"""`make demo`: the main job on the embedded default — MuJoCo push task, local store.

Stage by stage as the stack grows: record scripted demos -> data info -> train il -> eval -> plot
(-> distill -> export -> deploy).
Each step is the same `robotstack` command a user would type, so the demo doubles as a usage example.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from robotstack.cli import main as cli

OUT = Path("demo_out")


def run(*argv: str) -> None:
    print(f"\n$ robotstack {' '.join(argv)}", flush=True)
    code = cli(list(argv))
    if code:
        sys.exit(code)


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    store = str(OUT / "push.zarr")
    run("record", "--task", "push", "--device", "scripted", "--episodes", "20", "--noise", "0.2",
        "--out", store)
    run("data", "info", store)
    run_dir = str(OUT / "il_push")
    run("train", "il", "--config", "configs/il/demo_push.yaml", f"data.paths=[{store}]", "--out", run_dir)
    run("eval", "--checkpoint", f"{run_dir}/checkpoints/latest", "--episodes", "20", "--num-envs", "2")
    run("plot", run_dir)
    # fast inference: distill to a one-step student -> export it to ONNX -> evaluate it through onnxruntime
    student, artifact = str(OUT / "student_push"), str(OUT / "artifact_push_cm1")
    run("distill", "--checkpoint", f"{run_dir}/checkpoints/latest", "--method", "ctm", "--steps", "300",
        "--out", student)
    run("export", "--checkpoint", student, "--sampler", "cm1", "--out", artifact)
    run("eval-artifact", "--artifact", artifact, "--episodes", "20")


if __name__ == "__main__":
    main()
