"""Static import scan that keeps the layering of shared/design.md §3 true.

Each layer lists the first-party layers it may import; third-party packages that a layer must never pull in
(torch above all: the on-robot runtime and the hardware servers must start without it) are listed separately.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# layer -> first-party layers it may import (itself is always allowed)
ALLOWED = {
    "robotstack.core": set(),
    "robotstack.data": {"robotstack.core"},
    "sim": {"robotstack.core"},
    "hardware": {"robotstack.core"},
    "policies": {"robotstack.core"},
    "robotstack.train": {"robotstack.core", "robotstack.data", "policies", "sim", "robotstack.eval"},
    "robotstack.eval": {"robotstack.core", "robotstack.data", "policies", "sim"},
    "robotstack.export": {"robotstack.core", "policies"},
    "robotstack.runtime": {"robotstack.core", "hardware"},
}
FORBIDDEN_THIRD_PARTY = {
    "robotstack.core": {"torch", "diffusers", "mujoco", "zarr", "zmq", "onnxruntime"},
    "robotstack.data": {"torch", "diffusers", "mujoco"},
    "sim": {"torch", "diffusers", "zmq", "onnxruntime"},
    "hardware": {"torch", "diffusers", "onnxruntime"},
    "policies": {"mujoco", "zmq", "zarr"},
    "robotstack.runtime": {"torch", "diffusers", "policies"},
}
# Documented exceptions: (file relative to ROOT, imported module prefix) -> why
EXCEPTIONS = {
    ("robotstack/data/dataset.py", "torch"): "the torch Dataset wrapper is the one torch module in data/",
    ("robotstack/runtime/policy_runner.py", "robotstack.export.artifact"):
        "the exporter's torch-free artifact loader (numpy + onnxruntime only; tests/runtime checks no torch)",
}
FIRST_PARTY_TOPS = ("robotstack", "sim", "hardware", "policies")


def layer_of(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layered_files():
    for top in FIRST_PARTY_TOPS:
        for path in sorted((ROOT / top).rglob("*.py")):
            layer = layer_of(module_name(path))
            if layer:
                yield path, layer


def test_layering_is_respected():
    violations = []
    for path, layer in layered_files():
        rel = str(path.relative_to(ROOT))
        for imported in imports_of(path):
            if any((rel, prefix) in EXCEPTIONS for prefix in [imported.split(".")[0], imported]):
                continue
            target = layer_of(imported)
            top = imported.split(".")[0]
            if target and target != layer and target not in ALLOWED[layer]:
                violations.append(f"{rel}: {layer} must not import {imported}")
            elif top in FIRST_PARTY_TOPS and target is None and top != "robotstack":
                violations.append(f"{rel}: unknown first-party module {imported}")
            if top in FORBIDDEN_THIRD_PARTY.get(layer, set()):
                violations.append(f"{rel}: {layer} must not import {top}")
    assert not violations, "layering violations:\n" + "\n".join(violations)


def test_scan_sees_the_packages():
    # guards against the scan silently passing because it found nothing
    layers = {layer for _, layer in layered_files()}
    assert {"robotstack.core", "sim", "hardware"} <= layers


def test_scan_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom policies.registry import build_policy\n")
    assert imports_of(bad) == ["torch", "policies.registry"]
    assert layer_of("policies.registry") == "policies"
    assert "policies" not in ALLOWED["robotstack.runtime"]
