"""`robotstack plot RUN_DIR` draws PNGs from metrics.csv (Pillow, no matplotlib)."""

from __future__ import annotations

from PIL import Image

from robotstack.cli import main as cli
from robotstack.train.common import RunLogger


def test_plot_smoke(tmp_path):
    log = RunLogger(tmp_path, tensorboard=False)
    for step in range(10, 210, 10):
        log.log(step, {"loss": 1.0 / step, "lr": 1e-3})
        if step % 50 == 0:
            log.log(step, {"eval/success_rate": step / 200})
    assert cli(["plot", str(tmp_path)]) == 0
    for name in ("loss.png", "lr.png", "success.png"):
        img = Image.open(tmp_path / "plots" / name)
        assert img.format == "PNG" and img.size[0] > 100
        assert len(set(img.convert("RGB").getdata())) > 3  # something was drawn


def test_plot_missing_metrics_is_an_error(tmp_path, capsys):
    assert cli(["plot", str(tmp_path)]) == 2
    assert "metrics.csv" in capsys.readouterr().err
