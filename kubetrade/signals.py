"""Candles in, market events out: rolling features per symbol, then one ONNX call per batch.

The NATS bridge and the in-process backtest both run this class, so a live paper run and a
backtest over the same candles see the same predictions. A backtest that has every candle up
front takes ``replay``: the same events, with each symbol's features computed at once by the
vectorized path (bit for bit what the incremental path gives, see ``kubetrade.features.series``)
and the model run on large batches.

A tabular model (``window == 1``) gets one feature row per candle, shape ``[n, features]``; a
sequence model (LSTM, Transformer, or an ensemble holding one) gets the last ``window`` rows of
the symbol, shape ``[n, window, features]``, and predicts once that many rows exist.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import chain, repeat
from operator import attrgetter
from typing import Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from kubetrade.domain import Candle, Direction, MarketEvent, Prediction, timeframe_ms
from kubetrade.features import FeatureEngine, FeatureSpec, check_computable, compute_features
from kubetrade.spec import TradingBot

# Rows per model call when a whole series is replayed: a tree ensemble gives a row the same
# probability in any batch (the live bridge predicts whatever is queued).
REPLAY_BATCH = 4096
# Seconds one replay batch of the model may take before the backtest gives up on it (a batch
# takes milliseconds; only a hung runtime gets near).
MODEL_BATCH_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class Rejected:
    """A candle the features cannot take, and why."""

    candle: Candle
    reason: str


class Predictor(Protocol):
    """What the pipeline needs of a loaded model."""

    model_name: str
    model_version: str
    feature_spec: FeatureSpec
    # Feature rows per prediction: 1 for tabular models, the sequence length for the others.
    window: int
    # The candles it learned from, [start, end) open times in ms (None: not known).
    training_period: tuple[int, int] | None

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Probability that the price goes up, one per row (``window == 1``: rows are
        ``[n, features]``) or per window of rows (``[n, window, features]``)."""
        ...


def to_prediction(prob_up: float, predictor: Predictor) -> Prediction:
    """A model probability as a domain prediction: direction and confidence ``|2p - 1|``."""
    return to_predictions((prob_up,), predictor)[0]


def to_predictions(probabilities: Iterable[float], predictor: Predictor) -> list[Prediction]:
    """``to_prediction`` of each probability, in order: one list built in one frame, as a
    backtest makes one per candle."""
    name, version = predictor.model_name, predictor.model_version
    feature_hash = predictor.feature_spec.hash
    up, down, flat = Direction.UP, Direction.DOWN, Direction.FLAT
    return [
        Prediction(  # positional: one per candle of a backtest
            p,
            up if p > 0.5 else down if p < 0.5 else flat,
            abs(2.0 * p - 1.0),
            name,
            version,
            feature_hash,
        )
        for p in probabilities
    ]


def replays_file(bot: TradingBot, data_file: str | None) -> bool:
    """Whether the bot's candles come from a file (``--data``, or a replay ``exchange.uri``)."""
    return data_file is not None or bot.spec.exchange.name == "replay"


def withheld_period(
    bot: TradingBot, predictor: Predictor | None, data_file: str | None
) -> tuple[int, int] | None:
    """The open times on which ``bot``'s model (``predictor``) makes no prediction: its
    training period (``[start, end)``, ms) when the bot replays a file (``data_file`` or its
    replay URI), the data the model may have learned from, unless ``spec.model.inSample`` says
    to trade them. None otherwise: a live feed never delivers candles of the past, and the
    synthetic market is not the data a model learned from, whatever its timestamps."""
    model = bot.spec.model
    training_period = None if predictor is None else predictor.training_period
    if training_period is None or model is None or model.in_sample:
        return None
    return training_period if replays_file(bot, data_file) else None


