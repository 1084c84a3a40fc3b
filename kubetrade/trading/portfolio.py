"""The account: cash, open positions, marks, realized profit and loss.

Accounting (cash-based, quote currency, no leverage):

- Opening a long pays ``quantity * price + fee``; opening a short receives
  ``quantity * price - fee``. Closing reverses that at the exit price.
- ``equity = cash + sum(sign * quantity * mark)`` where ``mark`` is the symbol's latest known
  price (the open while a candle is being processed, then its close).
- Realized PnL is booked per fill: an entry fill realizes ``-fee``; an exit fill realizes the
  gross move ``sign * (exit - entry) * quantity`` minus its fee. So ``equity == initial capital +
  realized + unrealized`` at all times, and a round trip's net PnL is the sum of its two fills.
- Buying power is ``equity - gross exposure - reserved`` (reserved = cash set aside for pending
  entries): the sum of all positions' absolute values never exceeds equity, and a short needs its
  full notional as collateral.
- Sums run over symbols in sorted order so floating-point results do not depend on history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubetrade.trading.strategy import PositionSide


@dataclass(slots=True)
class Position:
    """One open position and its protective exits.

    ``best_price`` is the most favourable price since entry (highest high for a long, lowest low
    for a short); ``trailing_armed`` turns true once it reached the activation profit.
    """

    symbol: str
    side: PositionSide
    quantity: float
    entry_price: float
    entry_time: int
    entry_fee: float
    entry_order_id: str
    stop_price: float | None
    take_profit_price: float | None
    best_price: float
    trailing_armed: bool = False

    def unrealized_pnl(self, mark: float) -> float:
        """Gross profit if closed at ``mark`` (fees excluded)."""
        return self.side.sign * (mark - self.entry_price) * self.quantity


@dataclass(frozen=True, slots=True)
class ClosedTrade:
    """The result of closing a position: the exit fill's realized PnL and the round trip's."""

    position: Position
    fill_realized_pnl: float
    net_pnl: float


@dataclass(slots=True)
class Portfolio:
    """Cash, positions and marks of one bot."""

    cash: float
    positions: dict[str, Position] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    realized_pnl: float = 0.0
    trades: int = 0

    def mark(self, symbol: str, price: float) -> None:
        """Record the latest known price of ``symbol``."""
        self.marks[symbol] = price

    def open(self, position: Position) -> float:
        """Book an entry fill; returns its realized PnL (the fee, negative)."""
        if position.symbol in self.positions:
            raise ValueError(
                f"{position.symbol}: a position is already open; close it before opening another"
            )
        notional = position.quantity * position.entry_price
        self.cash += -position.side.sign * notional - position.entry_fee
        self.realized_pnl -= position.entry_fee
        self.positions[position.symbol] = position
        return 0.0 - position.entry_fee  # 0.0, not -0.0, when there is no fee

    def close(self, symbol: str, price: float, fee: float) -> ClosedTrade:
        """Book an exit fill of the whole position at ``price``."""
        position = self.positions.pop(symbol)
        notional = position.quantity * price
        self.cash += position.side.sign * notional - fee
        fill_pnl = position.unrealized_pnl(price) - fee
        self.realized_pnl += fill_pnl
        self.trades += 1
        return ClosedTrade(position, fill_pnl, fill_pnl - position.entry_fee)

    def charge(self, amount: float) -> None:
        """Book a cost that is no fill (a short's borrow or funding): cash and realized PnL."""
        self.cash -= amount
        self.realized_pnl -= amount

    def add(self, symbol: str, quantity: float, price: float, fee: float) -> float:
        """Book another entry fill into an open position (a partial fill of the same order);
        the entry price becomes the volume-weighted average. Returns the fill's realized PnL."""
        position = self.positions[symbol]
        self.cash += -position.side.sign * quantity * price - fee
        self.realized_pnl -= fee
        total = position.quantity + quantity
        position.entry_price = (position.entry_price * position.quantity + price * quantity) / total
        position.quantity = total
        position.entry_fee += fee
        return 0.0 - fee

    def reduce(
        self, symbol: str, quantity: float, price: float, fee: float, *, close: bool
    ) -> ClosedTrade:
        """Book an exit fill of ``quantity`` (at most the position) at ``price``.

        With ``close`` the position ends here: what is left of it (dust below the exchange's
        lot step, which cannot be sold) is written off at its entry price, so that
        ``equity == initial capital + realized + unrealized`` still holds. Without, the
        position keeps the rest, with its share of the entry fee.
        """
        position = self.positions[symbol]
        sold = min(quantity, position.quantity)
        self.cash += position.side.sign * sold * price - fee
        fill_pnl = position.side.sign * (price - position.entry_price) * sold - fee
        entry_fee = position.entry_fee * (sold / position.quantity)
        if close:
            dust = position.quantity - sold
            fill_pnl -= position.side.sign * dust * position.entry_price
            entry_fee = position.entry_fee
            del self.positions[symbol]
            self.trades += 1
        else:
            position.quantity -= sold
            position.entry_fee -= entry_fee
        self.realized_pnl += fill_pnl
        return ClosedTrade(position, fill_pnl, fill_pnl - entry_fee)

    def _mark_of(self, position: Position) -> float:
        return self.marks.get(position.symbol, position.entry_price)

    def unrealized_pnl(self) -> float:
        """Sum of open positions' gross unrealized PnL at their marks."""
        total = 0.0
        if not self.positions:
            return total  # flat: the common case, without sorting
        for symbol in sorted(self.positions):
            position = self.positions[symbol]
            total += position.unrealized_pnl(self._mark_of(position))
        return total

    def equity(self) -> float:
        """Cash plus the signed value of every position at its mark."""
        total = self.cash
        if not self.positions:
            return total  # flat: the common case, without sorting
        for symbol in sorted(self.positions):
            position = self.positions[symbol]
            total += position.side.sign * position.quantity * self._mark_of(position)
        return total

    def gross_exposure(self) -> float:
        """Sum of the absolute values of all positions at their marks."""
        total = 0.0
        for symbol in sorted(self.positions):
            position = self.positions[symbol]
            total += position.quantity * self._mark_of(position)
        return total

    def buying_power(self, reserved: float) -> float:
        """Cash a new position may use: equity less exposure less ``reserved``, at least 0."""
        return max(0.0, self.equity() - self.gross_exposure() - reserved)
