"""`robotstack train critic` end to end on a tiny real reach store: run-dir contract, load_scorer, deterministic
(B, N) scores, best-of-N = argmax, resume (bit-exact), config errors before any work, AWR weights, and
`robotstack critic evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robotstack.cli import main as cli
from robotstack.core.errors import ConfigError
from robotstack.train.common import read_metrics
from robotstack.train.critic import awr_loss, resolve_config, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ["train.steps=6", "train.batch_size=8", "train.log_every=2", "train.checkpoint_every=3"]


def _args(policy, store, name="dqc"):
    return ["--config", str(ROOT / f"configs/critic/{name}.yaml"), f"policy={policy}", f"data.paths=[{store}]", *TINY]


def test_train_critic_cli_writes_the_contract_and_load_scorer_opens_it(reach_policy, reach_store, tmp_path, capsys):
    from policies.critics.scorer import CriticScorer, load_scorer

    run = tmp_path / "dqc"
    assert cli(["train", "critic", *_args(reach_policy, reach_store), "--out", str(run), "--quiet"]) == 0
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["method"] == "dqc" and resolved["critic"]["h"] == 12 and resolved["train"]["steps"] == 6
    for step in (3, 6):
        for name in ("scorer.json", "scorer.safetensors", "critics.safetensors", "train_state.json"):
            assert (run / "checkpoints" / f"step_{step}" / name).is_file()
    latest = run / "checkpoints" / "latest"
    assert latest.is_symlink() and latest.resolve().name == "step_6"
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [2, 4, 6]
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert {"loss_chunk", "loss_partial", "loss_value", "q_mean"} <= set(rows[-1])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is False and summary["wall_s"] > 0 and summary["steps"] == 6
    assert "train critic" in capsys.readouterr().out
    scorer = load_scorer(latest)
    assert isinstance(scorer, CriticScorer) and scorer.config.chunk_len == 4 and scorer.config.agg == "min"
    assert json.loads((latest / "scorer.json").read_text())["extra"]["features"].startswith("obs_window")
    # contract: obs (B, To, D) + actions (B, N, h_a, Da) env units -> (B, N), deterministic
    g = torch.Generator().manual_seed(0)
    obs = {k: torch.randn(3, 2, *s, generator=g) for k, s in scorer.config.obs_shapes.items()}
    acts = torch.randn(3, 5, 4, scorer.config.action_dim, generator=g)
    s1, s2 = scorer(obs, acts), load_scorer(latest)(obs, acts)
    assert s1.shape == (3, 5) and torch.equal(s1, s2) and torch.isfinite(s1).all()
    assert ((s1 >= 0) & (s1 <= 1)).all()  # sigmoid critic: values in [0, 1]
    # the normaliser lives in the scorer: shifting raw obs changes the scores (not a pass-through)
    assert not torch.equal(scorer({k: v + 1.0 for k, v in obs.items()}, acts), s1)


def test_best_of_n_executes_the_argmax_candidate(reach_policy, reach_store, tmp_path):
    from policies.checkpoint import load_checkpoint
    from policies.critics.scorer import BestOfNPolicy, load_scorer

    run = tmp_path / "qc"
    assert cli(["train", "critic", *_args(reach_policy, reach_store, "qc"), "--out", str(run), "--quiet"]) == 0
    scorer = load_scorer(run / "checkpoints" / "latest")
    bon = BestOfNPolicy(load_checkpoint(reach_policy, weights="auto"), scorer, num_candidates=8)
    g = torch.Generator().manual_seed(1)
    obs = {k: torch.randn(2, 2, *s, generator=g) for k, s in scorer.config.obs_shapes.items()}
    executed, chunks = bon.candidates(obs, generator=torch.Generator().manual_seed(7))
    da = scorer.config.action_dim
    assert executed.shape == (2, 8, 4, da) and chunks.shape == (2, 8, 8, da)
    assert not torch.allclose(executed[:, 0], executed[:, 1])  # N distinct proposals
    scores = scorer(obs, executed)
    pred = bon.predict_action(obs, generator=torch.Generator().manual_seed(7))
    best = scores.argmax(1)
    assert torch.equal(pred.action, executed[torch.arange(2), best])
    assert torch.equal(pred.chunk, chunks[torch.arange(2), best])
    worst = scores.argmin(1)
    assert not torch.equal(pred.action, executed[torch.arange(2), worst])


@pytest.mark.parametrize("name", ["dqc", "aloe"])
def test_resume_is_bit_exact(reach_policy, reach_store, tmp_path, name):
    args = _args(reach_policy, reach_store, name)[1:]
    cfg = resolve_config(args[0], args[1:], None)
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg, full, show_progress=False)
    assert train(cfg, part, show_progress=False, stop_at=3)["steps"] == 3
    resumed = resolve_config(None, [], str(part))
    assert train(resumed, part, resume=True, show_progress=False)["steps"] == 6
    a = load_file(str(full / "checkpoints/latest/critics.safetensors"))
    b = load_file(str(part / "checkpoints/latest/critics.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_metrics(part) if "loss" in r] == [2, 4, 6]


def test_bad_configs_fail_before_any_work_naming_the_key(reach_policy, reach_store, tmp_path):
    base = _args(reach_policy, reach_store)
    cases = [
        (["critic.bogus=1"], "bogus"),
        (["critic.variant=qc"], "critic"),  # qc needs h_a == h (dqc.yaml has h=12, h_a=4)
        (["method=aloe"], "variant"),  # aloe needs variant qc + linear output
        (["data.paths=[/nonexistent/x.zarr]"], "/nonexistent/x.zarr"),
        (["task=push"], "push"),  # the policy was trained on reach
        (["data.obs_keys=[object_state]"], "object_state"),
        (["critic.h=16", "critic.h_a=6"], "h_a=6"),  # scores more actions than the policy executes (Ta=4)
        (["policy=/nonexistent/ckpt"], "/nonexistent/ckpt"),
        (["method=aloe", "critic.variant=qc", "critic.h=4", "critic.h_a=4", "critic.output=linear",
          "aloe.agg=max"], "agg"),
    ]
    for extra, needle in cases:
        run = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
            cfg = resolve_config(base[1], [*base[2:], *extra], None)
            train(cfg, run, show_progress=False)
        assert not run.exists()
    assert cli(["train", "critic", *base, "critic.kappa_b=2", "--out", str(tmp_path / "x"), "--quiet"]) == 2


def test_awr_weights_move_the_loss(reach_policy):
    """The weighted denoising loss is sum_b w_b l_b / B: a one-hot weight gives exactly that sample's loss, so a
    loss that ignored the weights would fail here."""
    from policies.checkpoint import load_checkpoint

    policy = load_checkpoint(reach_policy).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    obs = {k: torch.randn(4, 2, *s, generator=g) for k, s in policy.config.obs_shapes.items()}
    action = torch.randn(4, 8, policy.config.action_dim, generator=g)
    ones = awr_loss(policy, obs, action, torch.ones(4), torch.Generator().manual_seed(5))
    per = [awr_loss(policy, obs, action, torch.eye(4)[i] * 4, torch.Generator().manual_seed(5)) for i in range(4)]
    assert float(ones) == pytest.approx(float(sum(per)) / 4, rel=1e-5)
    assert max(per) - min(per) > 1e-3 * float(ones)  # samples differ, so reweighting moves the loss
    up = awr_loss(policy, obs, action, torch.tensor([4.0, 0, 0, 0]), torch.Generator().manual_seed(5))
    assert float(up) == pytest.approx(float(per[0]), rel=1e-6)


def test_aloe_with_awr_writes_a_policy_any_verb_opens(reach_policy, reach_store, tmp_path):
    from policies.checkpoint import load_checkpoint, read_extra
    from policies.critics.scorer import load_scorer

    run = tmp_path / "aloe"
    assert cli(["train", "critic", *_args(reach_policy, reach_store, "aloe"), "awr.steps=2", "awr.batch_size=4",
                "aloe.num_samples=2", "aloe.agg=mean", "--out", str(run), "--quiet"]) == 0
    assert load_scorer(run / "checkpoints" / "latest").config.agg == "mean"  # the value it reports, as trained
    latest = run / "awr" / "checkpoints" / "latest"
    pol = load_checkpoint(latest)
    assert type(pol).__name__ == "DiffusionPolicy" and read_extra(latest)["stage"] == "critic_awr"
    before = load_file(str(Path(reach_policy) / "model.safetensors"))
    after = load_file(str(latest / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before if "denoiser" in k)
    assert any("awr/loss" in r for r in read_metrics(run))


def test_awr_policy_is_the_fine_tunes_ema_and_mode_none_is_plain_bc(reach_policy, reach_store, tmp_path):
    """The AWR policy that is saved and opened is an EMA of the fine-tune started at the proposal (awr.ema_decay),
    not its live weights; ema_decay 0 keeps the live weights; awr.mode none (the control) weights every sample 1."""
    from policies.checkpoint import EMA_FILE, load_checkpoint

    def run_awr(name, *extra):
        run = tmp_path / name
        assert cli(["train", "critic", *_args(reach_policy, reach_store, "aloe"), "awr.steps=3", "awr.batch_size=4",
                    "aloe.num_samples=2", *extra, "--out", str(run), "--quiet"]) == 0
        return run / "awr" / "checkpoints" / "latest"

    latest = run_awr("ema", "awr.ema_decay=0.9")
    start = load_checkpoint(reach_policy).state_dict()
    live, ema = load_file(str(latest / "model.safetensors")), load_file(str(latest / EMA_FILE))
    opened = load_checkpoint(latest, weights="auto").state_dict()
    keys = [k for k in live if "denoiser" in k and live[k].is_floating_point()]
    assert all(torch.equal(opened[k], ema[k]) for k in keys)  # what the eval verbs open ("auto") is the EMA
    moved = [k for k in keys if not torch.equal(live[k], start[k])]
    assert moved and any(not torch.equal(ema[k], live[k]) for k in moved)
    # the EMA lies between the start and the live weights: it moved less than the live weights did
    dist = lambda a: sum(float((a[k] - start[k]).norm()) for k in moved)  # noqa: E731
    assert 0 < dist(ema) < dist(live)
    latest0 = run_awr("live", "awr.ema_decay=0")
    assert not (latest0 / EMA_FILE).exists()
    # resuming that EMA-less fine-tune with an EMA is refused by name, not a KeyError from the missing file
    with pytest.raises(ConfigError, match="no ema.safetensors"):
        train(resolve_config(None, ["awr.steps=5", "awr.ema_decay=0.9"], str(latest0.parents[2])),
              latest0.parents[2], resume=True, show_progress=False)
    assert all(torch.equal(load_checkpoint(latest0, weights="auto").state_dict()[k],
                           load_file(str(latest0 / "model.safetensors"))[k]) for k in keys)
    none = run_awr("none", "awr.mode=none")
    assert [r["awr/w_mean"] for r in read_metrics(none.parents[2]) if "awr/w_mean" in r][-1] == 1.0


def test_critic_evaluate_cli_prints_estimate_and_mc(reach_policy, reach_store, tmp_path, capsys):
    out = tmp_path / "ce"
    code = cli(["critic", "evaluate", "--checkpoint", str(reach_policy), "--data", str(reach_store),
                "--episodes", "3", "--critic-steps", "4", "--samples", "2", "--max-episode-steps", "10",
                "--out", str(out), "--json", str(tmp_path / "r.json"), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "estimated value" in text and "Monte Carlo return" in text and "95% CI" in text
    r = json.loads((tmp_path / "r.json").read_text())
    assert len(r["per_episode"]["estimate"]) == 3 and r["gamma"] == 0.99
    assert r["estimate_ci95"][0] <= r["estimate"] <= r["estimate_ci95"][1]
    # a DQC scorer is not a value estimate of the policy: refused
    run = tmp_path / "dqc"
    assert cli(["train", "critic", *_args(reach_policy, reach_store), "--out", str(run), "--quiet"]) == 0
    assert cli(["critic", "evaluate", "--checkpoint", str(reach_policy), "--data", str(reach_store),
                "--critic", str(run / "checkpoints/latest"), "--episodes", "2", "--quiet"]) == 2


def _record_intervened(path: Path, episodes: int = 3) -> Path:
    """A reach store whose every step is flagged as a human intervention (expert = the 'human')."""
    import sim
    from robotstack.data.recording import open_or_create_store
    from robotstack.data.recorder import EpisodeRecorder

    env = sim.make("reach")
    expert = sim.make_expert(env, noise=0.2, seed=0)
    store = open_or_create_store(path, zarr_format=3)
    rec = EpisodeRecorder(store, control_hz=env.unwrapped.task_spec()["control_hz"])
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=ep)
            expert.reset()
            rec.begin(source="intervention", task="reach", seed=ep)
            while True:
                action = expert.act(obs)
                nxt, reward, term, trunc, info = env.step(action)
                rec.add(obs, action, reward, term, trunc, intervention=True)
                obs = nxt
                if term or trunc:
                    break
            rec.save(success=bool(info.get("is_success", False)))
    finally:
        store.close()
        env.close()
    return path


def test_intervention_data_is_filtered_or_weighted_by_config(reach_policy, tmp_path):
    store = _record_intervened(tmp_path / "human.zarr")
    args = _args(reach_policy, store, "qc")
    runs = {}
    for mode in ("keep", "drop", "weight"):
        cfg = resolve_config(args[1], [*args[2:], f"data.intervention={mode}", "data.intervention_weight=0.0"], None)
        runs[mode] = train(cfg, tmp_path / mode, show_progress=False)
    assert runs["keep"]["final_loss"] > 0
    assert runs["drop"]["final_loss"] == 0.0 and runs["weight"]["final_loss"] == 0.0  # every chunk was intervened
    w = load_file(str(tmp_path / "drop/checkpoints/latest/critics.safetensors"))
    k = load_file(str(tmp_path / "keep/checkpoints/latest/critics.safetensors"))
    assert any(not torch.equal(w[n], k[n]) for n in w if "partial" in n)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "critic").glob("[!_]*.yaml")), ids=lambda p: p.stem)
def test_every_critic_preset_loads(path):
    cfg = resolve_config(str(path), ["policy=p", "data.paths=[d.zarr]"], None)
    assert cfg.critic.variant == {"aloe": "qc"}.get(path.stem, path.stem)
    assert cfg.scored_len <= 4  # the IL presets execute Ta = 4 actions per chunk
    with pytest.raises(ConfigError, match="policy"):
        resolve_config(str(path), ["data.paths=[d.zarr]"], None)


def test_aloe_target_cache_holds_the_policys_chunks_at_each_starts_next_state(reach_policy, reach_store):
    """aloe.cache_targets: row lookup by start frame returns the chunks the policy drew at *that* chunk's next state
    (recomputed here block by block with the cache's generators), and a frame that is not a start is refused."""
    import numpy as np

    from robotstack.train.common import torch_gen
    from robotstack.train.critic import (TargetChunkCache, build_scorer, load_chunks, open_policy, policy_chunks)

    args = _args(reach_policy, reach_store, "aloe")[1:]
    cfg = resolve_config(args[0], args[1:], None)
    policy, _ = open_policy(cfg)
    keys = list(policy.config.obs_shapes)
    sampler, arrays = load_chunks(cfg, keys, policy.config.n_obs_steps)
    scorer = build_scorer(cfg, policy, keys, arrays)
    block, m = 7, 2
    cache = TargetChunkCache(sampler, policy, scorer, m, steps=2, seed=3, block=block)
    assert cache.chunks.shape == (len(sampler), m, policy.config.n_action_steps, policy.config.action_dim)
    rng = np.random.default_rng(0)
    for j in rng.choice(-(-len(sampler) // block), size=3, replace=False):
        starts = sampler.starts[j * block:(j + 1) * block]
        nb = sampler.batch(starts)
        nt = {k: torch.from_numpy(np.ascontiguousarray(nb.next_obs[k])) for k in keys}
        want = scorer.normalize_actions(policy_chunks(policy, nt, m, 2, torch_gen(3, int(j), stream=9)))
        order = rng.permutation(len(starts))  # a batch asks in any order
        got = cache.lookup(torch.from_numpy(starts[order]))
        assert torch.equal(got, want[:, torch.from_numpy(order)])
    with pytest.raises(KeyError):  # past the data (every in-range frame of this store may be a start)
        cache.lookup(torch.tensor([int(sampler.episode_ends[-1])]))
