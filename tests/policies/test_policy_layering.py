"""policies/ may import only robotstack.core, torch, diffusers, safetensors, numpy, the stdlib and itself."""

import ast
import sys
from pathlib import Path

ALLOWED_ROOTS = {"torch", "diffusers", "safetensors", "numpy", "policies"}
ROOT = Path(__file__).resolve().parents[2] / "policies"


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_policies_layering():
    bad = []
    files = sorted(ROOT.rglob("*.py"))
    assert files
    for f in files:
        for mod in _imports(f):
            top = mod.split(".")[0]
            ok = (top in ALLOWED_ROOTS or top in sys.stdlib_module_names or mod == "robotstack.core"
                  or mod.startswith("robotstack.core."))
            if not ok:
                bad.append(f"{f.relative_to(ROOT.parent)}: import {mod}")
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_diffusers_is_imported_lazily():
    import subprocess

    code = ("import sys; import policies.registry, policies.checkpoint; "
            "from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig; "
            "DiffusionPolicy(DiffusionPolicyConfig.example()); print('diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent).stdout.strip()
    assert out == "False"
