"""What the research commands show: progress while they work, tables when they are done."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from kubetrade.onnx_export.pipeline import TrainResult

console = Console(stderr=True)


def spinner() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def metrics_rows(table: Table, metrics: dict[str, Any]) -> None:
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "mcc", "log_loss"):
        value = metrics.get(key)
        table.add_row(key, "n/a" if value is None else f"{value:.4f}")


def train_summary(result: TrainResult) -> Table:
    meta = result.record.metadata
    table = Table(title=f"model {result.record.tag} ({meta.model_type})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("symbols", ", ".join(meta.training.symbols) + f" ({meta.training.timeframe})")
    table.add_row("rows (train / test)", f"{meta.training.train_rows} / {meta.training.test_rows}")
    table.add_row(
        "up rate (train / test)",
        f"{result.train_balance.up_rate:.1%} / {result.test_balance.up_rate:.1%}",
    )
    table.add_row("label", json.dumps(meta.label.model_dump(exclude_none=True)))
    table.add_row("window", str(meta.window))
    table.add_row("features", f"{len(meta.feature_names)} (hash {meta.feature_hash[:12]})")
    metrics_rows(table, result.metrics.to_dict())
    table.add_row("ONNX parity (max |diff|)", f"{result.parity_max_abs_diff:.2e}")
    table.add_row("training time", f"{result.train_seconds:.2f} s")
    table.add_row("total time", f"{result.total_seconds:.2f} s")
    table.add_row("stored at", str(result.record.path))
    return table
