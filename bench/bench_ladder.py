"""Imitation ladder: per task, where between the expert and the learned policy is success lost?

    python bench/bench_ladder.py [--tasks push,pick_place] [--episodes 100] [--multipliers 1,3,10]
                                 [--rungs replay,expert,bc,diffusion] [--demos 50] [--noise 0.2]

Every rung uses the one store bench_il records (`--demos` noisy scripted demos, noise `--noise`, seeds 0..demos-1,
bench_il.record_demos) and the same evaluation episodes (seeds eval_seed, eval_seed+1, ...):
  replay     re-run the env from each recorded episode's seed and execute its recorded actions open-loop; the
             fraction of episodes whose outcome (success and length) reproduces, the fraction reproduced exactly
             (every recorded state within REPLAY_TOL) and the max state deviation: is the sim deterministic?
  expert     the scripted expert closed loop on its own observations, at noise 0 and at the recording noise: is
             the teacher good on the evaluation seeds, and what does the noise cost?
  bc         plain regression BC (policies/bc, `train il` with policy.kind=mlp_bc): same obs keys,
             normalization, To/T/Ta and train steps as the task's IL config, MSE on the action chunk.
  diffusion  the shipped configs/il/<task>.yaml at each multiplier x its train.steps: ONE run of the largest
             multiplier, checkpointed every train.steps and evaluated at each multiplier's step. Its cosine lr
             schedule spans the long run, so the 1x checkpoint is not the same as a 1x run (lr not yet decayed).
Policies are evaluated with their EMA weights and the config's sampler (DDIM-10) as bench_il does. Results are merged
per task and rung into bench/results/bench_ladder.json; each rung records its wall time. Run dirs in --work are
reused: a finished run is evaluated again without training, an interrupted one resumes (same resolved config only).
Nothing here is tuned: the configs are the shipped defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_il import record_demos  # noqa: E402
from bench.common import RESULTS, machine, print_table, write_results  # noqa: E402

RUNGS = ("replay", "expert", "bc", "diffusion")
REPLAY_TOL = 1e-6  # max |replayed - recorded| state for "exact": the store holds float32 obs


# ============================================================================================ replay
def replay_episode(env, seed: int, frames: dict, keys: list[str]) -> dict:
    """Reset `env` with `seed`, execute frames["action"] open-loop and compare each observation before a step
    with the recorded one. -> {"success", "length", "max_dev"} of the replay."""
    import numpy as np

    obs, _ = env.reset(seed=seed)
    actions = frames["action"]
    max_dev, success, length = 0.0, False, 0
    for t, action in enumerate(actions):
        for k in keys:
            max_dev = max(max_dev, float(np.max(np.abs(np.asarray(obs[k], np.float32) - frames[k][t]))))
        obs, _, terminated, truncated, info = env.step(action)
        success |= bool(info.get("is_success", False))
        length = t + 1
        if terminated or truncated:
            break
    return {"success": success, "length": length, "max_dev": max_dev}


def replay_store(task: str, store_path: Path) -> dict:
    """The replay rung over every episode of the store (see the module docstring)."""
    import sim
    from robotstack.core import keys as K
    from robotstack.data.store import EpisodeStore

    env = sim.make(task)
    try:
        env_keys = set(env.observation_space.spaces)
        with EpisodeStore.open(store_path) as store:
            keys = [k for k in store.keys() if k in env_keys and not K.is_image_key(k)]
            metas, episodes = store.episode_metas(), []
            for i, meta in enumerate(metas):
                if meta.seed is None:
                    raise ValueError(f"{store_path}: episode {i} has no recorded seed; replay needs it")
                frames = store.episode(i, [*keys, K.ACTION])
                r = replay_episode(env, meta.seed, frames, keys)
                outcome = r["success"] == meta.success and r["length"] == len(frames[K.ACTION])
                episodes.append(r | {"episode": i, "seed": meta.seed, "outcome_reproduced": outcome,
                                     "exact": outcome and r["max_dev"] <= REPLAY_TOL})
    finally:
        env.close()
    n = len(episodes)
    return {"episodes": n, "compared_keys": keys, "tol": REPLAY_TOL,
            "outcome_reproduced": sum(e["outcome_reproduced"] for e in episodes) / n,
            "exact": sum(e["exact"] for e in episodes) / n,
            "max_state_dev": max(e["max_dev"] for e in episodes),
            "diverged": [e["episode"] for e in episodes if not e["exact"]]}


# ============================================================================================ expert
def expert_rollouts(task: str, noise: float, episodes: int, seed: int) -> dict:
    """The scripted expert closed loop on its own observations over the evaluation seeds."""
    import sim
    from robotstack.eval.metrics import EpisodeResult, summarize

    env = sim.make(task)
    expert = sim.make_expert(env, noise=noise, seed=seed)
    results = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            expert.reset()
            success, length, ret = False, 0, 0.0
            while True:
                obs, reward, terminated, truncated, info = env.step(expert.act(obs))
                success |= bool(info.get("is_success", False))
                length, ret = length + 1, ret + float(reward)
                if terminated or truncated:
                    break
            results.append(EpisodeResult(i, seed + i, success, length, ret))
    finally:
        env.close()
    return _eval_fields(summarize(results))


# ========================================================================================= policies
def _eval_fields(s: dict) -> dict:
    return {k: s[k] for k in ("episodes", "success_rate", "ci95_low", "ci95_high", "mean_length") if k in s}


def _same_config(a, b) -> bool:
    """Resolved configs equal up to how the store paths are spelled (relative or absolute)."""
    from robotstack.core.config import to_dict

    da, db = to_dict(a), to_dict(b)
    da["data"]["paths"] = [str(Path(p).resolve()) for p in da["data"]["paths"]]
    db["data"]["paths"] = [str(Path(p).resolve()) for p in db["data"]["paths"]]
    return da == db


def train_or_reuse(cfg, run_dir: Path, quiet: bool) -> dict:
    """Train cfg into run_dir; reuse a finished run (its summary.json), resume an interrupted one. -> train fields."""
    from robotstack.core.errors import ConfigError
    from robotstack.train.common import CONFIG_NAME
    from robotstack.train.il import resolve_config, train

    latest = run_dir / "checkpoints" / "latest"
    if (run_dir / CONFIG_NAME).exists():
        if not _same_config(resolve_config(None, [], str(run_dir)), cfg):
            raise ConfigError(f"{run_dir / CONFIG_NAME}: an earlier run with a different config; delete {run_dir}")
        step = json.loads((latest / "train_state.json").read_text())["step"] if latest.exists() else 0
        if step >= cfg.train.steps and (run_dir / "summary.json").exists():
            s = json.loads((run_dir / "summary.json").read_text())
            return {"train_steps": cfg.train.steps, "train_wall_s": s["wall_s"], "reused_run": str(run_dir)}
    t0 = time.perf_counter()
    resume = latest.exists()
    s = train(cfg, run_dir, resume=resume, show_progress=not quiet)
    return {"train_steps": cfg.train.steps, "train_wall_s": time.perf_counter() - t0, "resumed": resume,
            "final_loss": s["final_loss"]}


def _train_wall_to(run_dir: Path, step: int) -> float | None:
    """Training wall time from the run's start to `step`, from metrics.csv (the first logged interval is
    extrapolated back to step 0); None when the run did not log that step."""
    from robotstack.train.common import read_metrics

    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    at = [r for r in rows if r["step"] == step]
    if not rows or not at or rows[0]["step"] >= step:
        return None
    first = rows[0]
    return (at[0]["wall_time"] - first["wall_time"]) * step / (step - first["step"])


def evaluate_rung(checkpoint: Path, args: argparse.Namespace) -> dict:
    from robotstack.eval.rollout import evaluate_checkpoint

    result, _ = evaluate_checkpoint(checkpoint, args.episodes, ema=True, seed=args.eval_seed, num_envs=args.num_envs,
                                    show_progress=not args.quiet)
    s = result.summary()
    return _eval_fields(s) | {"eval_wall_s": s["wall_s"], "checkpoint": str(checkpoint)}


# ============================================================================================== task
def run_task(name: str, args: argparse.Namespace, work: Path) -> dict:
    """-> {rung name: fields (with wall_s)} for the rungs in args.rungs, plus the store's description."""
    from robotstack.data.store import EpisodeStore
    from robotstack.train.il import resolve_config

    config = ROOT / "configs" / "il" / f"{name}.yaml"
    base = resolve_config(str(config), [], None)
    if any(k.startswith("image_") for k in base.data.obs_keys):
        raise ValueError(f"{config}: the ladder runs state tasks only (expert/replay compare state observations)")
    store = work / f"{name}_demos.zarr"
    info: dict = {"task": name, "env": base.task, "config": str(config.relative_to(ROOT)), "demos": args.demos,
                  "noise": args.noise, "eval_episodes": args.episodes, "eval_seed": args.eval_seed}
    if not store.exists():
        info |= record_demos(base.task, (), 96, store, args.demos, args.noise)
    with EpisodeStore.open(store) as s:
        metas = s.episode_metas()
        info |= {"demo_success": sum(bool(m.success) for m in metas) / max(1, len(metas)), "demo_frames": s.n_frames}
    rungs: dict[str, dict] = {}

    def timed(key: str, fn) -> None:
        t0 = time.perf_counter()
        rungs[key] = fn() | {"wall_s": time.perf_counter() - t0}
        print(f"{name} {key}: {json.dumps(rungs[key], default=str)[:300]}", flush=True)

    def il_config(*overrides: str):
        return resolve_config(str(config), [f"data.paths=[{store}]", "eval.episodes=0", *overrides], None)

    if "replay" in args.rungs:
        timed("replay", lambda: replay_store(base.task, store))
    if "expert" in args.rungs:
        for noise in sorted({0.0, args.noise}):
            timed(f"expert_noise{noise:g}", lambda: expert_rollouts(base.task, noise, args.episodes, args.eval_seed))
    if "bc" in args.rungs:
        def bc() -> dict:
            run = work / f"{name}_bc"
            return train_or_reuse(il_config("policy.kind=mlp_bc"), run, args.quiet) | evaluate_rung(
                run / "checkpoints" / "latest", args)
        timed("bc", bc)
    if "diffusion" in args.rungs:
        steps = base.train.steps
        run = work / f"{name}_diffusion_x{max(args.multipliers)}"
        cfg = il_config(f"train.steps={steps * max(args.multipliers)}", f"train.checkpoint_every={steps}",
                        "train.keep_checkpoints=0")
        if args.eval_only:  # a run still training elsewhere: evaluate the checkpoints it has written so far
            if not _same_config(resolve_config(None, [], str(run)), cfg):
                raise ValueError(f"{run}: its config.json is not the config this ladder would train")
        else:
            t0 = time.perf_counter()
            rungs["diffusion_train"] = train_or_reuse(cfg, run, args.quiet) | {"wall_s": time.perf_counter() - t0}
        for m in args.multipliers:
            ckpt = run / "checkpoints" / f"step_{steps * m}"
            if ckpt.exists():
                timed(f"diffusion_{m}x", lambda: {"step": steps * m, "multiplier": m, "run_steps": cfg.train.steps,
                                                  "train_wall_to_step_s": _train_wall_to(run, steps * m)}
                      | evaluate_rung(ckpt, args))
    return {"info": info, "rungs": rungs}


