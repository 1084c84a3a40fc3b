"""Live orders as a state machine: forward only, each trade applied once, fees converted."""

from __future__ import annotations

import pytest

from kubetrade.domain import Side
from kubetrade.trading.order_state import (
    ExchangeTrade,
    LiveOrder,
    LiveStatus,
    OrderUpdate,
    advance,
    fee_in_quote,
    reject,
)

ORDER = LiveOrder("c1", "d1", 0, "BTC/USDT", Side.BUY, "limit", 0.01, 60000.0)


def trade(n: int, amount: float, price: float = 60000.0) -> ExchangeTrade:
    return ExchangeTrade(str(n), price, amount, amount * 0.001, "BTC", n)


def test_partial_then_full() -> None:
    opened, _ = advance(ORDER, OrderUpdate(LiveStatus.OPEN, "x1", 0.0))
    part, new = advance(opened, OrderUpdate(LiveStatus.OPEN, "x1", 0.004), (trade(1, 0.004),))
    assert part.status is LiveStatus.PARTIALLY_FILLED and new == (trade(1, 0.004),)
    done, new = advance(
        part,
        OrderUpdate(LiveStatus.FILLED, "x1", 0.01),
        (trade(1, 0.004), trade(2, 0.006, 60010.0)),
    )
    assert new == (trade(2, 0.006, 60010.0),)
    assert done.status is LiveStatus.FILLED and done.filled == pytest.approx(0.01)
    assert done.average_price == pytest.approx((0.004 * 60000 + 0.006 * 60010) / 0.01)
    assert done.fees == {"BTC": pytest.approx(0.00001)} and done.exchange_id == "x1"
    assert done.trade_ids == ("1", "2") and done.is_terminal


def test_stale_answers_never_move_back() -> None:
    part, _ = advance(ORDER, OrderUpdate(LiveStatus.OPEN, "x1", 0.004), (trade(1, 0.004),))
    stale, new = advance(part, OrderUpdate(LiveStatus.OPEN, "x1", 0.0), (trade(1, 0.004),))
    assert stale == part and new == ()
    done, _ = advance(part, OrderUpdate(LiveStatus.CANCELLED, "x1", 0.004))
    assert advance(done, OrderUpdate(LiveStatus.OPEN, "x1", 0.004))[0].status is (
        LiveStatus.CANCELLED
    )
    # A trade reported after the cancel still counts.
    late, new = advance(done, None, (trade(3, 0.001),))
    assert late.status is LiveStatus.CANCELLED and late.filled == pytest.approx(0.005)


def test_ccxt_statuses() -> None:
    assert OrderUpdate.from_ccxt({"id": 1, "status": "open", "filled": 0}).status is (
        LiveStatus.OPEN
    )
    assert OrderUpdate.from_ccxt({"id": 1, "status": "open", "filled": 0.1}).status is (
        LiveStatus.PARTIALLY_FILLED
    )
    assert OrderUpdate.from_ccxt({"id": 1, "status": "closed", "filled": 1}).status is (
        LiveStatus.FILLED
    )
    assert OrderUpdate.from_ccxt({"id": 1, "status": "canceled"}).status is LiveStatus.CANCELLED
    assert reject(ORDER, "why").status is LiveStatus.REJECTED


def test_fees_in_quote() -> None:
    fees = {"BTC": 0.00001, "USDT": 0.5, "BNB": 0.01}
    assert fee_in_quote(fees, base="BTC", quote="USDT", price=60000) is None
    assert fee_in_quote(
        fees, base="BTC", quote="USDT", price=60000, rates={"BNB": 600}
    ) == pytest.approx(0.6 + 0.5 + 6)
