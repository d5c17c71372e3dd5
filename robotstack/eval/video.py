"""Rollout videos: H.264 mp4 through imageio and the ffmpeg binary shipped in the imageio-ffmpeg wheel.

An animated GIF (Pillow) is only the fallback for an install without that wheel: GIF frame durations are
rounded to 10 ms (the format's unit), so its playback rate is approximate and files are ~10x larger.
Frames: list of (H, W, 3) uint8 RGB; frames beyond `max_frames` are subsampled evenly to keep files small.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robotstack.core.errors import RobotstackError


def ffmpeg_exe() -> str | None:
    """Path of the ffmpeg binary imageio will use, or None when imageio / imageio-ffmpeg are not installed."""
    try:
        import imageio.v2  # noqa: F401 - the writer below needs it too
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # the wheel is there but its binary is not (e.g. an unsupported platform)
        return None


def has_ffmpeg() -> bool:
    return ffmpeg_exe() is not None


def _even(frame: np.ndarray) -> np.ndarray:
    # H.264 in yuv420p (the pixel format every player reads) needs even sides; pad one edge row/col, never rescale
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


def write_video(frames: list[np.ndarray], path_stem: str | Path, fps: float = 20.0, max_frames: int = 400,
                fmt: str = "auto") -> Path:
    """Write frames to `<path_stem>.mp4` (fmt "auto" or "mp4") or `<path_stem>.gif` (fmt "gif", or "auto"
    without ffmpeg). Returns the written path."""
    if not frames:
        raise ValueError(f"write_video {path_stem}: no frames")
    if fmt not in ("auto", "mp4", "gif"):
        raise ValueError(f"write_video {path_stem}: fmt={fmt!r}, expected 'auto', 'mp4' or 'gif'")
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        fps = fps * max_frames / len(frames)
        frames = [frames[i] for i in keep]
    frames = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
    if fmt == "mp4" and not has_ffmpeg():
        raise RobotstackError(f"write_video {stem}.mp4: mp4 needs imageio and imageio-ffmpeg "
                              "(pip install 'robotstack[sim]'), or ask for fmt='gif'")
    if fmt == "mp4" or (fmt == "auto" and has_ffmpeg()):
        import imageio.v2 as imageio

        path = stem.with_suffix(".mp4")
        imageio.mimwrite(str(path), [_even(f) for f in frames], fps=fps, codec="libx264", pixelformat="yuv420p",
                         macro_block_size=1, ffmpeg_log_level="error")
        return path
    from PIL import Image

    path = stem.with_suffix(".gif")
    images = [Image.fromarray(f) for f in frames]
    duration = max(20, int(round(1000.0 / fps / 10.0)) * 10)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False)
    return path
