"""Admission: what a worker accepts from the bus, checked against the bot's own clock and spec.

Schema validation (``kubetrade/messages.py``) only says a message is well formed; a well-formed
forgery can still steer a bot — a candle dated a hundred years ahead makes inference fill a
century of flat candles, a signal ten years ahead makes every later real signal stale, a status
message claims a run is complete. Every consumer therefore asks an :class:`Admission` before a
message may touch its state. The checks are pure (no I/O, the clock is an argument), and a
refused message never advances what the next check compares against:

- candles and signals: the bot's symbol and timeframe; finite prices with ``0 < low <= open,
  close <= high`` below :data:`MAX_PRICE` and a close within :data:`MAX_MOVE` times the last
  one; open times aligned to the timeframe, strictly increasing per symbol and at most
  ``max_gap_ms`` after the last one. A live feed's candles are also closed by ``now`` (plus
  clock skew) and not older than ``max_gap_ms``; a replay or synthetic feed has no "now".
- status messages: the bot named by the subject, a time within :data:`STATUS_SKEW_MS` of now,
  counters that are non-negative and never go down except when the component restarted.
- control commands: a bounded, printable reason.

A refusal is a :class:`Refusal` whose ``reason`` is a short machine label (the metric's label)
and whose ``detail`` says what and where in one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from kubetrade.domain import Candle, timeframe_ms
from kubetrade.errors import InvalidInputError
from kubetrade.messages import ControlMessage, SignalMessage, StatusMessage
from kubetrade.spec import TradingBot

MAX_PRICE = 1e9
"""No traded asset is quoted above this; a larger price is a forgery or a unit error."""
MAX_VOLUME = 1e18
MAX_MOVE = 10.0
"""A close more than this factor away from the symbol's last close is refused (the largest
hour-to-hour move in the BTC/USD history since 2015 is under 1.3)."""
MIN_MAX_GAP_MS = 30 * 86_400_000
"""The smallest gap a feed may leave between two candles of a symbol: exchanges go down for
days; a month covers every outage in the real histories we replay."""
GAP_CANDLES = 500
"""... or this many candles of the timeframe, whichever is longer."""
CLOCK_SKEW_MS = 60_000
"""How far a live candle may close after our own clock says now (exchange vs node clock)."""
STATUS_SKEW_MS = 120_000
"""How far a status message's time may be from now (node clocks differ; statuses are 1 s)."""
RESTART_SILENCE_MS = 1_500
"""A component's counters may go down only after it was silent this long (a restart), or in
a ``starting`` status: a forged status between two real ones cannot roll them back."""
MAX_TEXT = 2_000
MAX_TRACKED = 10_000
"""Components remembered by :class:`StatusAdmission`; forged subjects cannot grow it further."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message was not admitted: a metric label and a one-line explanation."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class AdmissionError(InvalidInputError):
    """A message that is well formed but must not be admitted (dead-lettered by the caller)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """The bounds one bot's messages must respect, derived from its spec."""

    bot: str
    symbols: frozenset[str]
    timeframe: str
    timeframe_ms: int
    live: bool
    max_gap_ms: int

    @classmethod
    def for_bot(cls, bot: TradingBot) -> AdmissionPolicy:
        """The policy of ``bot``: its symbols, timeframe, and whether its feed is live."""
        tf = timeframe_ms(bot.spec.timeframe)
        return cls(
            bot=bot.key,
            symbols=frozenset(bot.spec.symbols),
            timeframe=bot.spec.timeframe,
            timeframe_ms=tf,
            live=bot.spec.exchange.is_exchange,
            max_gap_ms=max(MIN_MAX_GAP_MS, GAP_CANDLES * tf),
        )