class SignalPipeline:
    """Keeps feature engines per symbol and predicts the warm ones in a single batch.

    Two feature sets per symbol, each optional: the model's (its FeatureSpec, any subset of the
    registry this code computes) and the strategy's (what a rule strategy reads, handed on with
    every event together with the previous candle's values). A rule-only bot has no model.
    """

    def __init__(
        self,
        predictor: Predictor | None,
        *,
        strategy_features: FeatureSpec | None = None,
        withhold: tuple[int, int] | None = None,
    ) -> None:
        """``withhold`` (``[start, end)`` open times, ms): candles inside it feed the features
        but get no prediction, so nothing is traded on them (see ``withheld_period``)."""
        if predictor is not None:
            # Refuse before the first candle: a model whose features this code does not
            # compute must never predict.
            check_computable(predictor.feature_spec)
            if predictor.window < 1:
                raise ValueError(
                    f"model {predictor.model_name}:{predictor.model_version} has window "
                    f"{predictor.window}; a model takes at least one feature row"
                )
        self.predictor = predictor
        self.strategy_features = strategy_features
        self.withhold = withhold
        # Candles that got no prediction because they lie inside ``withhold``.
        self.withheld = 0
        self._engines: dict[str, FeatureEngine] = {}
        self._rows: dict[str, deque[np.ndarray]] = {}
        self._strategy_engines: dict[str, FeatureEngine] = {}
        self._last_values: dict[str, dict[str, float]] = {}

    @classmethod
    def for_bot(
        cls,
        bot: TradingBot,
        predictor: Predictor | None,
        withhold: tuple[int, int] | None = None,
    ) -> SignalPipeline:
        """The pipeline of ``bot``: its model (None for a rule-only bot), the features its
        strategy reads, and the period it makes no prediction in (``withheld_period``)."""
        return cls(
            predictor,
            strategy_features=bot.spec.strategy.build().feature_spec,
            withhold=withhold,
        )

    def _withheld(self, candle: Candle) -> bool:
        """Whether ``candle`` gets no prediction (inside ``withhold``); counts it."""
        period = self.withhold
        if period is None or not period[0] <= candle.open_time < period[1]:
            return False
        self.withheld += 1
        return True

    @property
    def history_needed(self) -> int:
        """Candles per symbol a restart replays to rebuild every window."""
        model = (
            0
            if self.predictor is None
            else (self.predictor.feature_spec.warmup + self.predictor.window - 1)
        )
        strategy = 0 if self.strategy_features is None else self.strategy_features.warmup + 1
        return max(model, strategy, 1)

    def _update(self, candle: Candle) -> np.ndarray | None:
        """The model input of this candle (a row or a window of rows), None while warming up."""
        predictor = self.predictor
        if predictor is None:
            return None
        engine = self._engines.get(candle.symbol)
        if engine is None:
            engine = self._engines[candle.symbol] = FeatureEngine(predictor.feature_spec)
            self._rows[candle.symbol] = deque(maxlen=predictor.window)
        gaps = engine.gaps_filled
        row = engine.update(candle)
        if predictor.window == 1:
            return row
        rows = self._rows[candle.symbol]
        if engine.gaps_filled != gaps:
            # The engine does not hand out the rows of the flat candles it filled a gap with,
            # so the window would skip them: start the window again rather than predict on
            # a sequence the model never saw in training.
            rows.clear()
        if row is None:
            return None
        rows.append(row)
        return np.stack(rows) if len(rows) == rows.maxlen else None

    def _strategy_values(
        self, candle: Candle
    ) -> tuple[dict[str, float] | None, dict[str, float] | None]:
        """The strategy's features on this candle and on the one before (None while warming)."""
        spec = self.strategy_features
        if spec is None:
            return None, None
        engine = self._strategy_engines.get(candle.symbol)
        if engine is None:
            engine = self._strategy_engines[candle.symbol] = FeatureEngine(spec)
        row = engine.update(candle)
        previous = self._last_values.get(candle.symbol)
        if row is None:
            return None, None
        values = dict(zip(spec.names, row.tolist(), strict=True))
        self._last_values[candle.symbol] = values
        return values, previous

    def warm_up(self, candles: Iterable[Candle]) -> None:
        """Feed history (e.g. after a restart) through the feature engines without predicting."""
        history: dict[str, deque[Candle]] = {}
        keep_last = self.history_needed
        for candle in candles:
            history.setdefault(candle.symbol, deque(maxlen=keep_last)).append(candle)
        for recent in history.values():
            for candle in recent:
                self._update(candle)
                self._strategy_values(candle)

    def process(self, candles: Sequence[Candle]) -> list[MarketEvent | Rejected]:
        """One result per candle, in input order: an event (prediction None while a symbol
        warms up or without a model), or a rejection for a candle its symbol's engines cannot
        take (a duplicate, out of order, or impossible prices)."""
        rows: list[np.ndarray] = []
        warm: list[int] = []
        results: list[MarketEvent | Rejected] = []
        for index, candle in enumerate(candles):
            try:
                # Both engines see the same candles, so they refuse the same ones: a candle the
                # first refuses never reaches the second, and neither moves.
                row = self._update(candle)
                values, previous = self._strategy_values(candle)
            except ValueError as error:
                results.append(Rejected(candle, str(error)))
                continue
            results.append(MarketEvent(candle, None, values, previous))
            if row is not None and not self._withheld(candle):
                rows.append(row)
                warm.append(index)
        predictor = self.predictor
        if rows and predictor is not None:
            probs = predictor.predict_proba(np.stack(rows)).tolist()
            predictions = to_predictions(probs, predictor)
            for index, prediction in zip(warm, predictions, strict=True):
                event = results[index]
                assert isinstance(event, MarketEvent)
                # Built anew, not with dataclasses.replace (several times slower): per candle.
                results[index] = MarketEvent(
                    event.candle,
                    prediction,
                    event.features,
                    event.previous_features,
                )
        return results

    def replay(self, candles: Sequence[Candle]) -> Iterator[MarketEvent] | None:
        """The events ``process`` would give for ``candles`` fed in order to this fresh
        pipeline, with each symbol's features computed by the vectorized path; None when
        ``process`` could tell them apart: a symbol's candles with a gap (which the incremental
        engine fills), a duplicate, one out of order, impossible prices or mixed timeframes
        (which it rejects), or a pipeline that has already seen candles."""
        if self._engines or self._strategy_engines or not candles:
            return None
        timeframe = candles[0].timeframe
        positions: dict[str, list[int]] = {}
        for index, candle in enumerate(candles):
            if candle.timeframe != timeframe:
                return None
            positions.setdefault(candle.symbol, []).append(index)
        series = {symbol: [candles[i] for i in at] for symbol, at in positions.items()}
        frames = {symbol: _columns(rows) for symbol, rows in series.items()}
        if not all(_regular(frame, timeframe_ms(timeframe)) for frame in frames.values()):
            return None
        return self._replay(candles, series, frames)

    def _replay(
        self,
        candles: Sequence[Candle],
        series: dict[str, list[Candle]],
        frames: dict[str, dict[str, np.ndarray]],
    ) -> Iterator[MarketEvent]:
        if len(series) == 1:  # one symbol: its events are the stream's, in order
            ((symbol, rows),) = series.items()
            return self._symbol_events(rows, frames[symbol])
        per_symbol = {
            symbol: self._symbol_events(rows, frames[symbol]) for symbol, rows in series.items()
        }
        return _interleaved(candles, per_symbol)

    def _symbol_events(
        self, rows: list[Candle], frame: dict[str, np.ndarray]
    ) -> Generator[MarketEvent, None, None]:
        """One symbol's events, in order, from its candles and their columns. Predictions and
        feature mappings are built as each event is handed on, not held for the whole series."""
        predictor = self.predictor
        predictions: Iterable[Prediction | None] = repeat(None)
        model = None if predictor is None else self._prediction_batches(predictor, frame)
        if model is not None:
            predictions = chain.from_iterable(model)
        spec = self.strategy_features
        features: Iterable[dict[str, float] | None] = repeat(None)
        if spec is not None:
            # Mappings made in C as the events are handed on (map over zip), none while warming.
            values = compute_features(frame, spec).tolist()
            first = min(spec.warmup - 1, len(values))
            features = chain(
                repeat(None, first), map(dict, map(partial(zip, spec.names), values[first:]))
            )
        previous: dict[str, float] | None = None
        try:
            # Not strict: a repeat(None) stands for predictions or features the bot does not
            # have.
            for candle, prediction, now in zip(rows, predictions, features, strict=False):
                yield MarketEvent(candle, prediction, now, None if now is None else previous)
                previous = now
        finally:
            if model is not None:
                model.close()  # its background batches with it

    def _prediction_batches(
        self, predictor: Predictor, frame: dict[str, np.ndarray]
    ) -> Generator[list[Prediction | None], None, None]:
        """Each candle's prediction in lists, in order: None while the model warms up (its
        features, then its window) and inside ``withhold`` (counted), then one list per batch
        of ``REPLAY_BATCH`` rows or windows the model was called on."""
        spec = predictor.feature_spec
        count = len(frame["open_time"])
        first = min(spec.warmup - 1 + predictor.window - 1, count)
        yield [None] * first
        withheld: np.ndarray | None = None
        if self.withhold is not None:
            times = frame["open_time"][first:]
            withheld = (times >= self.withhold[0]) & (times < self.withhold[1])
        start = 0
        batches = _probability_batches(predictor, compute_features(frame, spec))
        try:
            for probabilities in batches:
                predictions: list[Prediction | None] = list(
                    to_predictions(probabilities, predictor)
                )
                if withheld is not None:
                    inside = np.flatnonzero(withheld[start : start + len(predictions)]).tolist()
                    for index in inside:
                        predictions[index] = None
                    self.withheld += len(inside)
                start += len(predictions)
                yield predictions
        finally:
            batches.close()  # its background batches with it


