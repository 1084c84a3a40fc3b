"""The trading engine: one deterministic core for backtests and live paper trading.

The engine is plain Python with no I/O and no wall clock: time is the candle's time. Fed the same
events (and control commands between the same events), it produces the same orders, fills,
equity points and notices, whether a backtest or the executor worker drives it. A snapshot taken
at any point and restored continues exactly as the original would have.

Events are closed candles, per symbol in time order, and within one candle time in the order of
``spec.symbols``. On a candle of symbol ``s`` (``t_open``, ``t_close``):

1. **Clock.** If the candle starts a later candle time while the previous time's equity point is
   still owed (a symbol skipped that time), that point is emitted first. A candle of a new UTC day
   (by open time) rolls the day: daily-loss base and daily entry count (see ``breakers``).
2. **Pending orders.** ``s``'s market orders, created at an earlier close, fill at this candle's
   open with slippage and fees (see ``broker``), stamped ``t_open``. An order therefore never
   fills on the candle whose close created it. An entry is reduced to what buying power can pay
   at the fill price (notice ``entry_reduced``) or cancelled if nothing is affordable. With
   ``execution.maxVolumePct`` an order fills at most that share of the candle's volume; the
   rest waits for the next candle (notice ``partially_filled``; an entry's parts add to its
   position, an exit's reduce it) unless a stop, take-profit or time exit overtakes it.
   Stops and take-profits fill in full.
3. **Protective exits** on this candle's range: stop-loss, trailing stop, take-profit (see
   ``exits``), filled and stamped ``t_open`` (the instant inside the candle is unknown). A
   position filled at this open is already protected on this candle's range. Then the
   trail follows the candle's extreme, and a time exit due at ``t_close`` becomes a market order
   for the next open. A short is liquidated first when the candle's high reaches its liquidation
   price before any stop (``execution.margin``: the short's margin, its notional at entry plus
   its PnL, falls to ``maintenancePct`` of its notional at ``entry * 2 / (1 + maintenance)``),
   at that price or the open if it gapped through, with the trading fee plus
   ``liquidationFeeRate`` (notice ``liquidated``).
4. **Mark** ``s`` at the close; a short pays its borrow cost for the candle
   (``margin.borrowPctPerDay`` of its notional at the close); update its ATR; evaluate the
   breakers (trip/clear notices).
5. **Strategy** (``spec.strategy``, see ``kubetrade.strategies``), once its inputs are warm (the
   model's prediction and/or its features on this candle and the one before): an exit signal
   becomes a market order for the next open; an entry signal passes the gates in this order:
   paused, kill-switch halt, tripped breakers, ``minSecondsBetweenTrades``,
   ``maxTradesPerDay``, ATR warm-up (when a stop-loss is configured), then sizing (see
   ``sizing``). Each refusal is an ``entry_rejected`` notice. When the exchange's markets are
   known, the sized entry then passes the broker's check (``validation``: lot step, minimum
   amount and notional); a refusal is an ``order_refused`` notice. A symbol with an order already
   waiting (e.g. a time exit) takes no new decision, and a position is only opened from flat.
6. **Equity.** After the last symbol of ``spec.symbols`` at this candle time, one EquityPoint
   for the time (``time = t_close``), marked at each symbol's latest close; drawdown is from the
   running peak of these points. A candle that arrives late for a time already emitted still
   trades; its effect shows in the next point. ``flush()`` emits a point still owed at the end
   of a stream.

A candle with zero volume (a gap the cleaner filled with a flat candle, or a vendor's fill) is
one in which nothing traded: steps 2, 3, the ATR update and 5 are skipped (orders wait for the
next candle with volume, its signal is not acted on, notice ``event_ignored``/``no_volume``); it
is marked and counts for the clock, breakers and equity like any other. A live feed never
delivers such a candle for a gap, so a replay with gaps trades as live trading would.

A candle whose open time is not after the symbol's previous one (a redelivery) is ignored with an
``event_ignored`` notice. A candle for a symbol or timeframe the bot does not trade, or with
impossible prices, raises :class:`EventError` before any state changes.

Control commands (see ``control``) act between events; notices they raise are stamped with the
latest event time. Flattening orders fill at each symbol's next open.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kubetrade.domain import (
    Candle,
    EquityPoint,
    HaltCause,
    MarketEvent,
    Order,
    OrderReason,
    timeframe_ms,
)
from kubetrade.errors import InvalidInputError
from kubetrade.spec import TradingBot
from kubetrade.strategies import Intent, PositionSide, StrategyInputs
from kubetrade.trading.atr import AtrState
from kubetrade.trading.breakers import (
    DAY_MS,
    Breaker,
    BreakerState,
    breaker_causes,
    drawdown_cooldown_over,
    drawdown_pct,
    entry_throttle,
    evaluate,
    halt_figures,
    observe_equity_point,
    quiet_above,
    rebase,
    record_entry,
    record_round_trip,
    start_day,
)
from kubetrade.trading.broker import Execution, PaperBroker
from kubetrade.trading.control import ControlAction, ControlCommand
from kubetrade.trading.exits import (
    advance_trailing,
    intrabar_exit,
    protective_levels,
    stop_distance,
    time_exit_due,
)
from kubetrade.trading.orders import (
    PendingOrder,
    client_order_id,
    entry_side,
    exit_side,
    fill_of,
)
from kubetrade.trading.outputs import EngineOutput, Notice, NoticeKind, Rejection
from kubetrade.trading.portfolio import Portfolio, Position
from kubetrade.trading.quantity import round_quantity
from kubetrade.trading.sizing import Sized, SizingRequest, size_entry
from kubetrade.trading.state import (
    SNAPSHOT_VERSION,
    SnapshotError,
    atr_from,
    breakers_from,
    load,
    pending_from,
    position_from,
    to_plain,
)
from kubetrade.trading.summary import TradingSummary
from kubetrade.trading.validation import MarketRules

# Enum members read once: in Python 3.11 reading one through its class goes through
# EnumType.__getattr__ (about 0.15 us), and these are read on every candle or refused entry.
_HOLD, _ENTER_LONG = Intent.HOLD, Intent.ENTER_LONG
_LONG, _SHORT = PositionSide.LONG, PositionSide.SHORT
_ENTRY_LONG, _ENTRY_SHORT = OrderReason.ENTRY_LONG, OrderReason.ENTRY_SHORT
_ENTRY_REJECTED = NoticeKind.ENTRY_REJECTED


class EventError(InvalidInputError):
    """An event the engine cannot accept (wrong symbol, timeframe or prices)."""


class TradingEngine:
    """Strategy, risk, portfolio and paper broker of one bot, driven by market events."""

    def __init__(self, bot: TradingBot, markets: Mapping[str, MarketRules] | None = None) -> None:
        """A fresh engine: initial capital in cash, no positions, ``spec.paused`` as given.

        ``markets`` (the exchange's rules per symbol, when known) make the broker refuse the
        orders the exchange would refuse, as the live broker does (``order_refused`` notices).
        """
        spec = bot.spec
        self._bot = bot
        self._name = bot.metadata.name
        self._symbols = tuple(spec.symbols)
        self._symbol_set = frozenset(self._symbols)
        # The symbol whose candle completes a candle time (its equity point is then due).
        self._last_symbol = self._symbols[-1]
        self._timeframe_ms = timeframe_ms(spec.timeframe)
        # Read once, not per candle: the spec does not change during the engine's life.
        self._timeframe = spec.timeframe
        self._max_holding_seconds = spec.risk.max_holding_seconds
        self._stop_loss = spec.risk.stop_loss
        self._breaker_spec = spec.risk.breakers
        self._borrow_pct_per_day = spec.execution.margin.borrow_pct_per_day
        self._strategy = spec.strategy.build()
        self._broker = PaperBroker.from_spec(spec.execution, markets)
        capital = spec.execution.initial_capital
        self._portfolio = Portfolio(cash=capital)
        self._pending: dict[str, PendingOrder] = {}
        # Realized PnL of exit parts filled so far, per symbol (maxVolumePct), for the breakers.
        self._partial_exit_pnl: dict[str, float] = {}
        self._atr: dict[str, AtrState] = {}
        self._last_open: dict[str, int] = {}
        self._breakers = BreakerState(peak_equity=capital, day_start_equity=capital)
        # The breaker state ``_quiet_above`` was computed for (``breakers.quiet_above``).
        self._quiet_for: BreakerState | None = None
        self._quiet_above = math.inf
        # The breaker state and equity the breakers last settled at with nothing that depends on
        # the time (no cooldown): the same pair gives the same verdict, so a halted bot sitting
        # flat is not re-evaluated on every candle.
        self._settled: tuple[BreakerState, float] | None = None
        self._paused = spec.paused
        self._kill_reason: str | None = None
        self._kill_cause: HaltCause | None = None
        self._kill_time: int | None = None
        self._bucket: int | None = None
        self._bucket_emitted = False
        self._last_event_time: int | None = None
        self._last_signal_time: int | None = None

    # -- events -------------------------------------------------------------------------------

    def on_event(self, event: MarketEvent, into: EngineOutput | None = None) -> EngineOutput:
        """Process one closed candle and its prediction (None while the model warms up).

        What it produces is appended to ``into`` and returned; without ``into``, to a new
        output. A backtest passes one output for the whole run (no output per candle to make
        and empty again); a worker takes a new one per event to publish.
        """
        # The steps of the module doc, written out with locals: this runs once per candle of
        # every backtest, so each attribute lookup and call saved is a share of its speed.
        candle = event.candle
        symbol = candle.symbol
        open_time = candle.open_time
        low, high = candle.low, candle.high
        if not (
            symbol in self._symbol_set
            and candle.timeframe == self._timeframe
            and 0 < low <= candle.open <= high
            and low <= candle.close <= high
        ):
            raise self._invalid(candle)
        close_time = open_time + self._timeframe_ms
        out = EngineOutput() if into is None else into
        previous = self._last_open.get(symbol)
        if previous is not None and open_time <= previous:
            out.notices.append(
                Notice(
                    NoticeKind.EVENT_IGNORED,
                    close_time,
                    "stale_candle",
                    f"{candle.key}: a candle opening at {previous} was already processed; "
                    "redelivered or out-of-order candles are ignored",
                    symbol=symbol,
                )
            )
            return out
        portfolio = self._portfolio
        # The clock: a later candle time emits the equity point the last one still owes; a
        # new UTC day (by open time) rolls the breakers' day.
        bucket = self._bucket
        if bucket is None or open_time > bucket:
            if bucket is not None and not self._bucket_emitted:
                self._emit_equity(bucket, out)
            self._bucket, self._bucket_emitted = open_time, False
        day = open_time // DAY_MS  # days since the epoch, UTC
        current = self._breakers.day
        if current is None or day > current:
            # Only a new day needs the equity it starts at.
            self._breakers = start_day(self._breakers, day, portfolio.equity())
        # Nothing traded in a candle without volume (a gap filled with a flat candle, or a
        # vendor's fill): nothing fills on it and no decision is taken on it.
        traded = candle.volume > 0
        if traded:
            portfolio.marks[symbol] = candle.open
            if symbol in self._pending:
                self._fill_pending(candle, out)
            if symbol in portfolio.positions:
                self._protective_exits(candle, out)
            stop_loss = self._stop_loss
            if stop_loss is not None:  # the ATR sizes the stop
                atr = self._atr.get(symbol)
                if atr is None:
                    atr = self._atr[symbol] = AtrState(stop_loss.atr_period)
                atr.update(candle)
        else:
            out.notices.append(
                Notice(
                    NoticeKind.EVENT_IGNORED,
                    close_time,
                    "no_volume",
                    f"{candle.key}: no volume traded (a filled gap or a vendor's flat candle): "
                    "nothing fills and no decision is taken on it; orders wait for the next "
                    "candle",
                    symbol=symbol,
                )
            )
        portfolio.marks[symbol] = candle.close
        if self._borrow_pct_per_day:
            self._charge_borrow(candle)
        self._last_open[symbol] = open_time
        last_event = self._last_event_time
        if last_event is None or close_time > last_event:
            self._last_event_time = close_time
        inputs = StrategyInputs(event.prediction, event.features, event.previous_features)
        ready = self._strategy.ready(inputs)
        if ready:
            self._last_signal_time = close_time
        # Deciding on the signal changes no cash, position or mark, so the breakers and this
        # time's equity point share one valuation.
        equity = portfolio.equity()
        breakers = self._breakers
        if breakers is not self._quiet_for:  # the state changed: its bound with it
            self._quiet_for = breakers
            self._quiet_above = quiet_above(self._breaker_spec, breakers)
        cooldown_until = breakers.cooldown_until
        if (
            breakers.tripped
            or breakers.tripped_at
            or equity <= self._quiet_above
            or (cooldown_until is not None and close_time < cooldown_until)
        ) and self._settled != (breakers, equity):
            # Something may trip, clear or cool down; most candles are far from every limit.
            self._update_breakers(close_time, equity, out)
        if ready and traded and symbol not in self._pending:
            # A symbol with an order waiting takes no new decision.
            position = portfolio.positions.get(symbol)
            intent = self._strategy.decide(inputs, None if position is None else position.side)
            if intent is not _HOLD:
                self._act_on_intent(candle, inputs, intent, position, out)
        if symbol == self._last_symbol and open_time == self._bucket and not self._bucket_emitted:
            self._emit_equity(open_time, out, equity)
        return out

    def flush(self, into: EngineOutput | None = None) -> EngineOutput:
        """Emit the equity point still owed for the latest candle time, if any (end of stream),
        into ``into`` or a new output, as ``on_event``."""
        out = EngineOutput() if into is None else into
        if self._bucket is not None and not self._bucket_emitted:
            self._emit_equity(self._bucket, out)
        return out

    def _closed_at(self, candle: Candle) -> int:
        """``candle.close_time`` of one of the bot's candles, without the property's Python call
        and timeframe lookup (the engine's code is compiled; the candle's is not)."""
        return candle.open_time + self._timeframe_ms

    def _invalid(self, candle: Candle) -> EventError:
        """Why ``candle`` cannot be accepted (the caller found that it cannot)."""
        if candle.symbol not in self._symbol_set:
            return EventError(
                f"{candle.key}: bot {self._name} trades {', '.join(self._symbols)}, "
                f"not {candle.symbol}; route only the bot's symbols to its engine"
            )
        if candle.timeframe != self._timeframe:
            return EventError(
                f"{candle.key}: bot {self._name} trades {self._bot.spec.timeframe} candles, "
                f"not {candle.timeframe}"
            )
        return EventError(
            f"{candle.key}: impossible prices open={candle.open} high={candle.high} "
            f"low={candle.low} close={candle.close}; expected 0 < low <= open, close <= high"
        )

    # -- fills --------------------------------------------------------------------------------

    def _fill_pending(self, candle: Candle, out: EngineOutput) -> None:
        pending = self._pending.pop(candle.symbol, None)
        if pending is None:
            return
        cap = self._volume_cap(candle)
        if pending.is_entry:
            self._fill_entry(pending, candle, out, cap)
        elif cap is not None and pending.order.quantity > cap:
            self._fill_exit_part(pending, candle, out, cap)
        else:
            self._fill_exit(pending.order, candle.open, False, candle.open_time, out)

    def _volume_cap(self, candle: Candle) -> float | None:
        """What one order may fill on ``candle`` under ``execution.maxVolumePct`` (None: all)."""
        pct = self._bot.spec.execution.max_volume_pct
        return None if pct is None else round_quantity(candle.volume * pct / 100)

    def _carry(
        self, pending: PendingOrder, filled: float, candle: Candle, out: EngineOutput
    ) -> None:
        """Queue the rest of ``pending`` after ``filled`` for the next candle (maxVolumePct)."""
        order = pending.order
        rest = round_quantity(order.quantity - filled)
        share = rest / order.quantity
        self._pending[order.symbol] = replace(
            pending, order=replace(order, quantity=rest), reserved=pending.reserved * share
        )
        pct = self._bot.spec.execution.max_volume_pct
        out.notices.append(
            Notice(
                NoticeKind.PARTIALLY_FILLED,
                candle.open_time,
                "volume_cap",
                f"{order.client_order_id}: filled {filled:.8f} of {order.quantity:.8f}, "
                f"maxVolumePct {pct:g}% of the candle's volume {candle.volume:g}; the rest "
                f"{rest:.8f} waits for the next candle",
                symbol=order.symbol,
                client_order_id=order.client_order_id,
            )
        )

    def _fill_exit_part(
        self, pending: PendingOrder, candle: Candle, out: EngineOutput, cap: float
    ) -> None:
        """Fill ``cap`` of an exit order at this open; the rest waits for the next candle."""
        if cap > 0:
            order = pending.order
            execution = self._broker.market(order.side, cap, candle.open)
            self._book_exit_part(order, cap, execution, candle.open_time, out)
        self._carry(pending, cap, candle, out)

    def _book_exit_part(
        self, order: Order, quantity: float, execution: Execution, time: int, out: EngineOutput
    ) -> None:
        """Book ``quantity`` of an exit whose rest keeps the position open; its PnL counts
        toward the round trip when the position finally closes."""
        part = self._portfolio.reduce(
            order.symbol, quantity, execution.price, execution.fee, close=False
        )
        earlier = self._partial_exit_pnl.get(order.symbol, 0.0)
        self._partial_exit_pnl[order.symbol] = earlier + part.fill_realized_pnl
        out.fills.append(
            fill_of(order, quantity, execution.price, execution.fee, time, part.fill_realized_pnl)
        )

    def _fill_entry(
        self, pending: PendingOrder, candle: Candle, out: EngineOutput, cap: float | None = None
    ) -> None:
        order = pending.order
        price = self._broker.slipped(order.side, candle.open)
        buying_power = self._portfolio.buying_power(self._reserved())
        affordable = round_quantity(buying_power / (price * (1 + self._broker.fee_rate)))
        quantity = min(order.quantity, affordable)
        if cap is not None and quantity > cap:
            # maxVolumePct: fill what the candle's volume allows, the rest waits.
            if cap > 0:
                self._paper_entry(pending, candle, price, cap, out)
            self._carry(pending, cap, candle, out)
            return
        if quantity <= 0:
            out.notices.append(
                Notice(
                    NoticeKind.ORDER_CANCELLED,
                    candle.open_time,
                    "no_buying_power",
                    f"{order.client_order_id}: buying power {buying_power:.2f} cannot pay for "
                    f"any quantity at {price:.8g}; entry cancelled",
                    symbol=order.symbol,
                    client_order_id=order.client_order_id,
                )
            )
            return
        if quantity < order.quantity:
            out.notices.append(
                Notice(
                    NoticeKind.ENTRY_REDUCED,
                    candle.open_time,
                    "buying_power",
                    f"{order.client_order_id}: quantity reduced from {order.quantity:.8f} to "
                    f"{quantity:.8f}, what buying power {buying_power:.2f} pays at {price:.8g}",
                    symbol=order.symbol,
                    client_order_id=order.client_order_id,
                )
            )
        self._paper_entry(pending, candle, price, quantity, out)

    def _paper_entry(
        self,
        pending: PendingOrder,
        candle: Candle,
        price: float,
        quantity: float,
        out: EngineOutput,
    ) -> None:
        """Book an entry fill: open the position, or add to the one an earlier part of the same
        order opened (maxVolumePct)."""
        order = pending.order
        fee = self._broker.fee(quantity, price)
        held = self._portfolio.positions.get(order.symbol)
        if held is not None and held.entry_order_id == order.client_order_id:
            realized = self._portfolio.add(order.symbol, quantity, price, fee)
        else:
            side = (
                PositionSide.LONG if order.reason is OrderReason.ENTRY_LONG else PositionSide.SHORT
            )
            levels = protective_levels(self._bot.spec.risk, side, price, pending.stop_distance)
            realized = self._portfolio.open(
                Position(
                    symbol=order.symbol,
                    side=side,
                    quantity=quantity,
                    entry_price=price,
                    entry_time=candle.open_time,
                    entry_fee=fee,
                    entry_order_id=order.client_order_id,
                    stop_price=levels.stop_price,
                    take_profit_price=levels.take_profit_price,
                    best_price=price,
                )
            )
        out.fills.append(fill_of(order, quantity, price, fee, candle.open_time, realized))

    def _fill_exit(
        self, order: Order, base_price: float, is_limit: bool, time: int, out: EngineOutput
    ) -> None:
        execution = (
            self._broker.limit(order.quantity, base_price)
            if is_limit
            else self._broker.market(order.side, order.quantity, base_price)
        )
        closed = self._portfolio.close(order.symbol, execution.price, execution.fee)
        # A round trip's net PnL includes the parts of its exit filled earlier (maxVolumePct).
        net = closed.net_pnl + self._partial_exit_pnl.pop(order.symbol, 0.0)
        self._breakers = record_round_trip(self._bot.spec.risk.breakers, self._breakers, net, time)
        out.fills.append(
            fill_of(
                order,
                order.quantity,
                execution.price,
                execution.fee,
                time,
                closed.fill_realized_pnl,
            )
        )

    def _reserved(self) -> float:
        total = 0.0
        for symbol in sorted(self._pending):
            total += self._pending[symbol].reserved
        return total

    # -- exits --------------------------------------------------------------------------------

    def _protective_exits(self, candle: Candle, out: EngineOutput) -> None:
        position = self._portfolio.positions.get(candle.symbol)
        if position is None:
            return
        risk = self._bot.spec.risk
        hit = intrabar_exit(position, candle, risk.trailing_stop)
        liquidation = self._liquidation_price(position)
        if (
            liquidation is not None
            and candle.high >= liquidation
            and (hit is None or hit.price >= liquidation)
        ):
            # The maintenance margin is reached before any stop: forced out, at the open when
            # the price gapped through it.
            self._liquidate(position, candle, max(candle.open, liquidation), out)
            return
        if hit is not None:
            order = self._order(
                symbol=candle.symbol,
                candle_open_time=candle.open_time,
                reason=hit.reason,
                position=position,
                created_at=candle.open_time,
                reference_price=hit.price,
            )
            out.orders.append(order)
            self._drop_rest(candle.symbol, candle.open_time, out)
            cap = self._volume_cap(candle)
            if cap is not None and order.quantity > cap:
                # maxVolumePct holds for stops and take-profits too: what the candle's volume
                # allows fills at the trigger, the rest waits for the next open as a market exit.
                if cap > 0:
                    execution = (
                        self._broker.limit(cap, hit.price)
                        if hit.is_limit
                        else self._broker.market(order.side, cap, hit.price)
                    )
                    self._book_exit_part(order, cap, execution, candle.open_time, out)
                self._carry(PendingOrder(order), cap, candle, out)
                return
            self._fill_exit(order, hit.price, hit.is_limit, candle.open_time, out)
            return
        position.best_price, position.trailing_armed = advance_trailing(
            position, candle, risk.trailing_stop
        )
        if time_exit_due(position, self._closed_at(candle), self._max_holding_seconds):
            self._queue_exit(candle, OrderReason.TIME_EXIT, position, out)

    def _liquidation_price(self, position: Position) -> float | None:
        """The price at which a short's margin (its notional at entry, plus its PnL) falls to
        the maintenance margin of its notional at that price; None for a long."""
        if position.side is not PositionSide.SHORT:
            return None
        maintenance = self._bot.spec.execution.margin.maintenance_pct / 100
        return position.entry_price * 2 / (1 + maintenance)

    def _liquidate(
        self, position: Position, candle: Candle, price: float, out: EngineOutput
    ) -> None:
        margin = self._bot.spec.execution.margin
        order = self._order(
            symbol=position.symbol,
            candle_open_time=candle.open_time,
            reason=OrderReason.LIQUIDATION,
            position=position,
            created_at=candle.open_time,
            reference_price=price,
        )
        out.orders.append(order)
        execution = self._broker.limit(order.quantity, price)
        fee = execution.fee + order.quantity * price * margin.liquidation_fee_rate
        closed = self._portfolio.close(order.symbol, price, fee)
        net = closed.net_pnl + self._partial_exit_pnl.pop(order.symbol, 0.0)
        self._breakers = record_round_trip(
            self._bot.spec.risk.breakers, self._breakers, net, candle.open_time
        )
        out.fills.append(
            fill_of(order, order.quantity, price, fee, candle.open_time, closed.fill_realized_pnl)
        )
        out.notices.append(
            Notice(
                NoticeKind.LIQUIDATED,
                candle.open_time,
                "maintenance_margin",
                f"{order.client_order_id}: short of {order.quantity:.8f} {order.symbol} from "
                f"{position.entry_price:.8g} liquidated at {price:.8g} (maintenance margin "
                f"{margin.maintenance_pct:g}%), fee {fee:.2f}",
                symbol=order.symbol,
                client_order_id=order.client_order_id,
                figures={"entry_price": position.entry_price, "price": price, "fee": fee},
            )
        )
        self._drop_rest(order.symbol, candle.open_time, out)

    def _charge_borrow(self, candle: Candle) -> None:
        """A short pays its borrow or funding cost for this candle, on its notional at the close."""
        rate = self._borrow_pct_per_day
        if rate == 0:
            return
        position = self._portfolio.positions.get(candle.symbol)
        if position is None or position.side is not PositionSide.SHORT:
            return
        share_of_day = self._timeframe_ms / 86_400_000
        self._portfolio.charge(position.quantity * candle.close * rate / 100 * share_of_day)

    def _order(
        self,
        *,
        symbol: str,
        candle_open_time: int,
        reason: OrderReason,
        position: Position,
        created_at: int,
        reference_price: float,
    ) -> Order:
        return Order(
            client_order_id=client_order_id(self._name, symbol, candle_open_time, reason),
            symbol=symbol,
            side=exit_side(position.side),
            quantity=position.quantity,
            reason=reason,
            created_at=created_at,
            reference_price=reference_price,
        )

    def _queue_exit(
        self, candle: Candle, reason: OrderReason, position: Position, out: EngineOutput
    ) -> None:
        waiting = self._pending.get(candle.symbol)
        if waiting is not None and not waiting.is_entry:
            return  # the rest of an exit is already waiting (maxVolumePct)
        close_time = self._closed_at(candle)
        order = self._order(
            symbol=candle.symbol,
            candle_open_time=candle.open_time,
            reason=reason,
            position=position,
            created_at=close_time,
            reference_price=candle.close,
        )
        self._drop_rest(candle.symbol, close_time, out)
        self._pending[candle.symbol] = PendingOrder(order)
        out.orders.append(order)

    def _drop_rest(self, symbol: str, now: int, out: EngineOutput) -> None:
        """Cancel what is left of a partly filled order (maxVolumePct) that a stop, a
        take-profit or a time exit has overtaken."""
        rest = self._pending.pop(symbol, None)
        if rest is None:
            return
        out.notices.append(
            Notice(
                NoticeKind.ORDER_CANCELLED,
                now,
                "overtaken",
                f"{rest.order.client_order_id}: the rest of the order ({rest.order.quantity:.8f}) "
                "is cancelled: an exit of the position overtook it",
                symbol=symbol,
                client_order_id=rest.order.client_order_id,
            )
        )

    # -- risk and strategy --------------------------------------------------------------------

    def _update_breakers(self, now: int, equity: float, out: EngineOutput) -> None:
        spec = self._breaker_spec
        state = self._breakers
        previous = state.tripped
        cooled = drawdown_cooldown_over(spec, state, now)
        if cooled:
            # The drawdown cooldown is over: current equity is the new high-water mark.
            state = replace(state, peak_equity=equity)
        tripped = evaluate(spec, state, equity, now)
        if tripped.keys() == previous.keys() == state.tripped_at.keys() and not cooled:
            # No trip and no clear, the common case: no copy unless a message changed.
            if tripped != previous:  # still tripped: its message carries today's figures
                self._breakers = replace(state, tripped=tripped)
            timeless = state.cooldown_until is None and (
                spec.drawdown_cooldown is None or Breaker.DRAWDOWN not in state.tripped_at
            )
            self._settled = (self._breakers, equity) if timeless else None
            return
        figures = halt_figures(state, equity)
        for name, message in tripped.items():
            if name not in previous:
                out.notices.append(
                    Notice(NoticeKind.BREAKER_TRIPPED, now, name, message, figures=figures)
                )
        for name in previous:
            if name not in tripped:
                why = (
                    f"drawdownCooldown {spec.drawdown_cooldown} over: the peak re-based to "
                    f"equity {equity:.2f}, the drawdown is measured from this new high-water mark"
                    if cooled and name == Breaker.DRAWDOWN
                    else "its condition no longer holds"
                )
                out.notices.append(
                    Notice(
                        NoticeKind.BREAKER_CLEARED,
                        now,
                        name,
                        f"{name} breaker cleared: {why}",
                        figures=figures,
                    )
                )
        tripped_at = {name: state.tripped_at.get(name, now) for name in tripped}
        self._breakers = replace(state, tripped=tripped, tripped_at=tripped_at)

    def _act_on_intent(
        self,
        candle: Candle,
        inputs: StrategyInputs,
        intent: Intent,
        position: Position | None,
        out: EngineOutput,
    ) -> None:
        symbol = candle.symbol
        if position is not None:
            self._queue_exit(candle, OrderReason.EXIT_SIGNAL, position, out)
            return
        close_time = self._closed_at(candle)
        side = _LONG if intent is _ENTER_LONG else _SHORT
        reason = _ENTRY_LONG if side is _LONG else _ENTRY_SHORT
        order_id = client_order_id(self._name, symbol, candle.open_time, reason)
        atr = self._atr.get(symbol)
        distance = stop_distance(self._bot.spec.risk, None if atr is None else atr.value)
        verdict: Sized | Rejection | None = self._entry_gate(candle, close_time, distance)
        if verdict is None:
            verdict = size_entry(
                self._bot.spec.risk.sizing,
                SizingRequest(
                    side=side,
                    prob_up=None if inputs.prediction is None else inputs.prediction.prob_up,
                    price=candle.close,
                    equity=self._portfolio.equity(),
                    buying_power=self._portfolio.buying_power(self._reserved()),
                    stop_distance=distance,
                    cost_factor=self._broker.cost_factor(),
                ),
            )
        if isinstance(verdict, Rejection):
            out.notices.append(
                Notice(
                    _ENTRY_REJECTED,
                    close_time,
                    verdict.code,
                    f"{order_id}: {verdict.message}",
                    symbol=symbol,
                    client_order_id=order_id,
                )
            )
            return
        order = Order(
            client_order_id=order_id,
            symbol=symbol,
            side=entry_side(side),
            quantity=verdict.quantity,
            reason=reason,
            created_at=close_time,
            reference_price=candle.close,
        )
        checked = self._broker.check(order)
        if isinstance(checked, Rejection):
            out.notices.append(
                Notice(
                    NoticeKind.ORDER_REFUSED,
                    close_time,
                    checked.code,
                    checked.message,
                    symbol=symbol,
                    client_order_id=order_id,
                )
            )
            return
        order = checked
        reserved = order.quantity * candle.close * self._broker.cost_factor()
        self._pending[symbol] = PendingOrder(order, reserved=reserved, stop_distance=distance)
        self._breakers = record_entry(self._breakers, close_time)
        out.orders.append(order)

    def _entry_gate(
        self, candle: Candle, close_time: int, distance: float | None
    ) -> Rejection | None:
        if self._paused:
            return Rejection("paused", "the bot is paused: no new entries until resume")
        if self._kill_reason is not None:
            return Rejection(
                "halted", f"kill switch engaged ({self._kill_reason}): reset to trade again"
            )
        if self._breakers.tripped:
            code = next(iter(self._breakers.tripped))
            return Rejection(code, "; ".join(self._breakers.tripped.values()))
        throttle = entry_throttle(self._bot.spec.risk.breakers, self._breakers, close_time)
        if throttle is not None:
            return throttle
        stop_loss = self._bot.spec.risk.stop_loss
        if stop_loss is not None and distance is None:
            seen = self._atr[candle.symbol].count
            return Rejection(
                "atr_warming_up",
                f"the stop needs ATR({stop_loss.atr_period}): {seen} of "
                f"{stop_loss.atr_period} candles seen",
            )
        return None

    # -- equity -------------------------------------------------------------------------------

    def _emit_equity(self, bucket: int, out: EngineOutput, equity: float | None = None) -> None:
        """The equity point of ``bucket``; ``equity`` when the caller has just valued the
        unchanged portfolio."""
        portfolio = self._portfolio
        if equity is None:
            equity = portfolio.equity()
        self._breakers = observe_equity_point(self._breakers, equity)
        peak = self._breakers.peak_equity
        out.equity.append(
            EquityPoint(  # positional (one per candle time): time, equity, cash, realized,
                # unrealized, open positions, drawdown %
                bucket + self._timeframe_ms,
                equity,
                portfolio.cash,
                portfolio.realized_pnl,
                portfolio.unrealized_pnl(),
                len(portfolio.positions),
                (peak - equity) / peak * 100 if peak > 0 else 0.0,
            )
        )
        self._bucket_emitted = True

    # -- control ------------------------------------------------------------------------------

    def control(self, command: ControlCommand) -> EngineOutput:
        """Apply an operator command (see ``kubetrade.trading.control`` for the semantics)."""
        out = EngineOutput()
        now = self._last_event_time or 0
        reason = command.reason
        if command.action is ControlAction.PAUSE:
            if not self._paused:
                self._paused = True
                self._cancel_pending_entries(now, "paused", out)
                out.notices.append(
                    Notice(NoticeKind.PAUSED, now, "paused", reason or "paused by operator")
                )
        elif command.action is ControlAction.RESUME:
            if self._paused:
                self._paused = False
                out.notices.append(
                    Notice(NoticeKind.RESUMED, now, "resumed", reason or "resumed by operator")
                )
        elif command.action is ControlAction.KILL:
            self._kill(now, reason or "kill switch", command.cause, out)
        else:
            self._reset(now, reason, out)
        return out

    def _kill(self, now: int, reason: str, cause: HaltCause, out: EngineOutput) -> None:
        self._cancel_pending_entries(now, "halted", out)
        for symbol in sorted(self._portfolio.positions):
            if symbol in self._pending:
                continue
            position = self._portfolio.positions[symbol]
            candle_open = self._last_open[symbol]
            order = self._order(
                symbol=symbol,
                candle_open_time=candle_open,
                reason=OrderReason.FLATTEN,
                position=position,
                created_at=candle_open + self._timeframe_ms,
                reference_price=self._portfolio.marks[symbol],
            )
            self._pending[symbol] = PendingOrder(order)
            out.orders.append(order)
        if self._kill_reason is None:
            # The first kill stands: a later one neither renames nor re-attributes it.
            self._kill_reason, self._kill_cause, self._kill_time = reason, cause, now
            out.notices.append(
                Notice(
                    NoticeKind.HALTED,
                    now,
                    "kill_switch",
                    f"kill switch: {reason}; open positions flatten at their next open, "
                    "entries halted until reset",
                    figures=halt_figures(self._breakers, self._portfolio.equity()),
                )
            )

    def _reset(self, now: int, reason: str | None, out: EngineOutput) -> None:
        cleared = ([f"kill switch ({self._kill_reason})"] if self._kill_reason else []) + list(
            self._breakers.tripped
        )
        self._kill_reason, self._kill_cause, self._kill_time = None, None, None
        equity = self._portfolio.equity()
        self._breakers = rebase(self._breakers, equity)
        what = ", ".join(cleared) if cleared else "nothing was halted"
        out.notices.append(
            Notice(
                NoticeKind.HALT_CLEARED,
                now,
                "reset",
                f"reset ({reason or 'by operator'}): cleared {what}; peak and day equity "
                f"re-based to {equity:.2f}",
                figures=halt_figures(self._breakers, equity),
            )
        )

    def _cancel_pending_entries(self, now: int, code: str, out: EngineOutput) -> None:
        for symbol in sorted(self._pending):
            pending = self._pending[symbol]
            if not pending.is_entry:
                continue
            del self._pending[symbol]
            out.notices.append(
                Notice(
                    NoticeKind.ORDER_CANCELLED,
                    now,
                    code,
                    f"{pending.order.client_order_id}: pending entry cancelled ({code})",
                    symbol=symbol,
                    client_order_id=pending.order.client_order_id,
                )
            )

    # -- state --------------------------------------------------------------------------------

    def summary(self) -> TradingSummary:
        """Current figures and state."""
        portfolio = self._portfolio
        reasons = ([f"kill switch: {self._kill_reason}"] if self._kill_reason else []) + list(
            self._breakers.tripped.values()
        )
        return TradingSummary(
            equity=portfolio.equity(),
            cash=portfolio.cash,
            realized_pnl=portfolio.realized_pnl,
            unrealized_pnl=portfolio.unrealized_pnl(),
            open_positions=len(portfolio.positions),
            trades=portfolio.trades,
            halted=bool(reasons),
            halt_reason="; ".join(reasons) if reasons else None,
            halt_causes=((self._kill_cause,) if self._kill_cause else ())
            + breaker_causes(self._breakers.tripped),
            paused=self._paused,
            breakers=tuple(self._breakers.tripped),
            last_event_time=self._last_event_time,
            last_signal_time=self._last_signal_time,
            drawdown_pct=drawdown_pct(self._breakers, portfolio.equity()),
            halted_since=min(
                [
                    *([self._kill_time] if self._kill_time is not None else []),
                    *self._breakers.tripped_at.values(),
                ],
                default=None,
            ),
        )

    def snapshot(self) -> dict[str, Any]:
        """The complete state as JSON-ready data; ``restore`` continues from it exactly."""
        portfolio = self._portfolio
        return {
            "version": SNAPSHOT_VERSION,
            "bot": self._name,
            "cash": portfolio.cash,
            "realized_pnl": portfolio.realized_pnl,
            "trades": portfolio.trades,
            "marks": dict(portfolio.marks),
            "positions": [to_plain(p) for p in portfolio.positions.values()],
            "pending": [to_plain(p) for p in self._pending.values()],
            "partial_exit_pnl": dict(self._partial_exit_pnl),
            "atr": {s: to_plain(a) for s, a in self._atr.items()},
            "last_open": dict(self._last_open),
            "breakers": to_plain(self._breakers),
            "paused": self._paused,
            "kill_reason": self._kill_reason,
            "kill_cause": self._kill_cause,
            "kill_time": self._kill_time,
            "bucket": self._bucket,
            "bucket_emitted": self._bucket_emitted,
            "last_event_time": self._last_event_time,
            "last_signal_time": self._last_signal_time,
        }

    @classmethod
    def restore(
        cls,
        bot: TradingBot,
        snapshot: dict[str, Any],
        markets: Mapping[str, MarketRules] | None = None,
    ) -> TradingEngine:
        """An engine for ``bot`` in the state ``snapshot`` recorded.

        The configuration comes from ``bot`` (a changed spec applies from here on; a changed
        ``atrPeriod`` restarts the ATR warm-up); the state, including ``paused``, comes from
        the snapshot. Raises :class:`SnapshotError` for a
        snapshot of another version or bot, a malformed one, or one holding positions or orders
        in symbols the bot no longer trades (flatten them before removing a symbol).
        """
        version = snapshot.get("version")
        if version != SNAPSHOT_VERSION:
            raise SnapshotError(
                f"snapshot version {version!r} is not {SNAPSHOT_VERSION}: it was written by "
                "another kubetrade release; start a fresh engine or migrate the snapshot"
            )
        if snapshot.get("bot") != bot.metadata.name:
            raise SnapshotError(
                f"snapshot of bot {snapshot.get('bot')!r} cannot restore bot {bot.metadata.name!r}"
            )
        engine = cls(bot, markets)
        try:
            engine._load(snapshot)
        except SnapshotError:
            raise
        except KeyError as error:
            raise SnapshotError(f"snapshot is missing {error}") from None
        except (TypeError, ValueError, AttributeError) as error:
            raise SnapshotError(f"snapshot is malformed: {error}") from None
        stray = sorted(
            ({p.symbol for p in engine._portfolio.positions.values()} | set(engine._pending))
            - set(engine._symbols)
        )
        if stray:
            raise SnapshotError(
                f"snapshot holds positions or orders in {', '.join(stray)}, which bot "
                f"{bot.metadata.name} no longer trades; flatten them before removing a symbol"
            )
        return engine

    def _load(self, snapshot: dict[str, Any]) -> None:
        positions = [load("position", p, position_from) for p in snapshot["positions"]]
        pending = [load("pending order", p, pending_from) for p in snapshot["pending"]]
        self._portfolio = Portfolio(
            cash=float(snapshot["cash"]),
            positions={p.symbol: p for p in positions},
            marks={str(s): float(m) for s, m in snapshot["marks"].items()},
            realized_pnl=float(snapshot["realized_pnl"]),
            trades=int(snapshot["trades"]),
        )
        self._pending = {p.order.symbol: p for p in pending}
        partial = snapshot.get("partial_exit_pnl") or {}
        self._partial_exit_pnl = {str(s): float(v) for s, v in partial.items()}
        atr = {str(s): load(f"atr of {s}", a, atr_from) for s, a in snapshot["atr"].items()}
        # A changed atrPeriod restarts the ATR: a value smoothed over another period is wrong.
        stop_loss = self._bot.spec.risk.stop_loss
        period = None if stop_loss is None else stop_loss.atr_period
        self._atr = {s: a for s, a in atr.items() if a.period == period}
        self._last_open = {str(s): int(t) for s, t in snapshot["last_open"].items()}
        self._breakers = load("breakers", snapshot["breakers"], breakers_from)
        self._paused = bool(snapshot["paused"])
        kill_reason = snapshot["kill_reason"]
        self._kill_reason = None if kill_reason is None else str(kill_reason)
        # Snapshots from before kill_cause existed: a kill of unknown origin counts as manual.
        cause = snapshot.get("kill_cause") or (None if kill_reason is None else "manual")
        self._kill_cause = None if cause is None else HaltCause(cause)
        kill_time = snapshot.get("kill_time")
        self._kill_time = None if kill_time is None else int(kill_time)
        bucket = snapshot["bucket"]
        self._bucket = None if bucket is None else int(bucket)
        self._bucket_emitted = bool(snapshot["bucket_emitted"])
        last_event, last_signal = snapshot["last_event_time"], snapshot["last_signal_time"]
        self._last_event_time = None if last_event is None else int(last_event)
        self._last_signal_time = None if last_signal is None else int(last_signal)
