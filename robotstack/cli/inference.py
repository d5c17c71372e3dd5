"""CLI verbs of the fast-inference stack :

    robotstack distill --config configs/distill/ctm.yaml [dotted.key=value ...] [--out RUN_DIR] | --resume RUN_DIR
    robotstack distill --checkpoint TEACHER [--method ctm|rl100] [--steps N] --out RUN_DIR   (flags = overrides)
    robotstack export --checkpoint DIR --sampler cm1|cm3|ddim|rti|cm_warm --out ARTIFACT_DIR [--steps K] [--k-start K']
                      [--critic SCORER_DIR [--best-of-n N]] [--n-exec N]   (best-of-N: critic.onnx beside policy.onnx)
    robotstack rti choose-k --checkpoint DIR --data STORE [--pairs 128]
    robotstack eval-artifact --artifact DIR [--task TASK] [--episodes 100] [--best-of-n N]   (onnxruntime only)
Heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import json


def _dims(text: str, action_dim_hint: str = "") -> list[int] | None:
    if text == "task":
        return None  # the task spec's binary gripper dims (Panda: the last; Meta-World: none)
    if text == "last":
        return [-1]
    if text == "none":
        return []
    return [int(d) for d in text.split(",") if d]


# shortcut flag -> the dotted key of configs/distill/*.yaml it overrides
DISTILL_FLAGS = {"checkpoint": "teacher", "method": "policy.method", "steps": "train.steps",
                 "batch_size": "train.batch_size", "lr": "train.lr", "seed": "train.seed", "data": "data.paths"}


def cmd_distill(args: argparse.Namespace) -> int:
    from robotstack.cli.train import run_stage

    flags = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in DISTILL_FLAGS.items()
             if getattr(args, flag) is not None]
    return run_stage("distill", args, flags)


def _task_spec(checkpoint: str, task: str | None) -> dict:
    """The sim task spec the manifest's task fields come from (control rate, action contract, robot, success)."""
    from policies.checkpoint import read_extra
    from robotstack.core.errors import ConfigError

    extra = read_extra(checkpoint)
    if extra.get("task_spec"):
        return extra["task_spec"]
    task = task or extra.get("task")
    if not task:
        raise ConfigError(f"export {checkpoint}: its config.json names no task (extra.task); pass --task")
    import sim

    env = sim.make(task)
    try:
        spec = getattr(env.unwrapped, "task_spec", None)
        if spec is None:
            raise ConfigError(f"export: task {task!r} offers no task_spec() (the manifest's control rate, action "
                              "contract, robot and success criterion come from it)")
        return spec()
    finally:
        env.close()


def _rti_steps(text: str | None) -> tuple[int, ...] | None:
    """--rti-steps "5,2,0" -> (5, 2, 0); the list itself is checked by the sampler (descending, ends in 0)."""
    from robotstack.core.errors import ConfigError

    if not text:
        return None
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ConfigError(f"--rti-steps {text!r}: expected comma-separated integers, e.g. 5,2,0") from None


def cmd_export(args: argparse.Namespace) -> int:
    from policies.diffusion.rti import DEFAULT_EXPORT_STEPS, RTIConfig
    from robotstack.export.onnx_export import export_artifact

    rti = None
    if args.sampler == "rti":  # --k-start K' wins (steps K'..0), else --rti-steps, else the exporter's default
        steps = None if args.k_start is not None else (_rti_steps(args.rti_steps) or DEFAULT_EXPORT_STEPS)
        rti = RTIConfig(k_start=args.k_start if steps is None else steps[0], steps=steps,
                        gripper_mode=args.gripper_mode, factor=args.factor, step_semantics=args.step_semantics,
                        init_sampler="ddim", init_steps=args.steps)
    critic = _load_scorer(args.critic) if args.critic else None
    m = export_artifact(args.checkpoint, args.sampler, args.out, steps=args.steps, rti=rti,
                        gripper_dims=_dims(args.gripper_dims), control_rate_hz=args.control_rate,
                        task_spec=_task_spec(args.checkpoint, args.task), seed=args.seed, critic=critic,
                        best_of_n=args.best_of_n, n_exec=args.n_exec, warm_t=args.warm_t)
    if m.get("critic"):
        c = m["critic"]
        print(f"wrote {args.out}/critic.onnx (best-of-N, default N {c['n']}, scores the first {c['h_a']} executed "
              f"actions, {c['aggregate']} over the ensemble); parity max|err| {c['parity']['max_abs_err']:.2e}; "
              f"ORT p50 {c['latency']['ort']['p50_ms']:.3f} ms at N {c['n']}")
    if m.get("rti"):
        print(f"rti gripper: {m['rti']['gripper_reason']}")
    lat = m["latency"]["policy"]
    print(f"wrote {args.out}/policy.onnx ({m['sampler']}, NFE/call {m['nfe']['per_call']}); parity max|err| "
          f"{m['parity']['max_abs_err']:.2e}; ORT p50 {lat['ort']['p50_ms']:.3f} ms p99 {lat['ort']['p99_ms']:.3f} ms "
          f"(torch p50 {lat['torch']['p50_ms']:.3f} ms)")
    return 0


