"""The trading core's pure rules: ATR, quantity rounding, strategy, sizing, exits, costs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetrade.domain import Candle, Direction, OrderReason, Prediction, Side
from kubetrade.spec import BreakerSpec, SizingSpec, TrailingStopSpec
from kubetrade.strategies import StrategyInputs
from kubetrade.strategies.builtin import Threshold, ThresholdParams
from kubetrade.trading.atr import AtrState
from kubetrade.trading.breakers import BreakerState, evaluate, quiet_above, record_round_trip
from kubetrade.trading.broker import PaperBroker
from kubetrade.trading.exits import advance_trailing, intrabar_exit
from kubetrade.trading.outputs import Rejection
from kubetrade.trading.portfolio import Portfolio, Position
from kubetrade.trading.quantity import round_quantity
from kubetrade.trading.sizing import Sized, SizingRequest, kelly_fraction, size_entry
from kubetrade.trading.strategy import Intent, PositionSide


def bar(i: int, o: float, h: float, lo: float, c: float) -> Candle:
    return Candle("BTC/USDT", "1h", i * 3_600_000, o, h, lo, c, 1.0)


def test_atr_uses_wilder_smoothing_after_a_simple_mean_warm_up() -> None:
    state = AtrState(period=3)
    candles = [
        bar(0, 100, 101, 99, 101),  # TR 2 (no previous close)
        bar(1, 101, 103, 100, 102),  # TR 3
        bar(2, 102, 102, 98, 99),  # TR 4 = |98 - 102|
        bar(3, 99, 105, 99, 104),  # TR 6
    ]
    values = []
    for candle in candles:
        state.update(candle)
        values.append(state.value)
    assert values[:2] == [None, None]
    assert values[2] == pytest.approx(3.0)
    assert values[3] == pytest.approx((3.0 * 2 + 6) / 3)


def test_quantities_round_down_to_eight_decimals() -> None:
    assert round_quantity(0.3) == 0.3
    assert round_quantity(1.234567899) == 1.23456789
    assert round_quantity(2e-9) == 0.0
    assert round_quantity(-1.0) == 0.0
    assert round_quantity(float("nan")) == 0.0


def _prediction(p: float, confidence: float = 1.0) -> Prediction:
    return Prediction(p, Direction.UP, confidence, "m", "1", "h")


def decide(
    params: ThresholdParams, prediction: Prediction | None, holding: PositionSide | None
) -> Intent:
    return Threshold(params).decide(StrategyInputs(prediction), holding)


@pytest.mark.parametrize(
    ("p", "holding", "intent"),
    [
        (0.61, None, Intent.ENTER_LONG),
        (0.6, None, Intent.HOLD),  # strictly above longAbove
        (0.39, None, Intent.ENTER_SHORT),
        (0.4, None, Intent.HOLD),
        (0.49, PositionSide.LONG, Intent.EXIT),
        (0.5, PositionSide.LONG, Intent.HOLD),
        (0.1, PositionSide.LONG, Intent.EXIT),  # no reversal in one step
        (0.51, PositionSide.SHORT, Intent.EXIT),
        (0.9, PositionSide.SHORT, Intent.EXIT),
        (0.45, PositionSide.SHORT, Intent.HOLD),
    ],
)
def test_threshold_strategy(p: float, holding: PositionSide | None, intent: Intent) -> None:
    strategy = ThresholdParams(allow_short=True)
    assert decide(strategy, _prediction(p), holding) is intent


def test_strategy_holds_without_a_prediction_or_confidence_and_without_shorts() -> None:
    assert decide(ThresholdParams(), None, None) is Intent.HOLD
    assert decide(ThresholdParams(min_confidence=0.8), _prediction(0.9, 0.7), None) is Intent.HOLD
    assert decide(ThresholdParams(), _prediction(0.1), None) is Intent.HOLD


def _request(**changes: object) -> SizingRequest:
    base: dict[str, object] = {
        "side": PositionSide.LONG,
        "prob_up": 0.7,
        "price": 100.0,
        "equity": 10_000.0,
        "buying_power": 10_000.0,
        "stop_distance": 4.0,
        "cost_factor": 1.0,
    }
    base.update(changes)
    return SizingRequest(**base)  # type: ignore[arg-type]


def test_kelly_sizing_bets_the_fraction_of_the_kelly_edge() -> None:
    sizing = SizingSpec(method="kelly", kelly_fraction=0.5, payoff_ratio=1, max_position_pct=100)
    assert kelly_fraction(0.7, 1) == pytest.approx(0.4)
    assert size_entry(sizing, _request()) == Sized(20.0, None)
    short = size_entry(sizing, _request(side=PositionSide.SHORT, prob_up=0.2))
    assert short == Sized(30.0, None)  # p = 0.8 for the short: f* = 0.6


def test_kelly_without_an_edge_places_no_bet() -> None:
    sizing = SizingSpec(method="kelly", payoff_ratio=0.5)
    verdict = size_entry(sizing, _request(prob_up=0.55))
    assert isinstance(verdict, Rejection)
    assert verdict.code == "no_edge"


def test_fixed_fraction_and_volatility_sizing() -> None:
    fixed = SizingSpec(method="fixed-fraction", fraction_pct=10)
    assert size_entry(fixed, _request()) == Sized(10.0, None)
    volatility = SizingSpec(method="volatility", risk_per_trade_pct=1)
    assert size_entry(volatility, _request()) == Sized(25.0, None)  # 1% of 10 000 over 4


def test_sizing_caps_by_max_position_then_buying_power() -> None:
    sizing = SizingSpec(method="fixed-fraction", fraction_pct=50, max_position_pct=25)
    assert size_entry(sizing, _request()) == Sized(25.0, "max_position_pct")
    poor = size_entry(sizing, _request(buying_power=505.0, cost_factor=1.01))
    assert poor == Sized(5.0, "buying_power")
    broke = size_entry(sizing, _request(buying_power=0.0))
    assert isinstance(broke, Rejection)
    assert broke.code == "no_buying_power"


def test_volatility_sizing_needs_a_stop_distance() -> None:
    sizing = SizingSpec(method="volatility")
    verdict = size_entry(sizing, _request(stop_distance=None))
    assert isinstance(verdict, Rejection)
    assert "risk.stopLoss" in verdict.message
    flat_market = size_entry(sizing, _request(stop_distance=0.0))
    assert isinstance(flat_market, Rejection)
    assert flat_market.code == "zero_volatility"


def _long(stop: float | None = 98, take: float | None = 104, **changes: object) -> Position:
    position = Position(
        symbol="BTC/USDT",
        side=PositionSide.LONG,
        quantity=1,
        entry_price=100,
        entry_time=0,
        entry_fee=0,
        entry_order_id="x",
        stop_price=stop,
        take_profit_price=take,
        best_price=100,
    )
    for name, value in changes.items():
        setattr(position, name, value)
    return position


def test_the_tighter_of_the_atr_stop_and_an_armed_trail_fires() -> None:
    trailing = TrailingStopSpec(activation_pct=2, trail_pct=1)
    armed = _long(best_price=103.0, trailing_armed=True)  # trail at 101.97, above the stop 98
    hit = intrabar_exit(armed, bar(1, 102.5, 103, 101, 102), trailing)
    assert hit is not None
    assert (hit.reason, hit.is_limit) == (OrderReason.TRAILING_STOP, False)
    assert hit.price == pytest.approx(101.97)
    loose = _long(stop=99.5, best_price=100.4, trailing_armed=True)  # trail 99.396 < stop
    hit = intrabar_exit(loose, bar(1, 100, 100, 99, 99), trailing)
    assert hit is not None
    assert (hit.reason, hit.price) == (OrderReason.STOP_LOSS, 99.5)


def test_trailing_arms_on_the_best_price_and_never_disarms() -> None:
    trailing = TrailingStopSpec(activation_pct=2, trail_pct=1)
    position = _long(stop=None, take=None)
    assert advance_trailing(position, bar(1, 100, 101.99, 99, 101), trailing) == (101.99, False)
    assert advance_trailing(position, bar(1, 100, 102, 99, 101), trailing) == (102, True)
    short = _long(stop=None, take=None, side=PositionSide.SHORT)
    assert advance_trailing(short, bar(1, 100, 101, 97, 98), trailing) == (97, True)
    armed = _long(best_price=105.0, trailing_armed=True)
    assert advance_trailing(armed, bar(1, 100, 101, 99, 100), trailing) == (105.0, True)


def test_paper_broker_moves_prices_against_the_trader() -> None:
    broker = PaperBroker(fee_rate=0.001, slippage_bps=25)
    buy = broker.market(Side.BUY, 2, 200)
    sell = broker.market(Side.SELL, 2, 200)
    assert [buy.price, buy.fee] == pytest.approx([200.5, 0.401])
    assert [sell.price, sell.fee] == pytest.approx([199.5, 0.399])
    assert broker.limit(2, 200).price == 200


def test_portfolio_equity_is_capital_plus_realized_plus_unrealized() -> None:
    portfolio = Portfolio(cash=1_000)
    short = _long(stop=None, take=None, side=PositionSide.SHORT, quantity=2.0, entry_fee=0.2)
    portfolio.open(short)
    portfolio.mark("BTC/USDT", 90)
    assert portfolio.equity() == pytest.approx(1_000 - 0.2 + 20)
    assert portfolio.equity() == pytest.approx(
        1_000 + portfolio.realized_pnl + portfolio.unrealized_pnl()
    )
    assert portfolio.buying_power(reserved=100) == pytest.approx(1_019.8 - 180 - 100)
    closed = portfolio.close("BTC/USDT", 90, 0.18)
    assert closed.net_pnl == pytest.approx(20 - 0.2 - 0.18)
    assert portfolio.cash == pytest.approx(1_000 + closed.net_pnl)
    portfolio.open(_long())
    with pytest.raises(ValueError, match="already open"):
        portfolio.open(_long())


def test_breaker_messages_name_the_limit() -> None:
    spec = BreakerSpec(max_daily_loss_pct=5, max_drawdown_pct=10)
    state = BreakerState(peak_equity=12_000, day_start_equity=11_000)
    tripped = evaluate(spec, state, equity=10_000, now=0)
    assert list(tripped) == ["daily_loss", "drawdown"]
    assert "maxDailyLossPct 5%" in tripped["daily_loss"]
    assert "maxDrawdownPct 10%" in tripped["drawdown"]


_PCT = (
    st.none()
    | st.floats(0, 100, exclude_min=True)
    | st.sampled_from([1e-9, 2.0, 5.0, 50.0, 99.0, 100.0])
)
_EQUITY = st.floats(-1e7, 1e7, allow_nan=False) | st.sampled_from([0.0, 1e-300, 1_000.0])


@settings(max_examples=2_000, deadline=None)
@given(daily=_PCT, drawdown=_PCT, start=_EQUITY, peak=_EQUITY, equity=_EQUITY, near=st.booleans())
def test_no_loss_breaker_trips_above_the_quiet_bound(
    daily: float | None,
    drawdown: float | None,
    start: float,
    peak: float,
    equity: float,
    near: bool,
) -> None:
    # The engine skips evaluate above quiet_above: a trip there would be missed.
    spec = BreakerSpec(max_daily_loss_pct=daily, max_drawdown_pct=drawdown)
    state = BreakerState(peak_equity=peak, day_start_equity=start)
    bound = quiet_above(spec, state)
    if near and bound != float("-inf"):
        # Right at the exact trip points, where rounding decides.
        for pct, base in ((daily, start), (drawdown, peak)):
            if pct is not None and base > 0:
                equity = base - base * pct / 100
    if evaluate(spec, state, equity, now=0):
        assert equity <= bound


def test_loss_streak_counts_only_consecutive_losses() -> None:
    spec = BreakerSpec(max_consecutive_losses=3, consecutive_loss_cooldown="1h")
    state = BreakerState(peak_equity=1, day_start_equity=1)
    for pnl in (-1.0, -1.0, 0.0, -1.0, -1.0):
        state = record_round_trip(spec, state, pnl, time=0)
    assert (state.loss_streak, state.cooldown_until) == (2, None)
    state = record_round_trip(spec, state, -1.0, time=1_000)
    assert (state.loss_streak, state.cooldown_until) == (0, 1_000 + 3_600_000)
