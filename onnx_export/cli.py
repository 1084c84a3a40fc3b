"""Research commands: ``kubetrade train``, ``validate``, ``export`` and ``model list|show|promote|
export``.

Their options live in ``options`` and what they print in ``display``. Heavy imports (xgboost,
torch, onnxmltools, bentoml) happen inside the commands: the kubetrade CLI loads this module
for every command. An error of ours propagates to the ``kubetrade`` command group, which prints
it as one message and exits with its branch's code (see ``kubetrade.errors``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from kubetrade.errors import InvalidInputError
from kubetrade.onnx_export.display import (
    console,
    metrics_rows,
    progress_bar,
    spinner,
    train_summary,
)
from kubetrade.onnx_export.options import (
    feature_options,
    feature_spec_of,
    label_options,
    label_spec,
    load_frames,
    model_config,
    model_options,
    source_options,
)
from kubetrade.settings import quiet_environment

if TYPE_CHECKING:
    from kubetrade.modelstore.registry import ModelRecord


@click.command()
@source_options
@feature_options
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
    features = feature_spec_of(options)  # a bad --features fails before any candle loads
    started = time.perf_counter()
    with spinner() as progress:
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
            feature_spec=features,
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
    console.print(train_summary(result))


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

    with spinner() as progress:
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
@feature_options
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
        feature_spec=feature_spec_of(options),
    )
    first = min(int(f["open_time"].iloc[0]) for f in frames.values())
    last = max(int(f["open_time"].iloc[-1]) for f in frames.values())
    folds = plan_folds(first, last, config)
    extra: dict[str, Any] = {"source": source}
    with progress_bar() as progress:
        if options["trials"]:
            from kubetrade.onnx_export.search import search

            cut = max(1, int(len(folds) * float(options["search_share"])))
            if cut >= len(folds):
                raise InvalidInputError(
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
    console.print(
        f"out-of-sample: {len(result.folds)} folds, each trading only its test window with a "
        "model fit on the candles before it; test windows do not overlap",
        style="green",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    table = Table(title=f"walk-forward: {config.model.kind}, {len(result.folds)} folds")
    table.add_column("figure", style="bold")
    table.add_column("value")
    metrics_rows(table, aggregate["pooled_metrics"])
    for key, value in aggregate["trading"].items():
        table.add_row(key, "n/a" if value is None else f"{value:.4g}")
    console.print(table)
    console.print(f"report: {paths['html']} (data: {paths['json']})")


@click.group()
def model() -> None:
    """Registered models: list, show, promote, export, image."""
    quiet_environment()


def _split_tag(tag: str, version: str | None) -> tuple[str, str]:
    name, _, tagged = tag.partition(":")
    return name, version or tagged or "latest"


@model.command("list")
@click.argument("name", required=False)
def list_command(name: str | None) -> None:
    """Every registered version (of NAME), oldest first; * marks the promoted one."""
    from kubetrade.modelstore.registry import list_models, promoted_version

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
    paths = export_files(name, chosen, out)
    for path in paths:
        click.echo(str(path))


@model.command("image")
@click.argument("tag")
@click.option("--version", help="Version (default: the one `latest` names).")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for the build context (Dockerfile and models/).",
)
@click.option(
    "--base",
    default=None,
    help="Base image of the model image: anything with cp (default: busybox).",
)
def image_command(tag: str, version: str | None, output: Path, base: str | None) -> None:
    """Write the build context of a model image (modelcar) holding NAME[:VERSION].

    Build and push it, then name it in the bot's spec.model.image: the inference pod copies
    the model out of it at start.
    """
    from kubetrade.modelstore.modelcar import DEFAULT_BASE, write_context

    name, chosen = _split_tag(tag, version)
    record, dockerfile = write_context(name, chosen, output, base or DEFAULT_BASE)
    click.echo(str(dockerfile))
    console.print(
        f"build and push it, e.g.:\n"
        f"  docker build -t REGISTRY/{record.name}:{record.version} {output}\n"
        f"  docker push REGISTRY/{record.name}:{record.version}\n"
        f"then in the TradingBot: model: {{name: {record.name}, version: "
        f'"{record.version}", image: REGISTRY/{record.name}:{record.version}}}'
    )
