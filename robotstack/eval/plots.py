"""`robotstack plot RUN_DIR`: learning curves (loss, lr) and success-over-training as PNG, drawn with matplotlib.

matplotlib is used through its object API (``Figure`` + the Agg canvas), never ``pyplot``: no global figure
state, no GUI backend chosen from the environment, so plotting works headless and from worker threads.

Input: RUN_DIR/metrics.csv as written by robotstack.train.common.RunLogger (columns step, loss, lr,
eval/success_rate, ...). Output: RUN_DIR/plots/loss.png, lr.png, success.png (when eval rows exist), 720x440 px.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from robotstack.core.errors import RobotstackError

SIZE_PX = (720, 440)
DPI = 100
MAX_MARKED_POINTS = 50  # markers only while the points are few enough to tell apart


def read_csv(path: Path) -> list[dict[str, float]]:
    """Rows of metrics.csv with the numeric cells only (RunLogger leaves cells of other rows empty)."""
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


def line_chart(lines: dict[str, tuple[list[float], list[float]]], path: Path, title: str, xlabel: str,
               ylabel: str, log_y: bool = False, y_range: tuple[float, float] | None = None) -> Path:
    """Draw named (x, y) lines into a PNG of SIZE_PX; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = {k: v for k, v in lines.items() if v[0]}
    if not lines:
        raise RobotstackError(f"plot {path.name}: no data points")
    fig = Figure(figsize=(SIZE_PX[0] / DPI, SIZE_PX[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (xs, ys) in lines.items():
        ax.plot(xs, ys, label=name, linewidth=1.5, marker="o" if len(xs) <= MAX_MARKED_POINTS else None,
                markersize=3)
    if log_y:
        if any(y <= 0 for _, ys in lines.values() for y in ys):
            ax.set_yscale("symlog", linthresh=1e-6)  # a zero/negative loss must not vanish from a log plot
        else:
            ax.set_yscale("log")
    if y_range is not None:
        ax.set_ylim(*y_range)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    if len(lines) > 1:  # one line is named by the title and y label already
        ax.legend(loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
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
    # keyed by the full column name: "eval/success_rate" and "eval_ema/success_rate" are different lines
    success = {k: series(rows, k) for k in sorted({k for r in rows for k in r}) if k.endswith("success_rate")}
    if any(v[0] for v in success.values()):
        written.append(line_chart(success, out / "success.png", f"success over training ({run_dir.name})",
                                  "step", "success rate", y_range=(0.0, 1.05)))
    if not written:
        raise RobotstackError(f"plot: {csv_path} has no loss or success_rate rows")
    return written
