"""Inference-speed benchmark: per-decision latency (batch 1, one thread) and closed-loop success of fast samplers
over the *same* trained diffusion policy per task.

Rows: DDPM-100, DDIM-10, DDIM-1 (Ta = 8 per decision), RTI K' = 2/3/5 (steps [K'..0], one action per decision,
first call DDPM-100; pick_place uses the gripper clip mode), CM-1 torch, CM-1 onnxruntime, CM-3 torch (a
CTM-distilled student, Ta = 8). Latency = wall time of one `act` call including obs normalization and encoding.

Prerequisites (the policies are trained with the IL trainer, `robotstack train il`):
    robotstack record --task T --episodes 50 --noise 0.2 --out data/il/T.zarr
    robotstack train il --config configs/il/T.yaml --out runs/bench_inference/T eval.episodes=0
Run:  .venv/bin/python bench/bench_inference.py [--tasks push,pick_place,push_t] [--episodes 100]
Writes bench/results/bench_inference.json; students/artifacts are cached under runs/bench_inference/T/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def actors(task: str, run: Path, distill_steps: int, method: str, seed: int):
    from policies.checkpoint import load_checkpoint
    from policies.diffusion.rti import RTIConfig, RTISampler
    from robotstack.eval.actor_rollout import TorchActor
    import sim
    from robotstack.runtime.artifact import load_artifact
    from robotstack.export.onnx_export import export_artifact
    from robotstack.core.config import load_config
    from robotstack.train.distill import DistillConfig, distill

    ckpt = run / "checkpoints" / "latest"
    policy = load_checkpoint(ckpt, weights="ema")
    c = policy.config
    keys, to = list(c.obs_shapes), c.n_obs_steps
    student_run = run / f"student_{method}_{distill_steps}"
    student_dir = student_run / "checkpoints" / "latest"
    if not (student_dir / "model.safetensors").is_file():
        cfg = load_config(DistillConfig, ROOT / "configs" / "distill" / f"{method}.yaml",
                          [f"teacher={ckpt}", f"train.steps={distill_steps}", f"train.seed={seed}"])
        distill(cfg, student_run, show_progress=False)
    student = load_checkpoint(student_dir)
    art_dir = run / f"artifact_cm1_{method}_{distill_steps}"
    manifest = export_artifact(student_dir, "cm1", art_dir, latency_runs=100,
                               task_spec=sim.make(task).unwrapped.task_spec())
    gen = torch.Generator().manual_seed(seed)
    grip = "clip" if task == "pick_place" else "none"

    def chunked(sampler: str, k: int):
        return TorchActor(keys, to, lambda o: policy.predict_action(o, sampler=sampler, steps=k, generator=gen).action)

    def rti(k: int):
        r = RTISampler(policy, RTIConfig(k_start=k, gripper_mode=grip, factor=1.0))
        return TorchActor(keys, to, lambda o: r(o, generator=gen).action, reset=r.reset), len(r.steps)

    out = [("DDIM-10", 10, chunked("ddim", 10)), ("DDIM-1", 1, chunked("ddim", 1))]
    for k in (2, 3, 5):
        a, nfe = rti(k)
        out.append((f"RTI K'={k}", nfe, a))
    out.append(("CM-1 torch", 1, TorchActor(keys, to, lambda o: student.predict_action(o, steps=1, generator=gen).action)))
    out.append(("CM-1 onnxruntime", 1, load_artifact(art_dir, seed=seed)))
    out.append(("CM-3 torch", 3, TorchActor(keys, to, lambda o: student.predict_action(o, steps=3, generator=gen).action)))
    out.append(("DDPM-100", 100, chunked("ddpm", 100)))  # last: by far the slowest row, partial runs keep the rest
    return out, manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="push,pick_place,push_t")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_inference"))
    ap.add_argument("--distill-steps", type=int, default=1000)
    ap.add_argument("--method", default="ctm", choices=["ctm", "rl100"])
    ap.add_argument("--only", default="", help="comma-separated row names to run (default all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from robotstack.eval.actor_rollout import rollout_actor

    rows, payload = [], {"episodes": args.episodes, "distill_steps": args.distill_steps, "method": args.method,
                         "threads": 1, "batch": 1, "results": {}}
    only = set(filter(None, args.only.split(",")))
    out_name = "bench_inference" if args.tasks == "push,pick_place,push_t" else "bench_inference_" + args.tasks.replace(",", "_")
    if only:  # a partial run gets its own file instead of overwriting the full one
        out_name += "_only_" + "_".join(sorted(only)).replace(" ", "").replace("'", "").replace("=", "")
    for task in args.tasks.split(","):
        run = Path(args.runs) / task
        acts, manifest = actors(task, run, args.distill_steps, args.method, args.seed)
        payload["results"][task] = {"export_manifest_latency": manifest["latency"], "rows": {}}
        for name, nfe, actor in acts:
            if only and name not in only:
                continue
            t0 = time.perf_counter()
            res = rollout_actor(actor, task, args.episodes, show_progress=False, description=f"{task} {name}")
            s = res.summary()
            rows.append([task, name, nfe, s["decision_p50_ms"], s["decision_p99_ms"], s["success_rate"],
                         f"[{s['ci95_low']:.2f},{s['ci95_high']:.2f}]", s["episodes"], s["mean_length"]])
            payload["results"][task]["rows"][name] = s | {"nfe": nfe}
            print(f"{task:10s} {name:18s} nfe {nfe:3d} p50 {s['decision_p50_ms']:.3f} ms p99 "
                  f"{s['decision_p99_ms']:.3f} ms success {s['success_rate']:.2f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            write_results(out_name, payload)
    text = print_table("bench_inference: per-decision latency (batch 1, 1 thread) and success",
                       ["task", "sampler", "NFE", "p50 ms", "p99 ms", "success", "95% CI", "episodes", "mean len"],
                       rows)
    payload["table"] = text
    print(f"wrote {write_results(out_name, payload)}")


if __name__ == "__main__":
    main()
