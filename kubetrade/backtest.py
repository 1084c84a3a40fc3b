"""The in-process backtest: the live code path without NATS, processes or a database.

Candles go through the same :class:`SignalPipeline` (features and ONNX model) and the same
:class:`TradingEngine` (strategy, risk, paper broker) as in ``kubetrade run``, in the same
order, so both produce identical fills on the same candles. Having every candle up front, the
backtest takes the pipeline's ``replay`` (each symbol's features at once by the vectorized path,
bit for bit the incremental path's; the model on large batches) unless the candles hold
something only the incremental path handles (a gap, a duplicate), and then streams them.

A replay is out of sample by default: ``plan_sample`` reads the model's training period from
its metadata, and the replay then starts just early enough for the features to be warm on the
first candle after it, so no candle the model learned from is traded. ``kubetrade backtest`` and
``kubetrade run`` apply the same plan (``--in-sample`` trades the whole file, and says so).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kubetrade.domain import Candle, EquityPoint, Fill, MarketEvent, Order, timeframe_ms
from kubetrade.errors import InvalidInputError
from kubetrade.market.sources import load_source_candles
from kubetrade.modelstore.metadata import ModelMetadata
from kubetrade.signals import Predictor, Rejected, SignalPipeline, replays_file
from kubetrade.spec import TradingBot
from kubetrade.trading import EngineOutput, TradingEngine
from kubetrade.trading.outputs import HaltEvent, Refusal, halt_events, refusals

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
    # Open times of the first candle with a prediction (the first tradable one, after the
    # warm-up) and of the last candle: the period a report evaluates.
    first_signal_time: int | None = None
    last_candle_time: int | None = None
    # Breaker trips and clears (and kills and resets) with their figures, as the ledger has them.
    halts: list[HaltEvent] = field(default_factory=list)
    # Entries not made and orders cancelled or refused, with their reasons.
    refusals: list[Refusal] = field(default_factory=list)


def run_backtest(
    bot: TradingBot,
    candles: Iterable[Candle],
    predictor: Predictor | None,
    withhold: tuple[int, int] | None = None,
) -> BacktestResult:
    """Replay ``candles`` (time, then spec symbol order) through features, model (None for a
    rule-only bot) and engine; no prediction on candles inside ``withhold``
    (``signals.withheld_period``), as in inference."""
    pipeline = SignalPipeline.for_bot(bot, predictor, withhold)
    engine = TradingEngine(bot)
    result = BacktestResult()
    with _collector_paused():
        _replay_into(result, engine, _events(pipeline, list(candles)))
    return result


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the duration.

    A backtest allocates millions of small objects that live until it ends (events, orders,
    fills, equity points) and makes no reference cycles: the collector's passes over them
    reclaim nothing and cost about a tenth of the run. Reference counting still frees
    everything else as usual.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _replay_into(
    result: BacktestResult, engine: TradingEngine, events: Iterator[MarketEvent | Rejected]
) -> None:
    """Drive ``engine`` with ``events`` and gather what it produces into ``result``."""
    # One output for the whole run, and locals, not attributes, in the loop: it runs once per
    # candle.
    out = EngineOutput()
    on_event = engine.on_event
    candles = signals = 0
    first_signal: int | None = None
    last: int | None = None
    for event in events:
        if isinstance(event, Rejected):
            raise InvalidInputError(f"candle refused by the feature engine: {event.reason}")
        on_event(event, out)
        candles += 1
        last = event.candle.open_time
        if event.prediction is not None:
            signals += 1
            if first_signal is None:
                first_signal = last
    engine.flush(out)
    result.orders.extend(out.orders)
    result.fills.extend(out.fills)
    result.equity.extend(out.equity)
    result.halts.extend(halt_events(out.notices))
    result.refusals.extend(refusals(out.notices))
    result.candles, result.signals = candles, signals
    result.first_signal_time, result.last_candle_time = first_signal, last


def _events(pipeline: SignalPipeline, candles: list[Candle]) -> Iterator[MarketEvent | Rejected]:
    """The pipeline's events for ``candles``: replayed with each symbol's features computed at
    once when the candles allow it (the same events, see ``SignalPipeline.replay``), else
    candle by candle in batches as the live bridge sees them."""
    replayed = pipeline.replay(candles)
    if replayed is not None:
        return replayed  # handed on as it is: no generator layer per event
    return (
        event
        for start in range(0, len(candles), BATCH)
        for event in pipeline.process(candles[start : start + BATCH])
    )


def iso_time(ms: int) -> str:
    """An instant in ms as ISO 8601 UTC (``2021-06-01T00:00:00Z``)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


class InSampleError(InvalidInputError):
    """Every candle of a replay lies inside the model's training period."""


