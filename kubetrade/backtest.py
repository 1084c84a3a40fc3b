"""The in-process backtest: the live code path without NATS, processes or a database.

Candles go through the same :class:`SignalPipeline` (features and ONNX model) and the same
:class:`TradingEngine` (strategy, risk, paper broker) as in ``kubetrade run``, in the same
order, so both produce identical fills on the same candles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kubetrade.domain import Candle, EquityPoint, Fill, Order
from kubetrade.errors import InvalidInputError
from kubetrade.signals import Predictor, Rejected, SignalPipeline
from kubetrade.spec import TradingBot
from kubetrade.trading import TradingEngine

# The bridge predicts in micro-batches of whatever is queued; tree ensembles give the same
# probability for a row whatever its batch, so the batch size here only sets speed.
BATCH = 512


@dataclass
class BacktestResult:
    """Everything a backtest produced, in the order it happened."""

    candles: int = 0
    signals: int = 0
    orders: list[Order] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    equity: list[EquityPoint] = field(default_factory=list)


def run_backtest(
    bot: TradingBot, candles: Iterable[Candle], predictor: Predictor | None
) -> BacktestResult:
    """Replay ``candles`` (time, then spec symbol order) through features, model (None for a
    rule-only bot) and engine."""
    pipeline = SignalPipeline.for_bot(bot, predictor)
    engine = TradingEngine(bot)
    result = BacktestResult()
    batch: list[Candle] = []

    def flush() -> None:
        for event in pipeline.process(batch):
            if isinstance(event, Rejected):
                raise InvalidInputError(f"candle refused by the feature engine: {event.reason}")
            out = engine.on_event(event)
            result.candles += 1
            result.signals += event.prediction is not None
            result.orders.extend(out.orders)
            result.fills.extend(out.fills)
            result.equity.extend(out.equity)
        batch.clear()

    for candle in candles:
        batch.append(candle)
        if len(batch) >= BATCH:
            flush()
    flush()
    result.equity.extend(engine.flush().equity)
    return result
