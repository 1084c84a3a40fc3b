"""The ``kubetrade`` command line.

Every command reports an error of ours (:class:`~kubetrade.errors.KubetradeError`) as one
message on stderr and exits with its branch's code (the epilog of ``kubetrade --help`` lists
them); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.decorators import FC
from rich.console import Console

from kubetrade.errors import ROOT_AND_BRANCHES, KubetradeError, exit_code
from kubetrade.settings import quiet_environment
from kubetrade.spec import load_bot, load_bots

console = Console(stderr=True)

EXIT_CODES_EPILOG = (
    "\b\nExit codes:\n  0    done\n"
    + "".join(f"  {branch.exit_code}    {branch.what}\n" for branch in ROOT_AND_BRANCHES)
    + "  130  interrupted (Ctrl-C); every process and server started was stopped"
)

# Options that several commands share, stacked on each command like any other option.
MANIFEST = click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
DATA = click.option(
    "--data",
    "data_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Replay this candle file instead of the bot's own source.",
)


IN_SAMPLE = click.option(
    "--in-sample",
    is_flag=True,
    help="Also trade the candles inside the model's training period (the figures are then "
    "in-sample, and the report says so first). By default a replay starts after it.",
)


def report_dir_option(default: str) -> Callable[[FC], FC]:
    """``--report-dir`` with the command's own default directory."""
    return click.option(
        "--report-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(default),
        show_default=True,
    )


def error_line(command: str, error: KubetradeError) -> str:
    """What the command line prints for one of our errors: the command, then the message."""
    return f"kubetrade {command}: {error}"


class Commands(click.Group):
    """The command group: turns an error of ours into its message and its branch's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the chosen command; a KubetradeError ends the process with its exit code."""
        try:
            return super().invoke(ctx)
        except KubetradeError as error:
            # No markup (messages hold brackets) and no wrapping: one message, as written.
            console.print(
                error_line(ctx.invoked_subcommand or str(ctx.info_name), error),
                style="red",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            ctx.exit(exit_code(error))


@click.group(cls=Commands, epilog=EXIT_CODES_EPILOG)
@click.version_option(package_name="kubetrade")
def main() -> None:
    """Kubernetes-native machine-learning crypto trading bots."""
    quiet_environment()


@main.command()
@click.argument("manifest", type=click.Path(exists=True, path_type=Path))
def check(manifest: Path) -> None:
    """Validate TradingBot manifests: a file (every bot in it) or a directory's *.yaml files;
    every bad field of every bot is named."""
    for bot in load_bots(manifest):
        console.print(f"{manifest}: valid TradingBot {bot.key}", style="green", markup=False)


@main.command()
def strategies() -> None:
    """List the strategies spec.strategy.type can name: the built-ins and those installed
    packages register (entry-point group kubetrade.strategies)."""
    from rich.table import Table

    from kubetrade.strategies import available

    table = Table("type", "from", "model", "what it does")
    for info in available():
        model = "needs one" if info.needs_model else "none"
        table.add_row(info.name, info.source, model, info.problem or info.summary)
    Console(soft_wrap=True).print(table)


@main.command()
@MANIFEST
@DATA
@IN_SAMPLE
@report_dir_option("reports/run")
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
    in_sample: bool,
    report_dir: Path,
    nats_url: str | None,
    database_url: str | None,
    timeout_s: float,
    trace_file: Path | None,
) -> None:
    """Run a bot on this machine: feed, inference and executor as local processes."""
    from kubetrade.backtest import bot_sample_plan, trading_in_sample
    from kubetrade.runner import RunOptions, run_bot

    bot = load_bot(manifest)
    if in_sample:
        bot = trading_in_sample(bot)  # the workers read it from the bot's config
    source = str(data_file) if data_file else None
    options = RunOptions(
        sample=bot_sample_plan(bot, source),
        data_file=data_file,
        report_dir=report_dir,
        nats_url=nats_url,
        database_url=database_url,
        timeout_s=timeout_s,
        trace_file=trace_file,
    )
    try:
        run_bot(bot, options, Console())
    except KeyboardInterrupt as interrupt:
        console.print("[yellow]interrupted: every process and server was stopped[/yellow]")
        # 128 + the signal, as a shell reports it: 130 for Ctrl-C, 143 for SIGTERM.
        raise SystemExit(128 + getattr(interrupt, "signum", 2)) from None


@main.command()
@MANIFEST
@DATA
@IN_SAMPLE
@report_dir_option("reports/backtest")
def backtest(manifest: Path, data_file: Path | None, in_sample: bool, report_dir: Path) -> None:
    """Backtest a bot in-process with the same features, model, strategy, risk and broker;
    out of sample unless --in-sample."""
    from kubetrade.backtest import bot_sample_plan, run_backtest, trading_in_sample
    from kubetrade.market.sources import load_source_candles
    from kubetrade.modelstore.predictor import OnnxPredictor
    from kubetrade.report import backtest_report
    from kubetrade.signals import withheld_period

    bot = load_bot(manifest)
    if in_sample:
        bot = trading_in_sample(bot)
    model = bot.spec.model
    predictor = None if model is None else OnnxPredictor.load(model.name, model.version)
    source = str(data_file) if data_file else None
    metadata = None if predictor is None else predictor.metadata
    sample = bot_sample_plan(bot, source, lambda _: metadata)
    candles = load_source_candles(bot, source)
    if sample is not None:
        candles = sample.select(candles, source or str(bot.spec.exchange.uri))
    result = run_backtest(bot, candles, predictor, withheld_period(bot, predictor, source))
    backtest_report(bot, result, candles, sample, report_dir, Console())


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


