"""The ``kubetrade`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console

from kubetrade.settings import quiet_environment
from kubetrade.spec import ManifestError, TradingBot, load_bot

console = Console(stderr=True)


def _load(path: Path) -> TradingBot:
    try:
        return load_bot(path)
    except ManifestError as error:
        console.print(f"[red]{error}[/red]")
        raise SystemExit(2) from None


@click.group()
@click.version_option(package_name="kubetrade")
def main() -> None:
    """Kubernetes-native machine-learning crypto trading bots."""
    quiet_environment()


@main.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def check(manifest: Path) -> None:
    """Validate a TradingBot manifest; every bad field is named."""
    bot = _load(manifest)
    console.print(f"[green]{manifest}: valid TradingBot {bot.key}[/green]")


@main.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--data",
    "data_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Replay this candle file instead of the bot's own source.",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/run"),
    show_default=True,
)
@click.option("--nats-url", help="Use this NATS server instead of an embedded one.")
@click.option("--database-url", help="Use this PostgreSQL/TimescaleDB instead of an embedded one.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=1800.0,
    show_default=True,
    help="Give up after this many seconds.",
)
@click.option(
    "--trace-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write every span of every worker to this JSON-lines file.",
)
def run(
    manifest: Path,
    data_file: Path | None,
    report_dir: Path,
    nats_url: str | None,
    database_url: str | None,
    timeout_s: float,
    trace_file: Path | None,
) -> None:
    """Run a bot on this machine: feed, inference and executor as local processes."""
    from kubetrade.runner import RunError, RunOptions, run_bot

    bot = _load(manifest)
    options = RunOptions(
        data_file=data_file,
        report_dir=report_dir,
        nats_url=nats_url,
        database_url=database_url,
        timeout_s=timeout_s,
        trace_file=trace_file,
    )
    try:
        run_bot(bot, options, Console())
    except RunError as error:
        console.print(f"[red]run failed: {error}[/red]")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every process and server was stopped[/yellow]")
        raise SystemExit(130) from None


@main.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--data",
    "data_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Candle file to test on (default: the bot's own source).",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/backtest"),
    show_default=True,
)
def backtest(manifest: Path, data_file: Path | None, report_dir: Path) -> None:
    """Backtest a bot in-process with the same features, model, strategy, risk and broker."""
    from kubetrade.backtest import run_backtest
    from kubetrade.report import build_report, write_report
    from kubetrade.serving.model import OnnxPredictor
    from kubetrade.workers.sources import load_source_candles

    bot = _load(manifest)
    predictor = OnnxPredictor.load(bot.spec.model.name, bot.spec.model.version)
    candles = load_source_candles(bot, str(data_file) if data_file else None)
    result = run_backtest(bot, candles, predictor)
    report = build_report(
        bot,
        candles=result.candles,
        signals=result.signals,
        orders=len(result.orders),
        fills=result.fills,
        equity=result.equity,
    )
    write_report(report, result.fills, result.equity, report_dir, Console())


@main.group()
def worker() -> None:
    """Worker processes (the commands of the rendered containers)."""


@worker.command()
def feed() -> None:
    """Publish closed candles to NATS and the database."""
    from kubetrade.workers.feed import cli

    cli()


@worker.command()
def executor() -> None:
    """Turn signals into orders and fills; the database is the ledger."""
    from kubetrade.workers.executor import cli

    cli()


@worker.command()
def inference() -> None:
    """Serve the model over HTTP (BentoML) and bridge candles to signals over NATS."""
    from kubetrade.serving.service import serve_command

    command = serve_command()
    sys.stdout.flush()
    # exec: the container's PID 1 becomes bentoml itself, so SIGTERM reaches it directly.
    os.execvp(command[0], command)


def _attach_training() -> None:
    from kubetrade.onnx_export.cli import export, model, train, validate

    for command in (train, validate, export, model):
        main.add_command(command)


_attach_training()
