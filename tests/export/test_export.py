"""ONNX export: torch-vs-onnxruntime parity for every sampler, manifest validation, torch-free loader."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distill"))
from fast_policy_testing import tiny_student, tiny_teacher  # noqa: E402

from policies.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from policies.diffusion.rti import RTIConfig, RTISampler  # noqa: E402
from robotstack.core.errors import ArtifactError, ConfigError  # noqa: E402
from robotstack.runtime.artifact import load_artifact, sha256_file  # noqa: E402
from robotstack.export.onnx_export import export_artifact  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec():
    """The sim's reach task spec (4 actions, like the tiny policies): what the manifest's task fields come from."""
    import sim

    env = sim.make("reach")
    try:
        return env.unwrapped.task_spec()
    finally:
        env.close()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    teacher = tiny_teacher()
    save_checkpoint(root / "teacher", teacher, extra={"task": "reach"})
    student, _ = tiny_student("ctm")
    save_checkpoint(root / "ctm", student, extra={"task": "reach"})
    rl, _ = tiny_student("rl100")
    save_checkpoint(root / "rl100", rl, extra={"task": "reach"})
    return root


@pytest.fixture(scope="module")
def artifacts(ckpts, spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("art")
    kw = dict(latency_runs=10, parity_trials=2, task_spec=spec)
    m = {"cm1": export_artifact(ckpts / "ctm", "cm1", out / "cm1", **kw),
         "cm3": export_artifact(ckpts / "rl100", "cm3", out / "cm3", **kw),
         "ddim": export_artifact(ckpts / "teacher", "ddim", out / "ddim", steps=5, **kw),
         "rti": export_artifact(ckpts / "teacher", "rti", out / "rti", steps=5,
                                rti=RTIConfig(k_start=2, gripper_mode="clip", factor=10.0), **kw),
         "rti_jump": export_artifact(ckpts / "teacher", "rti", out / "rti_jump", steps=5, rti=RTI_JUMP, **kw),
         "cm_warm": export_artifact(ckpts / "rl100", "cm_warm", out / "cm_warm", **kw)}
    return out, m


RTI_JUMP = RTIConfig(steps=(5, 2, 0), step_semantics="jump", gripper_mode="clip", factor=10.0)  # strided, 3 calls


@pytest.mark.parametrize("sampler", ["cm1", "cm3", "ddim", "rti", "cm_warm"])
def test_parity_and_manifest(artifacts, spec, sampler):
    out, manifests = artifacts
    m = manifests[sampler]
    assert m["parity"]["ok"] and m["parity"]["max_abs_err"] <= 1e-4
    path = m["parity"]["sampler_path"]  # onnxruntime vs the benchmarked torch sampler, thresholded actions
    assert path["ok"] and path["gripper_mismatches"] == 0 and path["max_abs_err"] <= 1e-4
    warm_started = sampler in ("rti", "cm_warm")  # parity runs 4 chained calls per episode, state carried
    assert path["decisions"] == (2 * 4 if warm_started else 2)
    assert {"cm1": "ConsistencyPolicy", "cm3": "ConsistencyPolicy", "ddim": "robotstack eval",
            "rti": "RTISampler", "cm_warm": "WarmConsistencySampler"}[sampler] in path["torch_path"]
    assert m["opset"] == 17 and m["graphs"]["policy"]["sha256"] == sha256_file(out / sampler / "policy.onnx")
    for role, lat in m["latency"].items():
        assert lat["ort"]["p50_ms"] > 0 and lat["ort"]["p99_ms"] >= lat["ort"]["p50_ms"], role
    assert m["obs"]["spec"]["object_state"] == {"shape": [2, 7], "dtype": "float32"}
    assert m["action"] == {"names": ["dx", "dy", "dz", "gripper"], "dim": 4, "T": 8,
                           "Ta": 1 if warm_started else 4, "To": 2, "action_start": 1, "units": "env"}
    # what the runtime needs about the task travels as data, from the sim's task spec
    assert m["task"] == {"name": "reach", "success": [{"distance": ["robot_eef_pos", "goal"], "dims": [0, 1, 2],
                                                       "below": 0.02}]}
    assert m["ee_action"] == spec["ee_action"] and m["robot"] == {"dof": 7, "kinematics": "panda"}
    assert m["control_rate_hz"] == 20.0
    assert m["normalization"]["in_graph"] and "action" in m["normalization"]["stats"]


def test_exp_mish_is_mish():
    """The export's Mish (one exp, no Softplus) is the same function, at the extremes too (no inf / inf)."""
    from robotstack.export.graphs import ExpMish

    x = torch.cat([torch.linspace(-120, 120, 20001), torch.tensor([-1e30, -88.0, 0.0, 19.99, 20.0, 20.01, 1e30])])
    got, want = ExpMish()(x), torch.nn.Mish()(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("sampler", ["cm1", "ddim", "rti"])
def test_exported_graphs_have_no_softplus_and_the_policy_is_untouched(ckpts, artifacts, sampler):
    """The graphs are traced from a copy with ExpMish (onnxruntime runs Softplus as a slow scalar loop); the
    checkpoint's policy keeps nn.Mish, the reference that sampler-path parity compares the graph against."""
    import onnx

    from robotstack.export.graphs import ExpMish, for_export

    out, _ = artifacts
    for f in (out / sampler).glob("*.onnx"):
        ops = {n.op_type for n in onnx.load(str(f)).graph.node}
        assert "Softplus" not in ops and "Exp" in ops, (f, ops)
    policy = load_checkpoint(ckpts / ("ctm" if sampler == "cm1" else "teacher"))
    n_mish = sum(isinstance(m, torch.nn.Mish) for m in policy.modules())
    copy = for_export(policy)
    assert n_mish > 0 and sum(isinstance(m, torch.nn.Mish) for m in policy.modules()) == n_mish
    assert sum(isinstance(m, ExpMish) for m in copy.modules()) == n_mish
    assert not any(isinstance(m, torch.nn.Mish) for m in copy.modules())


def _hist(art, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-2, 2, shape).astype(np.float32) for k, (shape, _) in art.obs_spec.items()}


