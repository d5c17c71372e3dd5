"""What every training stage shares: per-step RNG, logging (CSV + TensorBoard), training-state checkpoints,
progress bar and torch.distributed setup.

Determinism and resume: batch indices and diffusion noise for step s are drawn from generators seeded with
(seed, s), so a run resumed at step s draws exactly what the uninterrupted run drew — the only state to
save is weights, EMA weights, optimizer state and the step counter. Everything is written as safetensors
+ JSON (no pickle).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file


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


# ----------------------------------------------------------------------------------------- progress
def progress_bar(total: int, description: str, enabled: bool = True):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    progress = Progress(TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), disable=not enabled)
    return progress
