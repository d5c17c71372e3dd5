"""The loop's plumbing, written once for every training stage (il, distill, ...): per-step RNG, logging
(CSV + TensorBoard), lr schedule, run-dir checkpoints (`checkpoints/step_N` + `latest`) and resume, the stage
config + run dir, Ctrl-C save, torch.distributed setup. The progress bar and the summary table live in
robotstack/core/progress.py (eval and cli show them too).

Determinism and resume: batch indices and diffusion noise for step s are drawn from generators seeded with
(seed, s), so a run resumed at step s draws exactly what the uninterrupted run drew — the only state to
save is weights, EMA weights, optimizer state and the step counter. Everything is written as safetensors
+ JSON (no pickle).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from robotstack.core.config import apply_overrides, from_dict, load_config
from robotstack.core.errors import ConfigError


# ----------------------------------------------------------------------------------------------- RNG
def step_seed(seed: int, step: int, stream: int = 0) -> int:
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def numpy_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(step_seed(seed, step, stream))


def torch_gen(seed: int, step: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, step, stream))


# ----------------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on GPU); single process otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())


def shard(indices: np.ndarray, info: DistInfo) -> np.ndarray:
    """This rank's slice of a global batch: equal shards, so DDP's gradient mean equals the full-batch mean."""
    if len(indices) % info.world_size:
        raise ValueError(f"batch size {len(indices)} is not divisible by world size {info.world_size}")
    per = len(indices) // info.world_size
    return indices[info.rank * per:(info.rank + 1) * per]


# -------------------------------------------------------------------------------------------- logging
class RunLogger:
    """Appends metrics to `metrics.csv` (one row per log call, union of columns) and TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.csv_path = self.run_dir / "metrics.csv"
        self._writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # tensorboard is a dependency, but logging must never kill a run
                self._writer = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "wall_time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        existing: list[dict] = []
        header: list[str] = []
        if self.csv_path.exists():
            with self.csv_path.open() as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                if any(k not in header for k in row):
                    existing = list(reader)
        if not header or any(k not in header for k in row):
            header = header + [k for k in row if k not in header]
            with self.csv_path.open("w", newline="") as f:  # rewrite with the widened header
                w = csv.DictWriter(f, fieldnames=header)
                w.writeheader()
                w.writerows(existing)
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writerow(row)
        if self._writer is not None:
            for k, v in metrics.items():
                self._writer.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class MetricWindow:
    """Means of the step metrics since the last log row, plus steps/s. Its (sums, n) ride in the checkpoint's
    train_state, so a run resumed between two log rows writes the same next row as the uninterrupted run;
    steps/s counts only this process's steps since the last row (or the restart)."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.n = int(state.get("n", 0))
        self._steps, self._t = 0, time.perf_counter()

    def add(self, metrics: dict[str, float]) -> None:
        self.sums = {k: self.sums.get(k, 0.0) + float(v) for k, v in metrics.items()}
        self.n += 1
        self._steps += 1

    def row(self, lr: float) -> dict[str, float]:
        """The log row (means, lr, steps/s); starts the next window."""
        now = time.perf_counter()
        row = {k: v / max(self.n, 1) for k, v in self.sums.items()} | {
            "lr": lr, "steps_per_s": self._steps / max(now - self._t, 1e-9)}
        self.sums, self.n, self._steps, self._t = {}, 0, 0, now
        return row

    def state(self) -> dict:
        return {"sums": dict(self.sums), "n": self.n}


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop metrics.csv rows logged after `step` (a run killed after its last checkpoint logged them; the
    resumed run logs them again). Returns the number of rows dropped."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return 0
    with path.open() as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    keep = [r for r in rows if float(r["step"]) <= step]
    if len(keep) != len(rows):
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(keep)
        os.replace(tmp, path)
    return len(rows) - len(keep)


# ---------------------------------------------------------------------------------- training state
def _optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_training_state(path: Path, step: int, optimizer: torch.optim.Optimizer, extra: dict | None = None) -> None:
    """Optimizer + step, written atomically (tmp + rename) so a kill mid-save keeps the previous state."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors, meta = _optimizer_to_flat(optimizer)
    meta = {"step": step, **meta, **(extra or {})}
    tmp_t, tmp_m = path / "optimizer.safetensors.tmp", path / "train_state.json.tmp"
    save_file(tensors, str(tmp_t))
    tmp_m.write_text(json.dumps(meta))
    os.replace(tmp_t, path / "optimizer.safetensors")
    os.replace(tmp_m, path / "train_state.json")