@main.command("operator")
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    envvar="KUBETRADE_WATCH_NAMESPACES",
    help="Watch only these namespaces (repeat; env: space-separated). Default: all.",
)
@click.option(
    "--nats-url", envvar="KUBETRADE_NATS_URL", help="NATS for bot status and control commands."
)
@click.option(
    "--bot-nats-url",
    envvar="KUBETRADE_BOT_NATS_URL",
    help="NATS URL the bots' pods use (default: --nats-url).",
)
@click.option("--image", envvar="KUBETRADE_BOT_IMAGE", help="Image of the bots' workers.")
@click.option(
    "--image-pull-policy", envvar="KUBETRADE_BOT_IMAGE_PULL_POLICY", default="IfNotPresent"
)
@click.option(
    "--database-secret",
    envvar="KUBETRADE_DATABASE_SECRET",
    default="kubetrade-database",
    show_default=True,
    help="Secret with the database URL, in each bot's namespace.",
)
@click.option(
    "--database-secret-key",
    envvar="KUBETRADE_DATABASE_SECRET_KEY",
    default="uri",
    show_default=True,
    help="Key of the URL in that Secret (CloudNativePG's <cluster>-app Secret: uri).",
)
@click.option(
    "--bot-nats-auth",
    envvar="KUBETRADE_BOT_NATS_AUTH",
    type=click.Choice(["password", "nkey", "creds"]),
    help="How each bot's pods authenticate to NATS, from the bot's Secret (default: not at all).",
)
@click.option(
    "--bot-nats-secret",
    envvar="KUBETRADE_BOT_NATS_SECRET",
    default="{bot}-nats",
    show_default=True,
    help="That Secret, in the bot's namespace ({bot}: the bot's name). See k8s/nats-auth.md.",
)
@click.option(
    "--bot-nats-tls-secret",
    envvar="KUBETRADE_BOT_NATS_TLS_SECRET",
    help="Secret with ca.crt (and tls.crt/tls.key) for NATS TLS, in each bot's namespace.",
)
@click.option("--bot-otlp-endpoint", envvar="KUBETRADE_BOT_OTLP_ENDPOINT", help="OTLP for bots.")
@click.option("--model-store", envvar="KUBETRADE_MODEL_STORE", help="BENTOML_HOME of inference.")
@click.option("--model-store-claim", envvar="KUBETRADE_MODEL_STORE_CLAIM", help="Its PVC.")
@click.option("--metrics-host", default="0.0.0.0", envvar="KUBETRADE_METRICS_HOST")
@click.option("--metrics-port", type=int, default=9090, envvar="KUBETRADE_METRICS_PORT")
@click.option(
    "--liveness",
    default="http://0.0.0.0:8080/healthz",
    envvar="KUBETRADE_LIVENESS_ENDPOINT",
    show_default=True,
    help="kopf's liveness endpoint.",
)
@click.option(
    "--status-interval",
    type=float,
    default=5.0,
    envvar="KUBETRADE_STATUS_INTERVAL",
    show_default=True,
    help="Seconds between writes of one bot's trading figures.",
)
@click.option("--heartbeat-timeout", type=float, default=10.0, envvar="KUBETRADE_HEARTBEAT_TIMEOUT")
@click.option(
    "--finalizer-timeout",
    type=float,
    default=60.0,
    envvar="KUBETRADE_FINALIZER_TIMEOUT",
    show_default=True,
    help="Seconds a deletion waits for positions to flatten.",
)
@click.option(
    "--resync-interval",
    type=float,
    default=60.0,
    envvar="KUBETRADE_RESYNC_INTERVAL",
    show_default=True,
    help="Seconds between reads of every owned object (restores drift no watch event showed).",
)
@click.option("--log-level", default="INFO", envvar="KUBETRADE_LOG_LEVEL")
def operator_command(
    namespaces: tuple[str, ...],
    nats_url: str | None,
    bot_nats_url: str | None,
    image: str | None,
    image_pull_policy: str,
    database_secret: str,
    database_secret_key: str,
    bot_nats_auth: str | None,
    bot_nats_secret: str,
    bot_nats_tls_secret: str | None,
    bot_otlp_endpoint: str | None,
    model_store: str | None,
    model_store_claim: str | None,
    metrics_host: str,
    metrics_port: int,
    liveness: str,
    status_interval: float,
    heartbeat_timeout: float,
    finalizer_timeout: float,
    resync_interval: float,
    log_level: str,
) -> None:
    """Run the TradingBot operator (kopf): one replica per cluster."""
    from kubetrade.operator.main import OperatorOptions, run_operator

    options = OperatorOptions(
        namespaces=tuple(n for ns in namespaces for n in ns.replace(",", " ").split()),
        nats_url=nats_url,
        bot_nats_url=bot_nats_url,
        image=image,
        image_pull_policy=image_pull_policy,
        database_secret=database_secret,
        database_secret_key=database_secret_key,
        bot_nats_auth=bot_nats_auth,
        bot_nats_secret=bot_nats_secret,
        bot_nats_tls_secret=bot_nats_tls_secret,
        bot_otlp_endpoint=bot_otlp_endpoint,
        model_store=model_store,
        model_store_claim=model_store_claim,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        liveness=liveness or None,
        status_interval=status_interval,
        heartbeat_timeout=heartbeat_timeout,
        finalizer_timeout=finalizer_timeout,
        resync_interval=resync_interval,
        log_level=log_level,
    )
    run_operator(options)