def _load_scorer(path: str):
    """A critic scorer dir (`robotstack train critic`'s RUN_DIR/checkpoints/latest) -> the scorer module."""
    from robotstack.core.errors import ConfigError

    try:
        from policies.critics.scorer import load_scorer
    except ImportError as e:
        raise ConfigError(f"export --critic {path}: policies/critics/scorer.py (load_scorer) is not available: "
                          f"{e}") from None
    return load_scorer(path)


def cmd_rti_choose_k(args: argparse.Namespace) -> int:
    from robotstack.eval.rti_choose_k import choose_k

    res = choose_k(args.checkpoint, args.data, pairs=args.pairs, sampler=args.sampler, seed=args.seed)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{'k':>3} {'E||G - sqrt(abar)A||^2':>24} {'(1-abar) T Da':>14} {'noise std':>10}")
    for r in res["rows"][: max(12, res["k_start"] + 3)]:
        mark = "  <- K'" if r["k"] == res["k_start"] else ""
        print(f"{r['k']:>3} {r['lhs']:>24.4f} {r['rhs']:>14.4f} {r['noise_std']:>10.3f}{mark}")
    print(f"estimated K' = {res['k_start']} (steps [{res['k_start']}..0], {res['k_start'] + 1} NFE per decision) "
          f"from {res['pairs']} frame pairs; validate closed-loop")
    return 0


def cmd_eval_artifact(args: argparse.Namespace) -> int:
    from robotstack.eval.actor_rollout import rollout_actor
    from robotstack.runtime.artifact import load_artifact

    art = load_artifact(args.artifact, seed=args.seed, best_of_n=args.best_of_n)
    task = args.task or art.manifest.task["name"]
    res = rollout_actor(art, task, args.episodes, seed=args.seed_env, show_progress=not args.quiet,
                        description=f"eval-artifact {task}",
                        action_mode=art.manifest.ee_action.get("action_mode", "delta"))  # the mode it was trained in
    s = res.summary()
    print(f"{args.artifact} ({art.sampler}{f', best-of-{art.n}' if art.n > 1 else ''}, onnxruntime) on {task}: success {s['success_rate']:.1%} "
          f"({s['successes']}/{s['episodes']}, 95% CI [{s['ci95_low']:.1%}, {s['ci95_high']:.1%}]); "
          f"decision p50 {s['decision_p50_ms']:.3f} ms p99 {s['decision_p99_ms']:.3f} ms")
    return 0


