"""`robotstack export`: checkpoint dir -> artifact dir (policy.onnx [+ init.onnx] + manifest.json).

Glossary: To obs history, T horizon, Ta actions per call, Da action dim, K DDIM steps, K' RTI start step.

Samplers:
- cm1 / cm3: a distilled ConsistencyPolicy checkpoint (1 or 3 chained steps); input noise (1, n, T, Da).
- ddim: a DiffusionPolicy checkpoint, deterministic DDIM(K) (eta = 0) unrolled; the only randomness is the
  initial noise (1, 1, T, Da), drawn by the runtime (numpy default_rng(seed)) - not seeded inside the graph.
- rti: two graphs. init.onnx = the first call (deterministic DDIM(K) from noise; the torch RTISampler's
  default first call is DDPM-100, set init_sampler="ddim" to match the artifact), policy.onnx = a warm call:
  guess (1, T, Da) in, guess_out out (the runtime holds this state between calls), DDPM steps [K'..0] with
  explicit step_noise (1, S, T, Da). One action is returned per call (RTI's n_exec).
The legacy TorchScript exporter (dynamo=False, opset 17; machine_notes §5) is used: no onnxscript dependency,
0.4 s exports; the batch is fixed to 1 (the on-robot case).

The manifest is written through robotstack/core/manifest.py (the schema the runtime reads). What the runtime needs
about the task (control rate, action names, end-effector action contract, robot, success criterion as data) comes
from the sim's task spec (`sim.make(task).unwrapped.task_spec()`, TASK_SPEC_FIELDS): passed as `task_spec`, or
carried by the checkpoint (extra["task_spec"]). Without it the export is refused; the runtime has no defaults.

At export, recorded in manifest.json:
- graph parity: each exported torch graph module vs its onnxruntime session (random in-range obs + noise,
  every output) - catches exporter/opset problems;
- sampler-path parity (`sampler_path_parity`): onnxruntime vs the torch sampler path the benchmarks run -
  `policy.predict_action` (what `robotstack eval` calls; ddim with a seeded generator whose first draw is the
  graph's noise, cm with explicit noises) or the stateful `RTISampler` over several warm calls per episode, each
  side carrying its own state - with the executed actions gripper-thresholded by the same rule (> 0 -> +1) on
  both sides. A graph that quietly differs from the benchmarked policy (another eta, another store/clip of the
  RTI guess, a gripper that flips) fails the export. Gripper values within 1e-3 of the threshold are counted
  as `near_threshold`, not as mismatches (float noise may flip them);
- latency (batch 1, one thread, p50/p99) of torch graph and onnxruntime.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robotstack.core.errors import ConfigError
from robotstack.core.manifest import MANIFEST, SAMPLERS, Manifest, write_manifest
from robotstack.core.success import check_criterion
from robotstack.export.graphs import ConsistencyGraph, DDIMGraph, RTIInitGraph, RTIWarmGraph
from robotstack.runtime.artifact import open_session, sha256_file

from policies.checkpoint import load_checkpoint, policy_name, read_extra, resolve_weights
from policies.consistency.model import ConsistencyPolicy
from policies.diffusion.model import ACTION_KEY, DiffusionPolicy
from policies.diffusion.rti import RTIConfig, RTISampler, threshold_gripper

OPSET = 17
PARITY_TOL = 1e-4
TASK_SPEC_FIELDS = ("task", "control_hz", "action_names", "ee_action", "robot", "success")


def task_section(task_spec: dict | None, checkpoint: Path, action_dim: int) -> dict[str, Any]:
    """The task spec fields the manifest carries; refuses a spec that lacks one (naming it)."""
    where = f"export {checkpoint}: task_spec"
    if task_spec is None:
        raise ConfigError(f"{where}: missing; pass the sim task spec (sim.make(task).unwrapped.task_spec(), which "
                          f"`robotstack export` does for the checkpoint's task) with fields {list(TASK_SPEC_FIELDS)}")
    missing = [k for k in TASK_SPEC_FIELDS if k not in task_spec]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}; expected {list(TASK_SPEC_FIELDS)}")
    names = list(task_spec["action_names"])
    if len(names) != action_dim:
        raise ConfigError(f"{where}: action_names {names} has {len(names)} entries, the policy's action_dim is "
                          f"{action_dim}")
    return {k: task_spec[k] for k in TASK_SPEC_FIELDS} | {
        "success": check_criterion(task_spec["success"], f"{where}.success")}


def random_obs(policy: nn.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """(1, To, *shape) obs inside the normalizer's fitted range (so parity is checked where it matters)."""
    c = policy.config
    out = {}
    for k, shape in c.obs_shapes.items():
        full = (1, c.n_obs_steps, *shape)
        if k in c.image_keys:
            out[k] = rng.integers(0, 256, full, dtype=np.uint8)
            continue
        st = policy.normalizer.stats[k]
        u = rng.uniform(-1.1, 1.1, full)
        x = (u - st.offset.numpy()) / st.scale.numpy()  # minmax/meanstd inverse map of u
        out[k] = x.astype(np.float32)
    return out


