"""The only artifact loader: artifact dir (policy.onnx [+ init.onnx] + manifest.json) -> onnxruntime sessions.

The manifest schema and graph contract are robotstack/core/manifest.py. Checks at load: the manifest (strict
reader), sha256 of every graph file, and each graph's input/output names, shapes and dtypes against the manifest.
Imports: stdlib, numpy, onnxruntime, robotstack.core only (the runtime never imports torch).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from robotstack.core.errors import ArtifactError
from robotstack.core.manifest import read_manifest

_ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int64)": "int64"}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_io(where: str, kind: str, actual: list, declared: list[dict]) -> None:
    got = [(a.name, list(a.shape), _ORT_TYPES.get(a.type, a.type)) for a in actual]
    want = [(d["name"], list(d["shape"]), d["dtype"]) for d in declared]
    if got != want:
        raise ArtifactError(f"{where}: graph {kind} {got} do not match the manifest's {want}")


def open_session(path: Path, threads: int = 1):
    """The one onnxruntime session setup, tuned for tail latency on cores shared with the servo loop (measured side
    by side by ``bench/bench_control.py --ort-knobs``): 1 intra-op thread (the caller's thread runs the graph: no
    pool hand-off, 2 threads was slower at p50 and p99 on the policy graphs), 1 inter-op thread and sequential
    execution (a tiny graph has no parallel branches worth a thread), spinning off (with 1 thread there is no pool
    to spin; with more, a spinning pool burns the core the servo shares). Buffers: see ``_Bound``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ArtifactError(f"{path}: onnxruntime cannot load it: {e}") from None


class _Bound:
    """One graph with preallocated input and output buffers bound once by pointer (io_binding): a call copies the
    observation into ``inp`` and runs; onnxruntime writes straight into ``out``. No per-call allocation of feeds or
    outputs (measured by --ort-knobs: p50 and p99 below ``session.run`` with fresh arrays). The buffers are
    reused, so callers copy what they keep."""

    def __init__(self, sess, inputs: list[dict], outputs: list[dict]):
        self.sess = sess
        self.binding = sess.io_binding()
        self.inp = {d["name"]: np.zeros(d["shape"], d["dtype"]) for d in inputs}
        self.out = {d["name"]: np.zeros(d["shape"], d["dtype"]) for d in outputs}
        for name, a in self.inp.items():
            self.binding.bind_input(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
        for name, a in self.out.items():
            self.binding.bind_output(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)

    def run(self) -> None:
        self.sess.run_with_iobinding(self.binding)


class ArtifactPolicy:
    """`act(obs_history) -> actions (Ta, Da)`; `reset()` clears RTI's warm-start state and reseeds the noise.

    obs_history: {key: (To, *shape)} in env units, oldest first (the manifest's obs spec).
    """

    def __init__(self, path: str | Path, seed: int = 0, threads: int = 1):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        m = self.manifest
        self.sampler = m.sampler
        self.obs_keys = list(m.obs["keys"])
        self.obs_spec = {k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in m.obs["spec"].items()}
        self.sessions, self.io, self.bound = {}, {}, {}
        for role, g in m.graphs.items():
            f = self.path / g["file"]
            if not f.is_file():
                raise ArtifactError(f"{f}: missing (manifest graphs.{role}.file)")
            digest = sha256_file(f)
            if digest != g["sha256"]:
                raise ArtifactError(f"{f}: sha256 {digest} does not match manifest graphs.{role}.sha256 "
                                    f"{g['sha256']} (file changed after export?)")
            sess = open_session(f, threads)
            _check_io(str(f), "inputs", sess.get_inputs(), g["inputs"])
            _check_io(str(f), "outputs", sess.get_outputs(), g["outputs"])
            names = [d["name"] for d in g["inputs"]]
            for k in self.obs_keys:
                want = [1, *self.obs_spec[k][0]]
                decl = next((d for d in g["inputs"] if d["name"] == k), None)
                if decl is None or list(decl["shape"]) != want:
                    raise ArtifactError(f"{f}: obs input {k!r} is {decl} in the graph, manifest obs.spec says "
                                        f"shape {want}")
            self.sessions[role] = sess
            self.bound[role] = _Bound(sess, g["inputs"], g["outputs"])
            self.io[role] = {d["name"]: (tuple(d["shape"]), d["dtype"]) for d in g["inputs"]}
            self.io[role]["__names__"] = names
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._resets = 0
        self.state: np.ndarray | None = None  # RTI guess (1, T, Da), normalized
        self.last_latency_s = 0.0

    # ------------------------------------------------------------------ spec
    @property
    def n_obs_steps(self) -> int:
        return int(self.manifest.action["To"])

    @property
    def action_dim(self) -> int:
        return int(self.manifest.action["dim"])

    def reset(self, seed: int | None = None) -> None:
        """New episode: drop the RTI state and reseed the noise. reset(seed) draws from default_rng(seed) (two
        episodes after reset(s) with the same s and observations give identical actions); reset() gives the
        n-th reset its own reproducible stream default_rng([self.seed, n]), so episodes differ but a rerun with
        the same constructor seed repeats them."""
        self.state = None
        self._resets += 1
        self.rng = np.random.default_rng(seed if seed is not None else [self.seed, self._resets])

    # ------------------------------------------------------------------ inference
    def _fill(self, role: str, obs_history: dict[str, np.ndarray]) -> _Bound:
        """Write the observation history and fresh noise into the role's bound input buffers."""
        b = self.bound[role]
        for k in self.obs_keys:
            if k not in obs_history:
                raise ArtifactError(f"act: obs_history is missing key {k!r}; expected {self.obs_keys}")
            x = np.asarray(obs_history[k])
            if x.shape != self.obs_spec[k][0]:
                raise ArtifactError(f"act: obs_history[{k!r}] has shape {x.shape}, expected {self.obs_spec[k][0]}")
            b.inp[k][0] = x  # casts to the graph's dtype
        for name in ("noise", "step_noise"):
            if name in b.inp:  # same stream as standard_normal(shape, float32): seeds give the same actions
                self.rng.standard_normal(dtype=np.float32, out=b.inp[name])
        # "guess" (RTI): the policy graph's input buffer already holds the last guess_out (see act)
        return b

    def act(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        role = "init" if self.sampler == "rti" and self.state is None else "policy"
        b = self._fill(role, obs_history)
        t0 = time.perf_counter()
        b.run()
        self.last_latency_s = time.perf_counter() - t0
        if "guess_out" in b.out:
            guess = self.bound["policy"].inp["guess"]
            guess[...] = b.out["guess_out"]
            self.state = guess  # RTI's warm start: the next call's bound input (reset() forgets it)
        return b.out["action"][0].copy()

    def run_raw(self, role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph on explicit feeds (parity checks)."""
        outs = self.sessions[role].run(None, feeds)
        return dict(zip([o.name for o in self.sessions[role].get_outputs()], outs))


def load_artifact(path: str | Path, seed: int = 0, threads: int = 1) -> ArtifactPolicy:
    """Validate manifest vs files (sha256) vs graphs (input/output names, shapes, dtypes); raise ArtifactError."""
    return ArtifactPolicy(path, seed=seed, threads=threads)
