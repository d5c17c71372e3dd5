"""Chunked critics in the RL-100 pipeline (issue 12 item 4): `critic.kind` dqc | qc | ns | os trains the critic on the
final store against the final policy, exports it with the artifact for best-of-N and evaluates plain vs best-of-N
on the same seeds; aloe adds the critic's value of the final policy next to its MC return. Tiny budgets on reach
(the tiny_pipeline fixture of conftest.py: rounds 0, online off)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from robotstack.cli import main as cli
from robotstack.core.errors import ConfigError
from robotstack.pipeline.runner import prepare, run_pipeline
from robotstack.pipeline.stages import run_stage
from robotstack.runtime.artifact import load_artifact
from robotstack.train.critic import resolve_config as resolve_critic
from robotstack.train.critic import train as train_critic

ROOT = Path(__file__).resolve().parents[2]
TINY_CRITIC = {"train": {"steps": 4, "batch_size": 8, "log_every": 2, "checkpoint_every": 2, "num_threads": 1},
               "critic": {"hidden": [16]}}
BON = 4


def with_critic(pipeline: Path, kind: str, **section) -> Path:
    """The tiny pipeline plus a critic section whose config is a tiny copy of the shipped preset of `kind`."""
    cfg_dir = pipeline.parent
    (cfg_dir / f"critic_{kind}.yaml").write_text(yaml.safe_dump(
        {"base": str(ROOT / "configs" / "critic" / f"{kind}.yaml")} | TINY_CRITIC))
    doc = yaml.safe_load(pipeline.read_text())
    doc["critic"] = {"kind": kind, "config": f"critic_{kind}.yaml"} | section
    out = cfg_dir / f"pipeline_{kind}.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


@pytest.fixture(scope="module")
def dqc_run(tmp_path_factory):
    """A dqc pipeline whose critic stage was stopped after its step-2 checkpoint (as a kill leaves it), then run to
    the end by `robotstack pipeline`. -> (pipeline yaml, out dir, the CLI's log)."""
    import contextlib
    import io

    from tests.pipeline import conftest as c  # the tiny stage configs (the tiny_pipeline fixture is per test)

    tmp = tmp_path_factory.mktemp("dqc")
    cfg_dir = tmp / "configs"
    cfg_dir.mkdir()
    c.write_yaml(cfg_dir / "il.yaml", c.TINY_IL)
    c.write_yaml(cfg_dir / "distill.yaml", {"base": str(ROOT / "configs" / "distill" / "rl100.yaml"),
                                            "train": {"steps": 4, "batch_size": 8, "log_every": 2,
                                                      "checkpoint_every": 2, "num_threads": 1}})
    pipeline = with_critic(c.write_yaml(cfg_dir / "pipeline.yaml", c.TINY_PIPELINE), "dqc", best_of_n=BON)
    out = tmp / "run"
    cfg, root, plan, resolved = prepare(str(pipeline), [], str(out))
    assert [s.name for s in plan] == ["demos", "il_0", "distill", "critic", "export", "evaluate"]
    for stage in plan[:3]:
        run_stage(stage, cfg, resolved, show_progress=False)
    crit = plan[3]
    train_critic(resolve_critic(crit.config, crit.overrides, None), crit.run_dir, show_progress=False, stop_at=2)
    (crit.run_dir / "summary.json").unlink()  # what a kill right after the step-2 checkpoint leaves
    buf = io.StringIO()  # capsys is per test
    with contextlib.redirect_stdout(buf):
        assert cli(["pipeline", "--config", str(pipeline), "--out", str(out), "--quiet"]) == 0
    return pipeline, out, buf.getvalue()


def test_dqc_critic_stage_trains_on_the_final_store_exports_and_compares_best_of_n(dqc_run):
    pipeline, out, log = dqc_run
    assert "critic: resuming" in log and "il_0: finished earlier, skipped" in log
    # the critic stage = `train critic` on the final store against the final (teacher) policy, resumed at step 2
    crit_cfg = json.loads((out / "critic" / "config.json").read_text())
    assert crit_cfg["method"] == "dqc" and crit_cfg["critic"]["variant"] == "dqc"
    assert crit_cfg["policy"] == str(out / "il_0" / "checkpoints" / "latest")
    assert crit_cfg["data"]["paths"] == [str(out / "demos" / "store.zarr")]
    assert crit_cfg["critic"]["hidden"] == [16] and crit_cfg["eval"]["episodes"] == 0
    crit = json.loads((out / "critic" / "summary.json").read_text())
    assert (crit["steps"], crit["steps_this_run"], crit["interrupted"]) == (4, 2, False)
    # the artifact carries that scorer as critic.onnx with default N = best_of_n
    m = json.loads((out / "export" / "artifact" / "manifest.json").read_text())
    assert m["version"] == 3 and m["critic"]["n"] == BON and m["critic"]["h_a"] == 4
    assert m["sampler"] == "cm1" and m["critic"]["parity"]["ok"]
    assert load_artifact(out / "export" / "artifact").n == BON
    # plain (N = 1) and best-of-N, both on the pipeline's evaluation seeds
    ev = json.loads((out / "evaluate" / "summary.json").read_text())
    assert ev["best_of_n"] == BON and ev["eval_episodes"] == ev["bon_eval_episodes"] == 2
    assert ev["eval_decisions"] > 0 and ev["bon_eval_decisions"] > 0
    assert ev["env_steps"] > 0
    doc = json.loads((out / "pipeline.json").read_text())
    assert [s["name"] for s in doc["stages"]] == ["demos", "il_0", "distill", "critic", "export", "evaluate"]
    assert all(s["status"] == "done" for s in doc["stages"])
    c = doc["critic"]
    assert c["kind"] == "dqc" and c["best_of_n"] == BON and c["steps"] == 4
    assert c["plain_success"]["episodes"] == c["best_of_n_success"]["episodes"] == 2
    assert doc["teacher_vs_student"]["artifact_best_of_n"] == c["best_of_n_success"]
    report = (out / "report.md").read_text()
    assert "## Critic" in report and f"| best-of-{BON} |" in report and "| plain (N = 1) |" in report
    assert "| critic | done |" in report
    assert doc["wall_s"]["by_stage"]["critic"] > 0


def test_dqc_rerun_skips_every_stage(dqc_run, snapshot, capsys):
    pipeline, out, _ = dqc_run
    names = ["demos", "il_0", "distill", "critic", "export", "evaluate"]
    before = {n: snapshot(out / n) for n in names}
    doc = run_pipeline(str(pipeline), [], out=str(out), show_progress=False)
    assert doc["status"] == "finished" and {n: snapshot(out / n) for n in names} == before
    assert capsys.readouterr().out.count("finished earlier, skipped") == len(names)
    # another N is another pipeline: refused on the same --out, naming the key
    with pytest.raises(ConfigError, match=f"critic.best_of_n: {BON} -> 8"):
        run_pipeline(str(pipeline), ["critic.best_of_n=8"], out=str(out), show_progress=False)


def test_aloe_reports_the_value_of_the_final_policy_beside_its_mc_return(dqc_run, tmp_path):
    """aloe: no best-of-N (a plain artifact), a critic_value stage with the estimate and the MC return; the stages
    before the critic are taken from the dqc run (copied: the same inputs, so they are skipped)."""
    pipeline, dqc_out, _ = dqc_run
    aloe = with_critic(pipeline, "aloe")
    out = tmp_path / "run"
    for name in ("demos", "il_0", "distill"):
        shutil.copytree(dqc_out / name, out / name, symlinks=True)
    doc = run_pipeline(str(aloe), [], out=str(out), show_progress=False)
    assert [s["name"] for s in doc["stages"]] == ["demos", "il_0", "distill", "critic", "critic_value", "export",
                                                  "evaluate"]
    assert json.loads((out / "critic" / "config.json").read_text())["method"] == "aloe"
    m = json.loads((out / "export" / "artifact" / "manifest.json").read_text())
    assert m["version"] == 2 and "critic" not in m  # an ALOE critic is not shipped as a best-of-N scorer
    ev = json.loads((out / "evaluate" / "summary.json").read_text())
    assert "bon_eval_success_rate" not in ev and ev["eval_episodes"] == 2
    v = json.loads((out / "critic_value" / "summary.json").read_text())
    assert v["checkpoint"] == str(out / "il_0" / "checkpoints" / "latest")
    assert v["critic"] == str(out / "critic" / "checkpoints" / "latest") and v["episodes"] == 2
    assert len(v["per_episode"]["estimate"]) == len(v["per_episode"]["mc"]) == 2
    assert v["estimate_ci95"][0] <= v["estimate"] <= v["estimate_ci95"][1]
    assert (v["rel_error"] is None) == (v["mc_return"] == 0.0)  # no relative error of a zero return (no inf)
    c = doc["critic"]["value"]
    assert c["estimate"] == v["estimate"] and c["mc_return"] == v["mc_return"]
    report = (out / "report.md").read_text()
    assert "| ALOE value estimate |" in report and "| Monte Carlo return |" in report
    assert "Relative error |estimate - MC| / |MC|: " in report and "best-of-" not in report


def _bad(pipeline: Path, case: str) -> tuple[str, list[str]]:
    cfg_dir = pipeline.parent
    if case == "unknown_kind":
        return str(pipeline), ["critic.kind=sac"]
    if case == "best_of_n_0":
        return str(with_critic(pipeline, "qc", best_of_n=0)), []
    if case == "best_of_n_aloe":
        return str(with_critic(pipeline, "aloe", best_of_n=8)), []
    if case == "missing_file":
        return str(pipeline), ["critic.kind=ns", "critic.config=nope.yaml"]
    if case == "kind_mismatch":  # kind dqc, config trains qc
        (cfg_dir / "qc.yaml").write_text(yaml.safe_dump({"base": str(ROOT / "configs" / "critic" / "qc.yaml")}))
        return str(pipeline), ["critic.kind=dqc", "critic.config=qc.yaml"]
    if case == "stage_override_unknown":
        return str(pipeline), ["critic.kind=os", "critic.overrides=[train.stepz=3]"]
    if case == "awr":
        return str(pipeline), ["critic.kind=aloe", "critic.overrides=[awr.steps=5]"]
    raise AssertionError(case)


@pytest.mark.parametrize("case, match", [
    ("unknown_kind", r"critic.kind: 'sac', expected one of \['none', 'dqc', 'qc', 'ns', 'os', 'aloe'\]"),
    ("best_of_n_0", r"critic.best_of_n: expected >= 1 \(1 = plain\), got 0"),
    ("best_of_n_aloe", r"critic.best_of_n: 8 with critic.kind 'aloe'"),
    ("missing_file", r"critic.config: nope.yaml -> .*nope.yaml does not exist"),
    ("kind_mismatch", r"critic.kind: 'dqc' but critic.config .*qc.yaml .* variant 'qc'"),
    ("stage_override_unknown", r"stage critic .*unknown key 'train.stepz'"),
    ("awr", r"critic: awr.steps=5 .* the pipeline neither exports nor evaluates"),
])
def test_bad_critic_configs_fail_before_any_work(tiny_pipeline, tmp_path, case, match):
    path, overrides = _bad(tiny_pipeline, case)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=match):
        run_pipeline(path, overrides, out=str(out), show_progress=False)
    assert not out.exists()


