"""Versioned, validated message schemas on NATS, and their codecs.

Every message is JSON with a schema version ``v``. Decoding validates the whole message; a
message that fails raises :class:`MessageError`, which workers turn into a dead letter instead
of a crash. Adding an optional field is compatible; anything else needs a new ``v``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubetrade.domain import (
    Candle,
    Direction,
    Fill,
    HaltCause,
    MarketEvent,
    Order,
    OrderReason,
    Prediction,
    Side,
    field_names,
)
from kubetrade.errors import InvalidInputError
from kubetrade.subjects import Subjects

Finite = Annotated[float, Field(allow_inf_nan=False)]
Price = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _shallow(value: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, one level deep.

    ``dataclasses.asdict`` deep-copies every value (tens of µs per candle on the hot path);
    the fields here are immutable scalars, so a shallow view is the same and cheap.
    """
    return {name: getattr(value, name) for name in field_names(type(value))}


class MessageError(InvalidInputError):
    """A message that is not valid JSON or does not match its schema."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = 1


class CandleMessage(_Message):
    """A closed candle published by the feed."""

    symbol: str = Field(min_length=3)
    timeframe: str
    open_time: int = Field(ge=0)
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    published_at: int = Field(description="Wall-clock ms when the feed published it.")
    # Optional, so v1 messages without it still decode; published_at stays for v1 readers.
    published_at_us: int | None = Field(
        default=None, description="Wall-clock µs when the feed published it (newer feeds)."
    )

    @classmethod
    def from_candle(cls, candle: Candle, published_us: int) -> CandleMessage:
        """Wrap a domain candle published at ``published_us`` (wall-clock µs)."""
        return cls(
            **_shallow(candle), published_at=published_us // 1000, published_at_us=published_us
        )

    @property
    def published_us(self) -> int:
        """Wall-clock µs of publication (whole ms from a feed that sent no µs)."""
        return self.published_at * 1000 if self.published_at_us is None else self.published_at_us

    def to_candle(self) -> Candle:
        """The domain candle."""
        return Candle(
            self.symbol,
            self.timeframe,
            self.open_time,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
        )


class PredictionBody(BaseModel):
    """The model's opinion inside a signal."""

    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())

    prob_up: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    direction: Direction
    confidence: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    model_name: str
    model_version: str
    feature_hash: str


class SignalMessage(_Message):
    """A candle with the model's prediction (``None`` without a model or while it warms up) and
    the strategy's features on this candle and the one before (``None`` for a strategy that
    reads none, or while they warm up)."""

    candle: CandleMessage
    prediction: PredictionBody | None
    produced_at: int
    # Optional, so v1 messages without them still decode (a threshold bot's signals).
    features: dict[str, Finite] | None = None
    previous_features: dict[str, Finite] | None = None

    @classmethod
    def from_event(
        cls,
        event: MarketEvent,
        published_us: int,
        produced_at: int,
        *,
        received: CandleMessage | None = None,
    ) -> SignalMessage:
        """Wrap what the inference pipeline produced for one candle (published at µs).

        ``received`` is the message that brought ``event.candle``: it is carried as it is
        instead of being built again (a third of the cost of wrapping a signal).
        """
        p = event.prediction
        body = None if p is None else PredictionBody(**_shallow(p))
        return cls(
            candle=received or CandleMessage.from_candle(event.candle, published_us),
            prediction=body,
            produced_at=produced_at,
            features=None if event.features is None else dict(event.features),
            previous_features=(
                None if event.previous_features is None else dict(event.previous_features)
            ),
        )

    def to_event(self) -> MarketEvent:
        """The domain event the executor acts on."""
        p = self.prediction
        # Field by field: iterating a pydantic model (``dict(p)``) costs several times more.
        prediction = (
            None
            if p is None
            else Prediction(
                p.prob_up, p.direction, p.confidence, p.model_name, p.model_version, p.feature_hash
            )
        )
        return MarketEvent(
            self.candle.to_candle(), prediction, self.features, self.previous_features
        )


# A batch is what the feed publishes at once (one candle time of every symbol, or up to 500
# candles of a fast replay); the bound keeps a forged message from costing unbounded memory.
BATCH_MAX_ITEMS = 10_000