def _spec(name: str, arr: np.ndarray) -> dict[str, Any]:
    return {"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype)}


def _percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": len(a)}


class _GraphExport:
    """One graph: example inputs, torch reference, ONNX file, parity and latency."""

    def __init__(self, graph: nn.Module, role: str, file: str, extra_shapes: dict[str, tuple[int, ...]]):
        self.graph, self.role, self.file, self.extra_shapes = graph.eval(), role, file, extra_shapes

    def example(self, rng: np.random.Generator, state: np.ndarray | None = None) -> dict[str, np.ndarray]:
        feeds = random_obs(self.graph.policy, rng)
        for name, shape in self.extra_shapes.items():
            if name == "guess":
                feeds[name] = state if state is not None else rng.uniform(-1, 1, shape).astype(np.float32)
            else:
                feeds[name] = rng.standard_normal(shape).astype(np.float32)
        return feeds

    @torch.no_grad()
    def torch_run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.graph(*[torch.from_numpy(feeds[n]) for n in self.graph.input_names])
        return {n: o.numpy() for n, o in zip(self.graph.outputs, outs)}

    def export(self, out_dir: Path, rng: np.random.Generator) -> dict[str, Any]:
        feeds = self.example(rng)
        path = out_dir / self.file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(self.graph, tuple(torch.from_numpy(feeds[n]) for n in self.graph.input_names),
                              str(path), dynamo=False, opset_version=OPSET, input_names=self.graph.input_names,
                              output_names=list(self.graph.outputs), do_constant_folding=True)
        ref = self.torch_run(feeds)
        return {"file": self.file, "sha256": sha256_file(path),
                "inputs": [_spec(n, feeds[n]) for n in self.graph.input_names],
                "outputs": [_spec(n, ref[n]) for n in self.graph.outputs]}

    def parity(self, out_dir: Path, rng: np.random.Generator, trials: int) -> float:
        sess = open_session(out_dir / self.file)
        err = 0.0
        for _ in range(trials):
            feeds = self.example(rng)
            ref = self.torch_run(feeds)
            got = dict(zip(self.graph.outputs, sess.run(None, feeds)))
            err = max(err, max(float(np.abs(ref[n] - got[n]).max()) for n in self.graph.outputs))
        return err

    def latency(self, out_dir: Path, rng: np.random.Generator, runs: int) -> dict[str, Any]:
        sess = open_session(out_dir / self.file, threads=1)
        feeds = self.example(rng)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            res = {}
            for name, fn in (("ort", lambda: sess.run(None, feeds)), ("torch", lambda: self.torch_run(feeds))):
                for _ in range(5):
                    fn()
                ts = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
                res[name] = _percentiles(ts)
        finally:
            torch.set_num_threads(threads)
        return res | {"threads": 1, "batch": 1}


GRIPPER_AMBIGUOUS = 1e-3


@torch.no_grad()
def sampler_path_parity(policy: nn.Module, sampler: str, steps: int | None, rti: RTIConfig | None,
                        dims: Sequence[int], out_dir: Path, rng: np.random.Generator, episodes: int,
                        calls: int = 4) -> dict[str, Any]:
    """onnxruntime vs the benchmarked torch sampler path, on thresholded executed actions (module docstring)."""
    c = policy.config
    chunk = (c.horizon, c.action_dim)
    sess = {role: open_session(out_dir / f"{role}.onnx") for role in (("init", "policy") if sampler == "rti"
                                                                       else ("policy",))}
    r = RTISampler(policy, rti_for_export(rti, steps)) if sampler == "rti" else None
    cont = [d for d in range(c.action_dim) if d not in dims]
    err, mismatches, near, n = 0.0, 0, 0, 0
    for _ in range(episodes):
        state = None
        if r is not None:
            r.reset()
        for _call in range(calls if r is not None else 1):
            feeds = random_obs(policy, rng)
            obs = {k: torch.from_numpy(v) for k, v in feeds.items()}
            role = "policy"
            if sampler in ("cm1", "cm3"):
                k = 1 if sampler == "cm1" else 3
                feeds["noise"] = rng.standard_normal((1, k, *chunk)).astype(np.float32)
                ref = policy.predict_action(obs, steps=k, noises=[torch.from_numpy(feeds["noise"][:, i])
                                                                  for i in range(k)])
            elif sampler == "ddim":
                seed = int(rng.integers(2 ** 31))
                feeds["noise"] = torch.randn((1, *chunk), generator=torch.Generator().manual_seed(seed)).numpy()[:, None]
                ref = policy.predict_action(obs, sampler="ddim", steps=steps or c.scheduler.num_inference_steps,
                                            generator=torch.Generator().manual_seed(seed))
            elif state is None:
                role = "init"
                feeds["noise"] = rng.standard_normal((1, 1, *chunk)).astype(np.float32)
                ref = r(obs, noise=torch.from_numpy(feeds["noise"][:, 0]))
            else:
                feeds["guess"] = state
                s = r.n_step_noise()
                if s:
                    feeds["step_noise"] = rng.standard_normal((1, s, *chunk)).astype(np.float32)
                ref = r(obs, step_noise=torch.from_numpy(feeds["step_noise"]) if s else None)
            got = dict(zip([o.name for o in sess[role].get_outputs()], sess[role].run(None, feeds)))
            state = got.get("guess_out")
            want = threshold_gripper(ref.action, dims).numpy()
            raw = ref.chunk[:, c.action_start:c.action_start + want.shape[1]].numpy()[..., list(dims)]
            flip = want[..., list(dims)] != got["action"][..., list(dims)]
            near += int((np.abs(raw) < GRIPPER_AMBIGUOUS).sum())
            mismatches += int((flip & (np.abs(raw) >= GRIPPER_AMBIGUOUS)).sum())
            err = max(err, float(np.abs(want[..., cont] - got["action"][..., cont]).max()),
                      float(np.abs(ref.chunk.numpy() - got["chunk"]).max()))
            n += 1
    path = {"cm1": "ConsistencyPolicy.predict_action(steps=1, noises)",
            "cm3": "ConsistencyPolicy.predict_action(steps=3, noises)",
            "ddim": "DiffusionPolicy.predict_action(sampler='ddim', generator) (robotstack eval)",
            "rti": "RTISampler.__call__ (bench_inference / actor rollouts), state carried per side"}[sampler]
    return {"max_abs_err": err, "gripper_mismatches": mismatches, "near_threshold": near, "decisions": n,
            "torch_path": path, "gripper_rule": "> 0 -> +1 else -1 on both sides",
            "ok": err <= PARITY_TOL and mismatches == 0}


def rti_for_export(rti: RTIConfig | None, steps: int | None) -> RTIConfig:
    """The exported RTI always starts with deterministic DDIM(steps) (init.onnx); the default gripper handling is
    "auto" (policies/diffusion/rti.py: scale for a scale-trained policy, else clip with factor 10)."""
    rti = rti or RTIConfig(gripper_mode="auto")
    return RTIConfig(**{**rti.__dict__, "init_sampler": "ddim", "init_steps": steps or rti.init_steps})


def build_graphs(policy: nn.Module, sampler: str, steps: int | None, rti: RTIConfig | None,
                 gripper_dims: Sequence[int]) -> tuple[list[_GraphExport], dict[str, Any]]:
    """-> graph exports and the sampler section of the manifest (nfe, state, noise)."""
    c = policy.config
    chunk = (c.horizon, c.action_dim)
    if sampler in ("cm1", "cm3"):
        if not isinstance(policy, ConsistencyPolicy):
            raise ConfigError(f"export --sampler {sampler}: needs a distilled checkpoint (`robotstack distill`), got "
                              f"a {type(policy).__name__}")
        n = 1 if sampler == "cm1" else 3
        g = _GraphExport(ConsistencyGraph(policy, n, gripper_dims), "policy", "policy.onnx", {"noise": (1, n, *chunk)})
        return [g], {"nfe": {"per_call": n}, "noise": {"policy": {"input": "noise", "shape": [1, n, *chunk]}},
                     "consistency": {"method": policy.method, "chain_points": policy.chain_points(n)}}
    if not isinstance(policy, DiffusionPolicy):
        raise ConfigError(f"export --sampler {sampler}: needs a diffusion policy checkpoint, got "
                          f"{type(policy).__name__}")
    if sampler == "ddim":
        k = steps or c.scheduler.num_inference_steps
        g = _GraphExport(DDIMGraph(policy, k, gripper_dims), "policy", "policy.onnx", {"noise": (1, 1, *chunk)})
        return [g], {"nfe": {"per_call": k}, "ddim": {"steps": k, "eta": 0.0},
                     "noise": {"policy": {"input": "noise", "shape": [1, 1, *chunk]}}}
    r = RTISampler(policy, rti_for_export(rti, steps))
    rti = r.config  # gripper "auto" resolved
    s = r.n_step_noise()
    warm_extra = {"guess": (1, *chunk)} | ({"step_noise": (1, s, *chunk)} if s else {})
    gi = _GraphExport(RTIInitGraph(r, gripper_dims), "init", "init.onnx", {"noise": (1, 1, *chunk)})
    gw = _GraphExport(RTIWarmGraph(r, gripper_dims), "policy", "policy.onnx", warm_extra)
    section = {"nfe": {"first_call": r.init_steps, "per_call": len(r.steps)},
               "rti": {"steps": r.steps, "k_start": r.steps[0] if r.steps else None,
                       "step_semantics": rti.step_semantics, "stochastic": rti.stochastic,
                       "init": f"ddim:{r.init_steps}", "n_exec": rti.n_exec, "gripper_mode": rti.gripper_mode,
                       "gripper_dims": list(rti.gripper_dims), "factor": rti.factor,
                       "gripper_reason": r.gripper_reason},
               "state": {"input": "guess", "output": "guess_out", "shape": [1, *chunk], "space": "normalized",
                         "first_call_graph": "init", "reset": "drop the state: the next call runs init"},
               "noise": {"init": {"input": "noise", "shape": [1, 1, *chunk]}}
               | ({"policy": {"input": "step_noise", "shape": [1, s, *chunk]}} if s else {})}
    return [gi, gw], section


def export_artifact(checkpoint: str | Path, sampler: str, out: str | Path, *, steps: int | None = None,
                    rti: RTIConfig | None = None, gripper_dims: Sequence[int] | None = None,
                    control_rate_hz: float | None = None, task_spec: dict | None = None, seed: int = 0,
                    parity_trials: int = 5, latency_runs: int = 200, weights: str = "auto") -> dict[str, Any]:
    """Write the artifact dir; returns the manifest (as a dict). gripper_dims None = the last action dim;
    task_spec None = the checkpoint's extra["task_spec"]; control_rate_hz None = the task's control rate."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"export --sampler {sampler!r}: expected one of {SAMPLERS}")
    checkpoint, out = Path(checkpoint), Path(out)
    weights = resolve_weights(checkpoint, weights)  # "auto": EMA when present (students have none)
    policy = load_checkpoint(checkpoint, weights=weights)
    if not policy.normalizer.is_fitted():
        raise ConfigError(f"export {checkpoint}: normalizer stats are missing for some keys; refusing to export")
    c = policy.config
    extra = read_extra(checkpoint)
    task = task_section(task_spec if task_spec is not None else extra.get("task_spec"), checkpoint, c.action_dim)
    dims = [c.action_dim - 1] if gripper_dims is None else [int(d) % c.action_dim for d in gripper_dims]
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("policy.onnx", "init.onnx", MANIFEST):
        (out / stale).unlink(missing_ok=True)
    graphs, section = build_graphs(policy, sampler, steps, rti, dims)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    g_docs = {g.role: g.export(out, rng) for g in graphs}
    export_s = time.perf_counter() - t0
    parity = {g.role: g.parity(out, rng, parity_trials) for g in graphs}
    path = sampler_path_parity(policy, sampler, steps, rti, dims, out, rng, episodes=parity_trials)
    latency = {g.role: g.latency(out, rng, latency_runs) for g in graphs}
    worst = max(*parity.values(), path["max_abs_err"])
    n_out = graphs[-1].graph.n_out
    manifest = Manifest(
        sampler=sampler, graphs=g_docs,
        obs={"keys": list(c.obs_shapes),
             "spec": {k: {"shape": [c.n_obs_steps, *s], "dtype": "uint8" if k in c.image_keys else "float32"}
                      for k, s in c.obs_shapes.items()},
             "order": "oldest first; at an episode start repeat the first observation To times"},
        action={"names": task["action_names"], "dim": c.action_dim, "T": c.horizon, "Ta": n_out,
                "To": c.n_obs_steps, "action_start": c.action_start, "units": "env"},
        control_rate_hz=float(control_rate_hz or task["control_hz"]),
        ee_action=dict(task["ee_action"]), robot=dict(task["robot"]),
        task={"name": task["task"], "success": task["success"]},
        gripper={"dims": dims, "threshold": 0.0, "values": [-1.0, 1.0], "in_graph": True,
                 "rule": "executed gripper dims: > 0 -> +1 (close), else -1"},
        noise=section["noise"] | {"distribution": "standard normal float32",
                                  "drawn_by": "the runtime: numpy.random.default_rng(seed)"},
        nfe=section["nfe"],
        normalization={"in_graph": True, "stats": policy.normalizer.stats_dict()},
        opset=OPSET, exporter="torch.onnx.export(dynamo=False)", torch_version=torch.__version__,
        parity={"max_abs_err": worst, "per_graph": parity, "sampler_path": path, "trials": parity_trials,
                "tolerance": PARITY_TOL, "ok": worst <= PARITY_TOL and path["ok"]},
        latency=latency, export_s=export_s,
        source={"checkpoint": str(checkpoint), "policy": policy_name(checkpoint), "weights": weights,
                "task": extra.get("task"), "obs_keys": extra.get("obs_keys")},
        **{k: section[k] for k in ("consistency", "ddim", "rti", "state") if k in section},
    )
    write_manifest(out, manifest)
    if not manifest.parity["ok"]:
        raise ConfigError(f"export {out}: torch vs onnxruntime max abs error {worst:.2e} (tolerance "
                          f"{PARITY_TOL:.0e}), {path['gripper_mismatches']} executed gripper mismatches against "
                          f"the benchmarked torch path {path['torch_path']} (manifest written for inspection)")
    return manifest.to_dict()
