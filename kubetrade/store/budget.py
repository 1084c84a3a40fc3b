"""Request weight per exchange account, shared by every bot that trades on it.

Exchanges count request weight per account (or IP) in fixed windows (Binance: per minute) and
refuse requests beyond their limit, banning clients that keep trying. ``rate_budgets`` holds,
per account, the weight used in the current window, the same way the exchange counts it: a
request takes its weight before it is sent, or learns how long to wait for the next window.
The window is read from the database server's clock, which every bot shares. An answer's
used-weight header raises the count to what the exchange saw (requests the budget did not
see, or a window boundary the two clocks place differently). Nothing is taken in the last
twentieth of a window (at most a second): a request sent then could reach the exchange in its
next window, on top of that window's full budget.
"""

from __future__ import annotations

from kubetrade.store.steps import Atomic, Execute, Op, Query

MIGRATION_SQL = (
    """
    CREATE TABLE rate_budgets (
        account text PRIMARY KEY,
        window_start bigint NOT NULL,
        used double precision NOT NULL
    )
    """,
)

_NOW = "(SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms)"
GUARD_FRACTION, GUARD_MAX_MS = 0.05, 1_000.0


def take_weight_op(account: str, weight: float, limit: float, window_ms: int) -> Op[float]:
    """Take ``weight`` from ``account``'s window if it fits under ``limit``: 0.0, else the
    seconds until the next window (nothing taken). A request heavier than the whole limit
    goes alone into an empty window."""
    return (yield Atomic(_take(account, weight, limit, window_ms)))  # type: ignore[no-any-return]


def _take(account: str, weight: float, limit: float, window_ms: int) -> Op[float]:
    # The upsert locks the account's row until the transaction ends: bots take in turn.
    rows = yield Query(
        f"""
        WITH now AS {_NOW}
        INSERT INTO rate_budgets AS b (account, window_start, used)
        SELECT %(account)s, ms - ms %% %(window)s, 0 FROM now
        ON CONFLICT (account) DO UPDATE SET
            used = CASE WHEN b.window_start = EXCLUDED.window_start THEN b.used ELSE 0 END,
            window_start = EXCLUDED.window_start
        RETURNING window_start, used, (SELECT ms FROM now)
        """,
        {"account": account, "window": window_ms},
    )
    window_start, used, now = (float(v) for v in rows[0])
    until_next = window_start + window_ms - now
    in_guard = until_next <= min(window_ms * GUARD_FRACTION, GUARD_MAX_MS)
    if in_guard or (used + weight > limit and used > 0):
        return max(until_next, 1.0) / 1000
    yield Execute("UPDATE rate_budgets SET used = used + %s WHERE account = %s", (weight, account))
    return 0.0


def observe_weight_op(account: str, used: float, window_ms: int) -> Op[None]:
    """The exchange says ``used`` weight went in the current window: never count less."""
    yield Execute(
        f"UPDATE rate_budgets SET used = greatest(used, %s) WHERE account = %s "
        f"AND window_start = (SELECT ms - ms %% %s FROM {_NOW} AS now)",
        (used, account, window_ms),
    )