def add_verbs(sub) -> None:
    from robotstack.cli.train import add_stage_arguments

    d = sub.add_parser("distill", help="consistency-distill a diffusion checkpoint into a one-step student",
                       description="robotstack distill --config configs/distill/ctm.yaml teacher=RUN/checkpoints/"
                                   "latest [dotted.key=value ...]; the student is RUN_DIR/checkpoints/latest")
    add_stage_arguments(d, config_help="YAML config (configs/distill/*.yaml); default: DistillConfig's defaults (ctm)",
                        example="train.steps=300 policy.method=rl100", default_run="runs/distill/<teacher>_<time>")
    d.add_argument("--checkpoint", default=None, help="teacher checkpoint dir (= teacher=DIR)")
    d.add_argument("--method", default=None, choices=["ctm", "rl100"], help="= policy.method=...")
    d.add_argument("--steps", type=int, default=None, help="= train.steps=N")
    d.add_argument("--batch-size", type=int, default=None, help="= train.batch_size=N")
    d.add_argument("--lr", type=float, default=None, help="= train.lr=X")
    d.add_argument("--seed", type=int, default=None, help="= train.seed=N")
    d.add_argument("--data", nargs="*", default=None, help="episode stores (= data.paths; default: the teacher's)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_distill)

    e = sub.add_parser("export", help="export a sampler to ONNX (policy.onnx + manifest.json)")
    e.add_argument("--checkpoint", required=True, help="diffusion (ddim, rti) or distilled (cm1, cm3, cm_warm) "
                                                      "checkpoint")
    e.add_argument("--sampler", required=True, choices=["cm1", "cm3", "ddim", "rti", "cm_warm"],
                   help="cm_warm: a distilled student warm-started from its previous chunk (one call per decision, "
                        "one action executed by default; policies/consistency/warm.py)")
    e.add_argument("--out", required=True, help="artifact dir")
    e.add_argument("--steps", type=int, default=None, help="DDIM steps (ddim; rti's first call)")
    e.add_argument("--k-start", type=int, default=None, help="rti: K' (steps K'..0, K'+1 calls); overrides "
                                                                  "--rti-steps")
    e.add_argument("--rti-steps", default=None,
                   help="rti: the warm calls' descending step list ending in 0 (default 20,10,0 = the exporter's "
                        "DEFAULT_EXPORT_STEPS: 3 calls from noise level 20; K'=2 lost up to 80 points on stack)")
    e.add_argument("--gripper-mode", default="auto", choices=["auto", "none", "clip", "scale"],
                   help="rti guess handling; auto = scale for a policy trained with the gripper scaled, else clip "
                        "with factor 10 (clip with factor 1 freezes the gripper at small K')")
    e.add_argument("--factor", type=float, default=10.0, help="rti gripper factor (clip/scale; auto picks its own)")
    e.add_argument("--step-semantics", default="jump", choices=["official_t_minus_1", "jump"],
                   help="jump: step to the next listed level (default); official_t_minus_1: the official code's "
                        "t -> t-1 posterior whatever the list (the same for a consecutive list like 2,1,0)")
    e.add_argument("--gripper-dims", default="task",
                   help="thresholded action dims: task (the task's binary gripper: Panda the last dim, Meta-World "
                        "none) | last | none | i,j")
    e.add_argument("--control-rate", type=float, default=None, help="Hz (default: the task's)")
    e.add_argument("--task", default=None, help="sim task whose spec the manifest carries (default: the "
                                                "checkpoint's task)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--critic", default=None, help="critic scorer dir (`robotstack train critic`: RUN_DIR/checkpoints/"
                                                  "latest): exported as critic.onnx for best-of-N at deployment")
    e.add_argument("--best-of-n", type=int, default=32, help="with --critic: the artifact's default N (candidates "
                                                             "per decision; the runtime may be given another)")
    e.add_argument("--n-exec", type=int, default=None, metavar="N",
                   help="cm1 / cm3 / ddim / cm_warm: actions executed per call, 1..the policy's Ta (default Ta; "
                        "cm_warm 1); 1 = replan every control step, as RTI does")
    e.add_argument("--warm-t", type=int, default=None,
                   help="cm_warm: the chain point the shifted previous chunk is re-noised to (one of the student's "
                        "DDIM timesteps; default the one nearest 20)")
    e.set_defaults(func=cmd_export)

    r = sub.add_parser("rti", help="RTI warm-started denoising tools")
    r_sub = r.add_subparsers(dest="rti_verb", required=True)
    ck = r_sub.add_parser("choose-k", help="estimate RTI's start step K' from recorded rollouts")
    ck.add_argument("--checkpoint", required=True)
    ck.add_argument("--data", required=True, help="episode store")
    ck.add_argument("--pairs", type=int, default=128)
    ck.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim"])
    ck.add_argument("--seed", type=int, default=0)
    ck.add_argument("--json", action="store_true")
    ck.set_defaults(func=cmd_rti_choose_k)

    ea = sub.add_parser("eval-artifact", help="roll out an exported artifact in sim with onnxruntime (no torch)")
    ea.add_argument("--artifact", required=True)
    ea.add_argument("--task", default="", help="default: the manifest's task.name")
    ea.add_argument("--episodes", type=int, default=100)
    ea.add_argument("--seed", type=int, default=0, help="noise seed of the runtime")
    ea.add_argument("--seed-env", type=int, default=100_000, help="seed of the first episode")
    ea.add_argument("--best-of-n", type=int, default=None, help="candidates per decision (default: the manifest's "
                                                                "critic.n, 1 without a critic)")
    ea.add_argument("--quiet", action="store_true")
    ea.set_defaults(func=cmd_eval_artifact)
