"""Research commands: ``kubetrade train``, ``validate``, ``export`` and ``model list|show|promote|
export``.

Heavy imports (xgboost, torch, onnxmltools, bentoml) happen inside the commands: the kubetrade
CLI loads this module for every command.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import pandas as pd
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

from kubetrade.onnx_export.sources import database_frames, file_frames, synthetic_frames
from kubetrade.settings import quiet_environment

if TYPE_CHECKING:
    from kubetrade.modelstore.registry import ModelRecord
    from kubetrade.onnx_export.dataset import LabelSpec
    from kubetrade.onnx_export.models.base import ModelConfig
    from kubetrade.onnx_export.pipeline import TrainResult

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_SYMBOLS = "BTC/USDT,ETH/USDT,SOL/USDT"
# Synthetic defaults: enough candles per symbol for ~30k training rows across the three
# symbols, trained in seconds; a seed apart from the demo bot's (7) so the model is judged on
# candles it never saw.
DEFAULT_CANDLES = 10_000
DEFAULT_SEED = 1
MODEL_KINDS = ("xgboost", "lstm", "transformer", "ensemble")


def _apply(options: list[Callable[[F], F]], function: F) -> F:
    for option in reversed(options):
        function = option(function)
    return function


def source_options(function: F) -> F:
    """--data FILE | --synthetic | --database URL --bot NS/NAME, and the timeframe."""
    return _apply(
        [
            click.option(
                "--data",
                "data_file",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="Candle file (CSV or Parquet: Binance, ccxt or CryptoDataDownload layout).",
            ),
            click.option("--synthetic", is_flag=True, help="Candles from the synthetic generator."),
            click.option(
                "--database",
                "database_url",
                help="PostgreSQL URL: train on the candles a bot's feed stored (needs --bot).",
            ),
            click.option("--bot", "bot_key", help="With --database: the bot, as namespace/name."),
            click.option(
                "--symbols",
                default=DEFAULT_SYMBOLS,
                show_default=True,
                help="Comma-separated symbols for --synthetic (and a filter for --database).",
            ),
            click.option(
                "--candles",
                type=click.IntRange(min=100),
                default=DEFAULT_CANDLES,
                show_default=True,
                help="Candles per symbol for --synthetic.",
            ),
            click.option(
                "--seed",
                type=int,
                default=DEFAULT_SEED,
                show_default=True,
                help="Generator seed for --synthetic.",
            ),
            click.option("--timeframe", default="1h", show_default=True, help="Candle timeframe."),
        ],
        function,
    )


def label_options(function: F) -> F:
    """The label definition."""
    return _apply(
        [
            click.option(
                "--label",
                "label_kind",
                type=click.Choice(["forward-return", "triple-barrier"]),
                default="forward-return",
                show_default=True,
                help="Forward return over the horizon, or the first barrier touched.",
            ),
            click.option(
                "--horizon",
                type=click.IntRange(min=1),
                default=4,
                show_default=True,
                help="Candles the label looks ahead.",
            ),
            click.option(
                "--threshold",
                type=float,
                default=0.0,
                show_default=True,
                help="Forward return above this fraction counts as up.",
            ),
            click.option(
                "--dead-zone",
                type=click.FloatRange(min=0),
                default=0.0,
                show_default=True,
                help="Drop rows whose forward return is within this of the threshold.",
            ),
            click.option(
                "--take-profit",
                type=click.FloatRange(min=0, min_open=True),
                default=1.0,
                show_default=True,
                help="Triple barrier: upper barrier in sigmas over the horizon.",
            ),
            click.option(
                "--stop-loss",
                type=click.FloatRange(min=0, min_open=True),
                default=1.0,
                show_default=True,
                help="Triple barrier: lower barrier in sigmas over the horizon.",
            ),
        ],
        function,
    )


def model_options(function: F) -> F:
    """Model kind and its main settings."""
    return _apply(
        [
            click.option(
                "--model",
                "model_kind",
                type=click.Choice(MODEL_KINDS),
                default="xgboost",
                show_default=True,
                help="Model kind.",
            ),
            click.option(
                "--window",
                type=click.IntRange(min=2),
                default=24,
                show_default=True,
                help="LSTM/Transformer: feature rows per prediction.",
            ),
            click.option(
                "--epochs",
                type=click.IntRange(min=1),
                default=6,
                show_default=True,
                help="LSTM/Transformer: training epochs.",
            ),
            click.option(
                "--hidden",
                type=click.IntRange(min=4),
                default=32,
                show_default=True,
                help="LSTM/Transformer: hidden size.",
            ),
            click.option(
                "--trees",
                type=click.IntRange(min=1),
                default=200,
                show_default=True,
                help="XGBoost: boosting rounds.",
            ),
            click.option(
                "--max-depth",
                type=click.IntRange(min=1),
                default=4,
                show_default=True,
                help="XGBoost: tree depth.",
            ),
            click.option(
                "--members",
                default="xgboost,lstm",
                show_default=True,
                help="Ensemble: comma-separated member kinds.",
            ),
            click.option(
                "--ensemble-method",
                type=click.Choice(["stacked", "average"]),
                default="stacked",
                show_default=True,
                help="Ensemble: logistic meta-model on out-of-fold predictions, or mean.",
            ),
            click.option(
                "--model-seed", type=int, default=7, show_default=True, help="Training seed."
            ),
        ],
        function,
    )


def load_frames(options: dict[str, Any]) -> tuple[dict[str, pd.DataFrame], str]:
    """The candles the source options name, per symbol, and a description of the source."""
    data_file: Path | None = options["data_file"]
    database_url: str | None = options["database_url"]
    chosen = [s.strip() for s in str(options["symbols"]).split(",") if s.strip()]
    given = sum((data_file is not None, bool(options["synthetic"]), database_url is not None))
    if given != 1:
        raise click.UsageError("give exactly one of --data FILE, --synthetic or --database URL")
    timeframe = str(options["timeframe"])
    if data_file is not None:
        return file_frames(data_file, timeframe), str(data_file)
    if database_url is not None:
        bot = options["bot_key"]
        if not bot:
            raise click.UsageError("--database needs --bot NAMESPACE/NAME")
        explicit = options["symbols"] != DEFAULT_SYMBOLS
        frames = database_frames(database_url, bot, timeframe, chosen if explicit else None)
        return frames, f"database(bot={bot})"
    seed, candles = int(options["seed"]), int(options["candles"])
    frames = synthetic_frames(chosen, timeframe, candles, seed)
    return frames, f"synthetic(seed={seed}, candles={candles})"


def label_spec(options: dict[str, Any]) -> LabelSpec:
    """The LabelSpec of the label options."""
    from kubetrade.onnx_export.dataset import LabelSpec

    return LabelSpec(
        kind=str(options["label_kind"]).replace("-", "_"),
        horizon=int(options["horizon"]),
        threshold=float(options["threshold"]),
        dead_zone=float(options["dead_zone"]),
        take_profit=float(options["take_profit"]),
        stop_loss=float(options["stop_loss"]),
    )


def model_config(options: dict[str, Any], kind: str | None = None) -> ModelConfig:
    """The model config of the model options (``kind`` overrides ``--model``)."""
    from kubetrade.onnx_export.models.boosted import XGBoostParams

    kind = kind or str(options["model_kind"])
    seed = int(options["model_seed"])
    if kind == "xgboost":
        return XGBoostParams(
            n_estimators=int(options["trees"]), max_depth=int(options["max_depth"]), seed=seed
        )
    if kind in ("lstm", "transformer"):
        from kubetrade.onnx_export.models.factory import neural_module

        config: ModelConfig = neural_module().NeuralParams(
            kind=kind,
            window=int(options["window"]),
            epochs=int(options["epochs"]),
            hidden=int(options["hidden"]),
            seed=seed,
        )
        return config
    from kubetrade.onnx_export.models.ensemble import EnsembleParams

    members = [m.strip() for m in str(options["members"]).split(",") if m.strip()]
    if "ensemble" in members or any(m not in MODEL_KINDS for m in members):
        raise click.UsageError(
            f"--members {options['members']!r}: use xgboost, lstm or transformer, e.g. xgboost,lstm"
        )
    return EnsembleParams(
        members=tuple(model_config(options, m) for m in members),
        method=str(options["ensemble_method"]),
    )


@contextmanager
def _failures(what: str) -> Iterator[None]:
    """Known failures as one red line and exit code 1, instead of a traceback."""
    from kubetrade.modelstore.registry import ModelNotFoundError, RegistryError
    from kubetrade.onnx_export.export import ParityError
    from kubetrade.onnx_export.models.factory import TorchMissingError

    try:
        yield
    except (
        ValueError,
        FileNotFoundError,
        ParityError,
        RegistryError,
        ModelNotFoundError,
        TorchMissingError,
        ImportError,
    ) as error:
        console.print(f"[red]{what} failed: {error}[/red]")
        raise SystemExit(1) from None


def _spinner() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _metrics_rows(table: Table, metrics: dict[str, Any]) -> None:
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "mcc", "log_loss"):
        value = metrics.get(key)
        table.add_row(key, "n/a" if value is None else f"{value:.4f}")


def _summary(result: TrainResult) -> Table:
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
    _metrics_rows(table, result.metrics.to_dict())
    table.add_row("ONNX parity (max |diff|)", f"{result.parity_max_abs_diff:.2e}")
    table.add_row("training time", f"{result.train_seconds:.2f} s")
    table.add_row("total time", f"{result.total_seconds:.2f} s")
    table.add_row("stored at", str(result.record.path))
    return table


@click.command()
@source_options
@label_options
@model_options
@click.option("--name", help="Model name in the registry.")
@click.option(
    "--version", help="Model version (default: a new unique one; `latest` then names it)."
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0.05, 0.5),
    default=0.2,
    show_default=True,
    help="Latest share of rows held out for scoring and the parity check.",
)
@click.option(
    "--checkpoint",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also save the native model here, for `kubetrade export` later.",
)
@click.option("--no-register", is_flag=True, help="Only save the checkpoint (needs --checkpoint).")
@click.option("--promote", is_flag=True, help="Promote the new version to `latest`.")
def train(**options: Any) -> None:
    """Train a model (XGBoost, LSTM, Transformer or ensemble), export it to ONNX with a parity
    check and register it."""
    quiet_environment()
    from kubetrade.modelstore.registry import promote
    from kubetrade.onnx_export.pipeline import (
        TrainConfig,
        TrainResult,
        fit_checkpoint,
        register_checkpoint,
    )

    name: str | None = options["name"]
    checkpoint_dir: Path | None = options["checkpoint"]
    if options["no_register"] and checkpoint_dir is None:
        raise click.UsageError("--no-register needs --checkpoint DIR (or nothing is kept)")
    if not options["no_register"] and not name:
        raise click.UsageError("give --name NAME to register the model")
    started = time.perf_counter()
    with _failures("train"), _spinner() as progress:
        task = progress.add_task("loading candles")
        frames, source = load_frames(options)
        config = TrainConfig(
            name=name or "unregistered",
            version=options["version"],
            timeframe=str(options["timeframe"]),
            source=source,
            label=label_spec(options),
            model=model_config(options),
            test_fraction=float(options["test_fraction"]),
        )
        fitted = fit_checkpoint(
            frames, config, lambda step: progress.update(task, description=step)
        )
        if checkpoint_dir is not None:
            fitted.checkpoint.save(checkpoint_dir)
            console.print(f"checkpoint saved to {checkpoint_dir}")
        if options["no_register"]:
            return
        progress.update(task, description="exporting to ONNX, checking parity, registering")
        record = register_checkpoint(fitted.checkpoint, config.name, config.version)
        if options["promote"]:
            promote(record.name, record.version)
    result = TrainResult.of(fitted, record, started)
    console.print(_summary(result))


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name in the registry.")
@click.option("--version", help="Model version (default: a new unique one).")
@click.option("--promote", is_flag=True, help="Promote the new version to `latest`.")
def export(checkpoint: Path, name: str, version: str | None, promote: bool) -> None:
    """Export a checkpoint saved by `kubetrade train --checkpoint` to ONNX (parity checked on
    its held-out rows) and register it."""
    quiet_environment()
    from kubetrade.modelstore import registry
    from kubetrade.onnx_export.pipeline import Checkpoint, register_checkpoint

    with _failures("export"), _spinner() as progress:
        progress.add_task(f"exporting {checkpoint}")
        record = register_checkpoint(Checkpoint.load(checkpoint), name, version)
        if promote:
            registry.promote(record.name, record.version)
    meta = record.metadata
    console.print(
        f"[green]registered {record.tag} ({meta.model_type}, window {meta.window}); parity "
        f"max |diff| {meta.parity_max_abs_diff:.2e} on {meta.parity_rows} rows[/green]"
    )


@click.command()
@source_options
@label_options
@model_options
@click.option(
    "--train",
    "train_size",
    default="4000",
    show_default=True,
    help="Training window: candles (4000) or a duration (180d).",
)
@click.option(
    "--test", "test_size", default="1000", show_default=True, help="Test window, likewise."
)
@click.option("--step", "step_size", help="Step between folds, likewise (default: the test size).")
@click.option(
    "--mode",
    type=click.Choice(["rolling", "expanding"]),
    default="rolling",
    show_default=True,
    help="Rolling: the last --train before each test window; expanding: all since the start.",
)
@click.option(
    "--trading-bot",
    "bot_manifest",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TradingBot manifest whose strategy, risk and execution the fold backtests use.",
)
@click.option(
    "--trials",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Optuna trials (0: no search), scored on the earlier folds only.",
)
@click.option(
    "--search-share",
    type=click.FloatRange(0.1, 0.9),
    default=0.5,
    show_default=True,
    help="Share of the folds (the earliest) the search validates on.",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/validate"),
    show_default=True,
)
def validate(**options: Any) -> None:
    """Walk-forward validation: a fresh fit per fold, classification and backtest figures per
    fold, a JSON and HTML report."""
    quiet_environment()
    from kubetrade.onnx_export.walkforward import (
        WalkForwardConfig,
        plan_folds,
        walk_forward,
        with_model,
    )
    from kubetrade.onnx_export.wf_report import write_report
    from kubetrade.spec import load_bot

    with _failures("validate"):
        bot = load_bot(options["bot_manifest"]) if options["bot_manifest"] else None
        frames, source = load_frames(options)
        config = WalkForwardConfig(
            model=model_config(options),
            timeframe=str(options["timeframe"]),
            train=options["train_size"],
            test=options["test_size"],
            step=options["step_size"],
            mode=options["mode"],
            label=label_spec(options),
        )
        first = min(int(f["open_time"].iloc[0]) for f in frames.values())
        last = max(int(f["open_time"].iloc[-1]) for f in frames.values())
        folds = plan_folds(first, last, config)
        extra: dict[str, Any] = {"source": source}
        with _bar() as progress:
            if options["trials"]:
                from kubetrade.onnx_export.search import search

                cut = max(1, int(len(folds) * float(options["search_share"])))
                if cut >= len(folds):
                    raise ValueError(
                        f"{len(folds)} folds leave none for reporting after the search; use "
                        "more candles or a lower --search-share"
                    )
                task = progress.add_task("searching", total=int(options["trials"]))
                found = search(
                    frames,
                    config,
                    folds[:cut],
                    int(options["trials"]),
                    seed=int(options["model_seed"]),
                    progress=lambda done, _: progress.update(task, completed=done),
                )
                config = with_model(config, found.best)
                extra["search"] = found.to_dict()
                folds = folds[cut:]
            task = progress.add_task("walk-forward folds", total=len(folds))
            result = walk_forward(
                frames,
                config,
                bot,
                progress=lambda done, _: progress.update(task, completed=done),
                folds=folds,
            )
        paths = write_report(result, Path(options["report_dir"]), extra)
    aggregate = result.aggregate()
    table = Table(title=f"walk-forward: {config.model.kind}, {len(result.folds)} folds")
    table.add_column("figure", style="bold")
    table.add_column("value")
    _metrics_rows(table, aggregate["pooled_metrics"])
    for key, value in aggregate["trading"].items():
        table.add_row(key, "n/a" if value is None else f"{value:.4g}")
    console.print(table)
    console.print(f"report: {paths['html']} (data: {paths['json']})")


@click.group()
def model() -> None:
    """Registered models: list, show, promote, export."""
    quiet_environment()


def _split_tag(tag: str, version: str | None) -> tuple[str, str]:
    name, _, tagged = tag.partition(":")
    return name, version or tagged or "latest"


@model.command("list")
@click.argument("name", required=False)
def list_command(name: str | None) -> None:
    """Every registered version (of NAME), oldest first; * marks the promoted one."""
    from kubetrade.modelstore.registry import list_models, promoted_version

    with _failures("model list"):
        records = list_models(name)
    table = Table(title="registered models")
    for column in ("model", "version", "type", "window", "ROC AUC", "parity", "created"):
        table.add_column(column)
    promoted = {r.name: promoted_version(r.name) for r in records}
    for record in records:
        meta = record.metadata
        auc = meta.metrics.get("roc_auc")
        mark = " *" if promoted[record.name] == record.version else ""
        table.add_row(
            record.name,
            record.version + mark,
            meta.model_type,
            str(meta.window),
            "n/a" if auc is None else f"{auc:.4f}",
            f"{meta.parity_max_abs_diff:.1e}",
            record.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    Console().print(table)


def _record(tag: str, version: str | None) -> ModelRecord:
    from kubetrade.modelstore.registry import resolve

    name, chosen = _split_tag(tag, version)
    return resolve(name, chosen)


@model.command("show")
@click.argument("tag")
@click.option("--version", help="Version (default: the one `latest` names).")
def show_command(tag: str, version: str | None) -> None:
    """The metadata of NAME[:VERSION] as JSON."""
    with _failures("model show"):
        record = _record(tag, version)
    document = {
        "name": record.name,
        "version": record.version,
        "path": str(record.path),
        **record.metadata.model_dump(mode="json", exclude={"feature_spec"}),
    }
    click.echo(json.dumps(document, indent=2))


@model.command("promote")
@click.argument("tag")
@click.option("--version", help="Version to promote (or NAME:VERSION).")
def promote_command(tag: str, version: str | None) -> None:
    """Make NAME:VERSION the version bots asking for `latest` get."""
    from kubetrade.modelstore.registry import promote

    name, chosen = _split_tag(tag, version)
    if chosen == "latest":
        raise click.UsageError("name the version to promote: NAME:VERSION or --version")
    with _failures("model promote"):
        record = promote(name, chosen)
    console.print(f"[green]{record.tag} is now {name}:latest[/green]")


@model.command("export")
@click.argument("tag")
@click.option("--version", help="Version (default: the one `latest` names).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for model.onnx and metadata.json.",
)
def export_command(tag: str, version: str | None, out: Path) -> None:
    """Copy the ONNX file and metadata of NAME[:VERSION] out of the store."""
    from kubetrade.modelstore.registry import export_files

    name, chosen = _split_tag(tag, version)
    with _failures("model export"):
        paths = export_files(name, chosen, out)
    for path in paths:
        click.echo(str(path))