def check_candle(
    policy: AdmissionPolicy,
    candle: Candle,
    now_ms: int,
    last_open: int | None,
    last_close: float | None,
) -> Refusal | None:
    """Why ``candle`` must not be admitted after ``last_open``/``last_close`` of its symbol."""
    # The checks run per message on the hot path: the text is built only for a refusal.
    where = _Where(candle)
    if candle.symbol not in policy.symbols:
        known = ", ".join(sorted(policy.symbols))
        return Refusal("unknown_symbol", f"{where}: bot {policy.bot} trades {known} only")
    if candle.timeframe != policy.timeframe:
        return Refusal(
            "wrong_timeframe", f"{where}: bot {policy.bot} trades {policy.timeframe} candles"
        )
    o, h, lo, c = candle.open, candle.high, candle.low, candle.close
    # One chained comparison on the hot path; it is False for NaN and infinities too.
    if not (0 < lo <= min(o, c) and max(o, c) <= h <= MAX_PRICE):
        if not all(math.isfinite(p) and 0 < p <= MAX_PRICE for p in (o, h, lo, c)):
            return Refusal("price_out_of_range", f"{where}: prices must be in (0, {MAX_PRICE:g}]")
        return Refusal("inconsistent_prices", f"{where}: expected low <= open, close <= high")
    if not 0 <= candle.volume <= MAX_VOLUME:
        return Refusal("volume_out_of_range", f"{where}: volume must be in [0, {MAX_VOLUME:g}]")
    if policy.timeframe_ms <= 86_400_000 and candle.open_time % policy.timeframe_ms:
        return Refusal("misaligned_time", f"{where}: not on a {policy.timeframe} boundary")
    if last_open is not None:
        if candle.open_time <= last_open:
            return Refusal(
                "not_monotone", f"{where}: the last admitted {candle.symbol} candle is {last_open}"
            )
        if candle.open_time - last_open > policy.max_gap_ms:
            return Refusal(
                "time_gap",
                f"{where}: {(candle.open_time - last_open) / 3_600_000:,.0f} h after the last "
                f"one, more than the {policy.max_gap_ms / 3_600_000:,.0f} h allowed",
            )
    if last_close is not None and not 1 / MAX_MOVE <= candle.close / last_close <= MAX_MOVE:
        return Refusal("price_jump", f"{where}: close {candle.close:g} vs the last {last_close:g}")
    if policy.live:
        close_time = candle.open_time + policy.timeframe_ms
        if close_time > now_ms + CLOCK_SKEW_MS:
            return Refusal("future_time", f"{where}: closes after now ({now_ms})")
        if now_ms - candle.open_time > policy.max_gap_ms:
            return Refusal("stale_time", f"{where}: older than the allowed gap from now")
    return None


class _Where:
    """``<symbol> <timeframe> candle at <open time>``, formatted only when shown."""

    __slots__ = ("candle",)

    def __init__(self, candle: Candle) -> None:
        self.candle = candle

    def __format__(self, spec: str) -> str:
        c = self.candle
        return f"{c.symbol} {c.timeframe} candle at {c.open_time}"


