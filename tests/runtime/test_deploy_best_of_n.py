"""`robotstack deploy --best-of-n N` (issue 12 item 4): a real `serve-arm` process (pybullet driver) on loopback, the
real `robotstack deploy` process, and real exporter artifacts with and without a critic (robotstack.export.tiny:
an untrained tiny policy whose candidates spread over the action box, and a tiny scorer that prefers large dx, so
the critic's choice is visible in the executed actions)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import PY, ROOT, ServerProc

from robotstack.core import keys as K

N = 8
STEPS = 24
PREFER = [4.0, 0.0, 0.0, 0.0]  # normalised dx weight: the best of N candidates is (about) the largest-dx one


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, reach_spec):
    from robotstack.export.tiny import export_tiny

    root = tmp_path_factory.mktemp("deploy_bon")
    return {"critic": export_tiny(root / "critic", reach_spec, seed=3, critic_prefer=PREFER, best_of_n=N),
            "plain": export_tiny(root / "plain", reach_spec, seed=3)}


@pytest.fixture(scope="module")
def arm():
    s = ServerProc()
    yield s
    s.stop()


def deploy(arm, artifact, *extra, record=None, timeout: float = 60) -> subprocess.CompletedProcess:
    """One `robotstack deploy` run of STEPS policy steps. On the shared 2-core test machine a heartbeat reply can
    miss the controller's 100 ms deadline ("arm lost", exit 3): that is the watchdog working, not what these tests
    check, so such a run is repeated once (with a fresh store)."""
    cmd = [PY, "-m", "robotstack.cli", "deploy", "--artifact", str(artifact), "--arm", arm.addr, "--quiet",
           "--max-steps", str(STEPS), *extra, *(["--record", str(record)] if record else [])]
    for attempt in range(2):
        if record:
            shutil.rmtree(record, ignore_errors=True)
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if not (r.returncode == 3 and "arm lost" in r.stderr):
            break
    return r


def raw_actions(store_path) -> np.ndarray:
    """(steps, Da) raw policy outputs of the one recorded episode (before safety filtering)."""
    from robotstack.data.store import EpisodeStore

    with EpisodeStore.open(store_path) as st:
        assert st.n_episodes == 1
        return np.asarray(st.episode(0)["policy_action"], np.float64)


def test_best_of_n_deploys_and_executes_the_critics_choice(arm, artifacts, tmp_path):
    """The same artifact at N = 8 and at N = 1 on the same arm server: both drive the arm to the step limit; at
    N = 8 every decision ran the critic (rows counted), and the executed dx is the critic's preference (far larger
    than the plain decisions' from the same policy)."""
    bon = deploy(arm, artifacts["critic"], "--best-of-n", str(N), record=tmp_path / "bon.zarr")
    assert bon.returncode == 0, bon.stderr
    assert f"; best-of-{N}" in bon.stderr
    line = next(x for x in bon.stderr.splitlines() if x.startswith("decisions: best-of-"))
    decisions = int(line.split("(")[1].split()[0])
    rows = dict(map(int, kv.split(":")) for kv in line.split("executed candidate rows ")[1].split())
    assert decisions >= STEPS // 2 and sum(rows.values()) == decisions
    assert all(0 <= r < N for r in rows) and len(rows) > 1  # not one fixed row
    plain = deploy(arm, artifacts["critic"], "--best-of-n", "1", record=tmp_path / "plain.zarr")
    assert plain.returncode == 0, plain.stderr
    assert "; plain" in plain.stderr and "decisions: plain (1 candidate per decision, critic not used)" in plain.stderr
    a_bon, a_plain = raw_actions(tmp_path / "bon.zarr"), raw_actions(tmp_path / "plain.zarr")
    assert len(a_bon) == len(a_plain) == STEPS
    # the untrained policy's dx spreads over [-1, 1]; the best of 8 sits near the top of that spread
    assert a_bon[:, 0].mean() > a_plain[:, 0].mean() + 0.3, (a_bon[:, 0].mean(), a_plain[:, 0].mean())
    assert np.isfinite(a_bon).all() and np.abs(a_bon).max() <= 1.0 + 1e-6


def test_artifact_default_is_its_manifest_n(arm, artifacts):
    r = deploy(arm, artifacts["critic"])
    assert r.returncode == 0, r.stderr
    assert f"; best-of-{N}" in r.stderr and f"decisions: best-of-{N} (" in r.stderr


@pytest.mark.parametrize("which, n, message", [
    ("plain", "4", "deploy --best-of-n 4: artifact {art} has no critic section (no critic.onnx)"),
    ("plain", "1", "deploy --best-of-n 1: artifact {art} has no critic section"),
    ("critic", "0", "deploy --best-of-n 0: expected N >= 1 (1 = plain"),
    ("critic", "-3", "deploy --best-of-n -3: expected N >= 1"),
])
def test_bad_best_of_n_is_refused_before_connecting(artifacts, tmp_path, which, n, message):
    """Refused with the flag named, exit 2, before any arm is contacted (no server listens on this address)."""
    art = artifacts[which]
    cmd = [PY, "-m", "robotstack.cli", "deploy", "--artifact", str(art), "--arm", "tcp://127.0.0.1:9",
           "--quiet", "--best-of-n", n]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert message.format(art=art) in r.stderr
    assert "deploy:" not in r.stderr  # nothing ran: no banner, no run table