def load_training_state(path: Path, optimizer: torch.optim.Optimizer) -> dict:
    path = Path(path)
    meta = json.loads((path / "train_state.json").read_text())
    _optimizer_from_flat(optimizer, load_file(str(path / "optimizer.safetensors")), meta)
    return meta


# -------------------------------------------------------------------------------------- lr schedule
def lr_at(step: int, lr: float, steps: int, warmup_steps: int = 0, schedule: str = "cosine") -> float:
    """Linear warm-up over warmup_steps, then cosine to 0 at `steps` (or constant)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule {schedule!r} not in {LR_SCHEDULES}")
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


LrSchedule = Literal["cosine", "constant"]
LR_SCHEDULES = get_args(LrSchedule)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ------------------------------------------------------------------------------------ the loop's config
@dataclass
class LoopConfig:
    """The `train:` fields every stage's loop reads, with their checks, written once.

    A stage's TrainConfig is a flat subclass (YAML keys stay `train.<name>`): it adds its own fields and
    redeclares only the defaults it wants different. Defaults here are `train il`'s. Read by the one strict reader
    (robotstack.core.config), so unknown keys, wrong types and an unknown `lr_schedule` fail there, naming the key.
    """

    steps: int = 3000
    batch_size: int = 64  # global batch B (split evenly over DDP ranks)
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 100  # linear warm-up, then `lr_schedule`
    lr_schedule: LrSchedule = "cosine"  # cosine (to 0 at `steps`) | constant
    grad_clip: float = 0.0  # max grad norm; 0 = off
    log_every: int = 50  # 0 = no periodic log rows
    checkpoint_every: int = 500  # 0 = only after the last step
    keep_checkpoints: int = 0  # keep the newest k step_N dirs; 0 = keep all
    seed: int = 0
    num_threads: int = 2  # torch intra-op threads per process; 0 = torch's default

    def __post_init__(self) -> None:  # domain checks; keys and types are the reader's job
        self.check_at_least(1, "steps", "batch_size")
        self.check_at_least(0, "log_every", "checkpoint_every", "warmup_steps", "keep_checkpoints")

    def check_at_least(self, lo: int, *names: str) -> None:
        for name in names:
            if getattr(self, name) < lo:
                raise ConfigError(f"{name}: expected >= {lo}, got {getattr(self, name)}")

    def lr_at(self, step: int) -> float:
        return lr_at(step, self.lr, self.steps, self.warmup_steps, self.lr_schedule)

    def log_due(self, done: int) -> bool:
        """A log row after `done` steps: every `log_every` and after the last step."""
        return bool(self.log_every) and (done % self.log_every == 0 or done == self.steps)

    def checkpoint_due(self, done: int, end: int, interrupted: bool) -> bool:
        """A checkpoint after `done` steps: every `checkpoint_every`, at the last step, where this run stops
        (`end`, from --stop-at) and on Ctrl-C."""
        periodic = bool(self.checkpoint_every) and done % self.checkpoint_every == 0
        return periodic or done in (self.steps, end) or interrupted


# ------------------------------------------------------------------------------- run-dir checkpoints
# RUN_DIR/checkpoints/step_N/   model.safetensors (+ ema.safetensors), config.json (policy), optimizer.safetensors,
#                               train_state.json  — a policy checkpoint any `robotstack` verb opens, plus state
# RUN_DIR/checkpoints/latest -> step_N   symlink, swapped atomically after each complete checkpoint
def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step}"


def save_run_checkpoint(run_dir: Path, step: int, policy: nn.Module, optimizer: torch.optim.Optimizer,
                        ema_model: nn.Module | None = None, extra: dict | None = None, state: dict | None = None,
                        keep: int = 0, write_model: Callable[[Path], None] | None = None) -> Path:
    """step_N (written as step_N.tmp, then renamed) + atomic swap of `latest`; keep > 0 prunes to the newest
    `keep` step dirs. extra goes into the policy's config.json, state into train_state.json. write_model(dir)
    replaces the policy checkpoint for stages whose model is not a policy (train critic: a scorer dir)."""
    from policies.checkpoint import save_checkpoint

    root = Path(run_dir) / "checkpoints"
    final, tmp = checkpoint_dir(run_dir, step), root / f"step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if write_model is not None:
        tmp.mkdir(parents=True)
        write_model(tmp)
    else:
        save_checkpoint(tmp, policy, ema_model, extra=extra)
    save_training_state(tmp, step, optimizer, extra=state)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    link_tmp = root / "latest.tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(final.name, link_tmp)
    os.replace(link_tmp, root / "latest")
    if keep:
        old = sorted((p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()),
                     key=lambda p: int(p.name[5:]))
        for p in old[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    return final


def restore_run_checkpoint(run_dir: Path, policy: nn.Module, optimizer: torch.optim.Optimizer,
                           ema_model: nn.Module | None = None) -> dict:
    """Load weights (+ EMA weights) and optimizer state from RUN_DIR/checkpoints/latest; -> train_state.json."""
    from policies.checkpoint import EMA_FILE, MODEL_FILE

    latest = Path(run_dir) / "checkpoints" / "latest"
    if not (latest / "train_state.json").is_file():
        raise ConfigError(f"--resume {run_dir}: no complete checkpoint at {latest} (nothing to resume)")
    policy.load_state_dict(load_file(str(latest / MODEL_FILE)), strict=True)
    if ema_model is not None:
        ema_model.load_state_dict(load_file(str(latest / EMA_FILE)), strict=True)
    return load_training_state(latest, optimizer)


# ------------------------------------------------------------------------------- config and run dir
CONFIG_NAME = "config.json"


def resolve_stage_config(cls: type, stage: str, config: str | None, overrides: list[str], resume: str | None):
    """YAML (with `base:`) + dotted overrides; --resume RUN_DIR restarts from RUN_DIR/config.json (overrides
    still apply, e.g. train.steps=...)."""
    if resume:
        path = Path(resume) / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"--resume {resume}: {path} is missing (not a {stage} run dir)")
        data = apply_overrides(json.loads(path.read_text()), overrides)
        return from_dict(cls, data, where=f"{path} + overrides")
    if config is None:
        raise ConfigError(f"{stage}: --config is required (or --resume RUN_DIR)")
    return load_config(cls, config, overrides)


def run_dir_for(resume: str | None, out: str | None, default: Path) -> Path:
    """The run dir of a fresh run (--out or default) or of --resume; refuses to clobber checkpoints."""
    if resume and out and Path(out) != Path(resume):
        raise ConfigError(f"--out {out} and --resume {resume} name different run dirs")
    run_dir = Path(resume) if resume else Path(out) if out else default
    if not resume and (run_dir / "checkpoints").exists():
        raise ConfigError(f"--out {run_dir} already holds checkpoints; use --resume {run_dir} or a new --out")
    return run_dir


# ------------------------------------------------------------------------------------------- Ctrl-C
class StopRequest:
    """Ctrl-C (SIGINT) during training: the first one only sets `requested`, so the loop finishes the step in
    progress, saves a checkpoint at that step and returns (`--resume` continues from it); a second Ctrl-C
    interrupts at once. Outside the main thread (no signal handlers there) it is a no-op."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def any_rank(self, info: DistInfo, device: torch.device | None = None) -> bool:
        """True on every rank once any rank was interrupted (so all ranks save and stop at the same step)."""
        if info.world_size == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag)
        return bool(flag.item() > 0)


INTERRUPTED_EXIT_CODE = 130  # what shells report for a SIGINT-terminated command