def _probability_batches(
    predictor: Predictor, features: np.ndarray
) -> Generator[list[float], None, None]:
    """The model's probabilities for every warm row (or window) of one symbol's ``features``,
    a list per batch of ``REPLAY_BATCH``.

    The batches after the first run on a background thread while the caller consumes the
    earlier ones: the ONNX runtime releases the GIL, so the model runs on the second core while
    the engine trades on the first, instead of before it (about a sixth of a model bot's
    backtest). Closing the iterator early cancels the batches not yet started.
    """
    warm = features[predictor.feature_spec.warmup - 1 :]
    if predictor.window > 1:
        if len(warm) < predictor.window:
            return
        # Each candle's window: its row and the window - 1 before it, oldest first.
        warm = sliding_window_view(warm, (predictor.window, warm.shape[1]))[:, 0]
    batches = [warm[start : start + REPLAY_BATCH] for start in range(0, len(warm), REPLAY_BATCH)]
    if not batches:
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="kubetrade-model")
    try:
        later = [pool.submit(_predicted, predictor, batch) for batch in batches[1:]]
        yield _predicted(predictor, batches[0])
        for future in later:
            yield future.result(timeout=MODEL_BATCH_TIMEOUT)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _interleaved(
    candles: Sequence[Candle], per_symbol: dict[str, Generator[MarketEvent, None, None]]
) -> Iterator[MarketEvent]:
    """Each symbol's events in the order of ``candles``. Every symbol's generator is closed when
    this one ends, fails or is closed, so none keeps its model thread waiting."""
    try:
        for candle in candles:
            yield next(per_symbol[candle.symbol])
    finally:
        for events in per_symbol.values():
            events.close()