def test_cm_artifact_matches_the_torch_student(ckpts, artifacts):
    out, _ = artifacts
    for sampler, ck, n in (("cm1", "ctm", 1), ("cm3", "rl100", 3)):
        art = load_artifact(out / sampler)
        student = load_checkpoint(ckpts / ck)
        h = _hist(art)
        noise = np.random.default_rng(1).standard_normal((1, n, 8, 4)).astype(np.float32)
        got = art.run_raw("policy", {**{k: v[None] for k, v in h.items()}, "noise": noise})
        obs = {k: torch.from_numpy(v[None]) for k, v in h.items()}
        ref = student.predict_action(obs, steps=n, noises=[torch.from_numpy(noise[:, i]) for i in range(n)])
        np.testing.assert_allclose(got["chunk"], ref.chunk.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(np.unique(got["action"][..., 3]) ** 2, np.ones_like(
            np.unique(got["action"][..., 3])))  # gripper thresholded to +-1 in the graph


@pytest.mark.parametrize("name, rti, steps", [
    ("rti", RTIConfig(k_start=2, gripper_mode="clip", factor=10.0), [2, 1, 0]), ("rti_jump", RTI_JUMP, [5, 2, 0])])
def test_rti_artifact_matches_the_torch_sampler_over_calls(ckpts, artifacts, name, rti, steps):
    from policies.checkpoint import load_checkpoint

    out, m = artifacts
    art = load_artifact(out / name)
    policy = load_checkpoint(ckpts / "teacher", weights="auto")
    r = RTISampler(policy, dataclasses.replace(rti, init_sampler="ddim", init_steps=5))
    rng = np.random.default_rng(0)
    state = None
    for call in range(4):
        h = _hist(art, call)
        obs = {k: torch.from_numpy(v[None]) for k, v in h.items()}
        feeds = {k: v[None] for k, v in h.items()}
        if state is None:
            noise = rng.standard_normal((1, 1, 8, 4)).astype(np.float32)
            got = art.run_raw("init", feeds | {"noise": noise})
            ref = r(obs, noise=torch.from_numpy(noise[:, 0]))
        else:
            sn = rng.standard_normal((1, 2, 8, 4)).astype(np.float32)
            got = art.run_raw("policy", feeds | {"guess": state, "step_noise": sn})
            ref = r(obs, step_noise=torch.from_numpy(sn))
        state = got["guess_out"]
        np.testing.assert_allclose(got["action"], ref.action.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(state, r.guess.numpy(), atol=1e-4, rtol=0)
    assert m[name]["rti"]["steps"] == steps and m[name]["nfe"] == {"first_call": 5, "per_call": 3}
    np.testing.assert_allclose(np.abs(state[..., 3]), 0.1, rtol=1e-6)  # clip mode: +-1/factor in the state


@pytest.mark.parametrize("sampler,ckpt", [("cm1", "ctm"), ("ddim", "teacher")])
def test_n_exec_returns_the_first_actions_of_the_chunk(ckpts, artifacts, spec, tmp_path, sampler, ckpt):
    """--n-exec 1 (replan every control step): the manifest's Ta is 1, the sampler-path parity still holds, and each
    call returns the first action of what the full-Ta artifact returns on the same observation and noise."""
    out, _ = artifacts
    m = export_artifact(ckpts / ckpt, sampler, tmp_path / "one", steps=5 if sampler == "ddim" else None, n_exec=1,
                        latency_runs=2, parity_trials=2, task_spec=spec)
    assert m["action"]["Ta"] == 1 and m["parity"]["ok"] and m["parity"]["sampler_path"]["ok"]
    one, full = load_artifact(tmp_path / "one", seed=5), load_artifact(out / sampler, seed=5)
    for call in range(3):
        h = _hist(one, call)
        a1, a4 = one.act(h), full.act(h)
        assert a1.shape == (1, 4) and a4.shape == (4, 4)
        np.testing.assert_allclose(a1, a4[:1], atol=1e-5, rtol=0)


def test_n_exec_out_of_range_is_refused(ckpts, spec, tmp_path):
    for n in (0, 5, 2.0):
        with pytest.raises(ConfigError, match=r"n-exec .*\[1, 4\]"):
            export_artifact(ckpts / "ctm", "cm1", tmp_path / "x", n_exec=n, task_spec=spec)
    with pytest.raises(ConfigError, match="not for --sampler rti"):
        export_artifact(ckpts / "teacher", "rti", tmp_path / "y", steps=5, n_exec=1, task_spec=spec)
    assert not (tmp_path / "x" / "manifest.json").exists() and not (tmp_path / "y" / "manifest.json").exists()


def test_artifact_act_and_reset(artifacts):
    out, _ = artifacts
    art = load_artifact(out / "rti", seed=3)
    h = _hist(art)
    assert art.act(h).shape == (1, 4) and art.state is not None
    art.act(h)
    art.reset()
    assert art.state is None
    with pytest.raises(ArtifactError, match="missing key 'robot_eef_pos'"):
        art.act({k: v for k, v in h.items() if k != "robot_eef_pos"})
    with pytest.raises(ArtifactError, match=r"obs_history\['object_state'\] has shape \(1, 7\)"):
        art.act(h | {"object_state": h["object_state"][:1]})


def test_cm_warm_artifact_starts_from_its_last_chunk(ckpts, artifacts, spec, tmp_path):
    """cm_warm: the first call (init.onnx) is the plain CM-1 sample of the same student from the same noise; later
    calls (policy.onnx) depend on the carried guess; reset() drops the guess and the next call is a first call
    again."""
    out, m = artifacts
    assert m["cm_warm"]["nfe"] == {"first_call": 1, "per_call": 1}
    assert set(m["cm_warm"]["graphs"]) == {"init", "policy"} and m["cm_warm"]["state"]["input"] == "guess"
    export_artifact(ckpts / "rl100", "cm1", tmp_path / "cm1", latency_runs=2, parity_trials=1, task_spec=spec)
    warm, cm1 = load_artifact(out / "cm_warm", seed=7), load_artifact(tmp_path / "cm1", seed=7)
    h = _hist(warm)
    np.testing.assert_allclose(warm.act(h), cm1.act(h)[:1], atol=1e-5, rtol=0)  # same rng stream, same noise
    assert warm.state is not None
    feeds = {k: v[None].astype(np.float32) for k, v in h.items()} | {"noise": np.zeros((1, 1, 8, 4), np.float32)}
    a = warm.run_raw("policy", feeds | {"guess": np.zeros((1, 8, 4), np.float32)})["chunk"]
    b = warm.run_raw("policy", feeds | {"guess": np.full((1, 8, 4), 0.9, np.float32)})["chunk"]
    assert np.abs(a - b).max() > 1e-3  # the guess reaches the output
    warm.reset(seed=7)
    cm1.reset(seed=7)
    np.testing.assert_allclose(warm.act(h), cm1.act(h)[:1], atol=1e-5, rtol=0)


def test_a_refused_export_leaves_the_artifact_in_its_dir(ckpts, artifacts, spec, tmp_path):
    """Exporting into a dir that holds an artifact: a refusal found while building the graphs (a diffusion
    checkpoint for cm1, a ctm student for cm_warm) used to come after the old files were deleted."""
    out, _ = artifacts
    there = _copy(out / "cm1", tmp_path / "there")
    before = {p.name: p.read_bytes() for p in there.iterdir()}
    for ckpt, sampler, message in ((ckpts / "teacher", "cm1", "needs a distilled checkpoint"),
                                   (ckpts / "ctm", "cm_warm", "needs an rl100 student")):
        with pytest.raises(ConfigError, match=message):
            export_artifact(ckpt, sampler, there, task_spec=spec)
        assert {p.name: p.read_bytes() for p in there.iterdir()} == before


def test_cm_warm_refuses_what_it_cannot_run(ckpts, spec, tmp_path):
    with pytest.raises(ConfigError, match="needs an rl100 student"):
        export_artifact(ckpts / "ctm", "cm_warm", tmp_path / "a", task_spec=spec)
    with pytest.raises(ConfigError, match="t=20 is not a point the student was trained on"):
        export_artifact(ckpts / "rl100", "cm_warm", tmp_path / "b", warm_t=20, task_spec=spec)
    with pytest.raises(ConfigError, match="needs a distilled checkpoint"):
        export_artifact(ckpts / "teacher", "cm_warm", tmp_path / "c", task_spec=spec)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_artifacts_are_refused(artifacts, tmp_path):
    out, _ = artifacts
    d = _copy(out / "cm1", tmp_path / "bytes")
    with open(d / "policy.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(d)

    d = _copy(out / "cm1", tmp_path / "shape")
    doc = json.loads((d / "manifest.json").read_text())
    doc["graphs"]["policy"]["inputs"][0]["shape"] = [1, 3, 3]
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="do not match the manifest"):
        load_artifact(d)

    d = _copy(out / "cm1", tmp_path / "name")
    doc = json.loads((d / "manifest.json").read_text())
    doc["graphs"]["policy"]["outputs"][0]["name"] = "actions"
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="outputs"):
        load_artifact(d)

    d = _copy(out / "cm1", tmp_path / "spec")
    doc = json.loads((d / "manifest.json").read_text())
    doc["obs"]["spec"]["robot_eef_pos"]["shape"] = [3, 3]
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="robot_eef_pos"):
        load_artifact(d)

    d = _copy(out / "cm1", tmp_path / "nomanifest")
    (d / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        load_artifact(d)


def test_loader_never_imports_torch(artifacts):
    out, _ = artifacts
    code = (
        "import sys, numpy as np\n"
        "from robotstack.runtime.artifact import load_artifact\n"
        f"for s in ('cm1', 'rti'):\n"
        f"    a = load_artifact({str(out)!r} + '/' + s)\n"
        "    h = {k: np.zeros(v[0], v[1]) for k, v in a.obs_spec.items()}\n"
        "    a.act(h); a.act(h)\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m.startswith('policies')]\n"
        "print('LEAK', bad) if bad else print('CLEAN')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("CLEAN"), res.stdout


def test_wrong_checkpoint_kind_fails_loudly(ckpts, spec, tmp_path):
    with pytest.raises(ConfigError, match="needs a distilled checkpoint"):
        export_artifact(ckpts / "teacher", "cm1", tmp_path / "x", task_spec=spec)
    with pytest.raises(ConfigError, match="needs a diffusion policy checkpoint"):
        export_artifact(ckpts / "ctm", "ddim", tmp_path / "y", task_spec=spec)


def test_export_without_the_task_contract_is_refused(ckpts, spec, tmp_path):
    with pytest.raises(ConfigError, match="task_spec: missing"):
        export_artifact(ckpts / "ctm", "cm1", tmp_path / "a")
    with pytest.raises(ConfigError, match=r"missing field\(s\) \['ee_action'\]"):
        export_artifact(ckpts / "ctm", "cm1", tmp_path / "b", task_spec={k: v for k, v in spec.items()
                                                                          if k != "ee_action"})
    bad = dict(spec, success=[{"distance": ["robot_eef_pos"], "dims": [0], "below": 0.02}])
    with pytest.raises(ConfigError, match=r"success\[0\].distance"):
        export_artifact(ckpts / "ctm", "cm1", tmp_path / "c", task_spec=bad)


def _edited(src: Path, dst: Path, edit) -> Path:
    d = _copy(src, dst)
    doc = json.loads((d / "manifest.json").read_text())
    edit(doc)
    (d / "manifest.json").write_text(json.dumps(doc))
    return d


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("control_rate_hz"), "missing field 'control_rate_hz'"),
    (lambda d: d.update(control_rate_hz=None), "'control_rate_hz' is None, expected a rate in Hz > 0"),
    (lambda d: d.pop("ee_action"), "missing field 'ee_action'"),
    (lambda d: d["task"].pop("success"), "missing field 'task.success'"),
    (lambda d: d["robot"].pop("dof"), "missing field 'robot.dof'"),
    (lambda d: d["action"].pop("names"), "missing field 'action.names'"),
    (lambda d: d.update(version=1), "version 1, expected 'robotstack.artifact' version 2"),
    (lambda d: d.update(action_scale={}), r"unknown field\(s\) \['action_scale'\]"),
    (lambda d: d["task"].update(success=[{"distance": ["a", "b"], "dims": [0], "below": -1}]),
     r"task.success\[0\].below"),
])
def test_manifest_reader_is_strict(artifacts, tmp_path, edit, message):
    out, _ = artifacts
    d = _edited(out / "cm1", tmp_path / "m", edit)
    with pytest.raises(ArtifactError, match=message) as err:
        load_artifact(d)
    assert str(d / "manifest.json") in str(err.value)