@dataclass(frozen=True, slots=True)
class SamplePlan:
    """Which candles of a replay are traded, against the period the model learned from.

    ``training`` is the model's training period ``[start, end)`` (ms UTC; None for a model whose
    metadata does not say). Out of sample (the default) a replay trades the candles after that
    period, or, when the file has none after it, those before it; it replays ``[replay_from,
    replay_to)``, starting ``lead`` candles before the first candle traded so that the features
    are warm on it (those candles feed the features and are not traded). ``resolve`` fixes the
    window on the file's candles. ``in_sample`` (``--in-sample``) replays and trades every
    candle.
    """

    model: str
    training: tuple[int, int] | None
    in_sample: bool
    lead_ms: int = 0
    replay_from: int | None = None
    replay_to: int | None = None

    def resolve(self, first: int, last: int, source: str) -> SamplePlan:
        """The plan for candles opening from ``first`` to ``last``; InSampleError when all of
        them lie inside the training period."""
        if self.in_sample or self.training is None:
            return self
        start, end = self.training
        if last >= end:
            return replace(self, replay_from=end - self.lead_ms, replay_to=None)
        if first + self.lead_ms < start:
            # No candle after the period, but some before it, past the warm-up.
            return replace(self, replay_from=None, replay_to=start)
        raise InSampleError(
            f"{source}: every candle ({iso_time(first)} to {iso_time(last)}) lies inside the "
            f"training period of model {self.model} ({self.period_text()}); replay candles from "
            f"{iso_time(end)} on, or pass --in-sample to trade them knowing the figures are "
            "in-sample"
        )

    def select(self, candles: Sequence[Candle], source: str) -> list[Candle]:
        """The candles to replay (``resolve`` on their first and last open times)."""
        if not candles:
            return []
        plan = self.resolve(candles[0].open_time, candles[-1].open_time, source)
        low = plan.replay_from if plan.replay_from is not None else candles[0].open_time
        high = plan.replay_to if plan.replay_to is not None else candles[-1].open_time + 1
        return [c for c in candles if low <= c.open_time < high]

    def period_text(self) -> str:
        """The model's training period as text."""
        if self.training is None:
            return "unknown"
        return f"{iso_time(self.training[0])} to {iso_time(self.training[1])}"

    def overlaps(self, first: int, last: int) -> bool:
        """Whether candles opening from ``first`` to ``last`` reach into the training period."""
        return self.training is not None and first < self.training[1] and last >= self.training[0]

    def facts(self, first: int | None, last: int | None) -> dict[str, Any]:
        """The report's first fields: in or out of sample, the headline saying so, the period
        evaluated (the candles traded, ``first`` to ``last`` open times) and the model's."""
        inside = first is not None and last is not None and self.overlaps(first, last)
        sample = "in-sample" if inside else "out-of-sample"
        evaluated = (
            f"{iso_time(first)} to {iso_time(last)}"
            if first is not None and last is not None
            else "no candles"
        )
        if inside:
            headline = (
                f"IN-SAMPLE: the candles evaluated ({evaluated}) overlap the training period of "
                f"model {self.model} ({self.period_text()}); these figures describe data the "
                "model learned from, not how it trades on new data"
            )
        elif self.training is None:
            headline = (
                f"out-of-sample unknown: model {self.model} does not record its training "
                f"period; evaluated {evaluated}"
            )
        else:
            headline = (
                f"out-of-sample: evaluated {evaluated}, outside the training period of model "
                f"{self.model} ({self.period_text()})"
            )
        return {
            "sample": sample,
            "headline": headline,
            "evaluated_period": {
                "start": None if first is None else iso_time(first),
                "end": None if last is None else iso_time(last),
            },
            "model_training_period": None
            if self.training is None
            else {"start": iso_time(self.training[0]), "end": iso_time(self.training[1])},
        }


def plan_sample(
    model: str, metadata: ModelMetadata | None, timeframe: str, *, in_sample: bool = False
) -> SamplePlan:
    """The sample plan of a replay of ``timeframe`` candles through the model ``metadata``
    describes (None: a bot without a model, which has nothing to be in-sample of)."""
    if metadata is None:
        return SamplePlan(model, None, in_sample)
    lead_ms = metadata.first_prediction_lead * timeframe_ms(timeframe)
    return SamplePlan(model, metadata.training_period(), in_sample, lead_ms)


def bot_sample_plan(
    bot: TradingBot,
    data_file: str | None,
    metadata_of: Callable[[TradingBot], ModelMetadata | None] | None = None,
) -> SamplePlan | None:
    """The sample plan of a backtest or local run of ``bot``, resolved on its replay file's
    candles (None unless it replays a file: the synthetic market and a live exchange never
    replay what a model trained on); in sample when ``spec.model.inSample`` (what
    ``--in-sample`` sets, see ``trading_in_sample``). The file is read, and refused if bad,
    before the model's metadata is looked up (``metadata_of``, default: the local model
    store)."""
    if not replays_file(bot, data_file):
        return None
    candles = load_source_candles(bot, data_file)
    metadata = (metadata_of or registered_metadata)(bot)
    model = bot.spec.model
    name = "none" if model is None else f"{model.name}:{model.version}"
    in_sample = model is not None and model.in_sample
    sample = plan_sample(name, metadata, bot.spec.timeframe, in_sample=in_sample)
    if not candles:
        return sample
    source = data_file or str(bot.spec.exchange.uri)
    return sample.resolve(candles[0].open_time, candles[-1].open_time, source)


def trading_in_sample(bot: TradingBot) -> TradingBot:
    """``bot`` with ``spec.model.inSample`` set (``--in-sample``): its inference then predicts
    on candles inside the model's training period too."""
    model = bot.spec.model
    if model is None or model.in_sample:
        return bot
    spec = bot.spec.model_copy(update={"model": model.model_copy(update={"in_sample": True})})
    return bot.model_copy(update={"spec": spec})


def registered_metadata(bot: TradingBot) -> ModelMetadata | None:
    """The metadata of the bot's model in the local model store (None: a bot without one)."""
    from kubetrade.modelstore.registry import resolve

    model = bot.spec.model
    return None if model is None else resolve(model.name, model.version).metadata
