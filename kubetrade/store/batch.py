"""The executor's batch: signals, orders, fills, equity and its checkpoint, all or nothing.

The whole batch is ONE statement: data-modifying CTEs fed by ``unnest`` of array parameters.
A single statement is atomic on its own, so a SIGKILL at any point leaves either the whole
batch with its checkpoint or neither, and it costs one round trip. (Staging tables with COPY,
as for candles, measured several times slower here: each commit truncates every touched
``ON COMMIT DELETE ROWS`` table, which dominates at executor batch sizes.) The arrays go in
binary (``%b``): psycopg dumps a text array element by element in Python, 2-4x slower, and it
was a sixth of the executor's CPU.

Re-sent rows are skipped (keys include the time column so they work on hypertables); equity at
an existing time is replaced, since the engine's latest view of that instant is the right one.
The batch's order and fill messages go into the outbox in the same statement, so a crash after
the commit cannot lose them: they are published from there (again, under the same ids).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from psycopg.types.json import Jsonb

from kubetrade.domain import EquityPoint, Fill, Order
from kubetrade.store.errors import StaleCheckpointError
from kubetrade.store.records import Checkpoint, OrderStatus, OutboxMessage, SignalRecord
from kubetrade.store.sqltime import ts, ts_us
from kubetrade.store.steps import Op, Query
from kubetrade.trading.outputs import HaltEvent, Refusal

log = logging.getLogger(__name__)

# Every insert is gated on the checkpoint CTE returning a row. Its WHERE fences the checkpoint:
# it never moves back, so a second executor writing the same bot (or a stale replay) writes
# nothing instead of silently rewinding the ledger. An order is filled when this batch or an
# earlier one holds a fill for it; CTEs share one snapshot, so orders inserted here get their
# status from this batch's fills and the UPDATE covers orders stored by earlier batches.
_WRITE_BATCH = f"""
WITH checkpoint AS (
    INSERT INTO executor_state AS s (bot, stream_seq, processed, state, updated_at)
    VALUES (%(bot)s, %(stream_seq)s, %(processed)s, %(state)s, now())
    ON CONFLICT (bot) DO UPDATE SET
        stream_seq = EXCLUDED.stream_seq, processed = EXCLUDED.processed,
        state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
    WHERE s.stream_seq <= EXCLUDED.stream_seq
    RETURNING stream_seq
),
new_signals AS (
    INSERT INTO signals (bot, symbol, time, prob_up, direction, confidence, model_name,
                         model_version, feature_hash, candle_published_at, received_at,
                         decided_at)
    SELECT %(bot)s, symbol, {ts("time")}, prob_up, direction, confidence, model_name,
           model_version, feature_hash, {ts_us("published")}, {ts_us("received")},
           {ts_us("decided")}
    FROM unnest(%(s_symbol)b::text[], %(s_time)b::int8[], %(s_prob_up)b::float8[],
                %(s_direction)b::text[], %(s_confidence)b::float8[], %(s_model_name)b::text[],
                %(s_model_version)b::text[], %(s_feature_hash)b::text[],
                %(s_published)b::int8[], %(s_received)b::int8[], %(s_decided)b::int8[])
         AS r (symbol, time, prob_up, direction, confidence, model_name, model_version,
               feature_hash, published, received, decided)
    WHERE EXISTS (SELECT FROM checkpoint)
    ON CONFLICT DO NOTHING
),
new_orders AS (
    INSERT INTO orders (bot, client_order_id, symbol, side, quantity, reason, created_at,
                        reference_price, status)
    SELECT %(bot)s, client_order_id, symbol, side, quantity, reason, {ts("created_at")},
           reference_price,
           CASE WHEN client_order_id = ANY(%(f_client_order_id)b::text[])
                THEN '{OrderStatus.FILLED}' ELSE '{OrderStatus.OPEN}' END
    FROM unnest(%(o_client_order_id)b::text[], %(o_symbol)b::text[], %(o_side)b::text[],
                %(o_quantity)b::float8[], %(o_reason)b::text[], %(o_created_at)b::int8[],
                %(o_reference_price)b::float8[])
         AS r (client_order_id, symbol, side, quantity, reason, created_at, reference_price)
    WHERE EXISTS (SELECT FROM checkpoint)
    ON CONFLICT DO NOTHING
),
filled_orders AS (
    -- Gated by joining the checkpoint, not by EXISTS: TimescaleDB fails UPDATEs on hypertables
    -- with an EXISTS qual ("variable not found in subplan target list", timescaledb#6790).
    UPDATE orders SET status = '{OrderStatus.FILLED}'
    FROM checkpoint
    WHERE orders.bot = %(bot)s AND orders.client_order_id = ANY(%(f_client_order_id)b::text[])
      AND orders.status <> '{OrderStatus.FILLED}'
),
new_fills AS (
    INSERT INTO fills (bot, client_order_id, symbol, side, quantity, price, fee, time, reason,
                       realized_pnl)
    SELECT %(bot)s, client_order_id, symbol, side, quantity, price, fee, {ts("time")}, reason,
           realized_pnl
    FROM unnest(%(f_client_order_id)b::text[], %(f_symbol)b::text[], %(f_side)b::text[],
                %(f_quantity)b::float8[], %(f_price)b::float8[], %(f_fee)b::float8[],
                %(f_time)b::int8[], %(f_reason)b::text[], %(f_realized_pnl)b::float8[])
         AS r (client_order_id, symbol, side, quantity, price, fee, time, reason, realized_pnl)
    WHERE EXISTS (SELECT FROM checkpoint)
    ON CONFLICT DO NOTHING
),
new_equity AS (
    INSERT INTO equity (bot, time, equity, cash, realized_pnl, unrealized_pnl, open_positions,
                        drawdown_pct)
    SELECT %(bot)s, {ts("time")}, equity, cash, realized_pnl, unrealized_pnl, open_positions,
           drawdown_pct
    FROM unnest(%(e_time)b::int8[], %(e_equity)b::float8[], %(e_cash)b::float8[],
                %(e_realized_pnl)b::float8[], %(e_unrealized_pnl)b::float8[],
                %(e_open_positions)b::int4[], %(e_drawdown_pct)b::float8[])
         AS r (time, equity, cash, realized_pnl, unrealized_pnl, open_positions, drawdown_pct)
    WHERE EXISTS (SELECT FROM checkpoint)
    ON CONFLICT (bot, time) DO UPDATE SET
        equity = EXCLUDED.equity, cash = EXCLUDED.cash, realized_pnl = EXCLUDED.realized_pnl,
        unrealized_pnl = EXCLUDED.unrealized_pnl, open_positions = EXCLUDED.open_positions,
        drawdown_pct = EXCLUDED.drawdown_pct
),
new_halts AS (
    INSERT INTO halts (bot, time, kind, cause, message, figures)
    SELECT %(bot)s, {ts("time")}, kind, cause, message, figures::jsonb
    FROM unnest(%(h_time)b::int8[], %(h_kind)b::text[], %(h_cause)b::text[],
                %(h_message)b::text[], %(h_figures)b::text[])
         AS r (time, kind, cause, message, figures)
    WHERE EXISTS (SELECT FROM checkpoint)
    ON CONFLICT DO NOTHING
),
new_refusals AS (
    INSERT INTO refusals (bot, time, kind, code, symbol, client_order_id, message)
    SELECT %(bot)s, {ts("time")}, kind, code, symbol, client_order_id, message
    FROM unnest(%(r_time)b::int8[], %(r_kind)b::text[], %(r_code)b::text[],
                %(r_symbol)b::text[], %(r_order)b::text[], %(r_message)b::text[])
         AS r (time, kind, code, symbol, client_order_id, message)
    WHERE EXISTS (SELECT FROM checkpoint)
    ON CONFLICT DO NOTHING
),
new_outbox AS (
    INSERT INTO outbox (bot, msg_id, subject, data, headers)
    SELECT %(bot)s, msg_id, subject, data, headers::jsonb
    FROM unnest(%(x_msg_id)b::text[], %(x_subject)b::text[], %(x_data)b::bytea[],
                %(x_headers)b::text[]) WITH ORDINALITY AS r (msg_id, subject, data, headers, n)
    WHERE EXISTS (SELECT FROM checkpoint)
    ORDER BY n
    ON CONFLICT DO NOTHING
)
SELECT count(*) FROM checkpoint
"""


def write_batch_op(
    bot: str,
    *,
    signals: Sequence[SignalRecord],
    orders: Sequence[Order],
    fills: Sequence[Fill],
    equity: Sequence[EquityPoint],
    checkpoint: Checkpoint,
    outbox: Sequence[OutboxMessage] = (),
    halts: Sequence[HaltEvent] = (),
    refusals: Sequence[Refusal] = (),
) -> Op[None]:
    """Write one executor batch and move its checkpoint atomically (one statement)."""
    # One point per time: ON CONFLICT DO UPDATE may not touch a row twice in a statement, and
    # the last point the engine produced for a time is the right one.
    latest = list({point.time: point for point in equity}.values())
    params: dict[str, object] = {
        "bot": bot,
        "stream_seq": checkpoint.stream_seq,
        "processed": checkpoint.processed,
        "state": Jsonb(checkpoint.state),
        "s_symbol": [s.symbol for s in signals],
        "s_time": [s.time for s in signals],
        "s_prob_up": [s.prob_up for s in signals],
        "s_direction": [s.direction for s in signals],
        "s_confidence": [s.confidence for s in signals],
        "s_model_name": [s.model_name for s in signals],
        "s_model_version": [s.model_version for s in signals],
        "s_feature_hash": [s.feature_hash for s in signals],
        "s_published": [s.candle_published_us for s in signals],
        "s_received": [s.received_us for s in signals],
        "s_decided": [s.decided_us for s in signals],
        "o_client_order_id": [o.client_order_id for o in orders],
        "o_symbol": [o.symbol for o in orders],
        "o_side": [o.side.value for o in orders],
        "o_quantity": [o.quantity for o in orders],
        "o_reason": [o.reason.value for o in orders],
        "o_created_at": [o.created_at for o in orders],
        "o_reference_price": [o.reference_price for o in orders],
        "f_client_order_id": [f.client_order_id for f in fills],
        "f_symbol": [f.symbol for f in fills],
        "f_side": [f.side.value for f in fills],
        "f_quantity": [f.quantity for f in fills],
        "f_price": [f.price for f in fills],
        "f_fee": [f.fee for f in fills],
        "f_time": [f.time for f in fills],
        "f_reason": [f.reason.value for f in fills],
        "f_realized_pnl": [f.realized_pnl for f in fills],
        "e_time": [p.time for p in latest],
        "e_equity": [p.equity for p in latest],
        "e_cash": [p.cash for p in latest],
        "e_realized_pnl": [p.realized_pnl for p in latest],
        "e_unrealized_pnl": [p.unrealized_pnl for p in latest],
        "e_open_positions": [p.open_positions for p in latest],
        "e_drawdown_pct": [p.drawdown_pct for p in latest],
        "x_msg_id": [m.msg_id for m in outbox],
        "x_subject": [m.subject for m in outbox],
        "x_data": [m.data for m in outbox],
        "x_headers": [json.dumps(m.headers) for m in outbox],
        "h_time": [h.time for h in halts],
        "h_kind": [h.kind for h in halts],
        "h_cause": [h.cause for h in halts],
        "h_message": [h.message for h in halts],
        "h_figures": [json.dumps(dict(h.figures)) for h in halts],
        "r_time": [r.time for r in refusals],
        "r_kind": [r.kind for r in refusals],
        "r_code": [r.code for r in refusals],
        "r_symbol": [r.symbol for r in refusals],
        "r_order": [r.client_order_id for r in refusals],
        "r_message": [r.message for r in refusals],
    }
    rows = yield Query(_WRITE_BATCH, params)
    if rows[0][0] == 0:
        stored = yield Query("SELECT stream_seq FROM executor_state WHERE bot = %s", (bot,))
        raise StaleCheckpointError(bot, stored=int(stored[0][0]), offered=checkpoint.stream_seq)
    log.debug(
        "executor batch written",
        extra={
            "bot": bot,
            "stream_seq": checkpoint.stream_seq,
            "signals": len(signals),
            "orders": len(orders),
            "fills": len(fills),
            "equity": len(latest),
        },
    )
