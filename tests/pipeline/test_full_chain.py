"""The whole RL-100 chain on reach at a tiny budget: demos -> il_0 -> offline_0 -> collect_0 -> merge_0 -> il_1 ->
online -> distill (or the joint student) -> export -> evaluate. Needs the offline-rl and online-rl stage modules
(issue 11, built beside the pipeline); skipped in a tree without them. The stage overrides below use only the
keys of the stage contract (docs/CONTRACTS.md): adjust them to the stages' tiny budgets when wiring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from store_testing import OFFLINE_RL_TINY

pytest.importorskip("robotstack.train.offline_rl")
pytest.importorskip("robotstack.train.online_rl")

ROOT = Path(__file__).resolve().parents[2]
# the online stage's tiny budget (as in tests/rl/test_online_rl.py; the offline one is store_testing's);
# joint distillation on: the online stage trains the student, so the distill stage is skipped
ONLINE_TINY = ["env.num_envs=1", "train.env_steps=96", "train.rollout_env_steps=48", "ppo.minibatch_size=32",
               "ppo.epochs=1", "distill.enabled=true"]


@pytest.mark.slow
def test_full_chain_on_reach(tiny_pipeline, tmp_path):
    from robotstack.data.store import EpisodeStore
    from robotstack.pipeline.runner import run_pipeline

    doc = yaml.safe_load(tiny_pipeline.read_text())
    doc |= {"rounds": 1, "collect": {"episodes": 2}, "round_gate": {"episodes": 2},
            "offline": {"config": str(ROOT / "configs" / "offline_rl" / "reach.yaml"), "overrides": OFFLINE_RL_TINY},
            "online": {"enabled": True, "config": str(ROOT / "configs" / "online_rl" / "reach.yaml"),
                       "overrides": ONLINE_TINY}}
    tiny_pipeline.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"
    result = run_pipeline(str(tiny_pipeline), [], out=str(out), show_progress=False)
    assert result["status"] == "finished"
    names = [s["name"] for s in result["stages"]]
    assert names == ["demos", "il_0", "offline_0", "collect_0", "merge_0", "il_1", "select_1", "online", "distill",
                     "export", "evaluate"]
    with EpisodeStore.open(out / "merge_0" / "store.zarr") as st:  # D_1 = demos + every rollout of offline_0
        metas = st.episode_metas()
        assert [m.source for m in metas] == ["scripted"] * 3 + ["policy"] * 2
        assert {m.policy_id for m in metas if m.source == "policy"} == {"offline_0"}
    il1 = json.loads((out / "il_1" / "config.json").read_text())
    assert il1["data"]["paths"] == [str(out / "merge_0" / "store.zarr")]
    online = json.loads((out / "online" / "config.json").read_text())
    assert online["policy"] == str(out / "select_1" / "checkpoints" / "latest")  # the round gate's pick
    kept = json.loads((out / "select_1" / "summary.json").read_text())["kept"]
    picked = {"candidate": out / "il_1", "incumbent": out / "offline_0"}[kept] / "checkpoints" / "latest"
    assert (out / "select_1" / "checkpoints" / "latest").resolve() == picked.resolve()
    assert online["critic"] == str(out / "offline_0" / "critics")
    assert (out / "report.md").is_file() and (out / "export" / "artifact" / "policy.onnx").is_file()
    by = {s["name"]: s for s in result["stages"]}
    # the online stage's joint student is exported when its evaluation kept up with its teacher; else the final
    # teacher is distilled and that student is exported
    online_summary = json.loads((out / "online" / "summary.json").read_text())
    kept_up = online_summary["eval_success_rate"] - online_summary["student_eval_success_rate"] <= 0.02
    assert bool(by["distill"]["summary"].get("skipped")) == kept_up, by["distill"]["summary"]
    exported = out / ("online/student" if kept_up else "distill") / "checkpoints" / "latest"
    assert by["export"]["summary"]["checkpoint"] == str(exported)
    assert by["offline_0"]["gate"]["decisions"] and "## Gate decisions (AM-Q)" in (out / "report.md").read_text()
    assert by["online"]["env_steps"] >= 96