def test_cli_export_takes_the_task_contract_from_the_checkpoints_task(ckpts, spec, tmp_path):
    res = subprocess.run([sys.executable, "-m", "robotstack.cli", "export", "--checkpoint", str(ckpts / "ctm"),
                          "--sampler", "cm1", "--out", str(tmp_path / "a")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    art = load_artifact(tmp_path / "a")
    m = art.manifest
    assert m.task["name"] == "reach" and m.task["success"] == spec["success"] and m.ee_action == spec["ee_action"]
    assert m.control_rate_hz == spec["control_hz"] and m.action["names"] == spec["action_names"]


@pytest.mark.parametrize("flags, steps", [([], [20, 10, 0]), (["--k-start", "2"], [2, 1, 0]),
                                          (["--rti-steps", "5,2,0"], [5, 2, 0])])
def test_cli_rti_export_steps(ckpts, tmp_path, flags, steps):
    """The CLI's RTI default is the benchmark's 3-call list [20, 10, 0] stepped as jumps; --k-start K' gives the
    consecutive K'..0, --rti-steps any list; a malformed list is refused by name."""
    cmd = [sys.executable, "-m", "robotstack.cli", "export", "--checkpoint", str(ckpts / "teacher"), "--sampler",
           "rti", "--steps", "5", "--out", str(tmp_path / "a")]
    res = subprocess.run(cmd + flags, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["rti"]["steps"] == steps and m["rti"]["step_semantics"] == "jump" and m["nfe"]["per_call"] == 3
    if not flags:
        bad = subprocess.run(cmd[:-1] + [str(tmp_path / "b"), "--rti-steps", "20;10;0"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert bad.returncode != 0 and "--rti-steps '20;10;0'" in bad.stderr and not (tmp_path / "b").exists()


def _episode(art, calls: int = 4) -> np.ndarray:
    return np.stack([art.act(_hist(art, call)) for call in range(calls)])


@pytest.mark.parametrize("sampler", ["rti", "ddim"])
def test_artifact_reset_reseeds_the_noise(artifacts, sampler):
    """reset(seed) reseeds (issue 10 item 6b): two episodes after reset with the same seed are identical; reset()
    gives each episode its own stream, reproducible from the constructor seed."""
    out, _ = artifacts
    art = load_artifact(out / sampler, seed=3)
    art.reset(seed=11)
    first = _episode(art)
    art.reset(seed=11)
    np.testing.assert_array_equal(_episode(art), first)
    art.reset(seed=12)
    assert not np.array_equal(_episode(art, 1)[0], first[0])  # another seed, another draw
    a, b = load_artifact(out / sampler, seed=3), load_artifact(out / sampler, seed=3)
    eps_a = [(a.reset(), _episode(a))[1] for _ in range(2)]
    eps_b = [(b.reset(), _episode(b))[1] for _ in range(2)]
    np.testing.assert_array_equal(np.stack(eps_a), np.stack(eps_b))
    assert not np.array_equal(eps_a[0], eps_a[1])  # consecutive episodes draw different noise


def test_export_refuses_a_graph_that_differs_from_the_benchmarked_sampler(tmp_path, spec):
    """Issue 10 item 6c: parity is against the torch path `robotstack eval` runs (predict_action), not against the
    graph module itself. A policy evaluated with stochastic DDIM (ddim_eta 1) is not what the deterministic
    graph computes; the old graph-vs-graph parity passed it, the sampler-path parity refuses it."""
    teacher = tiny_teacher()
    teacher.config.scheduler.ddim_eta = 1.0
    save_checkpoint(tmp_path / "eta1", teacher, extra={"task": "reach"})
    with pytest.raises(ConfigError, match="benchmarked torch path"):
        export_artifact(tmp_path / "eta1", "ddim", tmp_path / "art", steps=5, task_spec=spec, latency_runs=2,
                        parity_trials=2)
    m = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert max(m["parity"]["per_graph"].values()) <= 1e-4  # the graph alone looks fine
    assert m["parity"]["sampler_path"]["max_abs_err"] > 1e-2 and not m["parity"]["ok"]
    assert m["parity"]["sampler_path"]["gripper_mismatches"] + m["parity"]["sampler_path"]["near_threshold"] > 0


def test_rti_export_default_gripper_mode_is_auto(tmp_path, spec):
    """Without an RTIConfig the export resolves "auto": scale for a scale-trained policy (recorded with why)."""
    from policies.diffusion.rti import scale_gripper_normalizer

    teacher = tiny_teacher()
    scale_gripper_normalizer(teacher, [3], 10.0)
    save_checkpoint(tmp_path / "scaled", teacher, extra={"task": "reach"})
    m = export_artifact(tmp_path / "scaled", "rti", tmp_path / "art", steps=3, task_spec=spec, latency_runs=2,
                        parity_trials=1)
    assert (m["rti"]["gripper_mode"], m["rti"]["factor"], m["rti"]["gripper_dims"]) == ("scale", 10.0, [3])
    assert "trained with the gripper / 10" in m["rti"]["gripper_reason"] and m["parity"]["ok"]


def test_sampler_path_parity_is_in_model_units(tmp_path, spec):
    """A policy whose gripper is trained scaled (policy.gripper_factor) unnormalizes its float32 rounding by the
    factor: in env units the same graph failed the 1e-4 tolerance (stack at factor 10: 1.2e-4). Parity is
    measured in normalized action units, so a large factor passes and the env-unit error is still recorded."""
    from policies.diffusion.rti import scale_gripper_normalizer

    teacher = tiny_teacher()
    scale_gripper_normalizer(teacher, [3], 1e4)  # env gripper = model x 1e4: any rounding shows x 1e4 in env units
    save_checkpoint(tmp_path / "scaled", teacher, extra={"task": "reach"})
    m = export_artifact(tmp_path / "scaled", "ddim", tmp_path / "art", steps=5, task_spec=spec, latency_runs=2,
                        parity_trials=3)
    path = m["parity"]["sampler_path"]
    assert m["parity"]["ok"] and path["max_abs_err"] <= 1e-4
    assert path["max_abs_err_env_units"] > 1e-4  # the old env-unit check would have refused this export


def test_metaworld_policies_export(tmp_path):
    """A Meta-World task spec carries what a manifest needs (its action contract, the Sawyer, no state success
    criterion); before, every Meta-World export was refused for missing ee_action / robot / success."""
    import sim
    from robotstack.core.ee_action import EEActionSpec

    env = sim.make("mw:push-v3")
    try:
        spec = env.unwrapped.task_spec()
    finally:
        env.close()
    save_checkpoint(tmp_path / "teacher", tiny_teacher(), extra={"task": "mw:push-v3"})
    m = export_artifact(tmp_path / "teacher", "ddim", tmp_path / "art", steps=2, task_spec=spec, latency_runs=2,
                        parity_trials=1)
    assert m["parity"]["ok"] and m["robot"] == {"dof": 7, "kinematics": "sawyer"} and m["task"]["success"] is None
    contract = EEActionSpec.from_dict(m["ee_action"])
    assert contract.max_step_pos == 0.01 and not contract.use_yaw  # Meta-World: 1 cm of mocap per unit, no yaw
    # Meta-World's gripper is a continuous grab effort: not thresholded (a +-1 threshold took CM-1 on mw:push
    # from 97% to 30%); the Panda tasks keep their binary last dim
    assert m["gripper"]["dims"] == [] and spec["gripper_dims"] == []
    # RTI too, also when the caller passes its own config (as `robotstack export --sampler rti` does)
    rti = export_artifact(tmp_path / "teacher", "rti", tmp_path / "rti", steps=2, task_spec=spec, latency_runs=2,
                          parity_trials=1, rti=RTIConfig(k_start=1, gripper_mode="auto"))
    assert rti["rti"]["gripper_mode"] == "none" and rti["rti"]["gripper_dims"] == []
    art = load_artifact(tmp_path / "art")
    rng = np.random.default_rng(0)
    grips = np.concatenate([art.act({k: rng.uniform(-1, 1, shape).astype(np.float32)
                                     for k, (shape, _) in art.obs_spec.items()})[:, 3] for _ in range(5)])
    assert grips.shape == (5 * m["action"]["Ta"],) and not np.isin(grips, [-1.0, 1.0]).all()


def test_derived_features_are_computed_inside_the_exported_graph(tmp_path):
    """A policy with `obs_features` (policies/encoders/derived.py) exports as it is evaluated: the artifact takes
    the raw observation keys only and computes the feature in the graph (parity with torch's predict_action)."""
    import dataclasses

    import sim
    from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig

    env = sim.make("push")
    try:
        spec = env.unwrapped.task_spec()
    finally:
        env.close()
    shapes = {"robot_eef_pos": (3,), "robot_eef_quat": (4,), "object_state": (7,), "goal": (3,)}
    cfg = dataclasses.replace(DiffusionPolicyConfig.example(), obs_shapes=shapes, action_dim=5,
                              obs_features=["object_goal_frame"], obs_norm="meanstd", obs_std_floor=0.01)
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(0)
    policy.fit_normalizer({k: rng.uniform(-1.0, 1.0, (256, *s)) for k, s in {**shapes, "action": (5,)}.items()})
    save_checkpoint(tmp_path / "teacher", policy.eval(), extra={"task": "push"})
    m = export_artifact(tmp_path / "teacher", "ddim", tmp_path / "art", steps=2, task_spec=spec, latency_runs=2,
                        parity_trials=2)
    assert m["parity"]["ok"], m["parity"]
    art = load_artifact(tmp_path / "art")
    assert sorted(art.obs_spec) == sorted(shapes)  # raw keys in, no feature key on the wire