class CandleBatch(_Message):
    """Closed candles the feed published together, in its order (time, then symbol).

    One message per batch rather than per candle: a candle time of ten symbols is one publish,
    one acknowledgement and one delivery to each consumer instead of ten (NATS' per-message
    cost was the pipeline's largest). ``through`` is the feed's cursor after this batch: the
    newest open time of every symbol it has published, so a restarted feed reads only the last
    message to know where each symbol resumes.
    """

    candles: list[CandleMessage] = Field(min_length=1, max_length=BATCH_MAX_ITEMS)
    through: dict[str, Annotated[int, Field(ge=0)]]

    def batch_id(self) -> str:
        """The message id: the first and last candle and how many (a resent batch is equal)."""
        return batch_id(self.candles[0], self.candles[-1], len(self.candles))


class SignalBatch(_Message):
    """The signals of one candle batch (those it admitted), in the batch's order."""

    signals: list[SignalMessage] = Field(min_length=1, max_length=BATCH_MAX_ITEMS)


def batch_id(first: CandleMessage | Candle, last: CandleMessage | Candle, count: int) -> str:
    """Identity of a batch of candles for JetStream's de-duplication."""
    start = f"{first.symbol}:{first.timeframe}:{first.open_time}"
    return f"{start}..{last.symbol}:{last.open_time}:{count}"


def decode_candles(subject: str, data: bytes) -> list[CandleMessage]:
    """The candles of a message, by the subject it came on: a :class:`CandleBatch`, or one
    :class:`CandleMessage` on a symbol's subject (as a forger or a test may send)."""
    if Subjects.is_batch(subject):
        return decode(CandleBatch, data).candles
    return [decode(CandleMessage, data)]


def decode_signals(subject: str, data: bytes) -> list[SignalMessage]:
    """The signals of a message, by the subject it came on: a :class:`SignalBatch`, or one
    :class:`SignalMessage` on a symbol's subject."""
    if Subjects.is_batch(subject):
        return decode(SignalBatch, data).signals
    return [decode(SignalMessage, data)]


class OrderMessage(_Message):
    """An order the executor decided."""

    client_order_id: str
    symbol: str
    side: Side
    quantity: Finite
    reason: OrderReason
    created_at: int
    reference_price: Finite

    @classmethod
    def from_order(cls, order: Order) -> OrderMessage:
        """Wrap a domain order."""
        return cls(**_shallow(order))


class FillMessage(_Message):
    """A fill of an order."""

    client_order_id: str
    symbol: str
    side: Side
    quantity: Finite
    price: Finite
    fee: Finite
    time: int
    reason: OrderReason
    realized_pnl: Finite

    @classmethod
    def from_fill(cls, fill: Fill) -> FillMessage:
        """Wrap a domain fill."""
        return cls(**_shallow(fill))


class StatusMessage(_Message):
    """A component's periodic heartbeat with its figures; the operator and runner read it."""

    component: Literal["feed", "inference", "executor"]
    bot: str
    state: Literal["starting", "running", "finished", "degraded", "failed", "halted"]
    message: str = ""
    time: int
    counters: dict[str, int] = Field(default_factory=dict)
    trading: dict[str, Any] | None = None
    halt_causes: list[HaltCause] = Field(
        default_factory=list,
        description="Why the executor's entries are halted (empty when they are not).",
    )
    model: str | None = Field(
        default=None,
        description="The model ``name:version`` an inference worker is serving (None otherwise).",
    )


class ControlMessage(_Message):
    """An operator or user command to the executor."""

    action: Literal["pause", "resume", "kill", "reset"]
    reason: str = ""
    cause: Literal[HaltCause.KILL_SWITCH, HaltCause.MANUAL] = Field(
        default=HaltCause.MANUAL,
        description="Who engages a kill: the operator's kill-switch annotation, or anyone else.",
    )


M = TypeVar("M", bound=_Message)


def encode(message: _Message) -> bytes:
    """Serialize a message to JSON bytes (what ``model_dump_json`` gives, without its wrapper
    and the round trip through ``str``)."""
    return message.__pydantic_serializer__.to_json(message)


def decode(kind: type[M], data: bytes) -> M:
    """Parse and validate a message; raise MessageError saying what is wrong."""
    try:
        # The class's validator directly: ``model_validate_json`` is only a wrapper around it.
        message: M = kind.__pydantic_validator__.validate_json(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}"
            for e in error.errors()
        )
        raise MessageError(f"invalid {kind.__name__}: {problems}") from None
    return message
