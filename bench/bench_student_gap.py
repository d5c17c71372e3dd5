"""How far a one-step student's action chunk is from its DDIM teacher's on the states of given episode stores.

    python bench/bench_student_gap.py --teacher RUN/online/checkpoints/latest \
        --student RUN/distill/checkpoints/latest [--label "push@servo final"] \
        --store "distill store=RUN/merge_0/store.zarr" --store "arm server=runs/exp/arm_round/arm2.zarr" [--windows 800]

For each store, `--windows` observation windows (seeded draw) go through the teacher (deterministic DDIM, eta 0,
its own inference grid) and the student (one call) from the same initial noise: the distance between the two is what
same-noise distillation (rl100.md §6) minimises on the stores it was trained on. For scale, the teacher against
itself from another noise draw (its own spread at that state). Distances: L2 over the action dims in normalized
units, mean over the executed steps; reported as mean and p90 over the windows. A student whose gap grows on
states its distillation data did not cover (e.g. the arm server's) follows its teacher only where it was taught.
Results merge per label into bench/results/bench_student_gap.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import RESULTS, print_table, write_results  # noqa: E402

NAME = "bench_student_gap"
COLUMNS = ["student", "states from", "windows", "|student - teacher| mean / p90",
           "|teacher - teacher'| mean / p90", "gap / spread"]


def gaps(teacher, student, store: str, windows: int, seed: int = 0) -> dict:
    """-> distances (normalized action units) of student vs teacher (same noise) and teacher vs teacher (other
    noise) on `windows` windows of `store`."""
    from robotstack.data.dataset import WindowDataset

    c = teacher.config
    keys = list(c.obs_shapes)
    ds = WindowDataset.from_store(store, c.horizon, c.n_obs_steps, keys)
    idx = np.random.default_rng(seed).choice(len(ds), size=min(windows, len(ds)), replace=False)
    obs = {k: torch.stack([ds[int(i)][k] for i in idx]) for k in keys}
    same, other = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        t = teacher.predict_action(obs, sampler="ddim", generator=same, eta=0.0).chunk
        s = student.predict_action(obs, steps=1, generator=torch.Generator().manual_seed(seed + 1)).chunk
        t2 = teacher.predict_action(obs, sampler="ddim", generator=other, eta=0.0).chunk
    sl = teacher.executed_slice

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (B, T, Da) env units -> (B,)
        n = teacher.normalizer.normalize
        return (n("action", a)[:, sl] - n("action", b)[:, sl]).norm(dim=-1).mean(-1)

    d_st, d_tt = dist(s, t), dist(t2, t)
    return {"windows": len(idx), "student_teacher": [float(d_st.mean()), float(d_st.quantile(0.9))],
            "teacher_teacher": [float(d_tt.mean()), float(d_tt.quantile(0.9))]}


def rows(results: dict) -> list[list]:
    out = []
    for label, r in results.items():
        for name, g in r["stores"].items():
            st, tt = g["student_teacher"], g["teacher_teacher"]
            out.append([label, name, g["windows"], f"{st[0]:.3f} / {st[1]:.3f}", f"{tt[0]:.3f} / {tt[1]:.3f}",
                        f"{st[0] / tt[0]:.2f}"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True, help="diffusion checkpoint dir")
    ap.add_argument("--teacher-weights", default="model", choices=["model", "ema", "auto"])
    ap.add_argument("--student", required=True, help="consistency checkpoint dir")
    ap.add_argument("--store", action="append", required=True, help="NAME=PATH of an episode store (repeatable)")
    ap.add_argument("--windows", type=int, default=800)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    stores = {}
    for item in args.store:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_dir():
            raise SystemExit(f"--store {item!r}: expected NAME=PATH of an episode store directory")
        stores[name] = path
    from policies.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    teacher = load_checkpoint(args.teacher, args.teacher_weights)
    student = load_checkpoint(args.student, "model")
    row = {"teacher": args.teacher, "student": args.student, "windows": args.windows,
           "stores": {name: {"path": path, **gaps(teacher, student, path, args.windows)}
                      for name, path in stores.items()}}
    path = RESULTS / f"{NAME}.json"
    results = (json.loads(path.read_text()) if path.exists() else {}).get("results", {})
    results[args.label or args.student] = row
    table = print_table(f"{NAME}: one-step student vs its DDIM teacher, same noise", COLUMNS, rows(results))
    write_results(NAME, {"results": results, "table": table})


if __name__ == "__main__":
    main()
