"""One request-weight budget per exchange account, shared by every bot trading on it.

ccxt's rate limiter is per process: five bots on one account each stay under the limit and
together go over it, and the exchange answers 429 and then bans. So every request of a live
broker first takes its weight from the account's budget in PostgreSQL
(``kubetrade.store.budget``): weighted as the exchange weighs its endpoints (:data:`WEIGHTS`),
counted in the exchange's own windows, waiting for the next window when this one is spent, and
corrected from the used-weight header each answer carries. The budget stops a little short of
the exchange's limit (``margin``) for requests other clients of the account send unseen.

The account is named by the exchange and a hash of the API key, never the key itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WeightLimit:
    """An exchange's request-weight limit: ``weight`` per ``window_ms``, and the header in which
    it reports the weight it has counted in the current window."""

    weight: float
    window_ms: int
    header: str | None = None


# What each exchange documents (Binance spot API v3: 6000 per minute); others count requests.
LIMITS: dict[str, WeightLimit] = {
    "binance": WeightLimit(6000, 60_000, "x-mbx-used-weight-1m"),
}
# ccxt method -> weight of the endpoint it calls (Binance spot, one symbol); unknown: 1.
WEIGHTS: dict[str, dict[str, int]] = {
    "binance": {
        "load_markets": 20,
        "create_order": 1,
        "fetch_order": 4,
        "cancel_order": 1,
        "fetch_open_orders": 6,
        "fetch_closed_orders": 20,
        "fetch_my_trades": 20,
        "fetch_balance": 20,
        "fetch_ticker": 2,
    },
}


class WeightStore(Protocol):
    """Where the budget lives (``kubetrade.store.AsyncStore``)."""

    async def take_weight(self, account: str, weight: float, limit: float, window_ms: int) -> float:
        """Take ``weight``: 0.0, or seconds until the next window."""
        ...

    async def observe_weight(self, account: str, used: float, window_ms: int) -> None:
        """Count at least ``used`` in the current window."""
        ...


def account_key(exchange: str, api_key: str) -> str:
    """The account's name in the budget: exchange and a hash of the API key."""
    return f"{exchange}:{hashlib.sha256(api_key.encode()).hexdigest()[:16]}"


@dataclass
class AccountBudget:
    """The request budget of one exchange account; see the module docstring."""

    store: WeightStore
    exchange: str
    account: str
    limit: WeightLimit
    margin: float = 0.9
    waited_s: float = 0.0

    @classmethod
    def for_account(
        cls,
        store: WeightStore,
        exchange: str,
        api_key: str,
        *,
        limit: WeightLimit | None = None,
        margin: float = 0.9,
    ) -> AccountBudget:
        """The budget of ``exchange`` account ``api_key`` (its documented limit unless given)."""
        known = limit or LIMITS.get(exchange) or WeightLimit(1200, 60_000)
        return cls(store, exchange, account_key(exchange, api_key), known, margin)

    def weight(self, method: str) -> int:
        """What calling ccxt's ``method`` costs on this exchange."""
        return WEIGHTS.get(self.exchange, {}).get(method, 1)

    async def take(self, method: str) -> None:
        """Wait until the account's budget has room for ``method``, and take it."""
        weight = self.weight(method)
        while True:
            wait = await self.store.take_weight(
                self.account, weight, self.limit.weight * self.margin, self.limit.window_ms
            )
            if wait <= 0:
                return
            self.waited_s += wait
            log.info("request budget spent; waiting", extra={"wait_s": round(wait, 3)})
            await asyncio.sleep(wait)

    async def observe(self, headers: Mapping[str, str] | None) -> None:
        """Correct the count from an answer's used-weight header, when the exchange sends one."""
        if not headers or self.limit.header is None:
            return
        lowered = {str(k).lower(): v for k, v in headers.items()}
        raw = lowered.get(self.limit.header)
        if raw is None:
            return
        try:
            used = float(raw)
        except ValueError:
            return
        await self.store.observe_weight(self.account, used, self.limit.window_ms)
