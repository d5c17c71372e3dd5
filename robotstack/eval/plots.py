"""`robotstack plot RUN_DIR`: learning curves (loss, lr) and success-over-training as PNG.

Drawn with Pillow (already a dependency) instead of matplotlib: two simple line charts do not justify a
~40 MB dependency, and Pillow keeps the on-robot / CI images small. The charts are plain: axes with 5 ticks,
one or more polylines, a legend; a log y-axis for the loss.

Input: RUN_DIR/metrics.csv as written by robotstack.train.common.RunLogger (columns step, loss, lr,
eval/success_rate, ...). Output: RUN_DIR/plots/loss.png, RUN_DIR/plots/success.png (when eval rows exist).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from robotstack.core.errors import RobotstackError

W, H = 720, 440
MARGIN = (80, 30, 30, 60)  # left, top, right, bottom
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open() as f:
        rows = []
        for row in csv.DictReader(f):
            parsed = {}
            for k, v in row.items():
                try:
                    parsed[k] = float(v)
                except (TypeError, ValueError):
                    continue
            rows.append(parsed)
        return rows


def series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    pts = sorted((r["step"], r[key]) for r in rows if key in r and "step" in r and math.isfinite(r[key]))
    return [p[0] for p in pts], [p[1] for p in pts]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.1e}"
    return f"{v:.3g}"


def line_chart(lines: dict[str, tuple[list[float], list[float]]], path: Path, title: str, xlabel: str,
               ylabel: str, log_y: bool = False, y_range: tuple[float, float] | None = None) -> Path:
    """Draw named (x, y) polylines into a PNG; markers are drawn when a line has <= 50 points."""
    lines = {k: v for k, v in lines.items() if v[0]}
    if not lines:
        raise RobotstackError(f"plot {path.name}: no data points")
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    tr = (lambda y: math.log10(max(y, 1e-12))) if log_y else (lambda y: y)
    xs = [x for v in lines.values() for x in v[0]]
    ys = [tr(y) for v in lines.values() for y in v[1]]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range if y_range else (min(ys), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    left, top, right, bottom = MARGIN[0], MARGIN[1], W - MARGIN[2], H - MARGIN[3]

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (tr(y) - y0) / (y1 - y0) * (bottom - top))

    draw.rectangle([left, top, right, bottom], outline="black")
    for i in range(5):
        fx = x0 + (x1 - x0) * i / 4
        gx = left + (right - left) * i / 4
        draw.line([gx, bottom, gx, bottom + 5], fill="black")
        draw.text((gx - 15, bottom + 8), _fmt(fx), fill="black", font=font)
        fy = y0 + (y1 - y0) * i / 4
        gy = bottom - (bottom - top) * i / 4
        draw.line([left - 5, gy, left, gy], fill="black")
        draw.line([left, gy, right, gy], fill=(225, 225, 225))
        draw.text((5, gy - 6), _fmt(10 ** fy if log_y else fy), fill="black", font=font)
    draw.text((left + (right - left) / 2 - 3 * len(title), 8), title, fill="black", font=font)
    draw.text((left + (right - left) / 2 - 3 * len(xlabel), H - 22), xlabel, fill="black", font=font)
    draw.text((5, top - 22), ylabel + (" (log)" if log_y else ""), fill="black", font=font)
    for n, (name, (lx, ly)) in enumerate(lines.items()):
        color = COLORS[n % len(COLORS)]
        pts = [px(x, y) for x, y in zip(lx, ly)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        if len(pts) <= 50:
            for cx, cy in pts:
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
        draw.line([right - 150, top + 12 + 14 * n, right - 130, top + 12 + 14 * n], fill=color, width=3)
        draw.text((right - 125, top + 6 + 14 * n), name, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write RUN_DIR/plots/{loss,lr,success}.png from RUN_DIR/metrics.csv; returns the written paths."""
    run_dir = Path(run_dir)
    csv_path = run_dir / "metrics.csv"
    if not csv_path.is_file():
        raise RobotstackError(f"plot: {csv_path} is missing (is {run_dir} a training run dir?)")
    rows = read_csv(csv_path)
    out = run_dir / "plots"
    written = []
    loss_lines = {k: series(rows, k) for k in ("loss", "loss_eps", "loss_kl", "loss_recon")}
    if any(v[0] for v in loss_lines.values()):
        written.append(line_chart(loss_lines, out / "loss.png", f"training loss ({run_dir.name})", "step",
                                  "loss", log_y=True))
    if series(rows, "lr")[0]:
        written.append(line_chart({"lr": series(rows, "lr")}, out / "lr.png", "learning rate", "step", "lr"))
    success = {k.split("/", 1)[1]: series(rows, k) for k in sorted({k for r in rows for k in r})
               if k.endswith("success_rate")}
    if any(v[0] for v in success.values()):
        written.append(line_chart(success, out / "success.png", f"success over training ({run_dir.name})",
                                  "step", "success rate", y_range=(0.0, 1.0)))
    if not written:
        raise RobotstackError(f"plot: {csv_path} has no loss or success_rate rows")
    return written
