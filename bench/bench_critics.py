"""Chunked-critic benchmark (issue 12): ALOE evaluation error and best-of-N / AWR success from mixed-quality data.

    python bench/bench_critics.py [--tasks-a push,stack] [--tasks-b stack,mw_push] [--demos 50] [--noise 0.3]
        [--il-steps 3000] [--rollouts 20] [--critic-steps 3000] [--aloe-steps 20000] [--mc-episodes 100]
        [--episodes 100] [--n 32 | --n-grid 1,4,8,32 --val-episodes 50]
        [--awr-steps 1000] [--methods BC,QC,NS,DQC,ALOE-AWR,AWR-control] [--work DIR] [--quiet]

Per task (name = a configs/il/<name>.yaml preset):
  1. noisy scripted demos (--demos, --noise) -> demos.zarr;
  2. IL on the demos (the preset, --il-steps), checkpoints at 1/3, 2/3 and 3/3 of training: three policies of
     different quality;
  3. rollouts of each of the three (--rollouts episodes each, failed and successful) -> rollouts.zarr (source
     "policy"); the mixed data = demos + rollouts.
(a) ALOE evaluation error, tasks-a: for each of the three policies an ALOE critic (configs/critic/aloe.yaml, the
    policy as the current policy) is trained on the mixed data; |estimate - MC| / |MC| at the start states of
    --mc-episodes fresh rollouts (robotstack.eval.critic_eval; same gamma).
(b) success, tasks-b: BC = IL on the mixed data (the preset, --il-steps); QC / NS / DQC = best-of-N (--n) with BC as
    the proposal and the critic of configs/critic/{qc,ns,dqc}.yaml trained on the mixed data; ALOE-AWR = BC
    fine-tuned by advantage-weighted denoising (configs/critic/aloe.yaml, --awr-steps); AWR-control = the same
    fine-tune with every weight 1 (awr.mode none), which separates the critic's weights from fine-tuning itself.
    --episodes each, same seeds. With --n-grid, QC / NS / DQC choose N per critic on --val-episodes validation
    episodes (seeds 300,000+; N = 1 is BC, so a critic that does not help on validation is not used) and the chosen
    N is measured once on the test seeds: rows '<M> (N by val)' with every validation result.
Every stage's wall time is recorded. Results: bench/results/bench_critics.json (merged per task and part).
Nothing is tuned to pass; the configs are the shipped presets plus the step/batch overrides printed with each row.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import RESULTS, print_table, write_results  # noqa: E402

NAME = "bench_critics"


def record_demos(task: str, path: Path, episodes: int, noise: float) -> dict:
    import sim
    from robotstack.data.recording import open_or_create_store, record_scripted

    env = sim.make(task)
    store = open_or_create_store(path, zarr_format=3)
    try:
        s = record_scripted(env, sim.make_expert(env, noise=noise, seed=0), store, task, episodes, seed=0,
                            noise=noise, show_progress=False)
    finally:
        store.close()
        env.close()
    return {"demos": episodes, "demo_success": s.success_rate, "demo_frames": s.frames}


def record_policy(checkpoint: Path, task: str, path: Path, episodes: int, seed: int) -> dict:
    """Closed-loop rollouts of a diffusion checkpoint, recorded with rewards (source "policy")."""
    import torch

    import sim
    from policies.checkpoint import load_checkpoint
    from robotstack.data.recording import open_or_create_store
    from robotstack.data.recorder import EpisodeRecorder

    policy = load_checkpoint(checkpoint, weights="auto")
    keys, to = list(policy.config.obs_shapes), policy.config.n_obs_steps
    env = sim.make(task)
    store = open_or_create_store(path, zarr_format=3)
    rec = EpisodeRecorder(store, control_hz=env.unwrapped.task_spec()["control_hz"])
    gen = torch.Generator().manual_seed(seed)
    ok = frames = 0
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            rec.begin(source="policy", task=task, seed=seed + ep, policy_id=str(checkpoint))
            hist, queue, success = collections.deque([obs] * to, maxlen=to), collections.deque(), False
            while True:
                if not queue:
                    x = {k: torch.from_numpy(np.stack([h[k] for h in hist])[None]) for k in keys}
                    queue.extend(policy.predict_action(x, generator=gen).action[0].numpy())
                action = queue.popleft()
                nxt, reward, term, trunc, info = env.step(action)
                rec.add(obs, action, reward, term, trunc)
                success |= bool(info.get("is_success", False))
                obs = nxt
                hist.append(obs)
                if term or trunc:
                    break
            frames += rec.n_frames
            rec.save(success=success)
            ok += success
    finally:
        store.close()
        env.close()
    return {"episodes": episodes, "success": ok / episodes, "frames": frames}


def train_il(name: str, paths: list[Path], run: Path, steps: int, quiet: bool) -> tuple[dict, float]:
    from robotstack.train.il import resolve_config, train

    cfg = resolve_config(str(ROOT / "configs" / "il" / f"{name}.yaml"),
                         [f"data.paths=[{','.join(map(str, paths))}]", f"train.steps={steps}",
                          f"train.checkpoint_every={max(1, steps // 3)}", "eval.episodes=0"], None)
    t0 = time.perf_counter()
    if (run / "summary.json").is_file():
        return json.loads((run / "summary.json").read_text()), 0.0
    return train(cfg, run, show_progress=not quiet), time.perf_counter() - t0


def train_critic(name: str, policy: Path, paths: list[Path], run: Path, args, extra: list[str] = ()) -> dict:
    from robotstack.train.critic import main

    if (run / "summary.json").is_file():
        return json.loads((run / "summary.json").read_text())
    overrides = [f"policy={policy}", f"data.paths=[{','.join(map(str, paths))}]",
                 f"train.steps={args.critic_steps}", f"train.batch_size={args.critic_batch}",
                 f"aloe.num_samples={args.samples}", *extra]
    return main(str(ROOT / "configs" / "critic" / f"{name}.yaml"), overrides, out=str(run),
                show_progress=not args.quiet)


def success(policy, task: str, episodes: int, seed: int, quiet: bool) -> dict:
    from robotstack.eval.rollout import evaluate

    s = evaluate(policy, task, episodes, seed=seed, show_progress=not quiet).summary()
    return {"success_rate": s["success_rate"], "ci95": [s["ci95_low"], s["ci95_high"]], "eval_wall_s": s["wall_s"],
            "mean_length": s["mean_length"]}


def prepare(name: str, args, work: Path) -> dict:
    from robotstack.train.il import resolve_config

    task = resolve_config(str(ROOT / "configs" / "il" / f"{name}.yaml"), [], None).task
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    if (d / "prepare.json").is_file():  # the data of an earlier run, reused: keep what was measured making it
        return json.loads((d / "prepare.json").read_text())
    info: dict = {"task": task, "wall_s": {}}
    t0 = time.perf_counter()
    if not (d / "demos.zarr").exists():
        info |= record_demos(task, d / "demos.zarr", args.demos, args.noise)
    info["wall_s"]["record_demos"] = time.perf_counter() - t0
    _, info["wall_s"]["il_demos"] = train_il(name, [d / "demos.zarr"], d / "il", args.il_steps, args.quiet)
    ckpts = sorted((d / "il" / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:]))[-3:]
    info["policies"] = [str(c) for c in ckpts]
    t0 = time.perf_counter()
    if not (d / "rollouts.zarr").exists():
        info["rollouts"] = [record_policy(c, task, d / "rollouts.zarr", args.rollouts, 50_000 + 1000 * i)
                            for i, c in enumerate(ckpts)]
    info["wall_s"]["record_rollouts"] = time.perf_counter() - t0
    info["mixed"] = [str(d / "demos.zarr"), str(d / "rollouts.zarr")]
    (d / "prepare.json").write_text(json.dumps(info, indent=2))
    return info


def part_a(name: str, info: dict, args, work: Path) -> dict:
    from robotstack.eval.critic_eval import evaluate_policy_value

    rows = []
    for ckpt in info["policies"]:
        run = work / name / f"aloe_{Path(ckpt).name}"
        t0 = time.perf_counter()
        summary = train_critic("aloe", Path(ckpt), [Path(p) for p in info["mixed"]], run, args,
                               [f"train.steps={args.aloe_steps}"])
        t_critic = time.perf_counter() - t0
        r = evaluate_policy_value(ckpt, run / "checkpoints" / "latest",
                                  episodes=args.mc_episodes, num_samples=args.samples, out=run / "value",
                                  show_progress=not args.quiet)
        rows.append({"policy": Path(ckpt).name, "estimate": r["estimate"], "estimate_ci95": r["estimate_ci95"],
                     "mc_return": r["mc_return"], "mc_ci95": r["mc_ci95"], "rel_error": r["rel_error"],
                     "success_rate": r["success_rate"], "critic_wall_s": t_critic,
                     "critic_final_loss": summary.get("final_loss"), "wall_s": time.perf_counter() - t0})
    return {"task": info["task"], "policies": rows}


def part_b(name: str, info: dict, args, work: Path) -> dict:
    from policies.checkpoint import load_checkpoint
    from policies.critics.scorer import BestOfNPolicy, load_scorer

    mixed = [Path(p) for p in info["mixed"]]
    task = info["task"]
    _, t_bc = train_il(name, mixed, work / name / "bc", args.il_steps, args.quiet)
    bc_dir = work / name / "bc" / "checkpoints" / "latest"
    bc = load_checkpoint(bc_dir, weights="auto")
    seed = 200_000
    wanted = methods(args)
    grid = n_grid(args)
    val_bc = None  # N = 1 on the validation seeds is BC itself: measured once, shared by every critic's grid
    rows = {}
    if "BC" in wanted:
        rows["BC"] = success(bc, task, args.episodes, seed, args.quiet) | {"train_wall_s": t_bc}
    for method in ("qc", "ns", "dqc"):
        if method.upper() not in wanted:
            continue
        t0 = time.perf_counter()
        train_critic(method, bc_dir, mixed, work / name / f"b_{method}", args)
        t_train = time.perf_counter() - t0
        scorer = load_scorer(work / name / f"b_{method}" / "checkpoints" / "latest")
        if not grid:
            rows[method.upper()] = success(BestOfNPolicy(bc, scorer, args.n), task, args.episodes, seed,
                                           args.quiet) | {"train_wall_s": t_train, "n": args.n}
            continue
        # N chosen on validation scenes (VAL_SEED, away from the test seeds), then measured once on the test seeds
        val = {}
        for n in grid:
            if n == 1:
                val_bc = val_bc or success(bc, task, args.val_episodes, VAL_SEED, args.quiet)
                val[n] = val_bc
            else:
                val[n] = success(BestOfNPolicy(bc, scorer, n), task, args.val_episodes, VAL_SEED, args.quiet)
        best = pick_n({n: v["success_rate"] for n, v in val.items()})
        policy = bc if best == 1 else BestOfNPolicy(bc, scorer, best)
        rows[f"{method.upper()} (N by val)"] = success(policy, task, args.episodes, seed, args.quiet) | {
            "train_wall_s": t_train, "n": best, "val_episodes": args.val_episodes, "val_seed": VAL_SEED,
            "val": {str(n): {"success_rate": v["success_rate"], "ci95": v["ci95"], "eval_wall_s": v["eval_wall_s"]}
                    for n, v in val.items()}}
    if "ALOE-AWR" in wanted:
        t0 = time.perf_counter()
        run = work / name / "b_aloe_awr"
        train_critic("aloe", bc_dir, mixed, run, args, [f"awr.steps={args.awr_steps}"])
        awr = load_checkpoint(run / "awr" / "checkpoints" / "latest", weights="auto")
        awr_cfg = json.loads((run / "config.json").read_text())["awr"]
        rows["ALOE-AWR"] = success(awr, task, args.episodes, seed, args.quiet) | {
            "train_wall_s": time.perf_counter() - t0, "awr_steps": args.awr_steps, "awr": awr_cfg}
    if "AWR-control" in wanted:  # the same fine-tune with every weight 1: what fine-tuning alone does
        t0 = time.perf_counter()
        run = work / name / "b_awr_control"
        # awr.mode none never queries the critic: one critic step keeps the stage's run-dir contract
        train_critic("aloe", bc_dir, mixed, run, args, [f"awr.steps={args.awr_steps}", "awr.mode=none",
                                                        "train.steps=1", "aloe.cache_targets=false"])
        ctl = load_checkpoint(run / "awr" / "checkpoints" / "latest", weights="auto")
        rows["AWR-control"] = success(ctl, task, args.episodes, seed, args.quiet) | {
            "train_wall_s": time.perf_counter() - t0, "awr_steps": args.awr_steps,
            "awr": json.loads((run / "config.json").read_text())["awr"]}
    # each row keeps the settings of the run that measured it: --methods reruns merge per method
    return {"task": task, "methods": {m: r | {"run": args.name} for m, r in rows.items()}}


METHODS_B = ("BC", "QC", "NS", "DQC", "ALOE-AWR", "AWR-control")
VAL_SEED = 300_000  # --n-grid: validation scenes (demos 0+, rollouts 50,000+, test 200,000+)


def pick_n(val_success: dict[int, float]) -> int:
    """The N with the best validation success; a tie keeps the smaller (cheaper) N."""
    return max(val_success, key=lambda n: (val_success[n], -n))


def n_grid(args) -> list[int]:
    try:
        grid = sorted({int(x) for x in args.n_grid.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"--n-grid {args.n_grid!r}: expected comma-separated integers >= 1, e.g. 1,4,8,32") from None
    if any(n < 1 for n in grid):
        raise SystemExit(f"--n-grid {args.n_grid!r}: every N must be >= 1")
    return grid


def methods(args) -> list[str]:
    wanted = [m for m in args.methods.split(",") if m]
    bad = [m for m in wanted if m not in METHODS_B]
    if bad:
        raise SystemExit(f"--methods: {bad} not in {METHODS_B}")
    return wanted


def merge_b(old: dict, new: dict) -> dict:
    """(b) results per task, merged per method: a rerun of some methods replaces those rows only."""
    out = dict(old)
    for task, entry in new.items():
        prev = out.get(task, {})
        out[task] = prev | entry | {"methods": prev.get("methods", {}) | entry.get("methods", {})}
    return out


COLUMNS_A = ["task", "policy", "ALOE estimate [95% CI]", "MC return [95% CI]", "relative error",
             "success (MC episodes)", "critic / all wall"]
COLUMNS_B = ["task", "method", "success [95% CI]", "train wall", "eval wall"]


def rows_a(doc: dict) -> list[list]:
    """(a) rows of a results doc (this script's table and tools/bench_tables.py's table in
    docs/benchmarks.md)."""
    ci = lambda lo, hi: f"[{lo:.3f}, {hi:.3f}]"  # noqa: E731
    return [[task, r["policy"], f"{r['estimate']:.3f} {ci(*r['estimate_ci95'])}",
             f"{r['mc_return']:.3f} {ci(*r['mc_ci95'])}", f"{100 * r['rel_error']:.0f}%",
             f"{100 * r['success_rate']:.0f}%", f"{r['critic_wall_s'] / 60:.1f} / {r['wall_s'] / 60:.1f} min"]
            for task, a in doc.get("a", {}).items() for r in a["policies"]]


def rows_b(doc: dict) -> list[list]:
    """(b) rows of a results doc."""
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    return [[task, m, f"{pct(r['success_rate'])} [{pct(r['ci95'][0])}, {pct(r['ci95'][1])}]",
             f"{r.get('train_wall_s', 0) / 60:.1f} min", f"{r['eval_wall_s'] / 60:.1f} min"]
            for task, b in doc.get("b", {}).items() for m, r in b["methods"].items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks-a", default="push,stack")
    p.add_argument("--tasks-b", default="stack,mw_push")
    p.add_argument("--demos", type=int, default=50)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--il-steps", type=int, default=3000)
    p.add_argument("--rollouts", type=int, default=20, help="recorded rollouts per IL checkpoint")
    p.add_argument("--critic-steps", type=int, default=3000)
    p.add_argument("--aloe-steps", type=int, default=20000,
                   help="(a) ALOE evaluation critic steps (targets cached: ~30 steps/s on 2 cores)")
    p.add_argument("--critic-batch", type=int, default=256)
    p.add_argument("--samples", type=int, default=4, help="ALOE policy samples per state (M)")
    p.add_argument("--mc-episodes", type=int, default=100)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--n", type=int, default=32, help="best-of-N candidates")
    p.add_argument("--n-grid", default="",
                   help="e.g. 1,4,8,32: QC/NS/DQC pick N on --val-episodes validation episodes (seeds 300,000+; "
                        "N = 1 is BC) and report the chosen N on the test seeds as '<M> (N by val)' rows")
    p.add_argument("--val-episodes", type=int, default=50)
    p.add_argument("--awr-steps", type=int, default=1000)
    p.add_argument("--methods", default=",".join(METHODS_B),
                   help="(b) rows to run; the others are kept from the results file (merged per method)")
    p.add_argument("--work", default="/tmp/bench_critics")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default=NAME, help="results file bench/results/<name>.json (parallel runs: one each)")
    p.add_argument("--merge", nargs="+", default=[], help="fold these result files into <name>.json, print, exit")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    settings = {k: v for k, v in vars(args).items() if k not in ("quiet",)}
    path = RESULTS / f"{args.name}.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc.setdefault("a", {})
    doc.setdefault("b", {})
    for other in args.merge:  # results of parallel runs (other --name), merged per part and task
        o = json.loads(Path(other).read_text())
        for part in ("a", "prepare"):
            doc[part] = doc.get(part, {}) | o.get(part, {})
        doc["b"] = merge_b(doc.get("b", {}), o.get("b", {}))
        doc.setdefault("runs", []).append({"file": Path(other).name, "settings": o.get("settings"),
                                           "wall_s": o.get("wall_s")})
    if args.merge:
        args.tasks_a = args.tasks_b = ""
        settings = {"merged": args.merge, "note": "each part's settings are in a.<task> / b.<task>.settings"}
    prepared: dict = {}
    t_all = time.perf_counter()

    def prep(name: str) -> dict:
        if name not in prepared:
            prepared[name] = prepare(name, args, work)
        return prepared[name]

    def save() -> None:
        doc["prepare"] = doc.get("prepare", {}) | prepared
        write_results(args.name, {k: v for k, v in doc.items() if k != "machine"} | {"settings": settings,
                                                                               "wall_s": time.perf_counter() - t_all})

    methods(args)  # a bad --methods or --n-grid fails before any work
    n_grid(args)
    for name in [t for t in args.tasks_a.split(",") if t]:
        doc["a"][name] = part_a(name, prep(name), args, work) | {"settings": settings}
        save()
    for name in [t for t in args.tasks_b.split(",") if t]:
        doc["b"] = merge_b(doc["b"], {name: part_b(name, prep(name), args, work) | {"settings": settings}})
        save()
    print_table("(a) ALOE evaluation error", COLUMNS_A, rows_a(doc))
    print_table("(b) success from mixed-quality data", COLUMNS_B, rows_b(doc))
    save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
