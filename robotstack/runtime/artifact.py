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
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads  # shares the cores with the servo: latency, not throughput
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ArtifactError(f"{path}: onnxruntime cannot load it: {e}") from None


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
        self.sessions, self.io = {}, {}
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
    def _feeds(self, role: str, obs_history: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {}
        for k in self.obs_keys:
            if k not in obs_history:
                raise ArtifactError(f"act: obs_history is missing key {k!r}; expected {self.obs_keys}")
            shape, dtype = self.obs_spec[k]
            x = np.asarray(obs_history[k])
            if x.shape != shape:
                raise ArtifactError(f"act: obs_history[{k!r}] has shape {x.shape}, expected {shape}")
            feeds[k] = x.astype(dtype, copy=False)[None]
        io = self.io[role]
        for name in ("noise", "step_noise"):
            if name in io:
                feeds[name] = self.rng.standard_normal(io[name][0], dtype=np.float32)
        if "guess" in io:
            feeds["guess"] = self.state
        return feeds

    def act(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        role = "init" if self.sampler == "rti" and self.state is None else "policy"
        feeds = self._feeds(role, obs_history)
        t0 = time.perf_counter()
        outs = self.sessions[role].run(None, feeds)
        self.last_latency_s = time.perf_counter() - t0
        named = dict(zip([o.name for o in self.sessions[role].get_outputs()], outs))
        if "guess_out" in named:
            self.state = named["guess_out"]
        return named["action"][0]

    def run_raw(self, role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph on explicit feeds (parity checks)."""
        outs = self.sessions[role].run(None, feeds)
        return dict(zip([o.name for o in self.sessions[role].get_outputs()], outs))


def load_artifact(path: str | Path, seed: int = 0, threads: int = 1) -> ArtifactPolicy:
    """Validate manifest vs files (sha256) vs graphs (input/output names, shapes, dtypes); raise ArtifactError."""
    return ArtifactPolicy(path, seed=seed, threads=threads)
