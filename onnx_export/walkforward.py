"""Walk-forward validation: a fresh fit per fold, scored and backtested on the fold after it.

Folds move through time: each trains on a window of candles (the last ``train`` candles before
the test window when ``rolling``, every candle since the start when ``expanding``) and tests on
the next ``test`` candles; the next fold starts ``step`` later. Sizes are candles (``500``) or
durations (``90d``, ``36h``). Training rows whose label reaches into the test window are purged.

Each fold's model is scored on its test rows (accuracy, precision, recall, F1, ROC AUC, MCC, log
loss) and trades its test window through the shared trading code: the same ``SignalPipeline``
and ``TradingEngine`` as ``kubetrade backtest`` and the live executor, warmed up on the candles
before the window so the first test candle already has its features.

Every figure is out of sample: a fold trades only its test window, with a model fit on candles
before it. Test windows never overlap (a ``step`` shorter than ``test`` is refused), so no
candle counts twice: the folds' equity curves are stitched, each fold starting from the
equity the previous one ended with, into one out-of-sample curve. Each fold's figures stand
beside buy and hold of the same symbols over the same test window (``trading.benchmark``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from kubetrade.domain import Candle, EquityPoint, Fill, timeframe_ms
from kubetrade.errors import InvalidInputError
from kubetrade.features import FeatureSpec, default_feature_spec
from kubetrade.market.frame import to_candles
from kubetrade.onnx_export.dataset import Dataset, LabelSpec, build_dataset
from kubetrade.onnx_export.metrics import Metrics, mean_metrics, score
from kubetrade.onnx_export.models.base import Model, ModelConfig
from kubetrade.onnx_export.models.factory import build_model
from kubetrade.signals import Rejected, SignalPipeline
from kubetrade.spec import TradingBot, parse_duration
from kubetrade.trading import EngineOutput, TradingEngine
from kubetrade.trading.benchmark import (
    BenchmarkReport,
    benchmark_report,
    buy_and_hold_equity,
    equity_point,
)
from kubetrade.trading.performance import PerformanceReport, performance_report

log = logging.getLogger(__name__)

MODES = ("rolling", "expanding")
# Candles per pipeline call in the fold backtests: the bridge's micro-batch size.
BACKTEST_BATCH = 512

FoldProgress = Callable[[int, int], None]


def window_ms(size: int | str, timeframe: str) -> int:
    """A fold size in ms: an int counts candles, a string is a duration such as ``90d``."""
    if isinstance(size, int) or size.isdigit():
        candles = int(size)
        if candles < 1:
            raise InvalidInputError(f"a walk-forward window needs at least 1 candle, got {candles}")
        return candles * timeframe_ms(timeframe)
    try:
        return parse_duration(size) * 1000
    except ValueError as error:  # parse_duration serves pydantic validators, so ValueError
        raise InvalidInputError(f"walk-forward window: {error}") from None


@dataclass(frozen=True, slots=True)
class WalkForwardConfig:
    """Fold geometry and what each fold trains."""

    model: ModelConfig
    timeframe: str
    train: int | str = 4000
    test: int | str = 1000
    step: int | str | None = None
    mode: str = "rolling"
    label: LabelSpec = field(default_factory=LabelSpec)
    feature_spec: FeatureSpec | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInputError(f"unknown walk-forward mode {self.mode!r}; use one of {MODES}")

    def spans(self) -> tuple[int, int, int]:
        """Train, test and step lengths in ms (step defaults to the test length)."""
        train = window_ms(self.train, self.timeframe)
        test = window_ms(self.test, self.timeframe)
        step = test if self.step is None else window_ms(self.step, self.timeframe)
        return train, test, step


@dataclass(frozen=True, slots=True)
class Fold:
    """One train/test split in time; windows are half-open ``[start, end)``, ms UTC."""

    index: int
    train_start: int
    test_start: int
    test_end: int


def plan_folds(first: int, last: int, config: WalkForwardConfig) -> list[Fold]:
    """Folds over candles opening from ``first`` to ``last`` (inclusive); complete test
    windows only."""
    train, test, step = config.spans()
    if step < test:
        raise InvalidInputError(
            f"walk-forward step {config.step} is shorter than the test window {config.test}: "
            "the test windows would overlap and each candle in the overlap would count in "
            "several folds; use a step of at least the test window (the default)"
        )
    end = last + timeframe_ms(config.timeframe)
    folds: list[Fold] = []
    test_start = first + train
    while test_start + test <= end:
        train_start = test_start - train if config.mode == "rolling" else first
        folds.append(Fold(len(folds), train_start, test_start, test_start + test))
        test_start += step
    if not folds:
        raise InvalidInputError(
            f"no walk-forward fold fits: {config.train} training plus {config.test} test "
            f"candles/time need more than the {(end - first) // timeframe_ms(config.timeframe)} "
            "candles given; use smaller windows or more candles"
        )
    return folds


@dataclass(frozen=True, slots=True)
class FoldResult:
    """Scores and trading figures of one fold."""

    fold: Fold
    train_rows: int
    test_rows: int
    train_up_rate: float
    metrics: Metrics
    trading: PerformanceReport
    fit_seconds: float
    equity: list[EquityPoint]
    # Buy and hold of the same symbols over the same test window, and its equity.
    benchmark: BenchmarkReport
    benchmark_equity: list[EquityPoint]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (equity curve as time/equity pairs)."""
        return {
            **asdict(self.fold),
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "train_up_rate": self.train_up_rate,
            "metrics": self.metrics.to_dict(),
            "trading": asdict(self.trading),
            "buy_and_hold": asdict(self.benchmark),
            "fit_seconds": round(self.fit_seconds, 3),
            "equity": [[p.time, p.equity] for p in self.equity],
        }


