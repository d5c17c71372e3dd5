"""The pipeline's results, read back from the stages' run dirs: PIPELINE_DIR/pipeline.json (what bench_rl100 reads),
report.md and plots/*.png (matplotlib object API, as robotstack/eval/plots.py).

Per stage: status, success with its 95% Wilson interval (from the stage's own evaluation; collect_m reports the
success of its rollouts of the accepted policy), env steps (demos and rollouts recorded, online interaction, the
artifact's evaluation), wall time (summed over resumes). Also the data by source for every store D_m, the gate
decisions with AM-Q (offline_m/gate.jsonl), and teacher (DDIM) vs student (one-step) side by side. With a
critic (critic.kind != none): the critic run, the artifact's success plain (N = 1) next to best-of-N on the same
seeds, and for aloe the value estimate of the final policy next to its Monte Carlo return.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from robotstack.core.config import to_dict
from robotstack.core.progress import print_summary
from robotstack.eval.metrics import wilson_interval
from robotstack.pipeline.config import PipelineConfig
from robotstack.pipeline.stages import Stage, read_summary, status

PLOTS = "plots"


def _eval_n(stage: Stage, summary: dict, prefix: str) -> int | None:
    n = summary.get(f"{prefix}episodes")
    if n is None:  # a stage that reports only a rate: its resolved config says how many episodes
        cfg_path = stage.run_dir / "config.json"
        if cfg_path.is_file():
            n = json.loads(cfg_path.read_text()).get("eval", {}).get("episodes")
    return int(n) if n else None


def success_of(stage: Stage, summary: dict, prefix: str = "eval_") -> dict | None:
    """{rate, successes, episodes, ci95_low, ci95_high} from `<prefix>success_rate` (+ counts) of a summary."""
    if stage.kind in ("demos", "coverage", "collect"):  # the success of the recorded episodes (no student there)
        n, k = summary.get("episodes"), summary.get("successes")
        rate = k / n if prefix == "eval_" and n else None
    else:
        rate, n, k = summary.get(f"{prefix}success_rate"), _eval_n(stage, summary, prefix), \
            summary.get(f"{prefix}successes")
    if rate is None:
        return None
    out: dict[str, Any] = {"rate": float(rate)}
    if n:
        k = int(k) if k is not None else round(float(rate) * n)
        lo, hi = wilson_interval(k, n)
        out |= {"successes": k, "episodes": n, "ci95_low": lo, "ci95_high": hi}
    return out


def read_gate(run_dir: Path) -> list[dict]:
    path = run_dir / "gate.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stage_row(stage: Stage, state: dict) -> dict:
    summary = read_summary(stage) or {}
    row = {"name": stage.name, "kind": stage.kind, "status": status(stage), "run_dir": str(stage.run_dir),
           "wall_s": state.get(stage.name, {}).get("wall_s", summary.get("wall_s")),
           "env_steps": summary.get("env_steps"), "success": success_of(stage, summary),
           "student_success": success_of(stage, summary, "student_eval_"), "summary": summary}
    if stage.kind == "select" and summary:
        row["round_gate"] = {k: summary.get(k) for k in ("kept", "policy", "evals", "gate_episodes", "gate_seed")}
    if stage.kind == "offline":
        gate = read_gate(stage.run_dir)
        row["gate"] = {"decisions": gate, **{k: summary.get(k) for k in ("amq_initial", "amq_final", "n_accepted",
                                                                          "n_rejected")}}
    return row


def build_doc(cfg: PipelineConfig, root: Path, plan: list[Stage], state: dict, run_status: str) -> dict:
    rows = [_stage_row(s, state) for s in plan]
    by_name = {r["name"]: r for r in rows}
    data = [{"name": r["name"], **{k: r["summary"].get(k) for k in ("store", "episodes", "successes", "frames",
                                                                     "by_source", "by_policy_id")}}
            for r in rows if r["kind"] in ("demos", "merge", "coverage") and r["summary"]]
    export_stage = next(s for s in plan if s.kind == "export")
    teacher_stage = next((s.name for s in plan if (s.module or s.kind == "select") and s.kind != "distill"
                          and str(s.run_dir / "checkpoints" / "latest") == export_stage.inputs["teacher"]), None)
    teacher = by_name.get(teacher_stage, {}) if teacher_stage else {}
    tvs = {"teacher_stage": teacher_stage, "teacher": teacher.get("success"),
           "joint_student": teacher.get("student_success"),
           "artifact": by_name.get("evaluate", {}).get("success"), "artifact_sampler": export_stage.inputs["sampler"]}
    steps = {r["name"]: r["env_steps"] for r in rows if r["env_steps"]}
    critic = critic_doc(cfg, by_name)
    if critic:
        tvs["artifact_best_of_n"] = critic.get("best_of_n_success")
    return {"task": cfg.task, "status": run_status, "pipeline_dir": str(root), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "config": to_dict(cfg), "stages": rows, "data": data, "teacher_vs_student": tvs,
            "env_steps": {"by_stage": steps, "total": sum(steps.values()),
                          "training": sum(v for k, v in steps.items() if k != "evaluate")},
            "wall_s": {"by_stage": {r["name"]: r["wall_s"] for r in rows if r["wall_s"] is not None},
                       "total": sum(r["wall_s"] or 0.0 for r in rows)}, "critic": critic}


def critic_doc(cfg: PipelineConfig, by_name: dict[str, dict]) -> dict | None:
    """The critic's part of pipeline.json (None without a critic)."""
    if cfg.critic.kind == "none":
        return None
    crit = by_name.get("critic", {}).get("summary") or {}
    ev = by_name.get("evaluate", {})
    exp = by_name.get("export", {}).get("summary") or {}
    out = {"kind": cfg.critic.kind, "config": cfg.critic.config, "run_dir": by_name.get("critic", {}).get("run_dir"),
           "steps": crit.get("steps"), "final_loss": crit.get("final_loss"), "final_q_mean": crit.get("final_q_mean"),
           "n_chunks": crit.get("n_chunks")}
    if ev.get("summary", {}).get("best_of_n"):
        stage = Stage("evaluate", "evaluate", Path(ev["run_dir"]))
        out |= {"best_of_n": ev["summary"]["best_of_n"], "plain_success": ev.get("success"),
                "best_of_n_success": success_of(stage, ev["summary"], "bon_eval_"),
                "decision_p50_ms": {"plain": ev["summary"].get("eval_decision_p50_ms"),
                                    "best_of_n": ev["summary"].get("bon_eval_decision_p50_ms")}}
    if exp.get("best_of_n"):
        out |= {"critic_ort_p50_ms": exp.get("critic_ort_p50_ms"), "critic_parity_ok": exp.get("critic_parity_ok")}
    value = (by_name.get("critic_value") or {}).get("summary") or {}
    if value:
        out["value"] = {k: value.get(k) for k in ("estimate", "estimate_ci95", "mc_return", "mc_ci95", "rel_error",
                                                  "gamma", "episodes", "success_rate", "checkpoint")}
    return out


