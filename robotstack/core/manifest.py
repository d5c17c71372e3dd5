"""The export artifact's manifest.json, written once: the schema, its writer (used by robotstack.export) and its
strict reader (used by robotstack.runtime). stdlib + json only, so the on-robot runtime reads it without torch.

Artifact dir = ``policy.onnx`` (+ ``init.onnx`` for the warm-started samplers rti, cm_warm) + ``manifest.json``.
Glossary: To obs history, T horizon (chunk), Ta actions returned per call, Da action dim, S stochastic steps.

Graph contract (batch fixed to 1, or the dynamic "B" of a critic artifact; float32 unless obs.spec says uint8 for a
camera key):
    inputs:  one per obs key (1, To, *shape) in env units   (normalization is inside the graph)
             "noise"      (1, n, T, Da) standard normal      (cm: n = sampling steps; ddim: n = 1; rti init;
                                                               cm_warm: n = 1, both graphs)
             "guess"      (1, T, Da)   warm graphs only (rti, cm_warm policy.onnx): the previous call's "guess_out"
             "step_noise" (1, S, T, Da) rti warm graph only when its DDPM steps are stochastic
    outputs: "action" (1, Ta, Da) env units, gripper dims already thresholded to {-1, +1};
             "chunk" (1, T, Da) env units; rti / cm_warm graphs also "guess_out" (1, T, Da) normalized state.
Noise is drawn by the runtime from numpy's default_rng(seed), so a graph is a pure function of its inputs.

Sections (every one required unless marked optional; the reader names the first missing field):
    sampler          cm1 | cm3 | ddim | rti | cm_warm
    graphs           {role: {file, sha256, inputs, outputs}}   roles: policy (+ init for rti, cm_warm)
    obs              {keys, spec: {key: {shape: [To, ...], dtype}}, order}
    action           {names, dim, T, Ta, To, action_start, units}
    control_rate_hz  policy decisions per second (> 0)
    ee_action        the end-effector action contract, core/ee_action.py EEActionSpec.to_dict(); the runtime
                     reads it with EEActionSpec.from_dict (strict: a missing or unknown key is refused)
    gripper          {dims, threshold, values, in_graph, rule}
    robot            {dof, kinematics}
    task             {name, success}: success is a robotstack.core.success criterion or null
    noise, nfe       the noise inputs the runtime draws; network evaluations per call
    normalization    informational (the stats are baked into the graph)
    opset, parity, latency, source, exporter, torch_version, export_s
    consistency | ddim | rti | state   optional, per sampler
    critic           optional (version 3): a best-of-N scorer graph, see below

Critic section (format version 3; a version-2 manifest has none, so older artifacts load unchanged and an older
runtime refuses a critic artifact by its version instead of ignoring the critic):
    critic = {file, sha256, inputs, outputs, n, h_a, aggregate, obs_keys[, parity, latency, source]}
    graph:   inputs  one per critic obs key (1, To, *shape) env units (a subset of obs.keys, same spec)
                     "actions" (1, "N", h_a, Da) env units: the first h_a *executed* actions of each candidate
             outputs "scores" (1, "N"), higher = better (the scorer's `aggregate` over its ensemble)
    n        the default best-of-N (candidates per decision; the runtime may be given another N >= 1)
    With a critic, the policy graph has a dynamic row axis "B" (first dim of its noise input and of every output)
    so the runtime samples N candidates in one call from one observation (obs inputs batch 1; artifacts exported
    before 2026-11-30 have "B" on the obs inputs too and are refused with a request to export again); the sampler
    must draw independent candidates (cm1, cm3, ddim).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from robotstack.core.errors import ArtifactError, ConfigError
from robotstack.core.jsondoc import check_format, read_object
from robotstack.core.success import check_criterion

FORMAT, VERSION = "robotstack.artifact", 2  # v2: task, robot and ee_action are required (v1 had sim fallbacks)
CRITIC_VERSION = 3  # v3 = v2 + a critic section; the writer uses it only when the artifact carries a critic
READABLE = (VERSION, CRITIC_VERSION)
MANIFEST = "manifest.json"
SAMPLERS = ("cm1", "cm3", "ddim", "rti", "cm_warm")
# samplers that carry a warm-start state between calls: an init graph for the first call, then policy.onnx with
# the previous call's guess_out as its "guess" input (reset drops the state)
STATEFUL_SAMPLERS = ("rti", "cm_warm")
# samplers whose N candidates per decision are independent (best-of-N); rti and cm_warm carry one warm-start state
BEST_OF_N_SAMPLERS = ("cm1", "cm3", "ddim")
NUMBER = (int, float)

# section -> {field: (accepted types, what is expected)}; checked by read_manifest
NESTED: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "obs": {"keys": ((list,), "the observation keys, in graph-input order"),
            "spec": ((dict,), "{key: {shape: [To, ...], dtype}}")},
    "action": {"names": ((list,), "action names, e.g. ['dx', 'dy', 'dz', 'gripper']"),
               "dim": ((int,), "Da"), "T": ((int,), "predicted horizon"), "Ta": ((int,), "actions per call"),
               "To": ((int,), "observation history"), "action_start": ((int,), "first executed chunk index")},
    "gripper": {"dims": ((list,), "thresholded action dims")},
    "robot": {"dof": ((int,), "joint count of the arm it was trained for"),
              "kinematics": ((str,), "kinematic model name, e.g. 'panda'")},
    "task": {"name": ((str,), "the task name"),
             "success": ((list, type(None)), "a success criterion (robotstack.core.success) or null")},
}
GRAPH_FIELDS = ("file", "sha256", "inputs", "outputs")
BATCH_AXIS, CANDIDATE_AXIS = "B", "N"  # symbolic dims of a best-of-N artifact's policy and critic graphs
CRITIC_AGGREGATES = ("min", "mean")
# critic field -> (accepted types, what is expected); "parity", "latency", "source" are informational
CRITIC_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "file": ((str,), "the scorer graph's file name, e.g. 'critic.onnx'"),
    "sha256": ((str,), "the graph file's sha256"),
    "inputs": ((list,), "[{name, shape, dtype}]: the critic obs keys, then 'actions'"),
    "outputs": ((list,), "[{name: 'scores', shape: [1, 'N'], dtype}]"),
    "n": ((int,), "the default best-of-N, >= 1"),
    "h_a": ((int,), "scored executed actions per candidate, 1 <= h_a <= action.Ta"),
    "aggregate": ((str,), f"the ensemble aggregate, one of {CRITIC_AGGREGATES}"),
    "obs_keys": ((list,), "the observation keys the critic reads (a subset of obs.keys)"),
}
CRITIC_INFO = ("parity", "latency", "source")


@dataclass
class Manifest:
    sampler: str
    graphs: dict[str, dict[str, Any]]
    obs: dict[str, Any]
    action: dict[str, Any]
    control_rate_hz: float
    ee_action: dict[str, Any]
    gripper: dict[str, Any]
    robot: dict[str, Any]
    task: dict[str, Any]
    noise: dict[str, Any]
    nfe: dict[str, Any]
    normalization: dict[str, Any]
    opset: int
    parity: dict[str, Any]
    latency: dict[str, Any]
    source: dict[str, Any]
    exporter: str
    torch_version: str
    export_s: float
    consistency: dict[str, Any] | None = None
    ddim: dict[str, Any] | None = None
    rti: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    critic: dict[str, Any] | None = None
    format: str = field(default=FORMAT)
    version: int = field(default=VERSION)

    def to_dict(self) -> dict[str, Any]:
        out = {"format": self.format, "version": self.version}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in out and v is not None:
                out[f.name] = v
        return out


OPTIONAL = {f.name for f in fields(Manifest) if f.default is None}


def write_manifest(out_dir: str | Path, manifest: Manifest) -> Path:
    """Validate (the same checks the runtime makes) and write out_dir/manifest.json."""
    path = Path(out_dir) / MANIFEST
    doc = manifest.to_dict()
    try:
        _check(doc, path)
    except ArtifactError as e:
        raise ConfigError(f"refusing to write an invalid manifest: {e}") from None
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def read_manifest(artifact_dir: str | Path) -> Manifest:
    """Strict reader: unknown format/version, a missing or mistyped field, or an unknown key -> ArtifactError
    naming the file, the field and what was expected."""
    path = Path(artifact_dir) / MANIFEST
    doc = read_object(path, ArtifactError, f"an artifact dir needs {MANIFEST} and policy.onnx (written by "
                      "`robotstack export`)")
    _check(doc, path)
    return Manifest(**doc)


def _check(doc: dict[str, Any], path: Path) -> None:
    version = doc.get("version") if doc.get("version") in READABLE else VERSION
    check_format(doc, path, FORMAT, version, ArtifactError,
                 f"or version {CRITIC_VERSION} with a critic section; re-export with `robotstack export`")
    known = {f.name for f in fields(Manifest)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ArtifactError(f"{path}: unknown field(s) {unknown}; expected only {sorted(known)}")
    for name in sorted(known - OPTIONAL):
        if name not in doc:
            raise ArtifactError(f"{path}: missing field {name!r} (the runtime needs it; re-export the artifact)")
    for section, spec in NESTED.items():
        if not isinstance(doc[section], dict):
            raise ArtifactError(f"{path}: field {section!r} must be an object, got {doc[section]!r}")
        for key, (types, what) in spec.items():
            if key not in doc[section]:
                raise ArtifactError(f"{path}: missing field '{section}.{key}' (expected {what})")
            v = doc[section][key]
            if not isinstance(v, types) or isinstance(v, bool):
                raise ArtifactError(f"{path}: field '{section}.{key}' is {v!r}, expected {what}")
    if doc["sampler"] not in SAMPLERS:
        raise ArtifactError(f"{path}: field 'sampler' is {doc['sampler']!r}, expected one of {SAMPLERS}")
    rate = doc["control_rate_hz"]
    if not isinstance(rate, NUMBER) or isinstance(rate, bool) or not rate > 0:
        raise ArtifactError(f"{path}: field 'control_rate_hz' is {rate!r}, expected a rate in Hz > 0 "
                            "(export with --control-rate or from a checkpoint whose task has one)")
    if not isinstance(doc["ee_action"], dict) or not doc["ee_action"]:
        raise ArtifactError(f"{path}: field 'ee_action' is {doc['ee_action']!r}, expected the end-effector "
                            "action contract as an object")
    graphs = doc["graphs"]
    roles = {"policy", "init"} if doc["sampler"] in STATEFUL_SAMPLERS else {"policy"}
    if not isinstance(graphs, dict) or set(graphs) != roles:
        raise ArtifactError(f"{path}: field 'graphs' has roles {sorted(graphs) if isinstance(graphs, dict) else graphs}"
                            f", expected {sorted(roles)} for sampler {doc['sampler']!r}")
    for role, g in graphs.items():
        for key in GRAPH_FIELDS:
            if key not in g:
                raise ArtifactError(f"{path}: missing field 'graphs.{role}.{key}'")
    if list(doc["obs"]["keys"]) != list(doc["obs"]["spec"]):
        raise ArtifactError(f"{path}: obs.keys {doc['obs']['keys']} != obs.spec keys {list(doc['obs']['spec'])}")
    if len(doc["action"]["names"]) != doc["action"]["dim"]:
        raise ArtifactError(f"{path}: action.names {doc['action']['names']} has {len(doc['action']['names'])} "
                            f"entries, action.dim is {doc['action']['dim']}")
    try:
        check_criterion(doc["task"]["success"], f"{path}: task.success")
    except ConfigError as e:
        raise ArtifactError(str(e)) from None
    if "critic" in doc and doc["version"] != CRITIC_VERSION:
        raise ArtifactError(f"{path}: a 'critic' section needs version {CRITIC_VERSION}, the manifest says "
                            f"version {doc['version']}")
    if "critic" in doc:
        _check_critic(doc, path)


def _check_critic(doc: dict[str, Any], path: Path) -> None:
    """The critic section's fields (module docstring); the graph file itself is checked by the runtime loader."""
    c = doc["critic"]
    if not isinstance(c, dict):
        raise ArtifactError(f"{path}: field 'critic' must be an object, got {c!r}")
    unknown = sorted(set(c) - set(CRITIC_FIELDS) - set(CRITIC_INFO))
    if unknown:
        raise ArtifactError(f"{path}: unknown field(s) {['critic.' + k for k in unknown]}; expected "
                            f"{sorted(CRITIC_FIELDS)} (+ optional {list(CRITIC_INFO)})")
    for key, (types, what) in CRITIC_FIELDS.items():
        if key not in c:
            raise ArtifactError(f"{path}: missing field 'critic.{key}' (expected {what})")
        if not isinstance(c[key], types) or isinstance(c[key], bool):
            raise ArtifactError(f"{path}: field 'critic.{key}' is {c[key]!r}, expected {what}")
    if doc["sampler"] not in BEST_OF_N_SAMPLERS:
        raise ArtifactError(f"{path}: a critic section with sampler {doc['sampler']!r}: best-of-N needs independent "
                            f"candidates per decision {BEST_OF_N_SAMPLERS}; rti and cm_warm carry one warm-start state")
    ta = doc["action"]["Ta"]
    checks = [("n", c["n"] >= 1, "the default best-of-N, >= 1"),
              ("h_a", 1 <= c["h_a"] <= ta, f"1 <= h_a <= action.Ta = {ta}"),
              ("aggregate", c["aggregate"] in CRITIC_AGGREGATES, f"one of {CRITIC_AGGREGATES}"),
              ("obs_keys", bool(c["obs_keys"]) and set(c["obs_keys"]) <= set(doc["obs"]["keys"]),
               f"a non-empty subset of obs.keys {doc['obs']['keys']}")]
    for key, ok, what in checks:
        if not ok:
            raise ArtifactError(f"{path}: field 'critic.{key}' is {c[key]!r}, expected {what}")
