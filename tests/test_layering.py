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
    # eval rolls out exported artifacts through the runtime's loader (eval-artifact)
    "robotstack.eval": {"robotstack.core", "robotstack.data", "policies", "sim", "robotstack.runtime"},
    # the exporter checks parity with the runtime's onnxruntime session (the production path)
    "robotstack.export": {"robotstack.core", "policies", "robotstack.runtime"},
    "robotstack.runtime": {"robotstack.core", "hardware"},
    # runs the stages end to end (train, eval, export, data); the cli is its only importer
    "robotstack.pipeline": {"robotstack.core", "robotstack.data", "robotstack.train", "robotstack.eval",
                            "robotstack.export", "robotstack.runtime", "policies", "sim"},
    # the only top layer: anything may be imported here, and nothing below may import it
    "robotstack.cli": {"robotstack.core", "robotstack.data", "robotstack.train", "robotstack.eval",
                       "robotstack.export", "robotstack.runtime", "robotstack.pipeline", "policies", "sim",
                       "hardware"},
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
}
FIRST_PARTY_TOPS = ("robotstack", "sim", "hardware", "policies", "tests", "bench", "tools")
# packages whose modules are scanned; each module must sit in a layer (tests/, bench/, tools/ may import anything
# but are never importable from a layer)
LAYERED_TOPS = ("robotstack", "sim", "hardware", "policies")


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


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def first_party_files(root: Path = ROOT):
    for top in LAYERED_TOPS:
        yield from sorted((root / top).rglob("*.py"))


def layered_files(root: Path = ROOT):
    for path in first_party_files(root):
        layer = layer_of(module_name(path, root))
        if layer:
            yield path, layer


def violations_in(root: Path = ROOT) -> list[str]:
    """Every import that breaks a layer rule, every module outside any layer, every import of an unknown module."""
    violations = []
    for path in first_party_files(root):
        rel = str(path.relative_to(root))
        mod = module_name(path, root)
        layer = layer_of(mod)
        if layer is None:
            if mod != "robotstack":  # the bare namespace package holds no code
                violations.append(f"{rel}: module {mod} is in no layer (add it to ALLOWED)")
            continue
        for imported in imports_of(path):
            if any((rel, prefix) in EXCEPTIONS for prefix in [imported.split(".")[0], imported]):
                continue
            target = layer_of(imported)
            top = imported.split(".")[0]
            if top in ("tests", "bench", "tools"):
                violations.append(f"{rel}: {layer} must not import {imported} (developer code, not product)")
            elif target and target != layer and target not in ALLOWED[layer]:
                violations.append(f"{rel}: {layer} must not import {imported}")
            elif top in FIRST_PARTY_TOPS and target is None and imported != "robotstack":
                violations.append(f"{rel}: unknown first-party module {imported}")
            if top in FORBIDDEN_THIRD_PARTY.get(layer, set()):
                violations.append(f"{rel}: {layer} must not import {top}")
    return violations


def test_layering_is_respected():
    violations = violations_in()
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


def _tree_with(tmp_path: Path, rel: str, text: str) -> Path:
    """A throw-away copy of the first-party packages plus one extra file, so the product is never edited."""
    import shutil

    for top in LAYERED_TOPS:
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return tmp_path


def test_the_real_tree_copy_is_clean(tmp_path):
    assert violations_in(_tree_with(tmp_path, "robotstack/core/fine.py", "import numpy\n")) == []


def test_misplaced_imports_are_caught(tmp_path):
    cases = {
        "robotstack/runtime/bad.py": ("import torch\nfrom policies.registry import build_policy\n",
                                      ["must not import torch", "must not import policies.registry"]),
        "robotstack/core/bad.py": ("from robotstack.cli import main\n", ["must not import robotstack.cli"]),
        "sim/bad.py": ("from tests.runtime.conftest import free_base_port\n", ["developer code"]),
        "robotstack/runtime/bad.py#2": ("from robotstack.export.onnx_export import export_artifact\n",
                                        ["must not import robotstack.export.onnx_export"]),
        "robotstack/newlayer/mod.py": ("import numpy\n", ["is in no layer"]),
        "hardware/bad.py": ("import robotstack.nonexistent\n", ["unknown first-party module"]),
    }
    for i, (rel, (text, expected)) in enumerate(cases.items()):
        root = _tree_with(tmp_path / str(i), rel.split("#")[0], text)
        found = "\n".join(violations_in(root))
        for needle in expected:
            assert needle in found, f"{rel}: expected a violation with {needle!r}, got:\n{found}"
