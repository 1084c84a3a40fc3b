"""The research commands' shared options and what they mean: candle source, label, model.

``source_options``, ``label_options`` and ``model_options`` each add a group of options to a
command (``train`` and ``validate`` take all three); ``load_frames``, ``label_spec`` and
``model_config`` turn the chosen values into candles and configurations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import pandas as pd

from kubetrade.onnx_export.sources import database_frames, file_frames, synthetic_frames

if TYPE_CHECKING:
    from kubetrade.features import FeatureSpec
    from kubetrade.onnx_export.dataset import LabelSpec
    from kubetrade.onnx_export.models.base import ModelConfig

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
            click.option(
                "--symbol",
                help="With --data: the market (BASE/QUOTE) of a file without a symbol column "
                "(a ccxt export), or the one to take from a file with several.",
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


def feature_options(function: F) -> F:
    """--features: which registry features the model is trained on."""
    return click.option(
        "--features",
        "features",
        metavar="FILE|LIST",
        help="Features to train on (default: every registry group with its defaults): a list "
        "such as 'sma(window=30),rsi(windows=[14]),log_return' or a YAML/JSON file of one. "
        "The model carries the choice; inference computes exactly those features.",
    )(function)


def feature_spec_of(options: dict[str, Any]) -> FeatureSpec | None:
    """The FeatureSpec ``--features`` names, None for the default set."""
    value = options.get("features")
    if not value:
        return None
    from kubetrade.features.choice import feature_choice

    return feature_choice(str(value))


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
        return file_frames(data_file, timeframe, options["symbol"]), str(data_file)
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