@dataclass
class CandleAdmission:
    """The per-symbol memory candle and signal checks compare against.

    Only admitted candles are remembered, so a refused one cannot move the window.
    """

    policy: AdmissionPolicy
    repeats: bool = False
    """Admit a candle time equal to the last one without recording it: during a model rollout
    two inference pods sign the same candle, and the executor's engine ignores the second."""
    last_open: dict[str, int] = field(default_factory=dict)
    last_close: dict[str, float] = field(default_factory=dict)

    def check(self, candle: Candle, now_ms: int) -> Refusal | None:
        """Why ``candle`` must not be admitted now; None when it may (nothing is recorded)."""
        if self.repeats and candle.open_time == self.last_open.get(candle.symbol):
            return None
        return check_candle(
            self.policy,
            candle,
            now_ms,
            self.last_open.get(candle.symbol),
            self.last_close.get(candle.symbol),
        )

    def admit(self, candle: Candle, now_ms: int) -> Refusal | None:
        """Check ``candle`` and, when admitted, remember it as its symbol's latest."""
        refusal = self.check(candle, now_ms)
        if refusal is None and candle.open_time != self.last_open.get(candle.symbol):
            self.last_open[candle.symbol] = candle.open_time
            self.last_close[candle.symbol] = candle.close
        return refusal

    def admit_signal(self, signal: SignalMessage, now_ms: int) -> Refusal | None:
        """Check a signal: its candle as a candle, and its prediction's text fields."""
        p = signal.prediction
        if p is not None and any(
            len(text) > 200 for text in (p.model_name, p.model_version, p.feature_hash)
        ):
            return Refusal("oversized_field", "prediction model name, version or hash too long")
        return self.admit(signal.candle.to_candle(), now_ms)

    def replayed(self, candles: Iterable[Candle], now_ms: int) -> list[Candle]:
        """Admit a history (a restart's warm-up) and return what was admitted, in order.

        A live policy checks "now" only for the newest candles of a warm-up: history is old.
        """
        return [c for c in candles if self.admit(c, now_ms) is None]

    def seed(self, last_open: dict[str, int]) -> None:
        """Start from what a restored state already processed (the executor's checkpoint)."""
        for symbol, open_time in last_open.items():
            if symbol in self.policy.symbols:
                self.last_open[symbol] = int(open_time)


def check_control(message: ControlMessage) -> Refusal | None:
    """Why a control command must not be applied (its action is already schema-checked)."""
    if len(message.reason) > MAX_TEXT or not message.reason.isprintable():
        return Refusal("bad_text", f"control {message.action}: reason too long or not printable")
    return None


def status_subject_key(subject: str) -> str | None:
    """``namespace/bot`` of a status subject ``kubetrade.<namespace>.<bot>.status``."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "kubetrade" or parts[3] != "status":
        return None
    return f"{parts[1]}/{parts[2]}"


@dataclass(frozen=True, slots=True)
class _Seen:
    counters: dict[str, int]
    received_ms: int


@dataclass
class StatusAdmission:
    """Checks the status messages of bots against their subject, the clock and the last one."""

    _seen: dict[tuple[str, str], _Seen] = field(default_factory=dict)

    def admit(self, subject: str, message: StatusMessage, now_ms: int) -> Refusal | None:
        """Check a status received on ``subject``; remember it when admitted."""
        key = status_subject_key(subject)
        where = f"{message.component} status on {subject}"
        if key is None:
            return Refusal("wrong_subject", f"{where}: not a bot status subject")
        if message.bot != key:
            return Refusal("wrong_bot", f"{where}: claims to be from bot {message.bot!r}")
        if abs(message.time - now_ms) > STATUS_SKEW_MS:
            return Refusal(
                "status_time", f"{where}: time {message.time} is over 120 s from now ({now_ms})"
            )
        if len(message.message) > MAX_TEXT or any(v < 0 for v in message.counters.values()):
            return Refusal("bad_counters", f"{where}: negative counters or oversized message")
        previous = self._seen.get((key, message.component))
        if (
            previous is not None
            and message.state != "starting"
            and now_ms - previous.received_ms < RESTART_SILENCE_MS
        ):
            lower = sorted(
                name
                for name, value in message.counters.items()
                if value < previous.counters.get(name, 0)
            )
            if lower:
                return Refusal(
                    "counters_decreased",
                    f"{where}: {', '.join(lower)} went down without a restart",
                )
        self._seen.pop((key, message.component), None)  # re-inserted last: oldest first
        self._seen[(key, message.component)] = _Seen(dict(message.counters), now_ms)
        if len(self._seen) > MAX_TRACKED:
            del self._seen[next(iter(self._seen))]
        return None

    def forget(self, key: str) -> None:
        """Drop what was seen from the bot ``key`` (deleted)."""
        for seen in [k for k in self._seen if k[0] == key]:
            del self._seen[seen]
