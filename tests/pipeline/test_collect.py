"""eval/collect.py: every rollout episode lands in the store (failures and successes) with source=policy and its
policy_id; the store the policy was trained on is never touched, and the merge grows a NEW store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robotstack.core.errors import StoreError
from robotstack.data.merge import merge_stores
from robotstack.data.store import EpisodeStore
from robotstack.eval.collect import _StoreObserver, collect
from robotstack.eval.rollout import evaluate


def test_collect_records_every_episode_as_policy_data(tiny_policy, tmp_path, snapshot):
    demos, ckpt = tiny_policy
    before = snapshot(demos)
    out = tmp_path / "rollouts.zarr"
    stats = collect(ckpt, out, episodes=3, policy_id="offline_0", seed=500, max_episode_steps=12,
                    show_progress=False)
    assert snapshot(demos) == before  # the training store is only read
    with EpisodeStore.open(out) as st:
        metas = st.episode_metas()
        assert st.n_episodes == stats.episodes == 3 and st.n_frames == stats.frames == 36
        assert {m.source for m in metas} == {"policy"} and {m.policy_id for m in metas} == {"offline_0"}
        assert sorted(m.seed for m in metas) == [500, 501, 502]
        assert all(m.task == "reach" for m in metas)
        with EpisodeStore.open(demos) as d:  # same keys and per-frame shapes as the demos: mergeable
            assert st.key_specs() == d.key_specs()
        ep = st.episode(0)
        assert ep["truncated"][-1] and not ep["truncated"][:-1].any()  # the time limit ends the episode
        assert not ep["late_tick"].any()  # sim frames are never late
    # the recorded outcomes are the rollout's own: the same seeds through plain evaluate agree
    from policies.checkpoint import load_checkpoint

    ref = evaluate(load_checkpoint(ckpt, weights="ema"), "reach", 3, seed=500, max_episode_steps=12,
                   show_progress=False)
    assert [m.success for m in sorted(metas, key=lambda m: m.seed)] == [e.success for e in ref.episodes]
    assert stats.successes == sum(e.success for e in ref.episodes)


def test_collect_appends_and_needs_a_policy_id(tiny_policy, tmp_path):
    _, ckpt = tiny_policy
    out = tmp_path / "r.zarr"
    collect(ckpt, out, episodes=1, policy_id="a", seed=0, max_episode_steps=5, show_progress=False)
    collect(ckpt, out, episodes=2, policy_id="b", seed=1, max_episode_steps=5, show_progress=False)
    with EpisodeStore.open(out) as st:
        assert [m.policy_id for m in st.episode_metas()].count("b") == 2 and st.n_episodes == 3
    with pytest.raises(ValueError, match="policy_id"):
        collect(ckpt, out, episodes=1, policy_id="", show_progress=False)


def test_observer_keeps_successes_and_failures(tmp_path):
    """The recording half of collect, driven by a real env and the scripted expert (which succeeds), plus a
    zero-action episode (which fails): both are saved, each with its own outcome."""
    import sim

    env = sim.make("reach", max_episode_steps=60)
    expert = sim.make_expert(env, noise=0.0, seed=0)
    store = EpisodeStore.create(tmp_path / "s.zarr")
    obs_rec = _StoreObserver(store, "reach", "offline_1", control_hz=10.0)
    try:
        for ep, act in ((0, expert.act), (1, lambda o: np.zeros(env.action_space.shape, np.float32))):
            obs, _ = env.reset(seed=ep)
            expert.reset()
            obs_rec.on_reset(0, ep, ep, obs)
            while True:
                action = act(obs)
                obs, reward, terminated, truncated, info = env.step(action)
                obs_rec.on_step(0, action, obs, reward, terminated, truncated, bool(info.get("is_success", False)))
                if terminated or truncated:
                    break
    finally:
        env.close()
    metas = store.episode_metas()
    store.close()
    assert [m.success for m in metas] == [True, False]
    assert {(m.source, m.policy_id) for m in metas} == {("policy", "offline_1")}
    assert obs_rec.stats.episodes == 2 and obs_rec.stats.successes == 1


def test_merge_grows_a_new_store_and_keeps_the_inputs(tiny_policy, tmp_path, snapshot):
    demos, ckpt = tiny_policy
    new = tmp_path / "new.zarr"
    collect(ckpt, new, episodes=2, policy_id="offline_0", seed=9, max_episode_steps=6, show_progress=False)
    before = (snapshot(demos), snapshot(new))
    merge_stores([demos, new], tmp_path / "grown.zarr").close()
    assert (snapshot(demos), snapshot(new)) == before
    with EpisodeStore.open(tmp_path / "grown.zarr") as g:
        assert [m.source for m in g.episode_metas()] == ["scripted"] * 3 + ["policy"] * 2
    with pytest.raises(StoreError, match="also a source"):
        merge_stores([demos, new], new)
    assert json.dumps(snapshot(new)) == json.dumps(before[1])


def test_collect_stage_resumes_after_the_saved_episodes(tiny_policy, tiny_pipeline, tmp_path):
    """The pipeline's collect_m stage: a store left by an interrupted run is continued, not restarted."""
    from robotstack.pipeline.config import load_pipeline_config
    from robotstack.pipeline.stages import build_plan, run_stage

    _, ckpt = tiny_policy
    (tiny_pipeline.parent / "offline.yaml").write_text("task: reach\n")
    cfg = load_pipeline_config(tiny_pipeline, ["rounds=1", "offline.config=offline.yaml", "collect.episodes=2"])
    stage = next(s for s in build_plan(cfg, tmp_path / "p") if s.name == "collect_0")
    stage.inputs["policy"] = str(ckpt)  # stands in for offline_0's accepted policy
    collect(ckpt, stage.run_dir / "store.zarr", 1, policy_id="offline_0", seed=200_000, show_progress=False)
    summary = run_stage(stage, cfg, {}, show_progress=False)
    assert summary["episodes"] == 2 and summary["by_source"] == {"policy": {"episodes": 2,
                                                                           "successes": summary["successes"]}}
    with EpisodeStore.open(stage.run_dir / "store.zarr") as st:
        assert [m.seed for m in st.episode_metas()] == [200_000, 200_001]
