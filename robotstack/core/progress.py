"""The one progress bar and the one summary table of every long `robotstack` job (train, distill, eval, record,
eval-artifact) — design.md §4: "every long job shows a progress bar with rate and ETA ... and ends with a short
summary table".

Why in core, which is otherwise stdlib + numpy: the bar and the table are needed by train, eval and cli alike,
and core is the only layer all three may import. `rich` is a base dependency (the torch-free on-robot install
has it too), it is pure terminal output and pulls in neither torch nor the sim, so allowing it here keeps the
layering honest instead of copying the factory into each layer (there were four copies).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table


def progress_bar(description: str | None = None, enabled: bool = True) -> Progress:
    """A rich Progress: description, bar, done/total, a free `status` field, elapsed, ETA.
    description None: each task shows its own description (several tasks in one bar)."""
    label = TextColumn(f"[bold]{description}" if description is not None else "[bold]{task.description}")
    return Progress(label, BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled)


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_summary(title: str, rows: Mapping[str, Any], console: Console | None = None) -> None:
    """Two-column table metric | value; nested values (dicts, lists) are left out. Values may be preformatted
    strings."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        if isinstance(value, (dict, list)):
            continue
        table.add_row(str(key), format_value(value))
    (console or Console()).print(table)
