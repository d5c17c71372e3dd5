"""Summary of an episode store: size, keys, outcomes, sources and timing quality (for `robotstack info`)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from robotstack.core import keys as K
from robotstack.data.store import EpisodeStore


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """JSON-able summary. Fields that a store lacks (e.g. timing in diffusion_policy stores) are None."""
    with EpisodeStore.open(path, mode="r") as st:
        ends = st.episode_ends
        lengths = np.diff(np.concatenate([[0], ends]))
        keys = {k: {"shape": list(shape), "dtype": str(dtype), "chunks": list(st.array(k).chunks)}
                for k, (shape, dtype) in st.key_specs().items()}
        metas = st.episode_metas()
        succ = [m.success for m in metas if m.success is not None]
        timing = None
        if K.CAPTURE_TIME in keys and K.TIMESTAMP in keys and st.n_frames:
            t = st.load([K.CAPTURE_TIME, K.TIMESTAMP] + ([K.LATE_TICK] if K.LATE_TICK in keys else []))
            lag_ms = (t[K.CAPTURE_TIME] - t[K.TIMESTAMP]) * 1e3
            late = int(t[K.LATE_TICK].sum()) if K.LATE_TICK in t else None
            timing = {
                "late_ticks": late,
                "late_fraction": None if late is None else late / st.n_frames,
                "lag_p50_ms": float(np.percentile(lag_ms, 50)),
                "lag_p99_ms": float(np.percentile(lag_ms, 99)),
                "lag_max_ms": float(lag_ms.max()),
            }
        return {
            "path": str(st.path),
            "zarr_format": st.zarr_format,
            "episodes": st.n_episodes,
            "frames": st.n_frames,
            "episode_length": None if not len(lengths) else {
                "min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
            "keys": keys,
            "has_episode_meta": st.has_episode_meta,
            "ignored_episode_ends": st.n_ignored_ends,  # unfinished append (1) or damage (more)
            "missing_chunks": st.verify(),
            "success_rate": (sum(succ) / len(succ)) if succ else None,
            "episodes_with_outcome": len(succ),
            "by_source": dict(Counter("unknown" if m.source is None else m.source for m in metas)),
            "by_task": dict(Counter("unknown" if m.task is None else m.task for m in metas)),
            "timing": timing,
        }


def _fmt(v: Any, spec: str = "") -> str:
    return "n/a" if v is None else format(v, spec)


def format_info(info: dict[str, Any]) -> str:
    """Plain-text table of store_info() output (no rich: robotstack/data stays numpy/zarr only)."""
    lines = [f"episode store  {info['path']}  (zarr format {info['zarr_format']})"]
    el = info["episode_length"]
    rows = [
        ("episodes", str(info["episodes"])),
        ("frames", str(info["frames"])),
        ("episode length", "n/a" if el is None else f"min {el['min']}  mean {el['mean']:.1f}  max {el['max']}"),
        ("success rate", "n/a" if info["success_rate"] is None else
         f"{info['success_rate']:.1%} of {info['episodes_with_outcome']}"),
        ("by source", ", ".join(f"{k}: {v}" for k, v in sorted(info["by_source"].items())) or "-"),
        ("by task", ", ".join(f"{k}: {v}" for k, v in sorted(info["by_task"].items())) or "-"),
    ]
    t = info["timing"]
    if t is None:
        rows.append(("timing", "n/a (no capture_time/timestamp keys)"))
    else:
        rows.append(("late ticks", f"{_fmt(t['late_ticks'])} ({_fmt(t['late_fraction'], '.2%')})"))
        rows.append(("capture lag", f"p50 {t['lag_p50_ms']:.2f} ms  p99 {t['lag_p99_ms']:.2f} ms  "
                                    f"max {t['lag_max_ms']:.2f} ms"))
    if info["ignored_episode_ends"]:
        rows.append(("WARNING", f"{info['ignored_episode_ends']} meta/episode_ends entries past the committed "
                                "episodes are ignored (unfinished append or damage)"))
    for problem in info["missing_chunks"]:
        rows.append(("WARNING", problem))
    w = max(len(r[0]) for r in rows)
    lines += [f"  {a:<{w}}  {b}" for a, b in rows]
    lines.append("")
    kw = max([len("key"), *(len(k) for k in info["keys"])])
    lines.append(f"  {'key':<{kw}}  {'shape/frame':<16} {'dtype':<8} chunks")
    for k, v in info["keys"].items():
        shape = str(tuple(v["shape"]))
        lines.append(f"  {k:<{kw}}  {shape:<16} {v['dtype']:<8} {tuple(v['chunks'])}")
    return "\n".join(lines)
