"""The live order journal: each order's intent committed before it is sent, then its state.

One row per client order id (``live_orders``), written first as ``new`` (the intent) and then
updated as the exchange answers, so a crash anywhere leaves a row to resolve against the
exchange by client id. ``live_baselines`` holds the account balances the bot found when it was
first armed: what it holds since is the baseline plus its own fills.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from kubetrade.domain import Side
from kubetrade.store.steps import Atomic, Execute, Op, Query
from kubetrade.trading.order_state import LiveOrder, LiveStatus

MIGRATION_SQL = (
    """
    CREATE TABLE live_orders (
        bot text NOT NULL,
        client_id text NOT NULL,
        decision_id text NOT NULL,
        leg integer NOT NULL,
        symbol text NOT NULL,
        side text NOT NULL CHECK (side IN ('buy', 'sell')),
        kind text NOT NULL,
        amount double precision NOT NULL,
        price double precision,
        status text NOT NULL CHECK (status IN ('new', 'open', 'partially_filled', 'filled',
                                               'cancelled', 'rejected', 'expired')),
        exchange_id text,
        filled double precision NOT NULL,
        cost double precision NOT NULL,
        fees jsonb NOT NULL,
        trade_ids jsonb NOT NULL,
        reason text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (bot, client_id)
    )
    """,
    """
    CREATE TABLE live_baselines (
        bot text NOT NULL,
        asset text NOT NULL,
        amount double precision NOT NULL,
        PRIMARY KEY (bot, asset)
    )
    """,
)

_COLUMNS = (
    "client_id, decision_id, leg, symbol, side, kind, amount, price, status, exchange_id, "
    "filled, cost, fees, trade_ids, reason"
)


def _values(order: LiveOrder) -> tuple[object, ...]:
    return (
        order.client_id,
        order.decision_id,
        order.leg,
        order.symbol,
        order.side.value,
        order.kind,
        order.amount,
        order.price,
        order.status.value,
        order.exchange_id,
        order.filled,
        order.cost,
        json.dumps(order.fees, sort_keys=True),
        json.dumps(list(order.trade_ids)),
        order.reason,
    )


def journal_intent_op(bot: str, order: LiveOrder) -> Op[bool]:
    """Record an order before it is sent; False when its client id is already journaled."""
    inserted: int = yield Execute(
        f"INSERT INTO live_orders (bot, {_COLUMNS}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s) "
        "ON CONFLICT (bot, client_id) DO NOTHING",
        (bot, *_values(order)),
    )
    return inserted == 1


def journal_update_op(bot: str, order: LiveOrder) -> Op[None]:
    """Record what became of a journaled order."""
    yield Execute(
        "UPDATE live_orders SET status = %s, exchange_id = %s, filled = %s, cost = %s, "
        "fees = %s::jsonb, trade_ids = %s::jsonb, reason = %s, updated_at = now() "
        "WHERE bot = %s AND client_id = %s",
        (
            order.status.value,
            order.exchange_id,
            order.filled,
            order.cost,
            json.dumps(order.fees, sort_keys=True),
            json.dumps(list(order.trade_ids)),
            order.reason,
            bot,
            order.client_id,
        ),
    )


def read_journal_op(bot: str) -> Op[list[LiveOrder]]:
    """Every journaled order of ``bot``, oldest first."""
    rows = yield Query(
        f"SELECT {_COLUMNS} FROM live_orders WHERE bot = %s ORDER BY created_at, client_id",
        (bot,),
    )
    return [
        LiveOrder(
            client_id=str(r[0]),
            decision_id=str(r[1]),
            leg=int(r[2]),
            symbol=str(r[3]),
            side=Side(r[4]),
            kind=str(r[5]),
            amount=float(r[6]),
            price=None if r[7] is None else float(r[7]),
            status=LiveStatus(r[8]),
            exchange_id=None if r[9] is None else str(r[9]),
            filled=float(r[10]),
            cost=float(r[11]),
            fees={str(k): float(v) for k, v in r[12].items()},
            trade_ids=tuple(str(t) for t in r[13]),
            reason=str(r[14]),
        )
        for r in rows
    ]


def record_baseline_op(bot: str, balances: Mapping[str, float]) -> Op[dict[str, float]]:
    """Record ``balances`` as the bot's baseline unless it has one; the baseline in force."""
    return (yield Atomic(_baseline(bot, balances)))  # type: ignore[no-any-return]


def _baseline(bot: str, balances: Mapping[str, float]) -> Op[dict[str, float]]:
    yield Execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"baseline:{bot}",))
    rows = yield Query("SELECT asset, amount FROM live_baselines WHERE bot = %s", (bot,))
    if rows:
        return {str(a): float(v) for a, v in rows}
    for asset, amount in sorted(balances.items()):
        yield Execute(
            "INSERT INTO live_baselines (bot, asset, amount) VALUES (%s, %s, %s)",
            (bot, asset, amount),
        )
    return dict(balances)