# ============================================================================================== main
COLUMNS = ["task", "rung", "success_rate", "ci95_low", "ci95_high", "mean_length", "detail", "wall_s"]


def table_rows(name: str, rungs: dict) -> list[list]:
    rows = []
    for key, r in rungs.items():
        if key == "replay":
            detail = f"exact {r['exact']:.2f}, max dev {r['max_state_dev']:.2g}, diverged {len(r['diverged'])}"
            rows.append([name, key, r["outcome_reproduced"], "", "", "", detail, r["wall_s"]])
        elif key == "diffusion_train":
            rows.append([name, key, "", "", "", "", f"{r['train_steps']} steps", r["wall_s"]])
        else:
            detail = f"{r['train_steps']} steps" if "train_steps" in r else f"step {r['step']}" if "step" in r else ""
            rows.append([name, key, r["success_rate"], r["ci95_low"], r["ci95_high"], r["mean_length"], detail,
                         r["wall_s"]])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="push,pick_place", help="config names under configs/il/ (state tasks)")
    p.add_argument("--rungs", default=",".join(RUNGS), help=f"subset of {','.join(RUNGS)}")
    p.add_argument("--multipliers", default="1,3,10", help="diffusion train steps as multiples of the config's")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--demos", type=int, default=50)
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--eval-seed", type=int, default=100_000)
    p.add_argument("--num-envs", type=int, default=1)
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_ladder"), help="stores and run dirs (git-ignored)")
    p.add_argument("--eval-only", action="store_true",
                   help="diffusion rung: do not train; evaluate the multiplier checkpoints the run dir already has")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    args.rungs = [r for r in args.rungs.split(",") if r]
    if unknown := sorted(set(args.rungs) - set(RUNGS)):
        p.error(f"--rungs: unknown {unknown}; choose from {list(RUNGS)}")
    args.multipliers = sorted({int(m) for m in args.multipliers.split(",") if m})
    if not args.multipliers or args.multipliers[0] < 1:
        p.error("--multipliers: positive integers, e.g. 1,3,10")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bench_ladder.json"
    rows = []
    for name in [t for t in args.tasks.split(",") if t]:
        out = run_task(name, args, work)
        # read just before writing: another ladder process (other rungs of the task) may have written meanwhile
        previous = json.loads(path.read_text()).get("tasks", {}) if path.exists() else {}
        entry = previous.setdefault(name, {"rungs": {}})
        entry["info"] = out["info"] | {"machine": machine()}
        entry["rungs"] |= out["rungs"]  # rungs of this run replace earlier ones, the others stay
        write_results("bench_ladder", {"tasks": previous})
        rows += table_rows(name, out["rungs"])
    print_table("bench_ladder (this run)", COLUMNS, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
