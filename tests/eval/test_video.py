"""Rollout videos: mp4 (imageio + the imageio-ffmpeg binary) by default, GIF only without ffmpeg."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from robotstack.core.errors import RobotstackError
from robotstack.eval.video import has_ffmpeg, write_video


def _frames(n=30, h=63, w=81):
    """A white square sliding right over black; odd sides on purpose (H.264 needs even ones)."""
    out = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[20:40, 2 * i:2 * i + 16] = 255
        out.append(f)
    return out


@pytest.mark.skipif(not has_ffmpeg(), reason="imageio-ffmpeg is part of the sim extra")
def test_mp4_by_default_and_decodes_back(tmp_path):
    import imageio.v2 as imageio

    path = write_video(_frames(), tmp_path / "videos" / "episode_0000", fps=10)
    assert path.suffix == ".mp4" and path.stat().st_size > 0
    reader = imageio.get_reader(str(path))
    try:
        assert reader.get_meta_data()["fps"] == pytest.approx(10, abs=0.01)
        back = [f for f in reader]
    finally:
        reader.close()
    assert len(back) == 30 and back[0].shape == (64, 82, 3)  # one edge row/col padded, not rescaled
    # lossy, but the square is where it was: bright inside, dark well outside
    assert back[10][30, 28].mean() > 200 and back[10][30, 70].mean() < 40


def test_gif_fallback_without_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # the package is absent: importing it fails
    assert not has_ffmpeg()
    path = write_video(_frames(n=5), tmp_path / "ep", fps=20)
    assert path.suffix == ".gif"
    img = Image.open(path)
    assert img.n_frames == 5 and img.size == (81, 63) and img.info["duration"] == 50
    with pytest.raises(RobotstackError, match="imageio-ffmpeg"):
        write_video(_frames(n=2), tmp_path / "ep2", fmt="mp4")


def test_long_rollouts_are_subsampled(tmp_path):
    path = write_video(_frames(n=40), tmp_path / "long", fps=20, max_frames=10, fmt="gif")
    assert Image.open(path).n_frames == 10