@dataclass(frozen=True, slots=True)
class WalkForwardResult:
    """Every fold, and the figures over all of them."""

    config: WalkForwardConfig
    folds: list[FoldResult]
    pooled: Metrics
    seconds: float

    @property
    def initial_capital(self) -> float:
        """The capital every fold's backtest starts from."""
        return self.folds[0].trading.initial_capital if self.folds else 0.0

    def stitched(self) -> list[EquityPoint]:
        """The folds' out-of-sample equity as one curve: each fold from where the last ended."""
        return _stitch([f.equity for f in self.folds], self.initial_capital)

    def stitched_benchmark(self) -> list[EquityPoint]:
        """Buy and hold over the same test windows, stitched the same way."""
        return _stitch([f.benchmark_equity for f in self.folds], self.initial_capital)

    def aggregate(self) -> dict[str, Any]:
        """Mean per-fold figures, pooled classification scores, summed trades, and the stitched
        out-of-sample curve's figures beside buy and hold's."""
        trading = [f.trading for f in self.folds]
        timeframe = self.config.timeframe
        stitched = benchmark_report(self.stitched(), self.initial_capital, timeframe)
        hold = benchmark_report(self.stitched_benchmark(), self.initial_capital, timeframe)
        return {
            "folds": len(self.folds),
            "mean_metrics": mean_metrics([f.metrics for f in self.folds]),
            "pooled_metrics": self.pooled.to_dict(),
            "trading": {
                # Test windows never overlap, so compounding the folds is the stitched curve.
                "compounded_return_pct": stitched.total_return_pct,
                "stitched_max_drawdown_pct": stitched.max_drawdown_pct,
                "stitched_sharpe": stitched.sharpe,
                "buy_and_hold_return_pct": hold.total_return_pct,
                "buy_and_hold_max_drawdown_pct": hold.max_drawdown_pct,
                "buy_and_hold_sharpe": hold.sharpe,
                "folds_beating_buy_and_hold": sum(
                    1
                    for f in self.folds
                    if f.trading.total_return_pct > f.benchmark.total_return_pct
                ),
                "mean_return_pct": _mean([t.total_return_pct for t in trading]),
                "mean_sharpe": _mean([t.sharpe for t in trading]),
                "mean_sortino": _mean([t.sortino for t in trading]),
                "worst_drawdown_pct": max(t.max_drawdown_pct for t in trading),
                "mean_profit_factor": _mean([t.profit_factor for t in trading]),
                "trades": sum(t.trades for t in trading),
                "positive_folds": sum(1 for t in trading if t.total_return_pct > 0),
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """The whole result, JSON-ready."""
        config = self.config
        return {
            "config": {
                "model": config.model.to_dict(),
                "timeframe": config.timeframe,
                "train": config.train,
                "test": config.test,
                "step": config.step if config.step is not None else config.test,
                "mode": config.mode,
                "label": config.label.to_dict(),
            },
            "sample": "out-of-sample",
            "aggregate": self.aggregate(),
            "stitched_equity": [[p.time, p.equity] for p in self.stitched()],
            "stitched_buy_and_hold": [[p.time, p.equity] for p in self.stitched_benchmark()],
            "folds": [f.to_dict() for f in self.folds],
            "seconds": round(self.seconds, 3),
        }


def _stitch(curves: Sequence[Sequence[EquityPoint]], initial: float) -> list[EquityPoint]:
    """Chain equity curves that each start from ``initial``: every curve is scaled to start
    from the equity the previous one ended with."""
    stitched: list[EquityPoint] = []
    capital = initial
    for curve in curves:
        scale = capital / initial
        stitched.extend(equity_point(p.time, p.equity * scale) for p in curve)
        if curve:
            capital = curve[-1].equity * scale
    return stitched


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


@dataclass
class NativePredictor:
    """A fitted model behind the serving ``Predictor`` protocol (no export per fold)."""

    model: Model
    feature_spec: FeatureSpec
    model_name: str = "walk-forward"
    model_version: str = "fold"
    window: int = field(init=False)
    # Each fold is tested on candles after its own training rows: nothing to withhold.
    training_period: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.window = self.model.window

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """The model's native probabilities."""
        return self.model.predict_proba(rows)


def default_bot(symbols: Sequence[str], timeframe: str) -> TradingBot:
    """A paper bot with the spec's default strategy and risk, for fold backtests."""
    return TradingBot.model_validate(
        {
            "apiVersion": "kubetrade.io/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": "walk-forward"},
            "spec": {
                "symbols": list(symbols),
                "timeframe": timeframe,
                "model": {"name": "walk-forward"},
            },
        },
        by_alias=True,
    )


def _stream(
    frames: Mapping[str, pd.DataFrame], timeframe: str, order: Sequence[str]
) -> list[Candle]:
    """Every candle of ``frames`` in stream order: time, then the bot's symbol order."""
    rank = {symbol: i for i, symbol in enumerate(order)}
    candles = [c for frame in frames.values() for c in to_candles(frame, timeframe)]
    return sorted(candles, key=lambda c: (c.open_time, rank[c.symbol]))


def backtest_window(
    bot: TradingBot,
    predictor: NativePredictor,
    history: Sequence[Candle],
    candles: Sequence[Candle],
) -> tuple[PerformanceReport, list[Fill], list[EquityPoint]]:
    """Trade ``candles`` after warming the features up on ``history`` (no trades there)."""
    pipeline = SignalPipeline.for_bot(bot, predictor)  # with the strategy's features
    pipeline.warm_up(history)
    engine = TradingEngine(bot)
    out = EngineOutput()  # the whole window's
    for start in range(0, len(candles), BACKTEST_BATCH):
        for event in pipeline.process(candles[start : start + BACKTEST_BATCH]):
            if isinstance(event, Rejected):
                raise InvalidInputError(f"candle refused by the feature engine: {event.reason}")
            engine.on_event(event, out)
    engine.flush(out)
    fills, equity = out.fills, out.equity
    execution = bot.spec.execution
    report = performance_report(equity, fills, execution.initial_capital, bot.spec.timeframe)
    return report, fills, equity


def _fold_sets(dataset: Dataset, fold: Fold) -> tuple[Dataset, Dataset]:
    train = dataset.subset(
        (dataset.open_time >= fold.train_start)
        & (dataset.open_time < fold.test_start)
        & (dataset.label_time < fold.test_start)
    )
    test = dataset.subset(
        (dataset.open_time >= fold.test_start) & (dataset.open_time < fold.test_end)
    )
    return train, test


def _ignore(done: int, total: int) -> None:
    return None


def walk_forward(
    frames: Mapping[str, pd.DataFrame],
    config: WalkForwardConfig,
    bot: TradingBot | None = None,
    progress: FoldProgress = _ignore,
    folds: Sequence[Fold] | None = None,
) -> WalkForwardResult:
    """Fit, score and backtest every fold of ``frames`` (symbol -> candles)."""
    started = time.perf_counter()
    spec = config.feature_spec or default_feature_spec()
    bot = bot or default_bot(list(frames), config.timeframe)
    missing = [s for s in frames if s not in bot.spec.symbols]
    if missing:
        raise InvalidInputError(
            f"the backtest bot trades {bot.spec.symbols} but the candles hold {missing} too; "
            "give a bot with every symbol of the data"
        )
    dataset = build_dataset(frames, spec, config.label, config.model.window)
    first = min(int(f["open_time"].iloc[0]) for f in frames.values())
    last = max(int(f["open_time"].iloc[-1]) for f in frames.values())
    plan = list(folds) if folds is not None else plan_folds(first, last, config)
    stream = _stream(frames, config.timeframe, bot.spec.symbols)
    times = np.array([c.open_time for c in stream], dtype=np.int64)
    keep_history = (spec.warmup + config.model.window) * timeframe_ms(config.timeframe)
    results: list[FoldResult] = []
    pooled_p: list[np.ndarray] = []
    pooled_y: list[np.ndarray] = []
    for fold in plan:
        progress(fold.index, len(plan))
        train, test = _fold_sets(dataset, fold)
        if len(test) == 0 or len(np.unique(train.labels)) < 2:
            raise InvalidInputError(
                f"fold {fold.index} has {len(train)} training rows ({train.balance.to_dict()}) "
                f"and {len(test)} test rows: too few to fit and score; use longer windows"
            )
        model = build_model(config.model)
        fit_started = time.perf_counter()
        model.fit(train)
        fit_seconds = time.perf_counter() - fit_started
        probabilities = model.predict_proba(test.inputs(model.window))
        pooled_p.append(probabilities)
        pooled_y.append(test.labels)
        lo = int(np.searchsorted(times, fold.test_start - keep_history))
        mid = int(np.searchsorted(times, fold.test_start))
        hi = int(np.searchsorted(times, fold.test_end))
        trading, _, equity = backtest_window(
            bot, NativePredictor(model, spec), stream[lo:mid], stream[mid:hi]
        )
        capital = bot.spec.execution.initial_capital
        hold = buy_and_hold_equity(stream[mid:hi], bot.spec.symbols, capital, config.timeframe)
        results.append(
            FoldResult(
                fold=fold,
                train_rows=len(train),
                test_rows=len(test),
                train_up_rate=train.balance.up_rate,
                metrics=score(probabilities, test.labels),
                trading=trading,
                fit_seconds=fit_seconds,
                equity=equity,
                benchmark=benchmark_report(hold, capital, config.timeframe),
                benchmark_equity=hold,
            )
        )
        log.info(
            "fold done",
            extra={
                "fold": fold.index,
                "train_rows": len(train),
                "test_rows": len(test),
                "roc_auc": results[-1].metrics.roc_auc,
                "return_pct": trading.total_return_pct,
            },
        )
    progress(len(plan), len(plan))
    pooled = score(np.concatenate(pooled_p), np.concatenate(pooled_y))
    return WalkForwardResult(config, results, pooled, time.perf_counter() - started)


def with_model(config: WalkForwardConfig, model: ModelConfig) -> WalkForwardConfig:
    """The same folds with another model config (hyperparameter search)."""
    return replace(config, model=model)
