"""``kubetrade train``: candles from a file or the synthetic generator, to a registered model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import pandas as pd
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from kubetrade.settings import quiet_environment

if TYPE_CHECKING:
    # Imported lazily below: the kubetrade CLI loads this module for every command, and the
    # training stack (xgboost, onnxmltools) is only needed by `train`.
    from kubetrade.onnx_export.pipeline import TrainResult

console = Console(stderr=True)

DEFAULT_SYMBOLS = "BTC/USDT,ETH/USDT,SOL/USDT"
# Synthetic defaults: enough candles per symbol for ~30k training rows across the three
# symbols, trained in seconds; a seed apart from the demo bot's (7) so the model is judged on
# candles it never saw.
DEFAULT_CANDLES = 10_000
DEFAULT_SEED = 1


def frames_by_symbol(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One candle frame per symbol of a multi-symbol candle frame, order kept."""
    return {
        str(symbol): part.reset_index(drop=True)
        for symbol, part in frame.groupby("symbol", sort=False)
    }


def _file_frames(path: Path, timeframe: str) -> dict[str, pd.DataFrame]:
    from kubetrade.market.loaders import load_candles

    return frames_by_symbol(load_candles(path, timeframe=timeframe))


def _synthetic_frames(
    symbols: list[str], timeframe: str, candles: int, seed: int
) -> dict[str, pd.DataFrame]:
    from kubetrade.market.synthetic import generate

    return frames_by_symbol(generate(symbols, timeframe, candles, seed))


def _summary(result: TrainResult) -> Table:
    meta = result.record.metadata
    table = Table(title=f"model {result.record.tag}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    auc = result.metrics.roc_auc
    table.add_row("symbols", ", ".join(meta.training.symbols) + f" ({meta.training.timeframe})")
    table.add_row("rows (train / test)", f"{meta.training.train_rows} / {meta.training.test_rows}")
    table.add_row(
        "up rate (train / test)",
        f"{result.train_balance.up_rate:.1%} / {result.test_balance.up_rate:.1%}",
    )
    table.add_row("label", f"return over {meta.label.horizon} candles > {meta.label.threshold}")
    table.add_row("features", f"{len(meta.feature_names)} (hash {meta.feature_hash[:12]})")
    table.add_row("accuracy", f"{result.metrics.accuracy:.4f}")
    table.add_row("ROC AUC", "n/a (one class)" if auc is None else f"{auc:.4f}")
    table.add_row("log loss", f"{result.metrics.log_loss:.4f}")
    table.add_row("ONNX parity (max |diff|)", f"{result.parity_max_abs_diff:.2e}")
    table.add_row("training time", f"{result.train_seconds:.2f} s")
    table.add_row("total time", f"{result.total_seconds:.2f} s")
    table.add_row("stored at", str(result.record.path))
    return table


@click.command()
@click.option(
    "--data",
    "data_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Candle file (CSV or Parquet: Binance, ccxt or CryptoDataDownload layout).",
)
@click.option("--synthetic", is_flag=True, help="Train on candles from the synthetic generator.")
@click.option(
    "--symbols",
    default=DEFAULT_SYMBOLS,
    show_default=True,
    help="Comma-separated symbols for --synthetic.",
)
@click.option(
    "--candles",
    type=click.IntRange(min=100),
    default=DEFAULT_CANDLES,
    show_default=True,
    help="Candles per symbol for --synthetic.",
)
@click.option(
    "--seed",
    type=int,
    default=DEFAULT_SEED,
    show_default=True,
    help="Generator seed for --synthetic.",
)
@click.option("--timeframe", default="1h", show_default=True, help="Candle timeframe.")
@click.option("--name", required=True, help="Model name in the registry.")
@click.option(
    "--version", help="Model version (default: a new unique one; `latest` then names it)."
)
@click.option(
    "--horizon",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Label: forward return over this many candles...",
)
@click.option(
    "--threshold",
    type=float,
    default=0.0,
    show_default=True,
    help="...above this fraction counts as up.",
)
@click.option(
    "--dead-zone",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Drop rows whose forward return is within this of the threshold.",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0.05, 0.5),
    default=0.2,
    show_default=True,
    help="Latest share of rows held out for scoring.",
)
def train(
    *,
    data_file: Path | None,
    synthetic: bool,
    symbols: str,
    candles: int,
    seed: int,
    timeframe: str,
    name: str,
    version: str | None,
    horizon: int,
    threshold: float,
    dead_zone: float,
    test_fraction: float,
) -> None:
    """Train the baseline XGBoost model, export it to ONNX and register it."""
    quiet_environment()
    if (data_file is None) == (not synthetic):
        raise click.UsageError("give exactly one of --data FILE or --synthetic")
    from kubetrade.onnx_export.dataset import LabelSpec
    from kubetrade.onnx_export.export import ParityError
    from kubetrade.onnx_export.pipeline import TrainConfig, train_and_register
    from kubetrade.onnx_export.registry import RegistryError

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("loading candles")
        try:
            if data_file is not None:
                frames = _file_frames(data_file, timeframe)
                source = str(data_file)
            else:
                chosen = [s.strip() for s in symbols.split(",") if s.strip()]
                frames = _synthetic_frames(chosen, timeframe, candles, seed)
                source = f"synthetic(seed={seed}, candles={candles})"
            config = TrainConfig(
                name=name,
                version=version,
                timeframe=timeframe,
                source=source,
                label=LabelSpec(horizon=horizon, threshold=threshold, dead_zone=dead_zone),
                test_fraction=test_fraction,
            )
            result = train_and_register(
                frames, config, lambda step: progress.update(task, description=step)
            )
        except (ValueError, FileNotFoundError, ParityError, RegistryError) as error:
            console.print(f"[red]train failed: {error}[/red]")
            raise SystemExit(1) from None
    console.print(_summary(result))
