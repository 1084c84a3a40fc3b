"""The paper broker: fill prices with slippage, and fees.

- Market orders (entries, signal/time exits, flattening) and stop orders (stop-loss, trailing
  stop) fill at a base price moved against the trader by ``slippageBps``: buys at
  ``base * (1 + bps / 10_000)``, sells at ``base * (1 - bps / 10_000)``.
- Take-profit orders are resting limit orders: they fill at their limit price (or at a better
  open when the candle gapped through it) with no slippage.
- The fee is ``feeRate * quantity * fill price``, charged in the quote currency on every fill.
- When the exchange's markets are known, every order first passes the same validator the live
  broker applies (``kubetrade.trading.validation``): quantity truncated to the lot step, minimum
  amount and notional, so paper and live refuse the same orders.

:class:`Broker` is what the engine asks of a broker; the live broker (``kubetrade.live``) answers
``check`` with the same validator and routes the orders to the exchange.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from kubetrade.domain import Order, Side
from kubetrade.spec import ExecutionSpec
from kubetrade.trading.outputs import Rejection
from kubetrade.trading.validation import MarketRules, check_order

_BPS = 10_000


@dataclass(frozen=True, slots=True)
class Execution:
    """Price and fee of one paper fill."""

    price: float
    fee: float


class Broker(Protocol):
    """What the engine asks of a broker, paper or live."""

    def check(self, order: Order) -> Order | Rejection:
        """``order`` as the exchange will take it (quantity truncated), or why it is refused."""
        ...


@dataclass(frozen=True, slots=True)
class PaperBroker:
    """Simulated execution costs of one bot; ``markets`` (when known) validate its orders."""

    fee_rate: float
    slippage_bps: float
    markets: Mapping[str, MarketRules] | None = None

    @classmethod
    def from_spec(
        cls, execution: ExecutionSpec, markets: Mapping[str, MarketRules] | None = None
    ) -> PaperBroker:
        """The broker for a bot's ``spec.execution`` (and its exchange's markets, if known)."""
        return cls(
            fee_rate=execution.fee_rate, slippage_bps=execution.slippage_bps, markets=markets
        )

    def check(self, order: Order) -> Order | Rejection:
        """The live broker's validation, when the markets are known; else ``order`` as is."""
        return check_order(self.markets, order)

    def slipped(self, side: Side, base_price: float) -> float:
        """``base_price`` moved against the trader by the slippage."""
        if side is Side.BUY:
            return base_price * (1 + self.slippage_bps / _BPS)
        return base_price * (1 - self.slippage_bps / _BPS)

    def fee(self, quantity: float, price: float) -> float:
        """Fee in quote currency for ``quantity`` at ``price``."""
        return quantity * price * self.fee_rate

    def market(self, side: Side, quantity: float, base_price: float) -> Execution:
        """Fill a market or stop order whose trigger price is ``base_price``."""
        price = self.slipped(side, base_price)
        return Execution(price=price, fee=self.fee(quantity, price))

    def limit(self, quantity: float, price: float) -> Execution:
        """Fill a limit order at ``price`` (no slippage)."""
        return Execution(price=price, fee=self.fee(quantity, price))

    def cost_factor(self) -> float:
        """Worst-case cash per unit of notional at the reference price: slippage plus fee."""
        return (1 + self.slippage_bps / _BPS) * (1 + self.fee_rate)