def test_critic_none_is_the_plan_without_the_section(tiny_pipeline, tmp_path):
    """kind none (the default) adds no stage and no export/evaluate input; a shipped preset is found by kind alone;
    a pipeline dir pinned before the section existed still resumes."""
    from robotstack.pipeline.config import load_pipeline_config
    from robotstack.pipeline.stages import build_plan

    _, root, plan, _ = prepare(str(tiny_pipeline), [], str(tmp_path / "a"))
    assert [s.name for s in plan] == ["demos", "il_0", "distill", "export", "evaluate"]
    assert set(plan[-2].inputs) == {"checkpoint", "fallback", "teacher", "sampler"}
    assert set(plan[-1].inputs) == {"artifact"}
    saved = json.loads((root / "config.json").read_text())
    del saved["critic"]
    (root / "config.json").write_text(json.dumps(saved))
    prepare(str(tiny_pipeline), [], str(root))  # no "another config" refusal
    cfg = load_pipeline_config(tiny_pipeline, ["critic.kind=ns"])
    assert cfg.critic.config == str(ROOT / "configs" / "critic" / "ns.yaml") and cfg.critic_n == 32
    names = [s.name for s in build_plan(cfg, tmp_path / "b")]
    assert names == ["demos", "il_0", "distill", "critic", "export", "evaluate"]
    with pytest.raises(ConfigError, match="another config"):
        prepare(str(tiny_pipeline), ["critic.kind=ns"], str(root))


