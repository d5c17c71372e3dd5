"""Run the plan: every check first, then stage by stage; a finished stage is skipped, an interrupted one resumed.

PIPELINE_DIR/config.json   the resolved pipeline config; a re-run must resolve to the same one (same --out =
                           the same pipeline: a changed config would silently mix two experiments' stages)
PIPELINE_DIR/state.json    wall time per stage summed over every run of it (a resumed stage's own summary only
                           knows its last run)
Ctrl-C: the running training stage finishes its update, saves and returns interrupted (the stages' StopRequest);
a data stage keeps the episodes saved so far. Either way the pipeline writes its report so far and stops;
running the same command again resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from robotstack.core.config import to_dict
from robotstack.core.errors import ConfigError
from robotstack.pipeline.config import PipelineConfig, load_pipeline_config
from robotstack.pipeline.report import write_report
from robotstack.pipeline.stages import Stage, build_plan, check_plan, run_stage, status

CONFIG = "config.json"
STATE = "state.json"


def default_out(cfg: PipelineConfig) -> Path:
    return Path("runs") / "pipeline" / f"{cfg.task.replace(':', '_')}_{time.strftime('%Y%m%d_%H%M%S')}"


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


# Options added after pipeline dirs existed, each with a test of whether the run does what a dir started without
# it did: a dir pinned by an older version resumes while the test holds (anything else is another plan). A path of
# one key is a whole section.
_ADDED_OPTIONS = {
    ("critic",): lambda c: c["kind"] == "none",  # before critics: no critic stage
    ("round_gate",): lambda g: g["episodes"] == 0,  # before the round gate: il_{m+1} went on unchecked
    ("collect", "arm"): lambda v: v == "",  # before collect.arm: rollouts in sim
    ("collect", "keys"): lambda v: v == "",
    ("collect", "sampler"): lambda v: v == "rti",
    ("collect", "max_steps"): lambda v: v == 0,
    ("distill", "extra_data"): lambda v: v == [],
    ("distill", "coverage"): lambda c: c["episodes"] == 0,
}


def _fill_added_options(saved: dict, doc: dict) -> None:
    for path, same_as_before in _ADDED_OPTIONS.items():
        *parents, key = path
        old, new = saved, doc
        for p in parents:
            old, new = old.get(p), new[p]
        if isinstance(old, dict) and key not in old and same_as_before(new[key]):
            old[key] = new[key]


def _pin_config(cfg: PipelineConfig, root: Path) -> None:
    doc = to_dict(cfg)
    path = root / CONFIG
    if path.is_file():
        saved = json.loads(path.read_text())
        _fill_added_options(saved, doc)
        changes = _diff(saved, doc)
        if changes:
            raise ConfigError(f"--out {root} holds a pipeline started with another config ({'; '.join(changes)}); "
                              "re-run with the same config and overrides to resume, or pick a new --out")
        return
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))


def prepare(config: str, overrides: list[str], out: str | None) -> tuple[PipelineConfig, Path, list[Stage], dict]:
    """Everything that can fail on a bad config, before any work: -> (config, PIPELINE_DIR, plan, resolved)."""
    cfg = load_pipeline_config(config, overrides)
    root = (Path(out) if out else default_out(cfg)).resolve()
    plan = build_plan(cfg, root)
    resolved = check_plan(plan, cfg, root)
    _pin_config(cfg, root)
    return cfg, root, plan, resolved


def run_pipeline(config: str, overrides: list[str] = (), out: str | None = None, show_progress: bool = True,
                 print_fn=print) -> dict:
    """-> the pipeline document (also PIPELINE_DIR/pipeline.json); doc["status"] is finished | interrupted."""
    cfg, root, plan, resolved = prepare(config, list(overrides), out)
    import torch  # the pipeline's own rollouts (collect, evaluate) and export run in this process

    torch.set_num_threads(cfg.num_threads)
    state_path = root / STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    interrupted = False
    for i, stage in enumerate(plan, 1):
        st = status(stage)
        if st == "done":
            print_fn(f"[{i}/{len(plan)}] {stage.name}: finished earlier, skipped ({stage.run_dir})")
            continue
        print_fn(f"[{i}/{len(plan)}] {stage.name}: {'resuming' if st == 'resume' else 'running'} -> {stage.run_dir}")
        t0 = time.perf_counter()
        try:
            summary = run_stage(stage, cfg, resolved, show_progress)
        except KeyboardInterrupt:  # outside a training loop (demos, collect, export, ...): what was saved stays
            summary = {"interrupted": True}
        finally:
            entry = state.setdefault(stage.name, {"wall_s": 0.0, "runs": 0})
            entry["wall_s"] += time.perf_counter() - t0
            entry["runs"] += 1
            state_path.write_text(json.dumps(state, indent=2))
        if summary.get("interrupted"):
            print_fn(f"pipeline interrupted in {stage.name}; run the same command again to resume")
            interrupted = True
            break
    return write_report(cfg, root, plan, state, "interrupted" if interrupted else "finished", print_fn=print_fn)
