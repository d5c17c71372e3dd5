"""The base install (`pip install .`, no extras) is the torch-free on-robot runtime, checked in a fresh venv.

Slow (a venv and a real pip install, ~1-3 min): run with `make test-all` or `pytest -m slow tests/test_packaging.py`.
The artifact is made here, in the full dev venv, by the real exporter from a tiny checkpoint; the fresh venv
only loads and runs it, as the robot does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("torch", "diffusers", "safetensors", "tensorboard", "onnx", "matplotlib", "mujoco", "metaworld",
               "pybullet", "gymnasium", "PIL", "imageio", "imageio_ffmpeg", "pytest")

# Runs inside the fresh venv, from a directory outside the checkout, so only the installed package is importable.
ROBOT_SIDE = textwrap.dedent("""
    import importlib.util, json, sys
    import numpy as np
    from robotstack.runtime.policy_runner import PolicyRunner
    from robotstack.data.recording import open_or_create_store

    art, store_path, extras_only = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    runner = PolicyRunner(art)
    runner.push({k: np.zeros(shape, np.float32) for k, shape in runner.spec.obs.items()})
    actions = runner.infer()
    store = open_or_create_store(store_path, zarr_format=3)  # what `deploy --record` opens
    store.close()
    print(json.dumps({
        "actions_shape": list(actions.shape), "finite": bool(np.isfinite(actions).all()),
        "installed": [m for m in extras_only if importlib.util.find_spec(m) is not None],
        "imported": sorted({m.split(".")[0] for m in sys.modules} & set(extras_only)),
        "robotstack_from": __import__("robotstack").__file__,
    }))
""")


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc


def _not_source(directory: str, names: list[str]) -> set[str]:
    top = {".git", ".venv", "build", "data", "runs", "artifacts", "demo_out"} if Path(directory) == ROOT else set()
    return {n for n in names if n in top or n in ("__pycache__", ".pytest_cache") or n.endswith(".egg-info")}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    import sim
    from robotstack.export.tiny import export_tiny

    # a real exporter artifact (manifest v2+ needs the task spec the exporter copies from the sim task)
    return export_tiny(tmp_path_factory.mktemp("pkg_art") / "ddim", sim.make("push").unwrapped.task_spec())


@pytest.mark.slow
def test_base_install_runs_the_runtime_without_torch(tmp_path, artifact):
    env_dir, work = tmp_path / "venv", tmp_path / "outside"
    work.mkdir()
    venv.create(env_dir, with_pip=True, clear=True)
    py, exe = env_dir / "bin" / "python", env_dir / "bin" / "robotstack"
    # a normal, non-editable install with no extras: pip resolves the base dependencies itself. From a copy,
    # because setuptools builds in the source tree (build/, *.egg-info) and the checkout must stay clean.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_not_source)
    _run([str(py), "-m", "pip", "install", "--quiet", str(src)], cwd=work, timeout=900)

    for argv in (["--help"], ["deploy", "--help"]):
        out = _run([str(exe), *argv], cwd=work, timeout=60).stdout
        assert "usage: robotstack" in out, out
    report = json.loads(_run([str(py), "-c", ROBOT_SIDE, str(artifact), str(tmp_path / "rec.zarr"),
                              ",".join(EXTRAS_ONLY)], cwd=work, timeout=120).stdout.strip().splitlines()[-1])
    assert report["installed"] == [], f"the base install pulled extras: {report['installed']}"
    assert report["imported"] == []
    assert str(env_dir) in report["robotstack_from"], report["robotstack_from"]  # the installed copy, not ROOT
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert report["actions_shape"] == [manifest["action"]["Ta"], manifest["action"]["dim"]] and report["finite"]