@pytest.mark.parametrize("kind", ["dqc", "qc", "ns", "os", "aloe"])
def test_every_kind_resolves_with_its_shipped_preset(tiny_pipeline, tmp_path, kind):
    """critic.kind=K alone: the preset configs/critic/K.yaml trains that critic (checked as the pipeline checks it),
    with the pipeline's inputs as overrides; only best-of-N kinds feed the export and the paired evaluation."""
    from robotstack.pipeline.config import load_pipeline_config
    from robotstack.pipeline.stages import build_plan, check_plan

    cfg = load_pipeline_config(tiny_pipeline, [f"critic.kind={kind}"])
    root = tmp_path / "p"
    plan = build_plan(cfg, root)
    resolved = check_plan(plan, cfg, root)
    crit = resolved["critic"]
    assert (crit.method, crit.critic.variant) == (("aloe", "qc") if kind == "aloe" else ("dqc", kind))
    assert crit.policy == str(root / "il_0" / "checkpoints" / "latest") and crit.eval.episodes == 0
    assert crit.data.paths == [str(root / "demos" / "store.zarr")] and crit.task == "reach"
    export, evaluate = plan[-2], plan[-1]
    if kind == "aloe":
        assert "critic" not in export.inputs and "best_of_n" not in evaluate.inputs
        assert plan[-3].name == "critic_value" and plan[-3].inputs["policy"] == crit.policy
    else:
        assert export.inputs["critic"] == str(root / "critic" / "checkpoints" / "latest")
        assert export.inputs["best_of_n"] == evaluate.inputs["best_of_n"] == "32"
