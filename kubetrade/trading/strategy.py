"""The strategy's vocabulary inside the trading core: the side held and the intent.

Strategies themselves live in :mod:`kubetrade.strategies` (the threshold on the model's
probability, rule strategies, installed ones); the engine asks the bot's strategy for an
:class:`Intent` on every candle and applies it through its gates, sizing and broker.
"""

from __future__ import annotations

from kubetrade.strategies.base import Intent, PositionSide

__all__ = ["Intent", "PositionSide"]
