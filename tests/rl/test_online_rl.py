"""`train online-rl` (RL-100 stage 3) on the real reach env from a tiny real IL checkpoint: the contract outputs,
first-update ratios of 1, chunk rewards / terminal / truncation into GAE, resume, refusals before any work, and
(slow) Ray rollout workers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import rl_testing  # noqa: F401  (one torch thread)
from store_testing import TINY_IL, record_store, train_tiny_il

from robotstack.core.config import from_dict
from robotstack.core.errors import ConfigError
from robotstack.train import online_rl
from robotstack.train.online_rl import OnlineRLConfig
from robotstack.train.rl_math import gae
from robotstack.train.rollouts import Collector


OBS_KEYS = ["robot_eef_pos", "robot_gripper", "goal"]


@pytest.fixture(scope="module")
def il_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("online_rl")
    store = record_store(root / "reach.zarr", episodes=2)
    return train_tiny_il(TINY_IL, store, OBS_KEYS, root / "il")


def tiny_cfg(ckpt: Path, **over) -> OnlineRLConfig:
    doc = {"task": "reach", "policy": str(ckpt), "env": {"num_envs": 1},
           "ppo": {"minibatch_size": 16, "epochs": 2, "value_hidden": [32]},
           "train": {"env_steps": 160, "rollout_env_steps": 80},
           "distill": {"enabled": True}, "eval": {"episodes": 1, "initial": True}}
    for key, value in over.items():  # dotted keys
        node = doc
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return from_dict(OnlineRLConfig, doc)


ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / "configs" / "online_rl").glob("*.yaml") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_task_config_loads_for_its_il_config(path):
    from robotstack.core.config import load_config
    from robotstack.train.il import ILConfig

    cfg = load_config(OnlineRLConfig, path)
    il = load_config(ILConfig, ROOT / "configs" / "il" / path.name)  # the IL run it starts from
    # task configs start from `train il`'s default run dir; the demo's from its own offline round in demo_out/
    start = "demo_out/" if path.stem.startswith("demo_") else f"runs/il/{path.stem}/"
    assert cfg.task == il.task and cfg.policy.startswith(start)
    assert cfg.ray.address == "" and cfg.rl.grid == "rl100" and cfg.ppo.clip_eps == 0.2


def test_tiny_run_writes_the_stage_contract(il_ckpt, tmp_path):
    from policies.checkpoint import load_checkpoint, read_extra
    from policies.consistency.model import ConsistencyPolicy
    from policies.diffusion.model import DiffusionPolicy
    from robotstack.train.common import read_metrics

    run = tmp_path / "run"
    summary = online_rl.train(tiny_cfg(il_ckpt), run, show_progress=False)
    assert (run / "config.json").is_file() and (run / "summary.json").is_file()
    on_disk = json.loads((run / "summary.json").read_text())
    for key in ("env_steps", "wall_s", "eval_success_rate", "student_eval_success_rate", "interrupted"):
        assert key in on_disk and on_disk[key] is not None, key
    assert summary["env_steps"] >= 160 and not summary["interrupted"]
    rows = read_metrics(run)
    assert [r["update"] for r in rows if "update" in r] == [1.0, 2.0]
    assert rows[0]["step"] == 0 and "eval/student_success_rate" in rows[0]  # eval.initial: the starting point
    for col in ("train/success_rate", "env_steps", "loss_pi", "loss_v", "loss_cd", "clip_frac", "approx_kl"):
        assert col in rows[-1], col
    # the RL'd teacher and the student open through the one loader, as eval / export would
    teacher = load_checkpoint(run / "checkpoints" / "latest")
    assert isinstance(teacher, DiffusionPolicy)
    assert teacher.schedule.timesteps("ddim", 10)[0][:2] == [91, 81]  # the RL-100 grid the IL one was converted to
    assert read_extra(run / "checkpoints" / "latest")["encoder"] == "frozen"
    student = load_checkpoint(run / "student" / "checkpoints" / "latest")
    assert isinstance(student, ConsistencyPolicy) and student.method == "rl100"
    # the RL update really moved the denoiser
    il = load_checkpoint(il_ckpt, weights="auto")
    assert any(not torch.equal(a, b) for a, b in zip(il.denoiser.parameters(), teacher.denoiser.parameters()))
    assert all(r["ratio0_max_dev"] < 1e-4 for r in rows if "update" in r)  # every update starts at ratio 1
    # a saved student is accepted back as `student:` (the next online phase starts from it)
    again = tiny_cfg(il_ckpt, student=str(run / "student" / "checkpoints" / "latest"))
    reread = online_rl.load_student(again, online_rl.load_policy(again)[0])
    assert all(torch.equal(a, b) for a, b in zip(reread.denoiser.parameters(), student.denoiser.parameters()))


def test_first_ratio_is_one_each_update_and_moves_after_a_step(il_ckpt):
    from policies.rl.denoise_ppo import DenoisingChain, ppo_update

    cfg = tiny_cfg(il_ckpt)
    policy, _ = online_rl.load_policy(cfg)
    col = Collector("reach", 1, policy.config)
    try:
        roll = col.collect(policy, 40, 0, 0.99, torch.Generator().manual_seed(0))
    finally:
        col.close()
    batch = DenoisingChain(*(torch.from_numpy(a) for a in (roll.chain, roll.log_probs, roll.timesteps,
                                                           roll.prev_timesteps, roll.cond)), None, None)
    # float32 log-probs summed over Ta*Da elements of size ~|log sigma| ~ 5: rounding ~1e-5, never more
    assert online_rl.first_ratio_deviation(policy, batch, 1.0) < 1e-4
    opt = torch.optim.Adam(policy.denoiser.parameters(), lr=1e-3)
    ppo_update(policy, opt, batch, torch.randn(len(roll)), cfg.ppo_config())
    assert online_rl.first_ratio_deviation(policy, batch, 1.0) > 1e-3  # the check can fail


def test_chunk_reward_terminal_and_truncation_reach_gae(il_ckpt):
    """Real reach episodes: one cut by the time limit mid-chunk (6 steps, Ta = 4) and one ended by success
    (the shaped reward is -distance + 1 on success, so every step's reward is visible in the chunk sums)."""
    cfg = tiny_cfg(il_ckpt)
    policy, _ = online_rl.load_policy(cfg)
    gamma = 0.9
    col = Collector("reach", 1, policy.config, max_episode_steps=6, shaped_reward=True)
    try:
        roll = col.collect(policy, 12, 0, gamma, torch.Generator().manual_seed(0))
    finally:
        col.close()
    # two episodes of 6 steps: decisions of 4 then 2 steps, the second truncated (no terminal)
    assert roll.n_steps.tolist() == [4, 2, 4, 2] and roll.truncated.tolist() == [False, True, False, True]
    assert not roll.terminated.any() and roll.env_steps == 12 and len(roll.episodes) == 2
    # rewards are the discounted chunk sums of the per-step rewards: replay the executed actions in a fresh env
    import sim

    env = sim.make("reach", max_episode_steps=6, shaped_reward=True)
    c = policy.config
    executed = policy.normalizer.unnormalize("action", torch.from_numpy(roll.chain[:, -1]))[
        :, c.action_start:c.action_start + c.n_action_steps].numpy().astype(np.float32)
    replayed = []
    for episode in range(2):
        env.reset(seed=episode)
        for d in (2 * episode, 2 * episode + 1):
            replayed.append(sum(gamma ** j * env.step(executed[d, j])[1] for j in range(roll.n_steps[d])))
    env.close()
    assert roll.reward == pytest.approx(replayed, rel=1e-6)
    assert (roll.reward < 0).all()
    values = np.full(len(roll), 0.5)
    next_values = np.full(len(roll), 0.25)
    adv, ret = online_rl.advantages(roll, values, next_values, online_rl.GAEConfig(gamma=gamma, lam=0.95))
    # truncated decision: bootstraps with gamma^{2} from V(final obs); the first one with gamma^{4} and lambda
    d1 = roll.reward[1] + gamma ** 2 * 0.25 - 0.5
    d0 = roll.reward[0] + gamma ** 4 * 0.25 - 0.5
    assert adv[1] == pytest.approx(d1) and adv[0] == pytest.approx(d0 + gamma ** 4 * 0.95 * d1)
    assert ret == pytest.approx(adv + values)

    # success: the terminal stops bootstrapping (a true terminal's next value is ignored)
    from robotstack.train.rollouts import Rollout

    term = Rollout(roll.chain[:2], roll.log_probs[:2], roll.cond[:2], roll.next_cond[:2], np.array([0.0, 1.0]),
                   np.array([4, 3]), np.array([False, True]), np.array([False, False]), [2], roll.timesteps,
                   roll.prev_timesteps)
    a, _ = online_rl.advantages(term, np.array([0.5, 0.5]), np.array([0.7, 123.0]), online_rl.GAEConfig(gamma, 0.95))
    assert a[1] == pytest.approx(1.0 - 0.5)
    assert a[0] == pytest.approx(0.0 + gamma ** 4 * 0.7 - 0.5 + gamma ** 4 * 0.95 * a[1])
    assert a == pytest.approx(gae(term.reward, [0.5, 0.5], [0.7, 123.0], term.terminated, term.truncated, gamma,
                                  0.95, term.n_steps)[0])


def test_success_ends_a_decision_early_with_a_terminal(il_ckpt, monkeypatch):
    """Real reach episodes that end by success: with the task's tolerance widened to 10 m every TCP position
    succeeds, so each episode terminates on its first step (reward 1) in the middle of a Ta = 4 chunk."""
    import sim.tasks.reach as reach

    cfg = tiny_cfg(il_ckpt)
    policy, _ = online_rl.load_policy(cfg)
    monkeypatch.setattr(reach, "TOL", 10.0)  # read at step time by the in-process env (num_envs 1)
    col = Collector("reach", 1, policy.config)
    try:
        roll = col.collect(policy, 3, 0, 0.99, torch.Generator().manual_seed(0))
    finally:
        col.close()
    assert roll.n_steps[0] == 1 and roll.terminated[0] and not roll.truncated[0]
    assert roll.reward[0] == 1.0 and roll.episodes[0]["success"]
    adv, ret = online_rl.advantages(roll, np.zeros(len(roll)), np.full(len(roll), 9.0), online_rl.GAEConfig())
    assert adv[0] == pytest.approx(1.0)  # no bootstrap from the (large) next value


def test_env_randomize_reaches_the_rollout_envs(il_ckpt):
    """env.randomize (here: observation noise) changes what the training envs show the policy; the same seeds and
    noise without it reproduce the nominal rollout exactly, so the difference is the randomisation."""
    cfg = tiny_cfg(il_ckpt)
    policy, _ = online_rl.load_policy(cfg)

    def first_conds(randomize):
        col = Collector("reach", 1, policy.config, randomize=randomize)
        try:
            return col.collect(policy, 8, 0, 0.99, torch.Generator().manual_seed(0)).cond
        finally:
            col.close()

    nominal = first_conds(None)
    np.testing.assert_array_equal(first_conds({}), nominal)
    noisy = first_conds({"obs_noise": 0.05})
    assert noisy.shape == nominal.shape and np.abs(noisy - nominal).max() > 1e-3


def test_resume_continues_to_the_same_result(il_ckpt, tmp_path):
    from robotstack.train.common import read_metrics

    cfg = tiny_cfg(il_ckpt, **{"eval.episodes": 0})
    full = tmp_path / "full"
    online_rl.train(cfg, full, show_progress=False)
    part = tmp_path / "part"
    s1 = online_rl.train(cfg, part, show_progress=False, stop_after_updates=1)
    assert s1["updates"] == 1 and s1["env_steps"] < cfg.train.env_steps
    s2 = online_rl.train(cfg, part, resume=True, show_progress=False)
    assert s2["updates"] == 2 and s2["updates_this_run"] == 1
    a, b = read_metrics(full), read_metrics(part)
    assert [r["env_steps"] for r in a] == [r["env_steps"] for r in b]
    assert b[-1]["loss_pi"] == pytest.approx(a[-1]["loss_pi"], rel=1e-5, abs=1e-7)
    from safetensors.torch import load_file

    wa = load_file(str(full / "checkpoints" / "latest" / "model.safetensors"))
    wb = load_file(str(part / "checkpoints" / "latest" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_bad_configs_fail_before_any_work(il_ckpt, tmp_path):
    run = tmp_path / "never"
    with pytest.raises(ConfigError, match="task 'reach', but config task is 'push'"):
        online_rl.train(tiny_cfg(il_ckpt, task="push"), run, show_progress=False)
    with pytest.raises(ConfigError, match="ppo.bogus"):
        tiny_cfg(il_ckpt, **{"ppo.bogus": 1})
    with pytest.raises(ConfigError, match="env.randomize: unknown key 'fricton'"):
        tiny_cfg(il_ckpt, **{"env.randomize.fricton": 0.4})
    with pytest.raises(ConfigError, match="friction=1.5: expected a relative range < 1"):
        tiny_cfg(il_ckpt, **{"env.randomize.friction": 1.5})
    with pytest.raises(ConfigError, match="config policy"):
        online_rl.train(tiny_cfg(tmp_path / "nothing"), run, show_progress=False)
    # a critics dir of another feature width
    from policies.rl.critics import DoubleQ, ValueNet, save_iql_critics

    crit = tmp_path / "critics"
    save_iql_critics(crit, DoubleQ(7, 16, (8,)), ValueNet(7, (8,)),
                     {"feat_dim": 7, "action_size": 16, "hidden": [8], "layer_norm": False, "n_c": 4})
    with pytest.raises(ConfigError, match="width 7"):
        online_rl.train(tiny_cfg(il_ckpt, critic=str(crit)), run, show_progress=False)
    with pytest.raises(ConfigError, match="not an IQL critics dir"):
        online_rl.train(tiny_cfg(il_ckpt, critic=str(tmp_path)), run, show_progress=False)
    with pytest.raises(ConfigError, match="needs an rl100 consistency checkpoint"):
        online_rl.train(tiny_cfg(il_ckpt, student=str(il_ckpt)), run, show_progress=False)
    with pytest.raises(ConfigError, match="distill.enabled is false"):
        online_rl.train(tiny_cfg(il_ckpt, student=str(il_ckpt), **{"distill.enabled": False}), run,
                        show_progress=False)
    assert not run.exists()


def test_value_warm_starts_from_iql_critics(il_ckpt):
    from policies.rl.critics import DoubleQ, ValueNet, save_iql_critics

    policy, _ = online_rl.load_policy(tiny_cfg(il_ckpt))
    dc = policy.obs_encoder.out_dim
    torch.manual_seed(3)
    v = ValueNet(dc, (16,))
    crit = Path(il_ckpt).parents[2] / "critics_ok"
    save_iql_critics(crit, DoubleQ(dc, 16, (16,)), v, {"feat_dim": dc, "action_size": 16, "hidden": [16],
                                                      "layer_norm": False, "n_c": 4, "gamma": 0.99})
    value, src = online_rl.load_value(tiny_cfg(il_ckpt, critic=str(crit)), policy)
    x = torch.randn(5, dc)
    assert src.startswith("iql:") and torch.equal(value(x), v(x))


def test_cli_ctrl_c_saves_and_resume_continues(il_ckpt, tmp_path):
    """`robotstack train online-rl` in its own process group with 2 env subprocesses; SIGINT to the whole group
    (what a terminal's Ctrl-C does) after the first update: exit 130, a checkpoint at the env steps reached,
    summary interrupted; --resume then runs to the new budget."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from robotstack.train.common import read_metrics

    root = Path(__file__).resolve().parents[2]
    run = tmp_path / "cli"
    common = ["ppo.minibatch_size=32", "ppo.epochs=1", "ppo.value_hidden=[32]", "eval.episodes=0",
              "distill.enabled=false", "train.rollout_env_steps=48"]
    env = os.environ | {"PYTHONPATH": str(root)}
    argv = [sys.executable, "-m", "robotstack.cli", "train", "online-rl", "--config",
            str(root / "configs/online_rl/reach.yaml"), f"policy={il_ckpt}", "env.num_envs=2",
            "train.env_steps=1000000", *common, "--out", str(run), "--quiet"]
    proc = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not read_metrics(run):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out = proc.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"still running after SIGINT:\n{proc.communicate()[0]}")
    assert proc.returncode == 130, out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] and "--resume" in out
    step = json.loads((run / "checkpoints" / "latest" / "train_state.json").read_text())["step"]
    assert step == summary["env_steps"] >= 48

    resumed = subprocess.run([sys.executable, "-m", "robotstack.cli", "train", "online-rl", "--resume", str(run),
                              f"train.env_steps={step + 48}", "env.num_envs=1", "--quiet"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    done = json.loads((run / "summary.json").read_text())
    assert not done["interrupted"] and done["env_steps"] >= step + 48 and done["updates_this_run"] >= 1


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="Ray is an optional extra (pip install 'robotstack[ray]')")
def test_ray_two_local_workers(il_ckpt, tmp_path):
    from robotstack.train.common import read_metrics

    cfg = tiny_cfg(il_ckpt, **{"ray.address": "local", "ray.num_workers": 2, "ray.envs_per_worker": 1,
                               "eval.episodes": 0})
    summary = online_rl.train(cfg, tmp_path / "ray", show_progress=False)
    rows = read_metrics(tmp_path / "ray")
    assert summary["ray"] == "local" and summary["env_steps"] >= 160 and len(rows) == 2
    assert all(r["ratio0_max_dev"] < 1e-4 for r in rows)  # workers sampled with the pushed weights


def test_value_warm_up_fits_a_fresh_v_that_clipping_holds_back():
    """Returns of a dense reward (~ -10): the clipped value loss moves V by at most ppo.value_clip per update from
    the V that collected the batch, so a fresh V stays near 0; ppo.value_warmup_epochs (plain MSE on the GAE
    returns) fits it before the first actor step."""
    from policies.rl.critics import ValueNet
    from robotstack.train.online_rl import Learner, value_step, warm_up_value
    from robotstack.train.rollouts import Rollout

    n, dc = 128, 8
    g = np.random.default_rng(0)
    cond = g.normal(size=(n, dc)).astype(np.float32)
    reward = -10.0 + 2.0 * cond[:, 0]  # one-decision episodes ending in a terminal: the return is the reward
    roll = Rollout(chain=np.zeros((n, 2, 1, 1), np.float32), log_probs=np.zeros((n, 1), np.float32), cond=cond,
                   next_cond=np.zeros((n, dc), np.float32), reward=reward.astype(np.float64),
                   n_steps=np.full(n, 4), terminated=np.ones(n, bool), truncated=np.zeros(n, bool),
                   lengths=[1] * n, timesteps=np.zeros(1), prev_timesteps=np.zeros(1))
    cfg = tiny_cfg(Path("unused"), **{"ppo.value_warmup_epochs": 40, "ppo.minibatch_size": 16})

    def fresh():
        torch.manual_seed(0)
        value = ValueNet(dc, (32,))
        return Learner(None, value, None, torch.optim.Adam(value.parameters(), lr=1e-3))

    def error(learner):
        with torch.no_grad():
            return float((learner.value(torch.from_numpy(cond)) - torch.from_numpy(reward)).abs().mean())

    clipped = fresh()
    with torch.no_grad():
        v_old = clipped.value(torch.from_numpy(cond))
    for _ in range(40 * n // 16):  # as many steps as the warm-up takes, all against the collecting V
        value_step(clipped, torch.from_numpy(cond), v_old, torch.from_numpy(reward).float(), cfg.ppo)
    assert error(clipped) > 9.0  # clipping held V within value_clip (0.2) of its fresh ~0 outputs
    warmed = fresh()
    loss = warm_up_value(warmed, roll, cfg, np.random.default_rng(1))
    assert np.isfinite(loss) and error(warmed) < 1.0  # fitted, including the part that varies with the state
