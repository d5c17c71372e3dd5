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
  every output, action errors in model units as below) - catches exporter/opset problems;
- sampler-path parity (`sampler_path_parity`, in normalized action units so that the tolerance does not depend
  on a dim's range): onnxruntime vs the torch sampler path the benchmarks run -
  `policy.predict_action` (what `robotstack eval` calls; ddim with a seeded generator whose first draw is the
  graph's noise, cm with explicit noises) or the stateful `RTISampler` over several warm calls per episode, each
  side carrying its own state - with the executed actions gripper-thresholded by the same rule (> 0 -> +1) on
  both sides. A graph that quietly differs from the benchmarked policy (another eta, another store/clip of the
  RTI guess, a gripper that flips) fails the export. Gripper values within 1e-3 of the threshold are counted
  as `near_threshold`, not as mismatches (float noise may flip them);
- latency (batch 1, one thread, p50/p99) of torch graph and onnxruntime.

Best-of-N (`critic=` a scorer module, docs/CONTRACTS.md "Critic scorer"; `robotstack export --critic DIR`):
the policy graph gets a dynamic row axis "B" on its noise and outputs (the runtime samples N candidates in one
call, each row with its own noise, all from one observation: the obs inputs stay batch 1, so the encoder and the
denoiser's context projections run once per decision, not N times) and the scorer becomes critic.onnx (obs...,
actions (1, N, h_a, Da) -> scores (1, N), dynamic N), described by the manifest's critic section (format
version 3, robotstack/core/manifest.py). Checked at export: scorer torch vs onnxruntime at N = 1 and
N = best_of_n, and the batched policy graph row by row against 1-row calls with the same noise (a graph that mixes
rows or bakes the batch size fails the export). The scorer's metadata is read from `scorer.config`: obs_shapes,
n_obs_steps, action_dim, chunk_len (h_a), agg.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robotstack.core.errors import ConfigError
from robotstack.core.manifest import (BATCH_AXIS, BEST_OF_N_SAMPLERS, CANDIDATE_AXIS, CRITIC_AGGREGATES,
                                      CRITIC_VERSION, MANIFEST, SAMPLERS, STATEFUL_SAMPLERS, VERSION, Manifest,
                                      write_manifest)
from robotstack.core.success import check_criterion
from robotstack.export.graphs import (ConsistencyGraph, CriticGraph, DDIMGraph, RTIInitGraph, RTIWarmGraph,
                                      WarmConsistencyGraph, WarmConsistencyInitGraph, for_export)
from robotstack.runtime.artifact import open_session, sha256_file

from policies.checkpoint import load_checkpoint, policy_name, read_extra, resolve_weights
from policies.consistency.model import ConsistencyPolicy
from policies.consistency.warm import WarmConfig, WarmConsistencySampler
from policies.diffusion.model import ACTION_KEY, DiffusionPolicy
from policies.diffusion.rti import (DEFAULT_EXPORT_SEMANTICS, DEFAULT_EXPORT_STEPS, RTIConfig, RTISampler,
                                   threshold_gripper)

OPSET = 17
PARITY_TOL = 1e-4
TRACE_ROWS = 2  # noise rows of a best-of-N policy graph's trace example (any number != the obs batch 1)
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


def binary_gripper_dims(task_spec: dict, action_dim: int, override: Sequence[int] | None) -> list[int]:
    """The action dims thresholded to +-1 (gripper > 0 closes): the caller's, else the task spec's `gripper_dims`
    (Panda tasks: the last dim; Meta-World: none, its gripper is a continuous grab effort that a threshold would
    change), else the last dim (task specs written before the field existed were all Panda tasks)."""
    dims = override if override is not None else task_spec.get("gripper_dims", [action_dim - 1])
    return [int(d) % action_dim for d in dims]


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


def _spec(name: str, arr: np.ndarray, axes: dict[int, str] | None = None) -> dict[str, Any]:
    """{name, shape, dtype}; `axes` {dim: symbol} marks dynamic dims (e.g. {0: "B"})."""
    shape: list[int | str] = list(arr.shape)
    for dim, symbol in (axes or {}).items():
        shape[dim] = symbol
    return {"name": name, "shape": shape, "dtype": str(arr.dtype)}


def _percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": len(a)}


class _GraphExport:
    """One graph: example inputs, torch reference, ONNX file, parity and latency."""

    def __init__(self, graph: nn.Module, role: str, file: str, extra_shapes: dict[str, tuple[int, ...]],
                 batch_axis: bool = False):
        self.graph, self.role, self.file = graph.eval(), role, file
        # best-of-N: the noise inputs and every output get the dynamic row axis; the obs inputs stay batch 1 (one
        # observation shared by the candidates, encoded once). The trace example has TRACE_ROWS noise rows so
        # that the denoisers take their shared-context path (policies/diffusion/mlp_denoiser.py).
        self.axes = {0: BATCH_AXIS} if batch_axis else None
        self.rows = TRACE_ROWS if batch_axis else 1
        self.extra_shapes = extra_shapes

    def example(self, rng: np.random.Generator, state: np.ndarray | None = None,
                rows: int | None = None) -> dict[str, np.ndarray]:
        """In-range obs (batch 1) and noise with `rows` rows (default: the trace's)."""
        feeds = random_obs(self.graph.policy, rng)
        for name, shape in self.extra_shapes.items():
            if name == "guess":
                feeds[name] = state if state is not None else rng.uniform(-1, 1, shape).astype(np.float32)
            else:
                feeds[name] = rng.standard_normal((rows or self.rows, *shape[1:])).astype(np.float32)
        return feeds

    @torch.no_grad()
    def torch_run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.graph(*[torch.from_numpy(feeds[n]) for n in self.graph.input_names])
        return {n: o.numpy() for n, o in zip(self.graph.outputs, outs)}

    def export(self, out_dir: Path, rng: np.random.Generator) -> dict[str, Any]:
        feeds = self.example(rng)
        path = out_dir / self.file
        names = [*self.graph.input_names, *self.graph.outputs]
        _onnx_export(self.graph, feeds, path, {n: self.axes for n in names if n not in self.graph.obs_keys}
                     if self.axes else None)
        ref = self.torch_run(feeds)
        return {"file": self.file, "sha256": sha256_file(path),
                "inputs": [_spec(n, feeds[n], None if n in self.graph.obs_keys else self.axes)
                           for n in self.graph.input_names],
                "outputs": [_spec(n, ref[n], self.axes) for n in self.graph.outputs]}

    def parity(self, out_dir: Path, rng: np.random.Generator, trials: int) -> float:
        sess = open_session(out_dir / self.file)
        err = 0.0
        for _ in range(trials):
            feeds = self.example(rng)
            ref = self.torch_run(feeds)
            got = dict(zip(self.graph.outputs, sess.run(None, feeds)))
            err = max(err, max(float((np.abs(ref[n] - got[n]) * self.weights(n)).max()) for n in self.graph.outputs))
        return err

    def weights(self, output: str) -> np.ndarray | float:
        """Per-dim weights that put an output's error in model units: env-unit actions x the normalizer's scale;
        the thresholded gripper dims of "action" stay unweighted (a flip must count as 2, not 2 x scale)."""
        if output not in ("chunk", "action"):
            return 1.0  # guess_out is already normalized
        w = action_scale(self.graph.policy)
        if output == "action":
            w[list(self.graph.gripper_dims)] = 1.0
        return w

    def latency(self, out_dir: Path, rng: np.random.Generator, runs: int) -> dict[str, Any]:
        sess = open_session(out_dir / self.file, threads=1)
        feeds = self.example(rng, rows=1)
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


def _onnx_export(graph: nn.Module, feeds: dict[str, np.ndarray], path: Path,
                 dynamic: dict[str, dict[int, str]] | None) -> None:
    """torch.onnx.export of a graph module (positional inputs named graph.input_names); dynamic = {name: {dim:
    symbol}} for dynamic axes (None: every shape fixed, the plain artifact)."""
    names, outputs = graph.input_names, list(graph.outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, tuple(torch.from_numpy(feeds[n]) for n in names), str(path), dynamo=False,
                          opset_version=OPSET, input_names=names, output_names=outputs, do_constant_folding=True,
                          dynamic_axes=dynamic)


# ---------------------------------------------------------------------------------------------- best-of-N critic
CRITIC_FILE = "critic.onnx"


class _CriticExport:
    """The scorer as critic.onnx: obs... (1, To, *shape), actions (1, N, h_a, Da) -> scores (1, N), N dynamic."""

    def __init__(self, scorer: nn.Module, policy: nn.Module, n_default: int, n_exec: int):
        c = policy.config
        sc = getattr(scorer, "config", None)
        fields = ("obs_shapes", "n_obs_steps", "action_dim", "chunk_len", "agg")
        missing = [f for f in fields if not hasattr(sc, f)]
        if missing:
            raise ConfigError(f"export --critic: the scorer ({type(scorer).__name__}) has no config.{missing[0]}; "
                              f"expected scorer.config with {list(fields)} (policies/critics/scorer.py)")
        keys = list(sc.obs_shapes)
        bad = [k for k in keys if tuple(c.obs_shapes.get(k, ())) != tuple(sc.obs_shapes[k])]
        problems = [(bool(keys) and not bad, f"obs keys {dict(sc.obs_shapes)} within the policy's "
                                             f"{dict(c.obs_shapes)} (same shapes)"),
                    (sc.n_obs_steps == c.n_obs_steps, f"n_obs_steps = the policy's To {c.n_obs_steps}"),
                    (sc.action_dim == c.action_dim, f"action_dim = the policy's Da {c.action_dim}"),
                    (1 <= sc.chunk_len <= n_exec, f"1 <= chunk_len (h_a) <= the executed actions Ta {n_exec}"),
                    (sc.agg in CRITIC_AGGREGATES, f"agg in {CRITIC_AGGREGATES}"),
                    (n_default >= 1, f"best_of_n >= 1 (got {n_default})")]
        for ok, what in problems:
            if not ok:
                raise ConfigError(f"export --critic: the scorer does not fit the policy: expected {what}; scorer "
                                  f"config {sc}")
        self.scorer, self.policy, self.n, self.h_a = scorer.eval(), policy, n_default, sc.chunk_len
        self.graph = CriticGraph(for_export(self.scorer), keys).eval()  # what is traced
        self.reference = CriticGraph(self.scorer, keys).eval()  # what parity compares it with
        self.keys, self.agg = keys, sc.agg

    def example(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """In-range obs and candidate actions (the policy normaliser's range, as random_obs does for obs)."""
        obs = random_obs(self.policy, rng)
        feeds = {k: obs[k] for k in self.keys}
        st = self.policy.normalizer.stats[ACTION_KEY]
        u = rng.uniform(-1.0, 1.0, (1, n, self.h_a, self.policy.config.action_dim))
        feeds["actions"] = ((u - st.offset.numpy()) / st.scale.numpy()).astype(np.float32)
        return feeds

    @torch.no_grad()
    def torch_run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.reference(*[torch.from_numpy(feeds[n]) for n in self.graph.input_names]).numpy()

    def export(self, out_dir: Path, rng: np.random.Generator) -> dict[str, Any]:
        feeds = self.example(rng, self.n)
        path = out_dir / CRITIC_FILE
        names = self.graph.input_names
        _onnx_export(self.graph, feeds, path, {"actions": {1: CANDIDATE_AXIS}, "scores": {1: CANDIDATE_AXIS}})
        scores = self.torch_run(feeds)
        return {"file": CRITIC_FILE, "sha256": sha256_file(path),
                "inputs": [_spec(n, feeds[n], {1: CANDIDATE_AXIS} if n == "actions" else None) for n in names],
                "outputs": [_spec("scores", scores, {1: CANDIDATE_AXIS})],
                "n": self.n, "h_a": self.h_a, "aggregate": self.agg, "obs_keys": self.keys}

    def parity(self, out_dir: Path, rng: np.random.Generator, trials: int) -> dict[str, Any]:
        """torch vs onnxruntime scores at N = 1 and N = best_of_n (a baked candidate count fails here)."""
        sess = open_session(out_dir / CRITIC_FILE)
        err = 0.0
        sizes = sorted({1, self.n, self.n + 3})
        for _ in range(trials):
            for n in sizes:
                feeds = self.example(rng, n)
                err = max(err, float(np.abs(self.torch_run(feeds) - sess.run(None, feeds)[0]).max()))
        return {"max_abs_err": err, "candidates": sizes, "trials": trials, "tolerance": PARITY_TOL,
                "ok": err <= PARITY_TOL}

    def latency(self, out_dir: Path, rng: np.random.Generator, runs: int) -> dict[str, Any]:
        sess = open_session(out_dir / CRITIC_FILE, threads=1)
        feeds = self.example(rng, self.n)
        for _ in range(5):
            sess.run(None, feeds)
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            ts.append(time.perf_counter() - t0)
        return {"ort": _percentiles(ts), "threads": 1, "candidates": self.n}


def batch_parity(g: _GraphExport, out_dir: Path, rng: np.random.Generator, n: int) -> float:
    """Max |row i of one n-row call - the 1-row call with row i's noise| over the chunk output: the batched
    policy graph must treat rows independently (candidates of one decision share the obs, not the noise)."""
    sess = open_session(out_dir / g.file)
    feeds = g.example(rng, rows=n)
    got = dict(zip(g.graph.outputs, sess.run(None, feeds)))["chunk"]
    err = 0.0
    for i in range(n):
        row = {k: v if k in g.graph.obs_keys else v[i:i + 1] for k, v in feeds.items()}
        ref = dict(zip(g.graph.outputs, sess.run(None, row)))["chunk"]
        err = max(err, float(np.abs(got[i] - ref[0]).max()))
    return err


GRIPPER_AMBIGUOUS = 1e-3


def action_scale(policy: nn.Module) -> np.ndarray:
    """(Da,) normalized = env x scale + offset: multiplying an env-unit action error by it gives model units."""
    return policy.normalizer.stats[ACTION_KEY].scale.detach().numpy().astype(np.float64)


@torch.no_grad()
def sampler_path_parity(policy: nn.Module, sampler: str, steps: int | None, rti: RTIConfig | None,
                        dims: Sequence[int], out_dir: Path, rng: np.random.Generator, episodes: int,
                        calls: int = 4, n_exec: int | None = None, warm_t: int | None = None) -> dict[str, Any]:
    """onnxruntime vs the benchmarked torch sampler path, on thresholded executed actions (module docstring)."""
    c = policy.config
    chunk = (c.horizon, c.action_dim)
    roles = ("init", "policy") if sampler in STATEFUL_SAMPLERS else ("policy",)
    sess = {role: open_session(out_dir / f"{role}.onnx") for role in roles}
    r = (RTISampler(policy, rti_for_export(rti, steps, dims)) if sampler == "rti" else
         warm_sampler(policy, warm_t, check_n_exec(n_exec, sampler, c.n_action_steps), dims)
         if sampler == "cm_warm" else None)
    cont = [d for d in range(c.action_dim) if d not in dims]
    # Errors are measured in the model's (normalized) action units: env error x action_scale. In env units the
    # tolerance would depend on each dim's range: a policy trained with the gripper / 10 (policy.gripper_factor)
    # unnormalizes its float32 rounding x10 and failed a 1e-4 check at 1.2e-4. Gripper flips are counted apart.
    scale = action_scale(policy)
    err, err_env, mismatches, near, n = 0.0, 0.0, 0, 0, 0
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
            elif sampler == "cm_warm":
                role = "init" if state is None else "policy"
                feeds["noise"] = rng.standard_normal((1, 1, *chunk)).astype(np.float32)
                if state is not None:
                    feeds["guess"] = state
                ref = r(obs, noise=torch.from_numpy(feeds["noise"][:, 0]))
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
            # an artifact exported with n_exec < Ta returns the first n_exec of the torch path's executed actions
            want = threshold_gripper(ref.action, dims).numpy()[:, : got["action"].shape[1]]
            raw = ref.chunk[:, c.action_start:c.action_start + want.shape[1]].numpy()[..., list(dims)]
            flip = want[..., list(dims)] != got["action"][..., list(dims)]
            near += int((np.abs(raw) < GRIPPER_AMBIGUOUS).sum())
            mismatches += int((flip & (np.abs(raw) >= GRIPPER_AMBIGUOUS)).sum())
            err = max(err, float((np.abs(want[..., cont] - got["action"][..., cont]) * scale[cont]).max()),
                      float((np.abs(ref.chunk.numpy() - got["chunk"]) * scale).max()))
            err_env = max(err_env, float(np.abs(ref.chunk.numpy() - got["chunk"]).max()))
            n += 1
    path = {"cm1": "ConsistencyPolicy.predict_action(steps=1, noises)",
            "cm3": "ConsistencyPolicy.predict_action(steps=3, noises)",
            "ddim": "DiffusionPolicy.predict_action(sampler='ddim', generator) (robotstack eval)",
            "rti": "RTISampler.__call__ (bench_inference / actor rollouts), state carried per side",
            "cm_warm": "WarmConsistencySampler.__call__ (policies/consistency/warm.py), state carried per side",
            }[sampler]
    return {"max_abs_err": err, "units": "normalized action (env error x normalizer scale)",
            "max_abs_err_env_units": err_env, "gripper_mismatches": mismatches, "near_threshold": near, "decisions": n,
            "torch_path": path, "gripper_rule": "> 0 -> +1 else -1 on both sides",
            "ok": err <= PARITY_TOL and mismatches == 0}


def check_n_exec(n_exec: int | None, sampler: str, ta: int) -> int:
    """-> the actions a cm1 / cm3 / ddim / cm_warm call returns. Fewer than the policy's Ta means replanning more
    often (one call per n_exec control steps): the chunk is still predicted whole, only its first n_exec actions
    run. RTI executes its own n_exec (one action per call) and takes no override."""
    if n_exec is None:
        return 1 if sampler == "cm_warm" else ta  # cm_warm replans every step, as RTI
    if sampler == "rti":
        raise ConfigError(f"export --n-exec {n_exec}: not for --sampler rti (it executes one action per call)")
    if isinstance(n_exec, bool) or not isinstance(n_exec, int) or not 1 <= n_exec <= ta:
        raise ConfigError(f"export --n-exec {n_exec!r}: expected an integer in [1, {ta}] (the policy's Ta)")
    return n_exec


def warm_sampler(student: nn.Module, warm_t: int | None, n_exec: int,
                 gripper_dims: Sequence[int]) -> WarmConsistencySampler:
    """The cm_warm sampler the graphs trace and the parity check replays (one config for both)."""
    if not isinstance(student, ConsistencyPolicy):
        raise ConfigError(f"export --sampler cm_warm: needs a distilled checkpoint (`robotstack distill`), got a "
                          f"{type(student).__name__}")
    try:
        return WarmConsistencySampler(student, WarmConfig(t=warm_t, n_exec=n_exec, gripper_dims=tuple(gripper_dims)))
    except ValueError as e:
        raise ConfigError(f"export: {e}") from None


def rti_for_export(rti: RTIConfig | None, steps: int | None, gripper_dims: Sequence[int]) -> RTIConfig:
    """The exported RTI always starts with deterministic DDIM(steps) (init.onnx); with no config the warm calls
    step over DEFAULT_EXPORT_STEPS ([20, 10, 0] as jumps, policies/diffusion/rti.py); the default gripper handling is
    "auto" (policies/diffusion/rti.py: scale for a scale-trained policy, else clip with factor 10). A config that
    names no gripper dims gets the export's binary gripper dims (the task's), and "auto" becomes "none" for a task
    without one (Meta-World's continuous grab effort), whether the config came from the caller or the default."""
    rti = rti or RTIConfig(k_start=DEFAULT_EXPORT_STEPS[0], steps=DEFAULT_EXPORT_STEPS,
                           step_semantics=DEFAULT_EXPORT_SEMANTICS, gripper_mode="auto")
    fields = {**rti.__dict__, "init_sampler": "ddim", "init_steps": steps or rti.init_steps}
    if not rti.gripper_dims:
        fields["gripper_dims"] = tuple(gripper_dims)
        if not gripper_dims and rti.gripper_mode == "auto":
            fields["gripper_mode"] = "none"
    return RTIConfig(**fields)


def build_graphs(policy: nn.Module, sampler: str, steps: int | None, rti: RTIConfig | None,
                 gripper_dims: Sequence[int], batch_axis: bool = False, n_exec: int | None = None,
                 warm_t: int | None = None) -> tuple[list[_GraphExport], dict[str, Any]]:
    """-> graph exports and the sampler section of the manifest (nfe, state, noise); batch_axis: best-of-N;
    n_exec: actions returned (executed) per call, 1..the policy's Ta (check_n_exec); warm_t: cm_warm's chain point."""
    c = policy.config
    chunk = (c.horizon, c.action_dim)
    n_out = check_n_exec(n_exec, sampler, c.n_action_steps)
    if batch_axis and sampler not in BEST_OF_N_SAMPLERS:  # the manifest reader's rule, checked before any tracing
        raise ConfigError(f"export --sampler {sampler} --critic: best-of-N needs independent candidates per decision "
                          f"{BEST_OF_N_SAMPLERS}; {sampler} carries one warm-start state between calls")
    state = {"input": "guess", "output": "guess_out", "shape": [1, *chunk], "space": "normalized",
             "first_call_graph": "init", "reset": "drop the state: the next call runs init"}
    if sampler == "cm_warm":
        w = warm_sampler(policy, warm_t, n_out, gripper_dims)
        noise = {"input": "noise", "shape": [1, 1, *chunk]}
        gi = _GraphExport(WarmConsistencyInitGraph(w, gripper_dims), "init", "init.onnx", {"noise": (1, 1, *chunk)})
        gw = _GraphExport(WarmConsistencyGraph(w, gripper_dims), "policy", "policy.onnx",
                          {"guess": (1, *chunk), "noise": (1, 1, *chunk)})
        return [gi, gw], {"nfe": {"first_call": 1, "per_call": 1}, "state": state,
                          "noise": {"init": noise, "policy": noise},
                          "consistency": {"method": policy.method, "chain_points": policy.chain_points(1),
                                          "warm": {"t": w.config.t, "n_exec": w.config.n_exec,
                                                   "renoise": "x_t = sqrt(abar_t) shift(guess) + sqrt(1 - abar_t) z",
                                                   "gripper_dims": list(w.config.gripper_dims),
                                                   "gripper_factor": w.config.factor}}}
    if sampler in ("cm1", "cm3"):
        if not isinstance(policy, ConsistencyPolicy):
            raise ConfigError(f"export --sampler {sampler}: needs a distilled checkpoint (`robotstack distill`), got "
                              f"a {type(policy).__name__}")
        n = 1 if sampler == "cm1" else 3
        g = _GraphExport(ConsistencyGraph(policy, n, gripper_dims, n_out), "policy", "policy.onnx",
                         {"noise": (1, n, *chunk)}, batch_axis)
        return [g], {"nfe": {"per_call": n}, "noise": {"policy": {"input": "noise", "shape": [1, n, *chunk]}},
                     "consistency": {"method": policy.method, "chain_points": policy.chain_points(n)}}
    if not isinstance(policy, DiffusionPolicy):
        raise ConfigError(f"export --sampler {sampler}: needs a diffusion policy checkpoint, got "
                          f"{type(policy).__name__}")
    if sampler == "ddim":
        k = steps or c.scheduler.num_inference_steps
        g = _GraphExport(DDIMGraph(policy, k, gripper_dims, n_out), "policy", "policy.onnx", {"noise": (1, 1, *chunk)},
                         batch_axis)
        return [g], {"nfe": {"per_call": k}, "ddim": {"steps": k, "eta": 0.0},
                     "noise": {"policy": {"input": "noise", "shape": [1, 1, *chunk]}}}
    r = RTISampler(policy, rti_for_export(rti, steps, gripper_dims))
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
               "state": state,
               "noise": {"init": {"input": "noise", "shape": [1, 1, *chunk]}}
               | ({"policy": {"input": "step_noise", "shape": [1, s, *chunk]}} if s else {})}
    return [gi, gw], section


def export_artifact(checkpoint: str | Path, sampler: str, out: str | Path, *, steps: int | None = None,
                    rti: RTIConfig | None = None, gripper_dims: Sequence[int] | None = None,
                    control_rate_hz: float | None = None, task_spec: dict | None = None, seed: int = 0,
                    parity_trials: int = 5, latency_runs: int = 200, weights: str = "auto",
                    critic: nn.Module | None = None, best_of_n: int = 32, n_exec: int | None = None,
                    warm_t: int | None = None) -> dict[str, Any]:
    """Write the artifact dir; returns the manifest (as a dict). gripper_dims None = the task's (binary_gripper_dims);
    task_spec None = the checkpoint's extra["task_spec"]; control_rate_hz None = the task's control rate.
    critic: a best-of-N scorer module (module docstring), exported as critic.onnx with default N = best_of_n.
    n_exec: actions executed per call (cm1 / cm3 / ddim / cm_warm; check_n_exec); warm_t: cm_warm's chain point
    (None = the default of policies/consistency/warm.py)."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"export --sampler {sampler!r}: expected one of {SAMPLERS}")
    checkpoint, out = Path(checkpoint), Path(out)
    weights = resolve_weights(checkpoint, weights)  # "auto": EMA when present (students have none)
    policy = load_checkpoint(checkpoint, weights=weights)
    if not policy.normalizer.is_fitted():
        raise ConfigError(f"export {checkpoint}: normalizer stats are missing for some keys; refusing to export")
    c = policy.config
    extra = read_extra(checkpoint)
    task_spec = task_spec if task_spec is not None else extra.get("task_spec")
    task = task_section(task_spec, checkpoint, c.action_dim)
    dims = binary_gripper_dims(task_spec, c.action_dim, gripper_dims)
    # the graphs trace an export-friendly copy (graphs.for_export); the parity checks compare them against `policy`.
    # Built (and so checked) before the out dir is touched: a refused export leaves an artifact already there as is.
    graphs, section = build_graphs(for_export(policy), sampler, steps, rti, dims, batch_axis=critic is not None,
                                   n_exec=n_exec, warm_t=warm_t)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("policy.onnx", "init.onnx", CRITIC_FILE, MANIFEST):
        (out / stale).unlink(missing_ok=True)
    n_out = graphs[-1].graph.n_out
    scorer = _CriticExport(critic, policy, best_of_n, n_out) if critic is not None else None
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    g_docs = {g.role: g.export(out, rng) for g in graphs}
    critic_doc = scorer.export(out, rng) if scorer else None
    export_s = time.perf_counter() - t0
    parity = {g.role: g.parity(out, rng, parity_trials) for g in graphs}
    path = sampler_path_parity(policy, sampler, steps, rti, dims, out, rng, episodes=parity_trials, n_exec=n_exec,
                               warm_t=warm_t)
    latency = {g.role: g.latency(out, rng, latency_runs) for g in graphs}
    worst = max(*parity.values(), path["max_abs_err"])
    critic_ok = True
    if scorer:
        rows = batch_parity(graphs[-1], out, rng, max(best_of_n, 2))
        critic_doc |= {"parity": scorer.parity(out, rng, parity_trials) | {"policy_batch_rows_max_abs_err": rows},
                       "latency": scorer.latency(out, rng, latency_runs),
                       "source": {"scorer": type(critic).__name__}}
        critic_ok = critic_doc["parity"]["ok"] and rows <= PARITY_TOL
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
        critic=critic_doc, version=CRITIC_VERSION if critic_doc else VERSION,
    )
    write_manifest(out, manifest)
    if not critic_ok:
        p = critic_doc["parity"]
        raise ConfigError(f"export {out}: best-of-N critic parity failed: scorer torch vs onnxruntime max abs error "
                          f"{p['max_abs_err']:.2e}, batched policy rows vs batch-1 calls "
                          f"{p['policy_batch_rows_max_abs_err']:.2e} (tolerance {PARITY_TOL:.0e}; manifest written "
                          "for inspection)")
    if not manifest.parity["ok"]:
        raise ConfigError(f"export {out}: torch vs onnxruntime max abs error {worst:.2e} (tolerance "
                          f"{PARITY_TOL:.0e}), {path['gripper_mismatches']} executed gripper mismatches against "
                          f"the benchmarked torch path {path['torch_path']} (manifest written for inspection)")
    return manifest.to_dict()
