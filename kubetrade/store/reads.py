"""Readers: the executor's checkpoint and outbox, the ledger, roll-ups and counts of one bot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubetrade.domain import Candle, EquityPoint, Fill, Order, OrderReason, Side
from kubetrade.store.records import (
    Checkpoint,
    EquityBucket,
    EquityPeriod,
    OrderStatus,
    OutboxMessage,
    RowCounts,
    SignalRecord,
    StoredOrder,
)
from kubetrade.store.sqltime import ms, us
from kubetrade.store.steps import Execute, Op, Query
from kubetrade.trading.outputs import HaltEvent, Refusal

Row = tuple[Any, ...]


def load_checkpoint_op(bot: str) -> Op[Checkpoint | None]:
    """The bot's last committed checkpoint, or None before its first batch."""
    rows = yield Query(
        "SELECT stream_seq, processed, state FROM executor_state WHERE bot = %s", (bot,)
    )
    if not rows:
        return None
    stream_seq, processed, state = rows[0]
    return Checkpoint(stream_seq=int(stream_seq), processed=int(processed), state=dict(state))


def last_candle_time_op(bot: str, symbol: str, timeframe: str) -> Op[int | None]:
    """Open time (ms) of the newest stored candle of a series, or None when it has none."""
    rows = yield Query(
        f"SELECT {ms('max(open_time)')} FROM candles"
        " WHERE bot = %s AND symbol = %s AND timeframe = %s",
        (bot, symbol, timeframe),
    )
    value = rows[0][0]
    return None if value is None else int(value)


def read_signals_op(bot: str) -> Op[list[SignalRecord]]:
    """All signals of a bot in (time, symbol) order."""
    rows: list[Row] = yield Query(
        f"""
        SELECT symbol, {ms("time")}, prob_up, direction, confidence, model_name, model_version,
               feature_hash, {us("candle_published_at")}, {us("received_at")},
               {us("decided_at")}
        FROM signals WHERE bot = %s ORDER BY time, symbol
        """,
        (bot,),
    )
    return [SignalRecord(*row) for row in rows]


def read_orders_op(bot: str) -> Op[list[StoredOrder]]:
    """All orders of a bot in creation order, with their status."""
    rows: list[Row] = yield Query(
        f"""
        SELECT client_order_id, symbol, side, quantity, reason, {ms("created_at")},
               reference_price, status
        FROM orders WHERE bot = %s ORDER BY created_at, client_order_id
        """,
        (bot,),
    )
    return [
        StoredOrder(
            order=Order(
                client_order_id=cid,
                symbol=symbol,
                side=Side(side),
                quantity=quantity,
                reason=OrderReason(reason),
                created_at=created_at,
                reference_price=reference_price,
            ),
            status=OrderStatus(status),
        )
        for cid, symbol, side, quantity, reason, created_at, reference_price, status in rows
    ]


def read_fills_op(bot: str) -> Op[list[Fill]]:
    """All fills of a bot in time order."""
    rows: list[Row] = yield Query(
        f"""
        SELECT client_order_id, symbol, side, quantity, price, fee, {ms("time")}, reason,
               realized_pnl
        FROM fills WHERE bot = %s ORDER BY time, client_order_id
        """,
        (bot,),
    )
    return [
        Fill(
            client_order_id=cid,
            symbol=symbol,
            side=Side(side),
            quantity=quantity,
            price=price,
            fee=fee,
            time=time,
            reason=OrderReason(reason),
            realized_pnl=realized_pnl,
        )
        for cid, symbol, side, quantity, price, fee, time, reason, realized_pnl in rows
    ]


def read_halts_op(bot: str) -> Op[list[HaltEvent]]:
    """The bot's halt events (breaker trips and clears, kills and resets) in time order."""
    rows: list[Row] = yield Query(
        f"""
        SELECT {ms("time")}, kind, cause, message, figures
        FROM halts WHERE bot = %s ORDER BY time, kind COLLATE "C", cause COLLATE "C"
        """,
        (bot,),
    )
    return [
        HaltEvent(time, kind, cause, message, {str(k): float(v) for k, v in figures.items()})
        for time, kind, cause, message, figures in rows
    ]


