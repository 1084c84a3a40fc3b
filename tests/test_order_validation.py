"""The order validator from an exchange's markets: precision exactly as ccxt applies it, the
minimums ccxt does not check, order types; the paper broker refuses what the live one does."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import ccxt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetrade.domain import Order, OrderReason, Side
from kubetrade.trading import TradingEngine
from kubetrade.trading.broker import PaperBroker
from kubetrade.trading.outputs import NoticeKind, Rejection
from kubetrade.trading.validation import (
    MarketRules,
    OrderType,
    ValidOrder,
    check_order,
    validate_order,
)
from tests.test_trading_engine import feed, flat, make_bot

BTC_USDT: dict[str, Any] = {
    "id": "BTCUSDT",
    "symbol": "BTC/USDT",
    "base": "BTC",
    "quote": "USDT",
    "baseId": "BTC",
    "quoteId": "USDT",
    "active": True,
    "type": "spot",
    "spot": True,
    "precision": {"amount": 0.00001, "price": 0.01},
    "limits": {
        "amount": {"min": 0.00001, "max": 9000},
        "price": {"min": 0.01, "max": 1e6},
        "cost": {"min": 5, "max": 9e6},
    },
    "info": {"orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"]},
}


def ccxt_binance() -> ccxt.binance:
    exchange = ccxt.binance()
    exchange.set_markets([BTC_USDT])
    return exchange


RULES = MarketRules.from_ccxt(BTC_USDT, ccxt.TICK_SIZE)


def test_rules_from_a_ccxt_market() -> None:
    assert (
        MarketRules(
            symbol="BTC/USDT",
            amount_precision=0.00001,
            price_precision=0.01,
            precision_mode=ccxt.TICK_SIZE,
            min_amount=0.00001,
            max_amount=9000,
            min_cost=5,
            max_cost=9e6,
            order_types=frozenset({OrderType.LIMIT, OrderType.MARKET}),
        )
        == RULES
    )


@settings(max_examples=300, deadline=None)
@given(
    amount=st.floats(min_value=0.00002, max_value=50, allow_nan=False),
    price=st.floats(min_value=1000, max_value=100_000, allow_nan=False),
)
def test_precision_is_ccxts(amount: float, price: float) -> None:
    """Amount truncated, price rounded: the same strings ccxt would send."""
    exchange = ccxt_binance()
    verdict = validate_order(
        RULES,
        side=Side.BUY,
        kind=OrderType.LIMIT,
        amount=amount,
        reference_price=price,
        price=price,
    )
    expected_amount = float(exchange.amount_to_precision("BTC/USDT", amount))
    expected_price = float(exchange.price_to_precision("BTC/USDT", price))
    if expected_amount * expected_price < 5:
        assert isinstance(verdict, Rejection) and verdict.code == "min_notional"
    else:
        assert verdict == ValidOrder(
            "BTC/USDT", Side.BUY, OrderType.LIMIT, expected_amount, expected_price
        )


def test_truncation_never_rounds_up() -> None:
    verdict = validate_order(
        RULES, side=Side.SELL, kind=OrderType.MARKET, amount=0.123456789, reference_price=60000
    )
    assert isinstance(verdict, ValidOrder) and verdict.amount == 0.12345


@pytest.mark.parametrize(
    ("amount", "kind", "price", "code"),
    [
        (0.00001, OrderType.MARKET, None, "min_notional"),  # 0.6 USDT, minimum 5
        (0.000009, OrderType.MARKET, None, "amount_precision"),
        (9001, OrderType.MARKET, None, "max_amount"),
        (0.001, OrderType.LIMIT, None, "price"),
    ],
)
def test_refusals(amount: float, kind: OrderType, price: float | None, code: str) -> None:
    verdict = validate_order(
        RULES, side=Side.BUY, kind=kind, amount=amount, reference_price=60000, price=price
    )
    assert isinstance(verdict, Rejection) and verdict.code == code, verdict


def test_ccxt_itself_does_not_check_the_minimum_notional() -> None:
    """The reason the validator exists: ccxt lets a 0.6 USDT order through."""
    exchange = ccxt_binance()
    assert exchange.amount_to_precision("BTC/USDT", 0.00001) == "0.00001"
    verdict = validate_order(
        RULES, side=Side.BUY, kind=OrderType.MARKET, amount=0.00001, reference_price=60000
    )
    assert isinstance(verdict, Rejection) and "0.6" in verdict.message


def test_order_types_the_market_does_not_list_are_refused() -> None:
    rules = MarketRules.from_ccxt({**BTC_USDT, "info": {"orderTypes": ["LIMIT"]}}, ccxt.TICK_SIZE)
    verdict = validate_order(
        rules, side=Side.BUY, kind=OrderType.MARKET, amount=0.001, reference_price=60000
    )
    assert isinstance(verdict, Rejection) and verdict.code == "order_type"


def order(quantity: float, symbol: str = "BTC/USDT") -> Order:
    return Order("cid", symbol, Side.BUY, quantity, OrderReason.ENTRY_LONG, 0, 60000)


def test_paper_broker_validates_when_markets_are_known() -> None:
    unknown = PaperBroker(fee_rate=0.001, slippage_bps=5)
    known = PaperBroker(fee_rate=0.001, slippage_bps=5, markets={"BTC/USDT": RULES})
    assert unknown.check(order(0.00001)) == order(0.00001)
    refused = known.check(order(0.00001))
    assert isinstance(refused, Rejection) and refused.code == "min_notional"
    assert known.check(order(0.123456789)) == order(0.12345)
    missing = known.check(order(1, "ETH/USDT"))
    assert isinstance(missing, Rejection) and missing.code == "unknown_market"
    assert check_order({"BTC/USDT": RULES}, order(0.00001)) == refused


def test_the_engine_refuses_what_the_market_refuses_and_truncates_to_the_step() -> None:
    """Paper with markets known: an entry under the minimum notional is an order_refused
    notice (no order, no reserved cash); a valid one is truncated to the lot step."""
    rules = MarketRules.from_ccxt(
        {**BTC_USDT, "limits": {**BTC_USDT["limits"], "cost": {"min": 6000, "max": None}}},
        ccxt.TICK_SIZE,
    )
    small = make_bot(execution={"initialCapital": 10_000})  # 50 % = 5,000 < 6,000
    engine = TradingEngine(small, {"BTC/USDT": rules})
    out = feed(engine, flat(0, 60000.123), 0.7)
    assert out.orders == []
    [notice] = out.notices
    assert (notice.kind, notice.code) == (NoticeKind.ORDER_REFUSED, "min_notional")
    assert feed(engine, flat(1, 60000)).fills == [] and engine.summary().open_positions == 0

    engine = TradingEngine(make_bot(execution={"initialCapital": 20_000}), {"BTC/USDT": rules})
    [order] = feed(engine, flat(0, 60000.123), 0.7).orders
    assert order.quantity == 0.16666  # 10,000 / 60,000.123 = 0.1666663..., truncated


def test_our_tick_size_mode_is_ccxts() -> None:
    from kubetrade.trading import validation

    assert validation.TICK_SIZE == ccxt.TICK_SIZE


def test_a_paper_worker_does_not_import_ccxt() -> None:
    """``import ccxt`` costs ~65 MiB of every process; the executor's memory limit is 256 MiB."""
    code = (
        "import sys, kubetrade.workers.executor, kubetrade.workers.feed; "
        "print(sorted(m for m in sys.modules if m == 'ccxt' or m.startswith('ccxt.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]", loaded
