"""A backtest's replay gives the events the live pipeline gives, bit for bit.

``SignalPipeline.replay`` computes each symbol's features with the vectorized path and runs the
model on large batches; ``SignalPipeline.process`` (the live bridge's path) computes them candle
by candle. A backtest may only take the first because the two cannot be told apart: same
features, same predictions (rows and windows), same previous values, in the input's order. Where
``process`` would fill a gap or reject a candle, ``replay`` declines.
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import numpy as np
import pytest

from kubetrade import signals
from kubetrade.backtest import run_backtest
from kubetrade.domain import Candle, MarketEvent
from kubetrade.errors import InvalidInputError
from kubetrade.features import FeatureSpec, default_feature_spec, feature_spec
from kubetrade.market import generate, to_candles
from kubetrade.signals import SignalPipeline
from tests.test_trading_engine import make_bot

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
STRATEGY = feature_spec(
    {"sma_ratio": {"windows": [10, 30]}, "bollinger": {"window": 20, "width": 2.0}}
)


class Weighted:
    """A model whose probability depends on every feature of every row it is given, so a row
    that differs in its last bit, or a window shifted by one row, changes the prediction."""

    model_name = "weighted"
    model_version = "1"
    training_period: tuple[int, int] | None = None

    def __init__(self, spec: FeatureSpec, window: int) -> None:
        self.feature_spec = spec
        self.window = window

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        flat = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
        # Summed column by column, not with a matrix product (whose rounding may depend on
        # the batch): a row gets the same probability in any batch, as from a tree ensemble.
        total = np.zeros(len(flat))
        for k in range(flat.shape[1]):
            total += flat[:, k] * math.sin(k + 1.0)
        return np.asarray(1.0 / (1.0 + np.exp(-total)), dtype=np.float64)


def _candles(n: int = 1_200) -> list[Candle]:
    """Three symbols interleaved by time, each in the spec's order."""
    frame = generate(SYMBOLS, "1h", n, seed=12)
    order = {s: i for i, s in enumerate(SYMBOLS)}
    frame = frame.assign(rank=frame["symbol"].map(order)).sort_values(["open_time", "rank"])
    return to_candles(frame.drop(columns="rank"), "1h")


def _processed(pipeline: SignalPipeline, candles: list[Candle]) -> list[MarketEvent]:
    events = []
    for start in range(0, len(candles), 500):
        for event in pipeline.process(candles[start : start + 500]):
            assert isinstance(event, MarketEvent)
            events.append(event)
    return events


