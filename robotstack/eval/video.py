"""Rollout videos: mp4 when imageio-ffmpeg is installed, otherwise an animated GIF written with Pillow.

Frames: list of (H, W, 3) uint8 RGB. GIF frame duration is rounded to 10 ms (the format's unit), so the
playback rate is approximate; frames beyond `max_frames` are subsampled evenly to keep files small.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def has_ffmpeg() -> bool:
    return importlib.util.find_spec("imageio_ffmpeg") is not None and importlib.util.find_spec("imageio") is not None


def write_video(frames: list[np.ndarray], path_stem: str | Path, fps: float = 20.0, max_frames: int = 400,
                fmt: str = "auto") -> Path:
    """Write frames to `<path_stem>.mp4` (fmt auto/mp4, needs imageio-ffmpeg) or `<path_stem>.gif`.
    Returns the written path."""
    if not frames:
        raise ValueError(f"write_video {path_stem}: no frames")
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        fps = fps * max_frames / len(frames)
        frames = [frames[i] for i in keep]
    if fmt == "mp4" or (fmt == "auto" and has_ffmpeg()):
        import imageio.v2 as imageio

        path = stem.with_suffix(".mp4")
        imageio.mimwrite(str(path), [np.asarray(f, np.uint8) for f in frames], fps=fps, macro_block_size=1)
        return path
    from PIL import Image

    path = stem.with_suffix(".gif")
    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    duration = max(20, int(round(1000.0 / fps / 10.0)) * 10)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False)
    return path
