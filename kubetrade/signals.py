"""Candles in, market events out: rolling features per symbol, then one ONNX call per batch.

The NATS bridge and the in-process backtest both run this class, so a live paper run and a
backtest over the same candles see the same predictions.

A tabular model (``window == 1``) gets one feature row per candle, shape ``[n, features]``; a
sequence model (LSTM, Transformer, or an ensemble holding one) gets the last ``window`` rows of
the symbol, shape ``[n, window, features]``, and predicts once that many rows exist.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kubetrade.domain import Candle, Direction, MarketEvent, Prediction
from kubetrade.features import FeatureEngine, FeatureSpec, check_feature_spec, default_feature_spec


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

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Probability that the price goes up, one per row (``window == 1``: rows are
        ``[n, features]``) or per window of rows (``[n, window, features]``)."""
        ...


def to_prediction(prob_up: float, predictor: Predictor) -> Prediction:
    """A model probability as a domain prediction: direction and confidence ``|2p - 1|``."""
    if prob_up > 0.5:
        direction = Direction.UP
    elif prob_up < 0.5:
        direction = Direction.DOWN
    else:
        direction = Direction.FLAT
    return Prediction(
        prob_up=prob_up,
        direction=direction,
        confidence=abs(2.0 * prob_up - 1.0),
        model_name=predictor.model_name,
        model_version=predictor.model_version,
        feature_hash=predictor.feature_spec.hash,
    )


class SignalPipeline:
    """Keeps one feature engine per symbol and predicts the warm ones in a single batch."""

    def __init__(self, predictor: Predictor, code_spec: FeatureSpec | None = None) -> None:
        # Refuse before the first candle: a model trained on other features must never predict.
        check_feature_spec(predictor.feature_spec, code_spec or default_feature_spec())
        if predictor.window < 1:
            raise ValueError(
                f"model {predictor.model_name}:{predictor.model_version} has window "
                f"{predictor.window}; a model takes at least one feature row"
            )
        self.predictor = predictor
        self._engines: dict[str, FeatureEngine] = {}
        self._rows: dict[str, deque[np.ndarray]] = {}

    def _engine(self, symbol: str) -> FeatureEngine:
        engine = self._engines.get(symbol)
        if engine is None:
            engine = self._engines[symbol] = FeatureEngine(self.predictor.feature_spec)
            self._rows[symbol] = deque(maxlen=self.predictor.window)
        return engine

    def _update(self, candle: Candle) -> np.ndarray | None:
        """The model input of this candle (a row or a window of rows), None while warming up."""
        engine = self._engine(candle.symbol)
        gaps = engine.gaps_filled
        row = engine.update(candle)
        if self.predictor.window == 1:
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

    def warm_up(self, candles: Iterable[Candle]) -> None:
        """Feed history (e.g. after a restart) through the feature engines without predicting."""
        history: dict[str, deque[Candle]] = {}
        keep_last = self.predictor.feature_spec.warmup + self.predictor.window - 1
        for candle in candles:
            history.setdefault(candle.symbol, deque(maxlen=keep_last)).append(candle)
        for recent in history.values():
            for candle in recent:
                self._update(candle)

    def process(self, candles: Sequence[Candle]) -> list[MarketEvent | Rejected]:
        """One result per candle, in input order: an event (prediction None while a symbol
        warms up), or a rejection for a candle its symbol's engine cannot take (a duplicate,
        out of order, or impossible prices)."""
        rows: list[np.ndarray] = []
        warm: list[int] = []
        results: list[MarketEvent | Rejected] = []
        for index, candle in enumerate(candles):
            try:
                row = self._update(candle)
            except ValueError as error:
                results.append(Rejected(candle, str(error)))
                continue
            results.append(MarketEvent(candle, None))
            if row is not None:
                rows.append(row)
                warm.append(index)
        if rows:
            probs = self.predictor.predict_proba(np.stack(rows))
            for index, prob in zip(warm, probs, strict=True):
                results[index] = MarketEvent(
                    candles[index], to_prediction(float(prob), self.predictor)
                )
        return results