def read_refusals_op(bot: str) -> Op[list[Refusal]]:
    """The bot's refused entries and cancelled or refused orders in time order."""
    rows: list[Row] = yield Query(
        f"""
        SELECT {ms("time")}, kind, code, symbol, client_order_id, message
        FROM refusals WHERE bot = %s
        ORDER BY time, kind COLLATE "C", symbol COLLATE "C", client_order_id COLLATE "C"
        """,
        (bot,),
    )
    return [Refusal(*row) for row in rows]


def read_candles_op(bot: str) -> Op[list[Candle]]:
    """The candles the bot's feed stored, in stream order (time, then symbol)."""
    rows: list[Row] = yield Query(
        f"""
        SELECT symbol, timeframe, {ms("open_time")}, open, high, low, close, volume
        FROM candles WHERE bot = %s ORDER BY open_time, symbol COLLATE "C"
        """,
        (bot,),
    )
    return [Candle(*row) for row in rows]


def read_equity_op(bot: str) -> Op[list[EquityPoint]]:
    """The bot's equity curve in time order."""
    rows: list[Row] = yield Query(
        f"""
        SELECT {ms("time")}, equity, cash, realized_pnl, unrealized_pnl, open_positions,
               drawdown_pct
        FROM equity WHERE bot = %s ORDER BY time
        """,
        (bot,),
    )
    return [EquityPoint(*row) for row in rows]


_ROLLUP_VIEWS: dict[EquityPeriod, str] = {"hourly": "equity_hourly", "daily": "equity_daily"}


def read_equity_buckets_op(bot: str, period: EquityPeriod) -> Op[list[EquityBucket]]:
    """The bot's hourly or daily equity roll-up, oldest bucket first."""
    try:
        view = _ROLLUP_VIEWS[period]
    except KeyError:
        raise ValueError(
            f"unknown equity period {period!r}; use one of {', '.join(_ROLLUP_VIEWS)}"
        ) from None
    rows: list[Row] = yield Query(
        f"""
        SELECT {ms("bucket")}, open_equity, equity, min_equity, max_equity, realized_pnl, points
        FROM {view} WHERE bot = %s ORDER BY bucket
        """,
        (bot,),
    )
    return [EquityBucket(*row) for row in rows]


def count_rows_op(bot: str) -> Op[RowCounts]:
    """How many rows the bot has in each table, in one round trip."""
    rows: list[Row] = yield Query(
        """
        SELECT (SELECT count(*) FROM candles WHERE bot = %(bot)s),
               (SELECT count(*) FROM signals WHERE bot = %(bot)s),
               (SELECT count(*) FROM orders WHERE bot = %(bot)s),
               (SELECT count(*) FROM fills WHERE bot = %(bot)s),
               (SELECT count(*) FROM equity WHERE bot = %(bot)s)
        """,
        {"bot": bot},
    )
    return RowCounts(*(int(n) for n in rows[0]))


def read_outbox_op(bot: str) -> Op[list[OutboxMessage]]:
    """The bot's committed but not yet published messages, in the order they were written."""
    rows = yield Query(
        "SELECT subject, data, headers FROM outbox WHERE bot = %s ORDER BY id", (bot,)
    )
    return [
        OutboxMessage(str(s), bytes(d), {str(k): str(v) for k, v in h.items()}) for s, d, h in rows
    ]


def clear_outbox_op(bot: str, msg_ids: Sequence[str]) -> Op[int]:
    """Forget published messages; returns how many rows went."""
    if not msg_ids:
        return 0
    deleted: int = yield Execute(
        "DELETE FROM outbox WHERE bot = %s AND msg_id = ANY(%s::text[])", (bot, list(msg_ids))
    )
    return deleted
