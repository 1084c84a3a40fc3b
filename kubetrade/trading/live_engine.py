"""The trading engine with fills from an exchange (live mode).

:class:`LiveEngine` is :class:`~kubetrade.trading.engine.TradingEngine` with one difference:
nothing is filled by simulation. Strategy, risk, sizing, breakers, control and equity are the
paper engine's; the orders it decides are sent by the executor's live broker, and what the
exchange does with them comes back through :meth:`LiveEngine.on_order_progress`. So:

- a pending order is not filled at the next open: it stays pending until the exchange reports
  it done (filled, cancelled, expired, rejected), and each report books what was filled since
  the previous one (partial fills open, grow or reduce the position as they happen);
- a stop-loss, trailing stop or take-profit hit on a candle becomes a market order sent at its
  close (there is no resting order on the exchange), unless an order is already working;
- pause and kill do not drop pending entries: they are at the exchange already, and their fills
  are booked when reported (after a kill the executor cancels them there, see
  :attr:`LiveEngine.kill_engaged`, and what they filled is flattened when they end). Kill's
  flattening orders go out like any other order;
- the engine can be **disarmed** (:meth:`disarm`): it opens no position (an ``entry_rejected``
  notice with code ``disarmed``) while exits, control commands and the kill switch still work.
  The executor disarms it until the journal reconciles with the exchange. Disarming is not part
  of the snapshot: each start decides it anew.

Reports are cumulative (:class:`OrderProgress`: everything filled so far), and the engine keeps
what it booked per order in its snapshot, so a report repeated after a crash books nothing
twice and one missed is caught up by the next.

Fees: the exchange charges them in whichever currency it likes; the executor converts them to
the quote currency (``order_state.fee_in_quote``) and says how much was charged in the base
asset, which a buy then does not receive: the position holds what the account holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from kubetrade.domain import Candle, Order, OrderReason, Side
from kubetrade.spec import TradingBot
from kubetrade.strategies import PositionSide
from kubetrade.trading.breakers import record_round_trip
from kubetrade.trading.engine import TradingEngine
from kubetrade.trading.exits import protective_levels
from kubetrade.trading.orders import PendingOrder, fill_of
from kubetrade.trading.outputs import EngineOutput, Notice, NoticeKind, Rejection
from kubetrade.trading.portfolio import Position
from kubetrade.trading.validation import MarketRules

# Amounts this close to zero are float noise, not fills.
_EPSILON = 1e-12
# Refusal codes that mean an exit can never be sold (see ``validation``).
UNSELLABLE = frozenset({"min_amount", "min_notional"})


@dataclass(frozen=True, slots=True)
class OrderProgress:
    """What the exchange has done with one of the engine's orders so far (cumulative).

    ``client_order_id`` is the engine's id of the order; ``filled`` the base amount traded,
    ``cost`` the quote amount; ``fee`` every fee so far in the quote currency, ``fee_base`` the
    part of it charged in the base asset (in base units); ``done`` says nothing more will fill;
    ``time`` (ms) stamps the fills booked now; ``reason`` says why an order ended unfilled.
    """

    client_order_id: str
    filled: float
    cost: float
    fee: float
    fee_base: float
    time: int
    done: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Booked:
    """What the engine has booked of one order: cumulative figures, last fill time."""

    filled: float = 0.0
    cost: float = 0.0
    fee: float = 0.0
    fee_base: float = 0.0
    last_time: int = 0


class LiveEngine(TradingEngine):
    """The trading engine whose orders are filled by an exchange; see the module docstring."""

    def __init__(self, bot: TradingBot, markets: Mapping[str, MarketRules] | None = None) -> None:
        super().__init__(bot, markets)
        self._markets = dict(markets or {})
        self._booked: dict[str, Booked] = {}
        self._disarmed: str | None = None

    def set_markets(self, markets: Mapping[str, MarketRules]) -> None:
        """The exchange's market rules as reloaded: later entries are checked against them."""
        self._markets = dict(markets)
        self._broker = replace(self._broker, markets=self._markets)

    # -- arming -------------------------------------------------------------------------------

    def disarm(self, reason: str) -> None:
        """Open no position until :meth:`arm` (exits and control still work)."""
        self._disarmed = reason

    def arm(self) -> None:
        """Trade normally again."""
        self._disarmed = None

    @property
    def kill_engaged(self) -> bool:
        """True while the kill switch holds: entries still working should be cancelled."""
        return self._kill_reason is not None

    @property
    def disarmed(self) -> str | None:
        """Why the engine opens no position, or None when armed."""
        return self._disarmed

    # -- orders the exchange works ------------------------------------------------------------

    def pending_orders(self) -> list[Order]:
        """The orders waiting for the exchange, in symbol order."""
        return [self._pending[s].order for s in sorted(self._pending)]

    def on_order_progress(self, progress: OrderProgress) -> EngineOutput:
        """Book what the exchange filled of an order since the last report; end it when done."""
        out = EngineOutput()
        found = [
            p for p in self._pending.values() if p.order.client_order_id == progress.client_order_id
        ]
        if not found:
            return out  # already done (a report repeated after a crash): nothing to book
        pending = found[0]
        order = pending.order
        booked = self._booked.get(order.client_order_id, Booked())
        quantity = progress.filled - booked.filled
        if quantity > _EPSILON:
            time = max(progress.time, booked.last_time + 1)
            price = (progress.cost - booked.cost) / quantity
            fee = progress.fee - booked.fee
            fee_base = progress.fee_base - booked.fee_base
            if pending.is_entry:
                self._book_live_entry(pending, quantity, price, fee, fee_base, time, out)
            else:
                self._book_live_exit(order, quantity, price, fee, progress, time, out)
            booked = Booked(progress.filled, progress.cost, progress.fee, progress.fee_base, time)
            pending = replace(pending, reserved=max(pending.reserved - quantity * price, 0.0))
            self._pending[order.symbol] = pending
            self._booked[order.client_order_id] = booked
        if progress.done:
            del self._pending[order.symbol]
            self._booked.pop(order.client_order_id, None)
            if self._kill_reason is not None and pending.is_entry:
                self._flatten_after_kill(order.symbol, out)
            if booked.filled <= _EPSILON:
                # A refusal's reason leads with its code (``min_notional: ...``); an order the
                # exchange cancelled or let expire has none.
                code = progress.reason.split(":", 1)[0] if progress.reason else "exchange"
                out.notices.append(
                    Notice(
                        NoticeKind.ORDER_REFUSED if progress.reason else NoticeKind.ORDER_CANCELLED,
                        progress.time,
                        code,
                        f"{order.client_order_id}: the exchange did not fill it"
                        + (f" ({progress.reason})" if progress.reason else ""),
                        symbol=order.symbol,
                        client_order_id=order.client_order_id,
                    )
                )
                if code in UNSELLABLE and not pending.is_entry:
                    self._write_off(order, progress.time, out)
        return out

    def _write_off(self, order: Order, time: int, out: EngineOutput) -> None:
        """A position the exchange will not let the bot sell (below its minimum amount or
        notional) is dust: written off at its entry price, so that the strategy does not send
        an exit the exchange refuses on every candle."""
        position = self._portfolio.positions.get(order.symbol)
        if position is None:
            return
        quantity = position.quantity
        closed = self._portfolio.reduce(order.symbol, 0.0, position.entry_price, 0.0, close=True)
        self._breakers = record_round_trip(
            self._bot.spec.risk.breakers, self._breakers, closed.net_pnl, time
        )
        out.notices.append(
            Notice(
                NoticeKind.ORDER_CANCELLED,
                time,
                "dust",
                f"{order.symbol}: {quantity:.10g} left is below the exchange's minimum order; "
                "written off as dust (it stays on the account)",
                symbol=order.symbol,
                client_order_id=order.client_order_id,
            )
        )

    def _book_live_entry(
        self,
        pending: PendingOrder,
        quantity: float,
        price: float,
        fee: float,
        fee_base: float,
        time: int,
        out: EngineOutput,
    ) -> None:
        order = pending.order
        # A buy charged in the base asset receives that much less of it; the cash paid is
        # still quantity * price: ``held * price`` plus the fee's quote value.
        held = quantity - fee_base if order.side is Side.BUY else quantity
        side = PositionSide.LONG if order.reason is OrderReason.ENTRY_LONG else PositionSide.SHORT
        portfolio = self._portfolio
        if order.symbol in portfolio.positions:
            realized = portfolio.add(order.symbol, held, price, fee)
        else:
            levels = protective_levels(self._bot.spec.risk, side, price, pending.stop_distance)
            realized = portfolio.open(
                Position(
                    symbol=order.symbol,
                    side=side,
                    quantity=held,
                    entry_price=price,
                    entry_time=time,
                    entry_fee=fee,
                    entry_order_id=order.client_order_id,
                    stop_price=levels.stop_price,
                    take_profit_price=levels.take_profit_price,
                    best_price=price,
                )
            )
        self._record_live_fill(order, quantity, price, fee, time, realized, out)

    def _book_live_exit(
        self,
        order: Order,
        quantity: float,
        price: float,
        fee: float,
        progress: OrderProgress,
        time: int,
        out: EngineOutput,
    ) -> None:
        position = self._portfolio.positions.get(order.symbol)
        if position is None:
            return
        # The order ends the position when nothing sellable is left of it: less than one lot
        # step (the exchange keeps that dust), or the order is done and filled in full.
        rules = self._markets.get(order.symbol)
        step = (rules.amount_precision or 0.0) if rules is not None else 0.0
        left = position.quantity - quantity
        close = left <= max(step, _EPSILON) or (
            progress.done and progress.filled >= order.quantity - _EPSILON
        )
        closed = self._portfolio.reduce(order.symbol, quantity, price, fee, close=close)
        if close:
            self._breakers = record_round_trip(
                self._bot.spec.risk.breakers, self._breakers, closed.net_pnl, time
            )
        self._record_live_fill(order, quantity, price, fee, time, closed.fill_realized_pnl, out)

    def _flatten_after_kill(self, symbol: str, out: EngineOutput) -> None:
        """An entry that ended after the kill left a position: flatten it too."""
        position = self._portfolio.positions.get(symbol)
        if position is None:
            return
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

    @staticmethod
    def _record_live_fill(
        order: Order,
        quantity: float,
        price: float,
        fee: float,
        time: int,
        realized: float,
        out: EngineOutput,
    ) -> None:
        out.fills.append(fill_of(order, quantity, price, fee, time, realized))

    # -- what differs from paper --------------------------------------------------------------

    def _fill_pending(self, candle: Candle, out: EngineOutput) -> None:
        """Pending orders are filled by the exchange, never at the next open."""

    def _protective_exits(self, candle: Candle, out: EngineOutput) -> None:
        if candle.symbol in self._pending:
            return  # an order is working on the exchange: its fills decide what is left
        super()._protective_exits(candle, out)

    def _fill_exit(
        self, order: Order, base_price: float, is_limit: bool, time: int, out: EngineOutput
    ) -> None:
        # Only a protective exit comes here (pending orders are never filled by the engine):
        # it is sent to the exchange as a market order.
        self._pending[order.symbol] = PendingOrder(order)

    def _cancel_pending_entries(self, now: int, code: str, out: EngineOutput) -> None:
        """Entries already sent stay: their fills are booked as the exchange reports them."""

    def _entry_gate(
        self, candle: Candle, close_time: int, distance: float | None
    ) -> Rejection | None:
        if self._disarmed is not None:
            return Rejection("disarmed", f"not reconciled with the exchange: {self._disarmed}")
        return super()._entry_gate(candle, close_time, distance)

    # -- state --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The paper engine's snapshot plus what has been booked of each working order."""
        return {**super().snapshot(), "booked": {k: asdict(b) for k, b in self._booked.items()}}

    def _load(self, snapshot: dict[str, Any]) -> None:
        super()._load(snapshot)
        self._booked = {
            str(k): Booked(
                filled=float(v["filled"]),
                cost=float(v["cost"]),
                fee=float(v["fee"]),
                fee_base=float(v["fee_base"]),
                last_time=int(v["last_time"]),
            )
            for k, v in dict(snapshot.get("booked") or {}).items()
        }
