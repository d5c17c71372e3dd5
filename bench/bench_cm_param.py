"""Consistency student parameterization (issue 10 item 5): "edm" vs "teacher_eps", side by side in one run.

    python bench/bench_cm_param.py [--parts t13,task] [--variants edm,teacher_eps,teacher_eps_s5]
        [--teacher runs/cm/il_reach/checkpoints/latest] [--label reach] [--episodes 50]
        [--distill-config configs/distill/demo_reach.yaml] [--distill-steps 300]
        [--work runs/cm] [--out cm_param]

Parts (every variant sees the same seeds):
  t13   the toy of tests/distill/test_t13_multimodal.py (rti_consistency.md §4.2 T13): one DDPM teacher, then one
        CTM distillation per variant (the test's loop and settings); per-mode mass and mean error, MMD^2 to the
        teacher's Heun samples, for the one-step (CM-1) and chained (CM-3) student, at init and after distillation.
  task  a trained diffusion checkpoint (--teacher): `distill` (--distill-config + the variant's policy.*
        overrides, --distill-steps steps), then `evaluate` the teacher (its sampler, DDIM-10) and each
        student at CM-1 and CM-3 over the same --episodes evaluation seeds.
Variants (policy.* overrides of DistillConfig): edm = CP's EDM-preconditioned student (the previous default);
teacher_eps = read as the teacher's epsilon-model (= the teacher at init), sigma_max 80; teacher_eps_s5 = the
same with sigma_max 5 (the one-step sample starts at sigma 5, where x0 = x - sigma eps amplifies an epsilon error
5x instead of 80x; training covers the same range); teacher_eps_s2 likewise with sigma_max 2.
Results are merged per part/label into bench/results/<out>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine, print_table, write_results  # noqa: E402

VARIANTS = {
    "edm": {"parameterization": "edm"},
    "teacher_eps": {"parameterization": "teacher_eps"},
    "teacher_eps_s5": {"parameterization": "teacher_eps", "sigma_max": 5.0},
    "teacher_eps_s2": {"parameterization": "teacher_eps", "sigma_max": 2.0},
}


# ============================================================================================== t13
def run_t13(variants: list[str]) -> dict:
    import copy

    import torch

    sys.path.insert(0, str(ROOT / "tests" / "distill"))
    import test_t13_multimodal as t13  # the toy, its teacher and its distill loop, not a copy

    from policies.consistency import edm
    from policies.consistency.config import ConsistencyConfig
    from robotstack.train.distill import DistillConfig, build_student

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    teacher, teacher_loss = t13.train_teacher(gen)
    after_teacher = gen.get_state()
    ref_cc = ConsistencyConfig()  # the teacher's reference sampler: Heun over the default 80-bin grid to 80
    o = torch.rand(t13.N_EVAL, generator=torch.Generator().manual_seed(123)) * 2 - 1
    obs = {t13.KEY: o.reshape(t13.N_EVAL, 1, 1)}
    sc = teacher.config.scheduler
    teacher_d = edm.EpsTeacher(teacher.denoiser, teacher.schedule.alphas_cumprod,
                               clip=sc.clip_sample_range if sc.clip_sample else None)
    teach = t13.teacher_heun_samples(teacher, teacher_d, ref_cc, obs, seed=1)
    teach2 = t13.teacher_heun_samples(teacher, teacher_d, ref_cc, obs, seed=2)

    def joint(x):
        return torch.cat([x.flatten(1), o[:, None]], 1)

    mmd_tt = t13.mmd2(joint(teach), joint(teach2))
    out = {"teacher_loss": teacher_loss, "teacher_heun": t13.mode_stats(teach, o), "mmd2_teacher_teacher": mmd_tt,
           "mmd_bound": 3 * mmd_tt + 1e-3, "settings": {
               "teacher_steps": t13.TEACHER_STEPS, "distill_steps": t13.DISTILL_STEPS,
               "distill_batch": t13.DISTILL_BATCH, "distill_lr": t13.DISTILL_LR, "eval_samples": t13.N_EVAL,
               "mmd_bandwidth": t13.MMD_BANDWIDTH}, "variants": {}}

    def measure(student) -> dict:
        row = {}
        for steps, seed in ((1, 3), (3, 5)):
            x = student.predict_action(obs, steps=steps, generator=torch.Generator().manual_seed(seed)).chunk
            row[f"cm{steps}"] = t13.mode_stats(x, o) | {"mmd2": t13.mmd2(joint(x), joint(teach))}
        return row

    for name in variants:
        cc = ConsistencyConfig(**VARIANTS[name])
        init = build_student(DistillConfig(teacher="<in-memory>", policy=copy.deepcopy(cc)), teacher).eval()
        g = torch.Generator()
        g.set_state(after_teacher)
        t1 = time.perf_counter()
        student, _, metrics = t13.distill_ctm(teacher, g, policy=copy.deepcopy(cc))
        out["variants"][name] = {"policy": VARIANTS[name], "init": measure(init), "distilled": measure(student),
                                 "final_metrics": metrics, "distill_s": time.perf_counter() - t1}
        print(f"t13 {name}: {json.dumps(out['variants'][name], default=str)}", flush=True)
    out["wall_s"] = time.perf_counter() - t0
    return out


# ============================================================================================= task
def run_task(variants: list[str], teacher: str, distill_config: str, distill_steps: int, episodes: int, work: Path,
             label: str) -> dict:
    from robotstack.core.config import load_config
    from robotstack.eval.rollout import evaluate_checkpoint
    from robotstack.train.distill import DistillConfig, distill

    t0 = time.perf_counter()
    rows = {}
    res, _ = evaluate_checkpoint(teacher, episodes, out_dir=work / f"eval_{label}_teacher", show_progress=False)
    rows["teacher_ddim10"] = res.summary()
    print(f"{label} teacher: {rows['teacher_ddim10']['success_rate']}", flush=True)
    for name in variants:
        overrides = [f"teacher={teacher}", f"train.steps={distill_steps}", f"train.checkpoint_every={distill_steps}"]
        overrides += [f"policy.{k}={v}" for k, v in VARIANTS[name].items()]
        cfg = load_config(DistillConfig, ROOT / distill_config, overrides)
        run_dir = work / f"student_{label}_{name}"
        t1 = time.perf_counter()
        _, summary = distill(cfg, run_dir, show_progress=False)
        ckpt = run_dir / "checkpoints" / "latest"
        for steps in (1, 3):
            res, _ = evaluate_checkpoint(ckpt, episodes, steps=steps, out_dir=work / f"eval_{label}_{name}_cm{steps}",
                                         show_progress=False)
            rows[f"{name}_cm{steps}"] = res.summary() | {"distill_final_loss": summary["final_loss"],
                                                         "distill_s": summary["wall_s"], "overrides": overrides}
            print(f"{label} {name} cm{steps}: {rows[f'{name}_cm{steps}']['success_rate']} "
                  f"({time.perf_counter() - t1:.0f}s)", flush=True)
    return {"teacher": teacher, "episodes": episodes, "distill_config": distill_config,
            "distill_steps": distill_steps, "rows": rows,
            "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="t13,task")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--teacher", default="runs/cm/il_reach/checkpoints/latest")
    ap.add_argument("--label", default="reach")
    ap.add_argument("--distill-config", default="configs/distill/demo_reach.yaml")
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--work", default="runs/cm")
    ap.add_argument("--out", default="cm_param")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"--variants: unknown {sorted(unknown)}, expected some of {list(VARIANTS)}")
    path = RESULTS / f"{args.out}.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc.pop("machine", None)
    doc.setdefault("description", __doc__)
    runs = doc.setdefault("runs", {})
    parts = args.parts.split(",")
    if "t13" in parts:
        runs["t13"] = run_t13(variants) | {"machine": machine(), "command": sys.argv}
        write_results(args.out, doc)
        rows = [[n, p, v[p]["cm1"]["mass_plus"], v[p]["cm1"]["mean_err_plus"], v[p]["cm1"]["mean_err_minus"],
                 v[p]["cm1"]["mmd2"], v[p]["cm3"]["mean_err_plus"], v[p]["cm3"]["mmd2"]]
                for n, v in runs["t13"]["variants"].items() for p in ("init", "distilled")]
        print_table(f"T13 (teacher/teacher' MMD^2 {runs['t13']['mmd2_teacher_teacher']:.2e})",
                    ["variant", "when", "cm1 mass+", "cm1 err+", "cm1 err-", "cm1 mmd2", "cm3 err+", "cm3 mmd2"], rows)
    if "task" in parts:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        result = run_task(variants, args.teacher, args.distill_config, args.distill_steps, args.episodes, work,
                          args.label)
        runs[args.label] = result | {"machine": machine(), "command": sys.argv}
        write_results(args.out, doc)
        r = runs[args.label]["rows"]
        print_table(f"{args.label}: success over {args.episodes} episodes",
                    ["policy", "success", "mean length"],
                    [[k, v["success_rate"], v.get("mean_length", "")] for k, v in r.items()])


if __name__ == "__main__":
    main()
