"""Print the benchmark tables (markdown) of docs/benchmarks.md from bench/results/*.json, so the docs show
measured numbers.

    .venv/bin/python tools/bench_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def pct(x) -> str:
    return "" if x is None else f"{100 * x:.0f}%"


def sim_table() -> str:
    d = load("bench_sim")
    if not d:
        return "(bench_sim not run)"
    rows = []
    for r in d["rows"]:
        if "error" in r:
            rows.append([r["task"], "error: " + r["error"][:60], "", "", "", "", ""])
            continue
        rows.append([r["task"], round(r["steps_s_state"]), round(r["steps_s_rgb96"]),
                     pct(r["expert_noise0.0"]["success"]), pct(r["expert_noise0.3"]["success"]),
                     round(r["record_fps_state"]), round(r["record_fps_rgb96"])])
    return table(["task", "env steps/s (state)", "env steps/s (96x96 RGB)", "expert success, noise 0",
                  "expert success, noise 0.3", "record frames/s (state)", "record frames/s (RGB)"], rows)


def il_table() -> str:
    d = load("bench_il")
    if not d:
        return "(bench_il not run)"
    rows = []
    for name, r in d["tasks"].items():
        if "error" in r:
            rows.append([name, "error: " + r["error"][:80]] + [""] * 6)
            continue
        rows.append([name, pct(r.get("demo_success")), f"{r['train_steps']} x {r['batch_size']}",
                     round(r["train_samples_per_s"]), f"{r['train_wall_s'] / 60:.1f} min",
                     f"{r['final_loss']:.3f}",
                     f"{pct(r['success_rate'])} [{pct(r['ci95_low'])}, {pct(r['ci95_high'])}]",
                     f"{r['mean_length']:.0f}", _measured(r)])
    return table(["config", "demo success", "steps x batch", "train samples/s", "train wall", "final loss",
                  f"success (100 episodes, 95% CI)", "mean length", "measured (commit, date)"], rows)


def _measured(row: dict) -> str:
    """Rows are merged per task over several runs: say which code and day each one measured."""
    m = row.get("machine", {})
    return f"{m.get('commit', '?')}, {str(m.get('date', '?'))[:10]}"


ROW_ORDER = ["DDPM-100", "DDIM-10", "DDIM-1", "RTI K'=2", "RTI 3-1-0", "RTI 5-2-0", "RTI 10-5-0", "RTI 20-10-0",
             "RTI K'=3", "RTI K'=5", "CM-1 torch", "CM-1 onnxruntime", "CM-3 torch"]


def _inference_rows() -> dict[str, dict]:
    """task (or task@variant) -> {row name: result}; rows of one key may come from several runs
    (bench_inference_<...>.json, `--only` runs); the speed-only files hold no rollout rows."""
    found: dict[str, dict] = {}
    for f in sorted(RESULTS.glob("bench_inference*.json")):
        for key, res in json.loads(f.read_text()).get("results", {}).items():
            found.setdefault(key, {}).update(res.get("rows", {}))
    return found


SUMMARY_ROWS = ("DDIM-10", "RTI K'=2", "RTI 3-1-0", "RTI 5-2-0", "RTI 10-5-0", "RTI 20-10-0",
                "CM-1 onnxruntime", "CM-3 torch")  # the RTI rows: 3 calls each


def inference_summary_table(variant: str = "b256") -> str:
    """One line per task@variant: the issue-10 target rows (DDIM-10, RTI with 3 calls, the CM-1 artifact)."""
    found = _inference_rows()
    rows = []
    for key in sorted(k for k in found if k.endswith(f"@{variant}")):
        cells = [(f"{pct(r['success_rate'])} [{pct(r['ci95_low'])}, {pct(r['ci95_high'])}]" if r else "-")
                 for r in (found[key].get(name) for name in SUMMARY_ROWS)]
        rows.append([key, *cells])
    return table(["task", *(f"{n} success [95% CI]" for n in SUMMARY_ROWS)], rows) if rows else "(none)"


def inference_table() -> str:
    """Per task (or task@variant), every measured row (see _inference_rows)."""
    parts = []
    found = _inference_rows()
    for key in sorted(k for k in found if found[k]):
        rows = []
        for name in sorted(found[key], key=lambda n: ROW_ORDER.index(n) if n in ROW_ORDER else 99):
            r = found[key][name]
            rows.append([name, r["nfe"], f"{r['decision_p50_ms']:.3f}", f"{r['decision_p99_ms']:.3f}",
                         f"{pct(r['success_rate'])} [{pct(r['ci95_low'])}, {pct(r['ci95_high'])}]",
                         r["episodes"]])
        parts.append(f"**{key}**\n\n" + table(["sampler", "NFE", "p50 ms", "p99 ms", "success (95% CI)",
                                                 "episodes"], rows))
    return "\n\n".join(parts) or "(bench_inference not run)"


def speed_table() -> str:
    """The side-by-side speed sections (bench_inference's CM-1 / DDIM-10 / DDIM-100 / DDPM-100 calls, interleaved
    and, in files measured since the blocked schedule exists, blocked)."""
    rows = []
    for f in sorted(RESULTS.glob("bench_inference*.json")):
        d = json.loads(f.read_text())
        for key, res in d.get("results", {}).items():
            sp = res.get("speed")
            if not sp:
                continue
            for schedule, section in (("interleaved", sp), ("blocked", sp.get("blocked"))):
                for name, st in (section["rows"].items() if section else ()):
                    ratio = section["ratios"].get(f"{name} / CM-1 ort", {"p50": 1.0, "mean": 1.0})
                    rows.append([key, schedule, name, f"{st['p50_ms']:.2f}", f"{st['p99_ms']:.2f}",
                                 f"{st['mean_ms']:.2f}", f"{ratio['p50']:.1f}x", f"{ratio['mean']:.1f}x",
                                 f"{f.stem}, {_measured(d)}"])
    return table(["task", "schedule", "row", "p50 ms", "p99 ms", "mean ms", "p50 / CM-1 ort p50", "mean / CM-1 ort mean",
                  "run (file, commit, date)"], rows) if rows else "(no speed section measured)"


def online_rl_table() -> str:
    """bench_online_rl: one line per task@variant (bench/bench_online_rl.py's summary_row)."""
    import sys

    sys.path.insert(0, str(RESULTS.parents[1]))
    from bench.bench_online_rl import COLUMNS, summary_row

    d = load("bench_online_rl")
    rows = [summary_row(key, r) for key, r in (d or {}).get("results", {}).items()]
    return table(COLUMNS, rows) if rows else "(bench_online_rl not run)"


def deploy_table() -> str:
    """bench_deploy: one artifact on the PyBullet arm server (runtime) vs MuJoCo on the same seeds."""
    import sys

    sys.path.insert(0, str(RESULTS.parents[1]))
    from bench.bench_deploy import COLUMNS, summary_row

    d = load("bench_deploy")
    rows = [summary_row(label, r) for label, r in (d or {}).get("results", {}).items()]
    return table(COLUMNS, rows) if rows else "(bench_deploy not run)"


def deploy_pooled_table() -> str:
    """bench_deploy: artifacts run on more than one scene set, their successes summed."""
    import sys

    sys.path.insert(0, str(RESULTS.parents[1]))
    from bench.bench_deploy import POOLED_COLUMNS, pooled_rows

    rows = pooled_rows((load("bench_deploy") or {}).get("results", {}))
    return table(POOLED_COLUMNS, rows) if rows else "(no artifact ran on two scene sets)"


def warm_table() -> str:
    """bench_artifact_eval pairs "<task> pipeline CM-1 (export/artifact)" / "<task> same student, cm_warm ...": the
    pipeline's final student exported both ways, beside its teacher (bench_rl100's teacher_vs_student)."""
    res = (load("bench_artifact_eval") or {}).get("results", {})
    rl = (load("bench_rl100") or {}).get("tasks", {})
    rows = []
    for label, r in res.items():
        if not label.endswith(" pipeline CM-1 (export/artifact)"):
            continue
        key = label.split(" ")[0]
        warm = next((w for lab, w in res.items() if lab.startswith(f"{key} same student, cm_warm")), None)
        if warm is None:
            continue
        teacher = (rl.get(key, {}).get("teacher_vs_student") or {}).get("teacher")
        rows.append([key, r["task"], f"{r['episodes']} ({r['seed_env']})", pct(teacher["rate"]) if teacher else "-",
                     pct(r["success_rate"]), pct(warm["success_rate"]),
                     f"{100 * (warm['success_rate'] - r['success_rate']):+.0f}"])
    cols = ["pipeline", "task", "episodes (first seed)", "teacher (DDIM-10, bench_rl100)", "CM-1 artifact",
            "cm_warm artifact (t 21, 1 action per call)", "cm_warm - CM-1 (points)"]
    return table(cols, rows) if rows else "(no cm_warm pairs in bench_artifact_eval)"


def critics_tables() -> str:
    """bench_critics: (a) ALOE estimate vs Monte Carlo per policy, (b) success per method from mixed data."""
    import sys

    sys.path.insert(0, str(RESULTS.parents[1]))
    from bench.bench_critics import COLUMNS_A, COLUMNS_B, rows_a, rows_b

    d = load("bench_critics")
    if not d:
        return "(bench_critics not run)"
    out = [table(cols, rows) for cols, rows in ((COLUMNS_A, rows_a(d)), (COLUMNS_B, rows_b(d))) if rows]
    return "\n\n".join(out) or "(bench_critics has no rows)"


if __name__ == "__main__":
    for title, fn in (("bench_sim", sim_table), ("bench_il", il_table), ("bench_inference", inference_table),
                      ("bench_inference speed", speed_table),
                      ("bench_inference summary (@b256)", inference_summary_table),
                      ("bench_inference summary (@g10b256: gripper trained at 1/10)",
                       lambda: inference_summary_table("g10b256")),
                      ("bench_online_rl", online_rl_table), ("bench_deploy", deploy_table),
                      ("bench_deploy pooled", deploy_pooled_table), ("cm_warm vs CM-1 (bench_artifact_eval)", warm_table),
                      ("bench_critics", critics_tables)):
        print(f"### {title}\n\n{fn()}\n")
