"""IL training on CPU vs CUDA, side by side: is `train.device=cuda` correct, and how much faster is it?

    python bench/bench_train_device.py [--task push] [--episodes 20] [--steps 500] [--batch-sizes 256,2048]

One store of noisy scripted demos, then the same `robotstack train il` run (same config, same seed) once per
device and batch size. The trainer draws window indices, diffusion timesteps and noise from CPU generators
(robotstack/train/il.py), so at the same batch size CPU and CUDA see identical batches: their loss curves must
agree up to float rounding, which is the correctness check (relative loss gap at the first logged steps, where
rounding has not yet been amplified by training). Each final checkpoint is then evaluated by `robotstack eval`
in a fresh CPU process, so a CUDA-trained checkpoint must load and act on a machine without a GPU.

Rows: device, batch, steps/s and samples/s (the trainer's own window timing, eval excluded), final loss, loss gap
vs the CPU run at the same batch, success over --eval-episodes (DDIM-10). CUDA rows are skipped with a note when
torch sees no GPU (this benchmark is meant for the GPU machine; on ours it only runs the CPU rows).
Writes bench/results/bench_train_device.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import print_table, write_results  # noqa: E402

CLI = [sys.executable, "-m", "robotstack.cli"]
EARLY_LOGS = 4  # logged steps compared for the loss gap (log_every apart)


def cli(*args: str) -> None:
    subprocess.run([*CLI, *args], cwd=ROOT, check=True)


def losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="push")
    ap.add_argument("--episodes", type=int, default=20, help="scripted demos (noise 0.2)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-sizes", default="256,2048", help="CPU runs the first only (the comparison batch)")
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--out", default="runs/bench_train_device")
    args = ap.parse_args()

    import torch

    out = ROOT / args.out
    store = out / f"{args.task}.zarr"
    if not store.exists():
        cli("record", "--task", args.task, "--device", "scripted", "--episodes", str(args.episodes),
            "--noise", "0.2", "--out", str(store))
    rows, results = [], []
    batches = [int(b) for b in args.batch_sizes.split(",")]
    for batch in batches:
        cpu_losses = None
        for device in args.devices.split(","):
            if device == "cuda" and not torch.cuda.is_available():
                rows.append([device, batch, "-", "-", "-", "-", "-", "skipped: torch sees no GPU"])
                continue
            if device == "cpu" and batch != batches[0]:
                continue  # the larger batches are the GPU's settings: on CPU they only cost time
            run = out / f"{device}_b{batch}"
            cli("train", "il", "--config", f"configs/il/{args.task}.yaml", "--out", str(run),
                f"data.paths=[{store}]", f"train.steps={args.steps}", f"train.batch_size={batch}",
                f"train.device={device}", f"train.checkpoint_every={args.steps}", "eval.episodes=0")
            summary = json.loads((run / "summary.json").read_text())
            cli("eval", "--checkpoint", str(run / "checkpoints" / "latest"), "--episodes", str(args.eval_episodes),
                "--out", str(run / "eval_cpu"), "--quiet")
            ev = json.loads((run / "eval_cpu" / "summary.json").read_text())
            curve = losses(run)
            gap = None
            if device == "cpu":
                cpu_losses = curve
            elif cpu_losses:
                k = min(EARLY_LOGS, len(curve), len(cpu_losses))
                gap = max(abs(a - b) / abs(b) for a, b in zip(curve[:k], cpu_losses[:k]))
            steps_per_s = summary["samples_per_s"] / batch
            results.append({"device": device, "batch": batch, "summary": summary, "eval": ev, "losses": curve,
                            "early_loss_gap_vs_cpu": gap,
                            "gpu": torch.cuda.get_device_name() if device == "cuda" else None})
            rows.append([device, batch, f"{steps_per_s:.1f}", f"{summary['samples_per_s']:.0f}",
                         f"{summary['final_loss']:.4f}", "-" if gap is None else f"{gap:.1e}",
                         f"{ev['success_rate']:.0%} ({ev['successes']}/{ev['episodes']})",
                         "eval on CPU, fresh process"])
    table = print_table(f"IL training, {args.task}, {args.steps} steps, CPU vs CUDA (torch {torch.__version__})",
                        ["device", "batch", "steps/s", "samples/s", "final loss",
                         f"loss gap vs CPU (first {EARLY_LOGS} logs)", "success (DDIM-10)", "note"], rows)
    path = write_results("bench_train_device", {"args": vars(args), "runs": results, "tables": [table]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