# -------------------------------------------------------------------------------------------- text
def _pct(s: dict | None) -> str:
    if not s:
        return "-"
    if "ci95_low" in s:
        return f"{s['rate']:.1%} [{s['ci95_low']:.0%}, {s['ci95_high']:.0%}] ({s['successes']}/{s['episodes']})"
    return f"{s['rate']:.1%}"


def _num(v) -> str:
    return "-" if v is None else f"{v:,.0f}" if isinstance(v, (int, float)) and abs(v) >= 100 else f"{v:.3g}" \
        if isinstance(v, float) else str(v)


def render_markdown(doc: dict, plots: list[Path]) -> str:
    lines = [f"# RL-100 pipeline: {doc['task']} ({doc['status']})", "", f"PIPELINE_DIR: `{doc['pipeline_dir']}`, "
             f"written {doc['time']}.", "", "## Stages", "",
             "| stage | status | success (95% Wilson) | student | env steps | wall s |", "|---|---|---|---|---|---|"]
    for r in doc["stages"]:
        lines.append(f"| {r['name']} | {r['status']} | {_pct(r['success'])} | {_pct(r['student_success'])} | "
                     f"{_num(r['env_steps'])} | {_num(r['wall_s'])} |")
    lines += ["", f"Env steps: {doc['env_steps']['total']:,} in all ({doc['env_steps']['training']:,} for data and "
              f"training); wall time {doc['wall_s']['total']:.0f} s.", "", "## Data by source", "",
              "Noisy scripted demos plus the rollouts of every accepted policy, successes and failures alike "
              "(coverage: the distill stage's extra states, distill.coverage).", "",
              "| store | episodes | successes | by source (episodes / successes) | by policy_id |", "|---|---|---|---|---|"]
    for d in doc["data"]:
        src = ", ".join(f"{k} {v['episodes']}/{v['successes']}" for k, v in (d["by_source"] or {}).items())
        pid = ", ".join(f"{k or '-'}: {v}" for k, v in (d["by_policy_id"] or {}).items())
        lines.append(f"| {d['name']} | {d['episodes']} | {d['successes']} | {src} | {pid} |")
    gates = [r for r in doc["stages"] if r.get("gate")]
    if gates:
        lines += ["", "## Gate decisions (AM-Q)", "", "| round | update | AM-Q old | AM-Q new | accepted | mode |",
                  "|---|---|---|---|---|---|"]
        for r in gates:
            for g in r["gate"]["decisions"]:
                lines.append(f"| {r['name']} | {g.get('update')} | {_num(g.get('amq_old'))} | {_num(g.get('amq_new'))}"
                             f" | {g.get('accepted')} | {g.get('mode')} |")
            lines.append(f"| {r['name']} | total | {_num(r['gate'].get('amq_initial'))} | "
                         f"{_num(r['gate'].get('amq_final'))} | {r['gate'].get('n_accepted')} accepted, "
                         f"{r['gate'].get('n_rejected')} rejected | |")
    selects = [r for r in doc["stages"] if r.get("round_gate")]
    if selects:
        lines += ["", "## Round gate (sim, its own seeds)", "",
                  "| stage | rolled-out policy (incumbent) | re-imitated (candidate) | kept |", "|---|---|---|---|"]
        for r in selects:
            g, ev = r["round_gate"], r["round_gate"]["evals"]
            inc, cand = ev["incumbent"]["success_rate"], ev["candidate"]["success_rate"]
            lines.append(f"| {r['name']} | {inc:.0%} | {cand:.0%} | {g['kept']} ({g['gate_episodes']} episodes each "
                         f"from seed {g['gate_seed']}) |")
    t = doc["teacher_vs_student"]
    lines += ["", "## Teacher vs student", "", "| policy | success |", "|---|---|",
              f"| teacher ({t['teacher_stage']}, DDIM) | {_pct(t['teacher'])} |",
              f"| jointly trained student (stage eval) | {_pct(t['joint_student'])} |",
              f"| artifact ({t['artifact_sampler']}, onnxruntime) | {_pct(t['artifact'])} |"]
    if t.get("artifact_best_of_n"):
        lines.append(f"| artifact best-of-{doc['critic']['best_of_n']} ({doc['critic']['kind']} critic) | "
                     f"{_pct(t['artifact_best_of_n'])} |")
    lines.append("")
    if doc.get("critic"):
        lines += render_critic(doc["critic"])
    lines += [f"![{p.stem}]({PLOTS}/{p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def render_critic(c: dict) -> list[str]:
    lines = ["## Critic", "", f"`{c['kind']}` critic ({c['config']}): {_num(c['steps'])} steps on "
             f"{_num(c['n_chunks'])} chunks of the final store, final loss {_num(c['final_loss'])}, mean Q {_num(c['final_q_mean'])}; run "
             f"dir `{c['run_dir']}`.", ""]
    if c.get("best_of_n"):
        p50 = c.get("decision_p50_ms") or {}
        lines += ["Artifact in sim, the same episode seeds and runtime noise seed:", "",
                  "| decision | success (95% Wilson) | decision p50 ms |", "|---|---|---|",
                  f"| plain (N = 1) | {_pct(c['plain_success'])} | {_num(p50.get('plain'))} |",
                  f"| best-of-{c['best_of_n']} | {_pct(c['best_of_n_success'])} | {_num(p50.get('best_of_n'))} |", ""]
    v = c.get("value")
    if v:
        lines += [f"ALOE value of the final policy (`{v['checkpoint']}`), gamma {v['gamma']}, {v['episodes']} start "
                  "states (95% intervals):", "", "| | mean | 95% interval |", "|---|---|---|",
                  f"| ALOE value estimate | {v['estimate']:.4f} | [{v['estimate_ci95'][0]:.4f}, "
                  f"{v['estimate_ci95'][1]:.4f}] |",
                  f"| Monte Carlo return | {v['mc_return']:.4f} | [{v['mc_ci95'][0]:.4f}, {v['mc_ci95'][1]:.4f}] |",
                  "", "Relative error |estimate - MC| / |MC|: " + (f"{v['rel_error']:.1%}" if v["rel_error"] is not None
                                                                     else "undefined (MC return 0)")
                  + f"; the policy's success in those rollouts {v['success_rate']:.1%}.", ""]
    return lines


# ------------------------------------------------------------------------------------------- plots
def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from robotstack.eval.plots import DPI, SIZE_PX

    fig = Figure(figsize=(SIZE_PX[0] / DPI, SIZE_PX[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, path: Path) -> Path:
    from robotstack.eval.plots import DPI

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def plot_success(doc: dict, path: Path) -> Path | None:
    bars = [("artifact" if r["name"] == "evaluate" else r["name"], r["success"]) for r in doc["stages"] if r["success"]]
    bars += [(f"{r['name']} student", r["student_success"]) for r in doc["stages"] if r["student_success"]]
    if (doc.get("critic") or {}).get("best_of_n_success"):
        bars.append((f"artifact best-of-{doc['critic']['best_of_n']}", doc["critic"]["best_of_n_success"]))
    if not bars:
        return None
    fig, ax = _figure()
    xs = range(len(bars))
    rates = [s["rate"] for _, s in bars]
    err = [[s["rate"] - s.get("ci95_low", s["rate"]) for _, s in bars],
           [s.get("ci95_high", s["rate"]) - s["rate"] for _, s in bars]]
    drawn = ax.bar(xs, rates, yerr=err, capsize=4,
                   color=["tab:orange" if "student" in n or n.startswith("artifact") else "tab:blue" for n, _ in bars])
    ax.bar_label(drawn, labels=[f"{r:.0%}" for r in rates], padding=2)
    ax.set_xticks(list(xs), [n for n, _ in bars], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson)")
    ax.set_title(f"success per stage ({doc['task']}; orange: one-step student / artifact)")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_data(doc: dict, path: Path) -> Path | None:
    if not doc["data"]:
        return None
    fig, ax = _figure()
    sources = sorted({s for d in doc["data"] for s in (d["by_source"] or {})})
    bottom = [0] * len(doc["data"])
    xs = list(range(len(doc["data"])))
    for src in sources:
        for part, hatch in (("successes", ""), ("failures", "//")):
            vals = []
            for d in doc["data"]:
                v = (d["by_source"] or {}).get(src, {"episodes": 0, "successes": 0})
                vals.append(v["successes"] if part == "successes" else v["episodes"] - v["successes"])
            ax.bar(xs, vals, bottom=bottom, hatch=hatch, label=f"{src} {part}", edgecolor="black", linewidth=0.5)
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(xs, [d["name"] for d in doc["data"]])
    ax.set_ylabel("episodes")
    ax.set_title("data by source (D_0 = demos, merge_m = D_{m+1})")
    ax.legend(loc="best")
    return _save(fig, path)


def plot_wall(doc: dict, path: Path) -> Path | None:
    items = [(k, v) for k, v in doc["wall_s"]["by_stage"].items() if v]
    if not items:
        return None
    fig, ax = _figure()
    ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1])
    ax.set_xlabel("wall time (s)")
    ax.set_title("wall time per stage")
    return _save(fig, path)


def plot_amq(doc: dict, path: Path) -> Path | None:
    from robotstack.eval.plots import line_chart

    lines = {}
    for r in doc["stages"]:
        gate = (r.get("gate") or {}).get("decisions") or []
        pts = [(g["update"], g["amq_new"]) for g in gate if g.get("update") is not None and g.get("amq_new") is not None]
        if pts:
            lines[f"{r['name']} candidate"] = ([p[0] for p in pts], [p[1] for p in pts])
            acc = [(g["update"], g["amq_new"] if g.get("accepted") else g.get("amq_old")) for g in gate
                   if g.get("update") is not None]
            lines[f"{r['name']} kept"] = ([p[0] for p in acc], [p[1] for p in acc])
    if not lines:
        return None
    return line_chart(lines, path, "AM-Q at each gate decision", "PPO update", "AM-Q")


def write_report(cfg: PipelineConfig, root: Path, plan: list[Stage], state: dict, run_status: str,
                 print_fn=print) -> dict:
    doc = build_doc(cfg, root, plan, state, run_status)
    plots = [p for p in (plot_success(doc, root / PLOTS / "success.png"), plot_data(doc, root / PLOTS / "data.png"),
                         plot_wall(doc, root / PLOTS / "wall_time.png"), plot_amq(doc, root / PLOTS / "amq.png")) if p]
    doc["plots"] = [str(p) for p in plots]
    (root / "pipeline.json").write_text(json.dumps(doc, indent=2, default=str))
    (root / "report.md").write_text(render_markdown(doc, plots))
    print_summary(f"pipeline {cfg.task} ({run_status})", {
        r["name"]: f"{r['status']:>6}  success {_pct(r['success'])}  steps {_num(r['env_steps'])}  "
                   f"{_num(r['wall_s'])} s" for r in doc["stages"]})
    print_fn(f"report: {root / 'report.md'}  (pipeline.json, plots/)")
    return doc
