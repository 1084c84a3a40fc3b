"""NATS subjects and JetStream names for one bot.

Layout: ``kubetrade.<namespace>.<bot>.<kind>[.<symbol>|.batch]``. Symbols become one subject
token (``BTC/USDT`` -> ``BTC-USDT``) because ``.`` separates tokens and ``/`` reads badly in
tools. Candles and signals travel in batches (``candles.batch``, ``signals.batch``); the
per-symbol subjects remain valid for single messages.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_TOKEN_SAFE = re.compile(r"[^A-Za-z0-9_-]")


# A bot has a handful of symbols and asks for their subjects every candle; bounded, because a
# forged message may name any symbol.
@functools.lru_cache(maxsize=1024)
def symbol_token(symbol: str) -> str:
    """The subject token of a symbol: ``BTC/USDT`` -> ``BTC-USDT``."""
    return _TOKEN_SAFE.sub("-", symbol)


@dataclass(frozen=True, slots=True)
class Subjects:
    """Every subject, stream and durable consumer name of one bot."""

    namespace: str
    bot: str

    @property
    def prefix(self) -> str:
        """Common prefix of the bot's subjects."""
        return f"kubetrade.{self.namespace}.{self.bot}"

    def candles(self, symbol: str) -> str:
        """Closed candles of one symbol (JetStream)."""
        return f"{self.prefix}.candles.{symbol_token(symbol)}"

    @property
    def candle_batches(self) -> str:
        """Batches of closed candles, every symbol's (JetStream; what the feed publishes).
        ``batch`` is lower case: no symbol's token can be it."""
        return f"{self.prefix}.candles.batch"

    @property
    def all_candles(self) -> str:
        """Wildcard over every symbol's candles."""
        return f"{self.prefix}.candles.>"

    def signals(self, symbol: str) -> str:
        """Model signals of one symbol (JetStream)."""
        return f"{self.prefix}.signals.{symbol_token(symbol)}"

    @property
    def signal_batches(self) -> str:
        """Batches of signals, one per candle batch (JetStream; what inference publishes)."""
        return f"{self.prefix}.signals.batch"

    @property
    def all_signals(self) -> str:
        """Wildcard over every symbol's signals."""
        return f"{self.prefix}.signals.>"

    @property
    def orders(self) -> str:
        """Orders decided by the executor (JetStream)."""
        return f"{self.prefix}.orders"

    @property
    def fills(self) -> str:
        """Fills of those orders (JetStream)."""
        return f"{self.prefix}.fills"

    @property
    def status(self) -> str:
        """Periodic status of every component (core NATS; the operator aggregates it)."""
        return f"{self.prefix}.status"

    @property
    def control(self) -> str:
        """Pause, resume, kill switch and reset for the executor (core NATS)."""
        return f"{self.prefix}.control"

    def dead_letter(self, component: str) -> str:
        """Where a component puts messages it could not decode (JetStream)."""
        return f"{self.prefix}.dlq.{component}"

    @property
    def stream(self) -> str:
        """The bot's JetStream stream: candles, signals, orders, fills and dead letters."""
        return f"KUBETRADE_{_stream_token(self.namespace)}_{_stream_token(self.bot)}"

    @property
    def stream_subjects(self) -> list[str]:
        """Subjects the bot's stream captures."""
        return [
            f"{self.prefix}.candles.>",
            f"{self.prefix}.signals.>",
            self.orders,
            self.fills,
            f"{self.prefix}.dlq.>",
        ]

    @staticmethod
    def is_batch(subject: str) -> bool:
        """Whether a candle or signal subject carries batches (else one symbol's messages)."""
        return subject.endswith(".batch")

    def durable(self, component: str) -> str:
        """Durable consumer name of a component."""
        return f"{component}"


def _stream_token(name: str) -> str:
    return name.upper().replace("-", "_")
