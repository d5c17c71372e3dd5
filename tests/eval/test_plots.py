"""`robotstack plot RUN_DIR` draws PNGs from metrics.csv (matplotlib, Agg canvas)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from robotstack.cli import main as cli
from robotstack.eval.plots import SIZE_PX
from robotstack.train.common import RunLogger

LINE_RGB = np.array([31, 119, 180])  # matplotlib's first line colour (tab:blue)


def _line_pixels(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.asarray(img.convert("RGB")).astype(int)
    rows, cols = np.nonzero(np.abs(rgb - LINE_RGB).sum(-1) < 40)
    return rows, cols


def test_plot_writes_the_three_charts(tmp_path):
    log = RunLogger(tmp_path, tensorboard=False)
    for step in range(10, 210, 10):
        log.log(step, {"loss": 1.0 / step, "lr": 1e-3})
        if step % 50 == 0:
            log.log(step, {"eval/success_rate": step / 200})
    assert cli(["plot", str(tmp_path)]) == 0
    for name in ("loss.png", "lr.png", "success.png"):
        img = Image.open(tmp_path / "plots" / name)
        assert img.format == "PNG" and img.size == SIZE_PX, name
        assert len(_line_pixels(img)[0]) > 50, f"{name}: no data line drawn"
        assert len(set(img.convert("RGB").getdata())) > 10, f"{name}: blank"

    # the data is placed, not just drawn: success rises 0.25 -> 1.0, so the line's right end is higher up
    rows, cols = _line_pixels(Image.open(tmp_path / "plots" / "success.png"))
    left, right = cols.min(), cols.max()
    assert rows[cols <= left + 5].mean() > rows[cols >= right - 5].mean() + 100
    # and the loss falls: its line ends lower than it starts
    rows, cols = _line_pixels(Image.open(tmp_path / "plots" / "loss.png"))
    assert rows[cols <= cols.min() + 5].mean() < rows[cols >= cols.max() - 5].mean() - 100


def test_plot_missing_metrics_is_an_error(tmp_path, capsys):
    assert cli(["plot", str(tmp_path)]) == 2
    assert "metrics.csv" in capsys.readouterr().err


def test_plot_keeps_every_success_column_apart(tmp_path):
    log = RunLogger(tmp_path, tensorboard=False)
    for step in (100, 200, 300):
        log.log(step, {"eval/success_rate": step / 300, "eval_ema/success_rate": step / 600})
    assert cli(["plot", str(tmp_path)]) == 0
    rgb = np.asarray(Image.open(tmp_path / "plots" / "success.png").convert("RGB")).astype(int)
    second = np.abs(rgb - np.array([255, 127, 14])).sum(-1) < 40  # matplotlib's second line colour
    assert second.sum() > 50, "eval_ema/success_rate was not drawn (merged into eval/success_rate?)"
