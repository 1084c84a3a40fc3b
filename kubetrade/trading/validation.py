"""Order validation from an exchange's markets, before anything is sent.

One pure function, :func:`validate_order`, applied by the live broker to every order and by the
paper broker when the markets are known, so paper and live refuse the same orders:

- the amount is truncated to the market's amount precision and the limit price rounded to its
  price precision, exactly as ccxt's ``amount_to_precision`` / ``price_to_precision`` do (the
  same ``decimal_to_precision`` function, in the exchange's precision mode);
- the truncated amount must reach the minimum amount (lot size) and stay under the maximum;
- the notional (amount x price, the reference price for a market order) must reach the minimum
  cost, which ccxt itself does not check: an order of 0.6 USDT goes out against a minimum of 5
  and is refused by the exchange;
- the order type must be one the market accepts (Binance lists them per symbol).

A refused order is a :class:`Refusal` with a machine-readable code and a sentence, never an
exception: the caller records and counts it and the bot carries on.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import ModuleType
from typing import Any

from kubetrade.domain import Order, Side
from kubetrade.trading.outputs import Rejection


class OrderType(StrEnum):
    """Order types the bots send."""

    MARKET = "market"
    LIMIT = "limit"


Refusal = Rejection  # a refused order: code and message, like a refused entry

# ccxt's precision mode of the exchanges that quote tick sizes (its ``TICK_SIZE``; a test
# checks the value), named here so that importing this module does not import ccxt.
TICK_SIZE = 4


def _ccxt_precision() -> ModuleType:
    """ccxt's rounding module, imported when first needed: ``import ccxt`` loads every exchange
    class (~65 MiB), which a paper bot without markets never needs."""
    return importlib.import_module("ccxt.base.decimal_to_precision")


@dataclass(frozen=True, slots=True)
class MarketRules:
    """What an exchange allows on one market, from its ccxt market structure.

    ``precision_mode`` is the exchange's ccxt precision mode (``TICK_SIZE`` for the exchanges
    supported here: precisions are step sizes). A limit of None is no limit; ``order_types``
    None means the exchange does not list them (every type is tried).
    """

    symbol: str
    amount_precision: float | None
    price_precision: float | None
    precision_mode: int = TICK_SIZE
    min_amount: float | None = None
    max_amount: float | None = None
    min_cost: float | None = None
    max_cost: float | None = None
    order_types: frozenset[OrderType] | None = None

    @classmethod
    def from_ccxt(cls, market: Mapping[str, Any], precision_mode: int) -> MarketRules:
        """The rules of a ccxt unified market (``exchange.markets[symbol]``)."""
        precision = market.get("precision") or {}
        limits = market.get("limits") or {}
        amount, cost = limits.get("amount") or {}, limits.get("cost") or {}
        listed = (market.get("info") or {}).get("orderTypes")
        types = None
        if isinstance(listed, list):
            known = {t.value.upper(): t for t in OrderType}
            types = frozenset(known[name] for name in listed if name in known)
        return cls(
            symbol=str(market["symbol"]),
            amount_precision=_number(precision.get("amount")),
            price_precision=_number(precision.get("price")),
            precision_mode=precision_mode,
            min_amount=_number(amount.get("min")),
            max_amount=_number(amount.get("max")),
            min_cost=_number(cost.get("min")),
            max_cost=_number(cost.get("max")),
            order_types=types,
        )


@dataclass(frozen=True, slots=True)
class ValidOrder:
    """An order that passed: amount and price as the exchange will receive them."""

    symbol: str
    side: Side
    type: OrderType
    amount: float
    price: float | None


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def truncate_amount(rules: MarketRules, amount: float) -> float:
    """``amount`` truncated to the market's amount precision, as ccxt's
    ``amount_to_precision`` does (0 when less than one step)."""
    return _to_precision(amount, "TRUNCATE", rules.amount_precision, rules.precision_mode)


def round_price(rules: MarketRules, price: float) -> float:
    """``price`` rounded to the market's price precision, as ccxt's ``price_to_precision``."""
    return _to_precision(price, "ROUND", rules.price_precision, rules.precision_mode)


def _to_precision(value: float, rounding: str, precision: float | None, mode: int) -> float:
    if precision is None:
        return value
    ccxt = _ccxt_precision()
    text = ccxt.decimal_to_precision(
        value, getattr(ccxt, rounding), precision, mode, ccxt.NO_PADDING
    )
    return float(text)


def validate_order(
    rules: MarketRules,
    *,
    side: Side,
    kind: OrderType,
    amount: float,
    reference_price: float,
    price: float | None = None,
) -> ValidOrder | Refusal:
    """The order as it may be sent, or why it may not.

    ``reference_price`` values a market order's notional (the last close); ``price`` is a limit
    order's price.
    """
    where = f"{kind.value} {side.value} {amount:.10g} {rules.symbol}"
    if rules.order_types is not None and kind not in rules.order_types:
        allowed = ", ".join(sorted(t.value for t in rules.order_types)) or "none"
        return Refusal("order_type", f"{where}: the market takes {allowed} orders only")
    if kind is OrderType.LIMIT:
        if price is None or price <= 0:
            return Refusal("price", f"{where}: a limit order needs a positive price")
        price = round_price(rules, price)
        if price <= 0:
            return Refusal("price", f"{where}: the price rounds to 0 at the market's tick")
    sent = truncate_amount(rules, amount)
    if sent <= 0:
        return Refusal(
            "amount_precision",
            f"{where}: the amount truncates to 0 at the market's step {rules.amount_precision}",
        )
    if rules.min_amount is not None and sent < rules.min_amount:
        return Refusal(
            "min_amount", f"{where}: amount {sent:.10g} is below the minimum {rules.min_amount}"
        )
    if rules.max_amount is not None and sent > rules.max_amount:
        return Refusal(
            "max_amount", f"{where}: amount {sent:.10g} is above the maximum {rules.max_amount}"
        )
    notional = sent * (price if price is not None else reference_price)
    if rules.min_cost is not None and notional < rules.min_cost:
        return Refusal(
            "min_notional",
            f"{where}: notional {notional:.10g} is below the market's minimum {rules.min_cost}",
        )
    if rules.max_cost is not None and notional > rules.max_cost:
        return Refusal(
            "max_notional",
            f"{where}: notional {notional:.10g} is above the market's maximum {rules.max_cost}",
        )
    return ValidOrder(rules.symbol, side, kind, sent, price)


def check_order(
    markets: Mapping[str, MarketRules] | None,
    order: Order,
    kind: OrderType = OrderType.MARKET,
    price: float | None = None,
) -> Order | Refusal:
    """``order`` with its quantity as the exchange will take it, or why it is refused
    (``price``: a limit order's price).

    Without markets (a paper bot whose exchange rules are unknown) every order passes as it is.
    """
    if markets is None:
        return order
    rules = markets.get(order.symbol)
    if rules is None:
        return Refusal(
            "unknown_market", f"{order.client_order_id}: the exchange lists no {order.symbol}"
        )
    verdict = validate_order(
        rules,
        side=order.side,
        kind=kind,
        amount=order.quantity,
        reference_price=order.reference_price,
        price=price,
    )
    if isinstance(verdict, Rejection):
        return Refusal(verdict.code, f"{order.client_order_id}: {verdict.message}")
    return replace(order, quantity=verdict.amount)
