"""The only artifact loader: artifact dir (policy.onnx [+ init.onnx] [+ critic.onnx] + manifest.json) ->
onnxruntime sessions.

The manifest schema and graph contract are robotstack/core/manifest.py. Checks at load: the manifest (strict
reader), sha256 of every graph file, and each graph's input/output names, shapes and dtypes against the manifest.
Imports: stdlib, numpy, onnxruntime, robotstack.core only (the runtime never imports torch).

Best-of-N (an artifact with a critic section, best_of_n = N > 1): one decision = one policy call on N noise rows
(one shared observation, encoded once in the graph; each row its own noise from the same rng stream), one critic call
scoring the first h_a executed actions of every candidate, and the argmax candidate's actions are returned. The
buffers of both graphs are bound once at load for that N. N = 1 is the plain path: one policy call, no critic.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from robotstack.core.errors import ArtifactError
from robotstack.core.manifest import BATCH_AXIS, CANDIDATE_AXIS, STATEFUL_SAMPLERS, read_manifest

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

    def __init__(self, sess, inputs: list[dict], outputs: list[dict], dims: dict[str, int] | None = None):
        """dims: a size for each symbolic dim of the declared shapes (best-of-N: {"B": N, "N": N})."""
        self.sess = sess
        self.binding = sess.io_binding()
        dims = dims or {}

        def shape(d: dict) -> list[int]:
            return [dims[x] if isinstance(x, str) else x for x in d["shape"]]

        self.inp = {d["name"]: np.zeros(shape(d), d["dtype"]) for d in inputs}
        self.out = {d["name"]: np.zeros(shape(d), d["dtype"]) for d in outputs}
        for name, a in self.inp.items():
            self.binding.bind_input(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
        for name, a in self.out.items():
            self.binding.bind_output(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)

    def run(self) -> None:
        self.sess.run_with_iobinding(self.binding)


class ArtifactPolicy:
    """`act(obs_history) -> actions (Ta, Da)`; `reset()` clears the warm-start state (rti, cm_warm), reseeds the noise.

    obs_history: {key: (To, *shape)} in env units, oldest first (the manifest's obs spec).
    best_of_n: candidates per decision; None = the manifest's critic.n (1 without a critic section). N > 1 needs
    a critic. After a best-of-N call, `last_choice` is the executed candidate's row and `last_scores` (N,) the
    critic's scores (a view of the bound buffer: copy to keep).
    """

    def __init__(self, path: str | Path, seed: int = 0, threads: int = 1, best_of_n: int | None = None):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        m = self.manifest
        self.sampler = m.sampler
        self.stateful = m.sampler in STATEFUL_SAMPLERS  # warm-started: init graph first, then a carried guess
        self.obs_keys = list(m.obs["keys"])
        self.obs_spec = {k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in m.obs["spec"].items()}
        self.n = _candidates(m, best_of_n, self.path)
        # every obs input has batch 1; a critic artifact's policy graph takes its N candidates' noise rows on the
        # dynamic axis "B" (one observation, encoded once in the graph)
        dims = {BATCH_AXIS: self.n, CANDIDATE_AXIS: self.n}
        self.sessions, self.io, self.bound = {}, {}, {}
        graphs = dict(m.graphs) | ({"critic": m.critic} if m.critic else {})
        for role, g in graphs.items():
            where = "critic" if role == "critic" else f"graphs.{role}"
            f = self.path / g["file"]
            if not f.is_file():
                raise ArtifactError(f"{f}: missing (manifest {where}.file)")
            digest = sha256_file(f)
            if digest != g["sha256"]:
                raise ArtifactError(f"{f}: sha256 {digest} does not match manifest {where}.sha256 "
                                    f"{g['sha256']} (file changed after export?)")
            sess = open_session(f, threads)
            _check_io(str(f), "inputs", sess.get_inputs(), g["inputs"])
            _check_io(str(f), "outputs", sess.get_outputs(), g["outputs"])
            names = [d["name"] for d in g["inputs"]]
            for k in (m.critic["obs_keys"] if role == "critic" else self.obs_keys):
                want = [1, *self.obs_spec[k][0]]
                decl = next((d for d in g["inputs"] if d["name"] == k), None)
                if decl is None or list(decl["shape"]) != want:
                    old = decl is not None and list(decl["shape"])[:1] == [BATCH_AXIS]
                    raise ArtifactError(f"{f}: obs input {k!r} is {decl} in the graph, manifest obs.spec says "
                                        f"shape {want}" + ("; a best-of-N artifact exported before 2026-11-30 "
                                                           "(batched obs): export it again" if old else ""))
            self.sessions[role] = sess
            self.bound[role] = _Bound(sess, g["inputs"], g["outputs"], dims)
            self.io[role] = {d["name"]: (tuple(d["shape"]), d["dtype"]) for d in g["inputs"]}
            self.io[role]["__names__"] = names
        if m.critic:
            self._check_critic_io(m.critic, self.path / m.critic["file"])
        self.last_choice = 0
        self.last_scores: np.ndarray | None = None
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._resets = 0
        self.state: np.ndarray | None = None  # RTI guess (1, T, Da), normalized
        self.last_latency_s = 0.0

    def _check_critic_io(self, c: dict, f: Path) -> None:
        want = [1, CANDIDATE_AXIS, c["h_a"], self.action_dim]
        decl = self.io["critic"].get("actions")
        if decl is None or list(decl[0]) != want:
            raise ArtifactError(f"{f}: critic input 'actions' is {decl}, expected shape {want} (manifest critic.h_a)")
        if "scores" not in self.bound["critic"].out:
            raise ArtifactError(f"{f}: the critic graph has no 'scores' output (manifest critic.outputs)")

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
            b.inp[k][...] = x  # casts to the graph's dtype; best-of-N: the same history in every row
        for name in ("noise", "step_noise"):
            if name in b.inp:  # same stream as standard_normal(shape, float32): seeds give the same actions
                self.rng.standard_normal(dtype=np.float32, out=b.inp[name])
        # "guess" (RTI): the policy graph's input buffer already holds the last guess_out (see act)
        return b

    def act(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        role = "init" if self.stateful and self.state is None else "policy"
        b = self._fill(role, obs_history)
        t0 = time.perf_counter()
        b.run()
        if self.n > 1:
            i = self._choose(b)
            self.last_latency_s = time.perf_counter() - t0
            return b.out["action"][i].copy()
        self.last_latency_s = time.perf_counter() - t0
        if "guess_out" in b.out:
            guess = self.bound["policy"].inp["guess"]
            guess[...] = b.out["guess_out"]
            self.state = guess  # RTI's warm start: the next call's bound input (reset() forgets it)
        return b.out["action"][0].copy()

    def _choose(self, b: _Bound) -> int:
        """Score the N candidates' first h_a executed actions with the critic; -> the argmax row (ties: the first;
        NaN scores never win: a NaN-only critic falls back to row 0)."""
        c = self.bound["critic"]
        for k in self.manifest.critic["obs_keys"]:
            c.inp[k][0] = b.inp[k][0]
        actions = c.inp["actions"]
        actions[0] = b.out["action"][:, :actions.shape[2]]
        c.run()
        scores = c.out["scores"][0]
        i = int(scores.argmax())
        if np.isnan(scores[i]):  # argmax returns the first NaN
            finite = np.where(np.isnan(scores), -np.inf, scores)
            i = int(finite.argmax())
        self.last_choice, self.last_scores = i, scores
        return i

    def run_raw(self, role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph on explicit feeds (parity checks)."""
        outs = self.sessions[role].run(None, feeds)
        return dict(zip([o.name for o in self.sessions[role].get_outputs()], outs))


def _candidates(m, best_of_n: int | None, path: Path) -> int:
    """The runtime's N: the caller's, else the manifest's critic.n, else 1; N > 1 needs a critic section."""
    n = best_of_n if best_of_n is not None else (m.critic["n"] if m.critic else 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ArtifactError(f"{path}: best_of_n={n!r}, expected an integer >= 1")
    if n > 1 and not m.critic:
        raise ArtifactError(f"{path}: best_of_n={n} needs an artifact with a critic section (export with "
                            "`robotstack export --critic DIR`); this one has none")
    return n


def load_artifact(path: str | Path, seed: int = 0, threads: int = 1, best_of_n: int | None = None) -> ArtifactPolicy:
    """Validate manifest vs files (sha256) vs graphs (input/output names, shapes, dtypes); raise ArtifactError.
    best_of_n: candidates per decision (None: the manifest's critic.n, or 1 without a critic)."""
    return ArtifactPolicy(path, seed=seed, threads=threads, best_of_n=best_of_n)
