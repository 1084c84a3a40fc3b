"""Candles in, market events out: rolling features per symbol, then one ONNX call per batch.

The NATS bridge and the in-process backtest both run this class, so a live paper run and a
backtest over the same candles see the same predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from kubetrade.features import FeatureEngine, FeatureSpec, check_feature_spec, default_feature_spec

from kubetrade.domain import Candle, Direction, MarketEvent, Prediction


class Predictor(Protocol):
    """What the pipeline needs of a loaded model."""

    model_name: str
    model_version: str
    feature_spec: FeatureSpec

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Probability that the price goes up, one per row."""
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
        self.predictor = predictor
        self._engines: dict[str, FeatureEngine] = {}

    def process(self, candles: Sequence[Candle]) -> list[MarketEvent]:
        """One event per candle, in input order; prediction is None while a symbol warms up."""
        rows: list[np.ndarray] = []
        warm: list[int] = []
        for index, candle in enumerate(candles):
            engine = self._engines.get(candle.symbol)
            if engine is None:
                engine = self._engines[candle.symbol] = FeatureEngine(self.predictor.feature_spec)
            row = engine.update(candle)
            if row is not None:
                rows.append(row)
                warm.append(index)
        predictions: list[Prediction | None] = [None] * len(candles)
        if rows:
            probs = self.predictor.predict_proba(np.vstack(rows))
            for index, prob in zip(warm, probs, strict=True):
                predictions[index] = to_prediction(float(prob), self.predictor)
        return [MarketEvent(c, p) for c, p in zip(candles, predictions, strict=True)]