def _predicted(predictor: Predictor, rows: np.ndarray) -> list[float]:
    """The model's probabilities for ``rows``, as Python floats."""
    probabilities: list[float] = predictor.predict_proba(rows).tolist()
    return probabilities


def _columns(rows: Sequence[Candle]) -> dict[str, np.ndarray]:
    """One symbol's candles as the columns the vectorized path reads."""
    count = len(rows)
    columns = {"open_time": np.fromiter(map(attrgetter("open_time"), rows), np.int64, count)}
    for name in ("open", "high", "low", "close", "volume"):
        columns[name] = np.fromiter(map(attrgetter(name), rows), np.float64, count)
    return columns


def _regular(frame: dict[str, np.ndarray], step: int) -> bool:
    """Whether one symbol's candles follow each other one ``step`` apart with possible prices:
    the candles the incremental feature engine takes as they are (no gap fill, no rejection).
    A NaN fails every comparison, so it is never regular."""
    o, h, lo, c, v = (frame[k] for k in ("open", "high", "low", "close", "volume"))
    return bool(
        (np.diff(frame["open_time"]) == step).all()
        and (lo > 0).all()
        and (lo <= np.minimum(o, c)).all()
        and (np.maximum(o, c) <= h).all()
        and (h < math.inf).all()
        and ((v >= 0) & (v < math.inf)).all()
    )
