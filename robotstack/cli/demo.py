"""`make demo`: the main job on the embedded default — MuJoCo reach task, local store, PyBullet arm.

record scripted demos -> data info -> train il -> eval -> plot -> one short RL-100 offline round (IQL critics,
transition model, PPO over the denoising steps behind the AM-Q gate) -> a short online PPO phase -> distill to
one step -> export to ONNX -> evaluate the artifact with onnxruntime -> run it on the PyBullet arm server over
ZMQ, recording every run. (`robotstack pipeline` chains the same stages with the outer rounds; see README.)
Each step is the same `robotstack` command a user would type, so the demo doubles as a usage example.
Reach is the demo task because its small policy trains in about two minutes on 2 cores; the other tasks use
the same commands (see README).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from robotstack.cli import main as cli

OUT = Path("demo_out")
TASK = "reach"
ARM = "tcp://127.0.0.1:6510"


def run(*argv: str) -> None:
    print(f"\n$ robotstack {' '.join(argv)}", flush=True)
    code = cli(list(argv))
    if code:
        sys.exit(code)


def deploy_on_pybullet(artifact: str, record: str) -> None:
    """The arm server is its own process (as on a robot); the controller runs here."""
    serve = ["serve-arm", "--driver", "pybullet", "--task", TASK, "--bind", ARM, "--seed", "200000"]
    print(f"\n$ robotstack {' '.join(serve)} &", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "robotstack.cli", *serve])
    try:
        time.sleep(3.0)  # server start-up (PyBullet scene + sockets)
        if server.poll() is not None:
            sys.exit(f"serve-arm exited with {server.returncode}")
        run("deploy", "--artifact", artifact, "--arm", ARM, "--episodes", "10", "--max-steps", "150",
            "--record", record)
    finally:
        server.terminate()
        server.wait(timeout=10)
    run("data", "info", record)


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    store = str(OUT / f"{TASK}.zarr")
    run("record", "--task", TASK, "--device", "scripted", "--episodes", "30", "--noise", "0.2", "--out", store)
    run("data", "info", store)
    run_dir = str(OUT / f"il_{TASK}")
    run("train", "il", "--config", f"configs/il/demo_{TASK}.yaml", f"data.paths=[{store}]", "--out", run_dir)
    run("eval", "--checkpoint", f"{run_dir}/checkpoints/latest", "--episodes", "20", "--num-envs", "2")
    run("plot", run_dir)
    # RL-100 at a demo's budget: one offline round on the demos (the gate keeps IL unless AM-Q improves by 5%),
    # then a short online phase in MuJoCo with V warm-started from the offline IQL critics
    offline, online = str(OUT / f"offline_{TASK}"), str(OUT / f"online_{TASK}")
    run("train", "offline-rl", "--config", f"configs/offline_rl/demo_{TASK}.yaml",
        f"policy={run_dir}/checkpoints/latest", f"data.paths=[{store}]", "--out", offline)
    run("train", "online-rl", "--config", f"configs/online_rl/demo_{TASK}.yaml",
        f"policy={offline}/checkpoints/latest", f"critic={offline}/critics", "--out", online)
    # fast inference: distill to a one-step student -> export it to ONNX -> evaluate it through onnxruntime
    student, artifact = str(OUT / f"student_{TASK}"), str(OUT / f"artifact_{TASK}_cm1")
    run("distill", "--config", f"configs/distill/demo_{TASK}.yaml", f"teacher={online}/checkpoints/latest",
        "--out", student)
    run("export", "--checkpoint", f"{student}/checkpoints/latest", "--sampler", "cm1", "--out", artifact)
    run("eval-artifact", "--artifact", artifact, "--episodes", "20")
    # on the "robot": PyBullet plays the arm behind the same server a real arm would use
    deploy_on_pybullet(artifact, str(OUT / "deploy_runs.zarr"))


if __name__ == "__main__":
    main()
