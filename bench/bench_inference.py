"""Inference-speed benchmark: per-decision latency (batch 1, one thread) and closed-loop success of fast samplers
over the *same* trained diffusion policy per task.

Rows: DDPM-100, DDIM-10, DDIM-1 (Ta per decision), RTI K' = 2/3/5 (steps [K'..0], one action per decision,
first call DDPM-100, gripper_mode "auto" on every task: what the exported RTI artifact does, resolved per policy
by policies/diffusion/rti.py - "scale" for a policy trained with the gripper scaled, else "clip" factor 10; the
old factor-1 clip froze the gripper by construction), "RTI 3-1-0" / "5-2-0" / "10-5-0" / "20-10-0" (strided 3-call
step lists stepped as jumps between listed levels; 20-10-0 is the export default; more such rows by name through
--only, e.g. "RTI 8-4-0", "RTI 5-2-0 det" = posterior mean, "RTI 5-2-0 n2" = 2 actions per decision), CM-1
torch, CM-1 onnxruntime, CM-3 torch (a CTM-distilled student). Latency = wall time of one `act` call including obs normalization and encoding.

Speed section (issue 10's target: CM-1 on onnxruntime >= 10x faster than DDIM-10 on onnxruntime and >= 100x
faster than DDPM-100, same network, batch 1, one thread, side by side in one run): the teacher is exported as
deterministic DDIM-10 and DDIM-100 artifacts (the unrolled 100-call chain is DDPM-100's cost on onnxruntime:
same 100 denoiser calls, our exporter has no stochastic DDPM graph) next to the CM-1 student artifact (the same
denoiser architecture, initialised from the teacher), and DDPM-100 in torch is timed too. The calls are
interleaved round-robin (rotating order) on one fixed observation, so machine noise hits every row alike;
ratios are of medians and of means.

Prerequisites (the policies are trained with the IL trainer, `robotstack train il`), either
    robotstack record --task T --episodes 50 --noise 0.2 --out data/il/T.zarr
    robotstack train il --config configs/il/T.yaml --out runs/bench_inference/T eval.episodes=0
or the run dirs of bench_il: `--runs runs/bench_il --run-name {task}_run`.
Run:  .venv/bin/python bench/bench_inference.py [--tasks push,pick_place,push_t] [--episodes 100] [--speed-only]
Writes bench/results/bench_inference*.json; students/artifacts are cached in each run dir.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


RTI_ROW = re.compile(r"RTI (\d+(?:-\d+)+)( det)?(?: n(\d+))?")  # e.g. "RTI 5-2-0", "RTI 5-2-0 det", "RTI 8-4-0 n2"


STRIDED_RTI_ROWS = ("RTI 3-1-0", "RTI 5-2-0", "RTI 10-5-0", "RTI 20-10-0")  # 20-10-0: the export default


def rti_row_config(name: str) -> dict | None:
    """A strided RTI row name -> RTIConfig fields: the step list (stepped as jumps), " det" = posterior mean
    instead of DDPM posterior noise, " nK" = K actions executed per decision (RTI's default 1)."""
    m = RTI_ROW.fullmatch(name)
    if not m:
        return None
    steps = tuple(int(t) for t in m.group(1).split("-"))
    return {"k_start": steps[0], "steps": steps, "step_semantics": "jump", "stochastic": not m.group(2),
            "n_exec": int(m.group(3) or 1)}


def actors(task: str, run: Path, distill_steps: int, method: str, seed: int, extra_rows: tuple[str, ...] = ()):
    from policies.checkpoint import load_checkpoint
    from policies.diffusion.rti import RTIConfig, RTISampler
    from robotstack.eval.actor_rollout import TorchActor
    import sim
    from robotstack.runtime.artifact import load_artifact
    from robotstack.export.onnx_export import binary_gripper_dims, export_artifact
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
    env = sim.make(task)
    spec = env.unwrapped.task_spec()
    env.close()
    manifest = export_artifact(student_dir, "cm1", art_dir, latency_runs=100, task_spec=spec)
    grip = tuple(binary_gripper_dims(spec, c.action_dim, None))  # Meta-World: () = a continuous grab effort
    gen = torch.Generator().manual_seed(seed)

    def chunked(sampler: str, k: int):
        return TorchActor(keys, to, lambda o: policy.predict_action(o, sampler=sampler, steps=k, generator=gen).action)

    def rti(**fields):
        r = RTISampler(policy, RTIConfig(gripper_mode="auto", gripper_dims=grip, **fields) if grip
                       else RTIConfig(gripper_mode="none", **fields))
        return TorchActor(keys, to, lambda o: r(o, generator=gen).action, reset=r.reset), len(r.steps)

    out = [("DDIM-10", 10, chunked("ddim", 10)), ("DDIM-1", 1, chunked("ddim", 1))]
    for k in (2, 3, 5):
        a, nfe = rti(k_start=k)
        out.append((f"RTI K'={k}", nfe, a))
    # Strided 3-call lists (the official scale configs use [3,1,0]; rti_consistency.md §1.2), stepped as proper
    # jumps to the next listed level ("jump"), not the official code's t -> t-1 posterior: a higher start level
    # than K'=2 at the same 3 calls, so a guess far from the new chunk (a gripper flip) can still be moved.
    for name in (*STRIDED_RTI_ROWS, *(n for n in extra_rows if n not in STRIDED_RTI_ROWS)):
        fields = rti_row_config(name)
        if fields:
            a, nfe = rti(**fields)
            out.append((name, nfe, a))
    out.append(("CM-1 torch", 1, TorchActor(keys, to, lambda o: student.predict_action(o, steps=1, generator=gen).action)))
    out.append(("CM-1 onnxruntime", 1, load_artifact(art_dir, seed=seed)))
    out.append(("CM-3 torch", 3, TorchActor(keys, to, lambda o: student.predict_action(o, steps=3, generator=gen).action)))
    out.append(("DDPM-100", 100, chunked("ddpm", 100)))  # last: by far the slowest row, partial runs keep the rest
    return out, manifest, (ckpt, art_dir)


def speed(task: str, run: Path, teacher: Path, cm1_dir: Path, rounds: int, seed: int) -> dict:
    """Side-by-side latency of one decision (batch 1, one thread): CM-1 / DDIM-10 / DDIM-100 on onnxruntime and
    DDPM-100 in torch, on one real observation, in two schedules (interleaved and blocked, see below).
    -> the interleaved {rows, ratios, targets} + "blocked": the same for the blocked schedule."""
    import sim
    from policies.checkpoint import load_checkpoint
    from robotstack.export.onnx_export import export_artifact
    from robotstack.runtime.artifact import load_artifact

    env = sim.make(task)
    spec = env.unwrapped.task_spec()
    obs, _ = env.reset(seed=seed)  # the one observation every row is timed on
    env.close()
    arts = {"CM-1 ort": load_artifact(cm1_dir, seed=seed, threads=1)}
    for k in (10, 100):
        out = run / f"artifact_ddim{k}"
        if not (out / "manifest.json").is_file():
            export_artifact(teacher, "ddim", out, steps=k, latency_runs=5, task_spec=spec)
        arts[f"DDIM-{k} ort"] = load_artifact(out, seed=seed, threads=1)
    policy = load_checkpoint(teacher, weights="ema")
    c = policy.config
    hist = {k: np.repeat(np.asarray(obs[k])[None], c.n_obs_steps, axis=0) for k in c.obs_shapes}
    thist = {k: torch.from_numpy(np.asarray(v, np.float32)[None]) for k, v in hist.items()}
    gen = torch.Generator().manual_seed(seed)

    def ddpm100():
        with torch.no_grad():
            policy.predict_action(thist, sampler="ddpm", steps=100, generator=gen)

    calls = {name: (lambda a=a: a.act(hist)) for name, a in arts.items()} | {"DDPM-100 torch": ddpm100}
    names = list(calls)
    for _ in range(5):  # warm-up: first onnxruntime runs allocate
        for n in names:
            calls[n]()
    out = {}
    # Two call schedules, both side by side in one run (load noise hits every row alike):
    # interleaved: each call follows a call of another row, so the caches hold the other rows' weights (the
    #   denoiser's ~10 MB of fp32 weights stream from memory: a cold call, like a policy sharing its core);
    # blocked: blocks of BLOCK consecutive calls of one row, blocks round-robin (a control loop calling one policy
    #   repeatedly: warm caches). A K-step sampler re-reads the same weights K times within one call, so the cold
    #   schedule costs CM-1 relatively more than DDIM-10 (measured on stack: 5.0x interleaved vs 7.9x blocked).
    for schedule, block in (("interleaved", 1), ("blocked", BLOCK)):
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(max(1, rounds // block)):
            for n in names[r % len(names):] + names[:r % len(names)]:
                for _ in range(block):
                    t0 = time.perf_counter()
                    calls[n]()
                    times[n].append(time.perf_counter() - t0)
        out[schedule] = _speed_stats(times, rounds, block)
    # top level = the interleaved schedule (the layout of earlier results files)
    return out["interleaved"] | {"blocked": out["blocked"]}


BLOCK = 20  # consecutive calls per block in the blocked schedule


def _speed_stats(times: dict[str, list[float]], rounds: int, block: int) -> dict:
    stats = {n: {"p50_ms": float(np.percentile(t, 50) * 1e3), "p99_ms": float(np.percentile(t, 99) * 1e3),
                 "mean_ms": float(np.mean(t) * 1e3), "n": len(t)} for n, t in times.items()}
    base = stats["CM-1 ort"]
    ratios = {f"{n} / CM-1 ort": {"p50": stats[n]["p50_ms"] / base["p50_ms"],
                                  "mean": stats[n]["mean_ms"] / base["mean_ms"]} for n in stats if n != "CM-1 ort"}
    return {"rows": stats, "ratios": ratios, "rounds": rounds, "block": block,
            "targets": {"DDIM-10 ort / CM-1 ort >= 10": ratios["DDIM-10 ort / CM-1 ort"]["p50"] >= 10,
                        "DDPM-100 torch / CM-1 ort >= 100": ratios["DDPM-100 torch / CM-1 ort"]["p50"] >= 100,
                        "DDIM-100 ort / CM-1 ort >= 100": ratios["DDIM-100 ort / CM-1 ort"]["p50"] >= 100}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="push,pick_place,push_t")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_inference"))
    ap.add_argument("--run-name", default="{task}", help="run dir name under --runs, e.g. {task}_run for bench_il's")
    ap.add_argument("--speed-rounds", type=int, default=200, help="calls per row and schedule in the speed section")
    ap.add_argument("--speed-only", action="store_true", help="only the side-by-side speed section (no rollouts)")
    ap.add_argument("--tag", default="", help="results key <task>@TAG: a variant policy (e.g. a bench_il --tag run)")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed section (rollout rows only)")
    ap.add_argument("--out-name", default="", help="results file name under bench/results (default from the args)")
    ap.add_argument("--distill-steps", type=int, default=1000)
    ap.add_argument("--method", default="ctm", choices=["ctm", "rl100"])
    ap.add_argument("--only", default="", help="comma-separated row names to run (default all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=100_000,
                    help="first episode seed (episodes seed, seed+1, ...); another value = held-out scenes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from robotstack.eval.actor_rollout import rollout_actor

    rows, speed_rows = [], []
    payload = {"episodes": args.episodes, "eval_seed": args.eval_seed, "distill_steps": args.distill_steps,
               "method": args.method, "threads": 1, "batch": 1, "results": {}}
    only = set(filter(None, args.only.split(",")))
    out_name = "bench_inference" if args.tasks == "push,pick_place,push_t" else "bench_inference_" + args.tasks.replace(",", "_")
    if only:  # a partial run gets its own file instead of overwriting the full one
        out_name += "_only_" + "_".join(sorted(only)).replace(" ", "").replace("'", "").replace("=", "")
    if args.speed_only:
        out_name += "_speed"
    out_name = args.out_name or out_name
    for task in args.tasks.split(","):
        run = Path(args.runs) / args.run_name.format(task=task)
        env_task = json.loads((run / "config.json").read_text())["task"]  # e.g. config mw_push -> mw:push-v3
        acts, manifest, (teacher, cm1_dir) = actors(env_task, run, args.distill_steps, args.method, args.seed,
                                                    tuple(only))
        sp = None if args.no_speed else speed(env_task, run, teacher, cm1_dir, args.speed_rounds, args.seed)
        key = f"{task}@{args.tag}" if args.tag else task
        payload["results"][key] = {"export_manifest_latency": manifest["latency"], "speed": sp, "rows": {},
                                   "run": str(run)}
        for schedule, section in ((("interleaved", sp), ("blocked", sp["blocked"])) if sp else ()):
            for name, st in section["rows"].items():
                ratio = section["ratios"].get(f"{name} / CM-1 ort", {"p50": 1.0})["p50"]
                speed_rows.append([key, schedule, name, st["p50_ms"], st["p99_ms"], st["mean_ms"], ratio])
        write_results(out_name, payload)
        for name, nfe, actor in acts:
            if args.speed_only or (only and name not in only):
                continue
            t0 = time.perf_counter()
            res = rollout_actor(actor, env_task, args.episodes, seed=args.eval_seed, show_progress=False,
                                description=f"{task} {name}")
            s = res.summary()
            rows.append([key, name, nfe, s["decision_p50_ms"], s["decision_p99_ms"], s["success_rate"],
                         f"[{s['ci95_low']:.2f},{s['ci95_high']:.2f}]", s["episodes"], s["mean_length"]])
            payload["results"][key]["rows"][name] = s | {"nfe": nfe}
            print(f"{task:10s} {name:18s} nfe {nfe:3d} p50 {s['decision_p50_ms']:.3f} ms p99 "
                  f"{s['decision_p99_ms']:.3f} ms success {s['success_rate']:.2f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            write_results(out_name, payload)
    payload["speed_table"] = print_table(
        "bench_inference speed: one decision, batch 1, 1 thread, two schedules (x = p50 / CM-1 ort p50)",
        ["task", "schedule", "row", "p50 ms", "p99 ms", "mean ms", "x CM-1 ort"], speed_rows)
    text = print_table("bench_inference: per-decision latency (batch 1, 1 thread) and success",
                       ["task", "sampler", "NFE", "p50 ms", "p99 ms", "success", "95% CI", "episodes", "mean len"],
                       rows)
    payload["table"] = text
    print(f"wrote {write_results(out_name, payload)}")


if __name__ == "__main__":
    main()