@pytest.mark.parametrize("batch", [signals.REPLAY_BATCH, 97])
@pytest.mark.parametrize("window", [1, 4])
def test_replay_gives_the_live_pipelines_events_bit_for_bit(
    window: int, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With small batches most of them run on the model's background thread, in order.
    monkeypatch.setattr(signals, "REPLAY_BATCH", batch)
    candles = _candles()
    model = Weighted(default_feature_spec(), window)

    replayed = SignalPipeline(model, strategy_features=STRATEGY).replay(candles)
    live = _processed(SignalPipeline(model, strategy_features=STRATEGY), candles)

    assert replayed is not None
    events = list(replayed)
    assert events == live  # candles, predictions (probabilities exactly), features, previous
    warm = [e for e in events if e.prediction is not None]
    assert len(warm) == len(candles) - len(SYMBOLS) * (default_feature_spec().warmup + window - 2)
    assert all(e.features is not None and e.previous_features is not None for e in warm)


@pytest.mark.parametrize("window", [1, 4])
def test_replay_withholds_what_the_live_pipeline_withholds(
    window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The withheld period starts and ends inside batches of 97 rows (on the model's thread).
    monkeypatch.setattr(signals, "REPLAY_BATCH", 97)
    candles = _candles()
    model = Weighted(default_feature_spec(), window)
    times = sorted({c.open_time for c in candles})
    withhold = (times[450], times[1_000])
    replaying = SignalPipeline(model, withhold=withhold)
    live = SignalPipeline(model, withhold=withhold)

    replayed = replaying.replay(candles)
    processed = _processed(live, candles)

    assert replayed is not None
    assert list(replayed) == processed
    assert replaying.withheld == live.withheld == len(SYMBOLS) * 550
    predicted = [e for e in processed if e.prediction is not None]
    assert predicted and not any(withhold[0] <= e.candle.open_time < withhold[1] for e in predicted)


class FailsLater(Weighted):
    """A model whose runtime fails on its third batch."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__(spec, 1)
        self.calls = 0

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("model runtime failed on batch 3")
        return super().predict_proba(rows)


def _model_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kubetrade-model")]


def test_a_model_failing_on_a_background_batch_fails_the_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(signals, "REPLAY_BATCH", 50)
    replayed = SignalPipeline(FailsLater(default_feature_spec())).replay(_candles(600))

    assert replayed is not None
    with pytest.raises(RuntimeError, match="batch 3"):
        list(replayed)
    assert not _model_threads()


def test_a_replay_closed_early_stops_its_model_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals, "REPLAY_BATCH", 20)
    model = Weighted(default_feature_spec(), 1)
    replayed = SignalPipeline(model).replay(_candles(1_000))

    assert replayed is not None
    events = iter(replayed)
    first_prediction = next(e for e in events if e.prediction is not None)
    assert first_prediction.prediction is not None
    assert _model_threads()  # the later batches are on their way
    events.close()  # type: ignore[attr-defined]
    assert not _model_threads()


def test_replay_without_a_model_hands_on_the_strategys_features() -> None:
    candles = _candles(300)

    replayed = SignalPipeline(None, strategy_features=STRATEGY).replay(candles)

    assert replayed is not None
    assert list(replayed) == _processed(SignalPipeline(None, strategy_features=STRATEGY), candles)


def _with(candles: list[Candle], index: int, **changes: object) -> list[Candle]:
    return [*candles[:index], replace(candles[index], **changes), *candles[index + 1 :]]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        "gap",
        "duplicate",
        "out of order",
        "impossible prices",
        "infinite volume",
        "another timeframe",
    ],
)
def test_replay_declines_what_the_live_pipeline_would_fill_or_reject(change: str) -> None:
    candles = _candles(200)
    i = 150  # a BTC/USDT candle
    if change == "gap":
        candles = candles[:i] + candles[i + 1 :]
    elif change == "duplicate":
        candles = [*candles[: i + 1], candles[i], *candles[i + 1 :]]
    elif change == "out of order":
        candles[i], candles[i + 3] = candles[i + 3], candles[i]
    elif change == "impossible prices":
        candles = _with(candles, i, low=candles[i].high * 2)
    elif change == "infinite volume":
        candles = _with(candles, i, volume=math.inf)
    else:
        candles = _with(candles, i, timeframe="4h")

    assert SignalPipeline(None, strategy_features=STRATEGY).replay(candles) is None


def test_replay_declines_a_pipeline_that_has_seen_candles() -> None:
    candles = _candles(100)
    pipeline = SignalPipeline(None, strategy_features=STRATEGY)
    pipeline.warm_up(candles[:30])

    assert pipeline.replay(candles[30:]) is None


@pytest.mark.parametrize("replayed", [True, False])
def test_a_backtest_counts_the_candles_and_signals_it_traded(
    replayed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counted alike on a replay and on the streamed path (a gap or a refused candle).
    if not replayed:
        monkeypatch.setattr(SignalPipeline, "replay", lambda self, candles: None)
    candles = _candles(600)
    model = Weighted(default_feature_spec(), 1)
    warm = [e for e in _processed(SignalPipeline(model), candles) if e.prediction is not None]

    result = run_backtest(make_bot(tuple(SYMBOLS)), candles, model)

    assert (result.candles, result.signals) == (len(candles), len(warm))
    assert result.first_signal_time == warm[0].candle.open_time
    assert result.last_candle_time == candles[-1].open_time
    assert result.equity[-1].time == candles[-1].open_time + 3_600_000


def test_a_backtest_ends_on_a_candle_the_feature_engine_refuses() -> None:
    candles = _candles(600)
    impossible = candles[900]
    candles[900] = replace(impossible, high=impossible.low / 2)  # a high below the low

    with pytest.raises(InvalidInputError, match=r"candle refused by the feature engine: .*high"):
        run_backtest(make_bot(tuple(SYMBOLS)), candles, Weighted(default_feature_spec(), 1))
