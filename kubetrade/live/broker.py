"""The live broker: orders to an exchange through async ccxt, journaled, by error kind.

Every order goes through the same validator as paper orders (``trading.validation``), then:

1. its intent (client id, amount, ``new``) is committed to the journal **before** the request;
   a client id the journal already holds is never sent again: it is resolved instead (this is
   what makes a replay after a crash safe);
2. the request carries the client id in the exchange's own field (``trading.client_ids``);
3. the answer moves the order through its state machine (``trading.order_state``), fills are
   read from the exchange's trades (each applied once, with its fee in the currency charged),
   and the journal is updated.

Errors by kind (:func:`classify`): rate limits and DDoS protection back off with jitter
(tenacity) and retry; an invalid order or insufficient funds is refused without retry; a
timeout, a network error or an exchange error of unknown effect is **uncertain**: the order may
exist, so the broker asks the exchange for that client id and never resubmits blindly. Until
found, such an order stays ``new`` (unresolved); one still unknown after ``unresolved_grace_s``
never reached the exchange and is rejected. Authentication failures raise: no order can go out.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any, Protocol

import ccxt.async_support as ccxt_async
from ccxt.base.errors import (
    AuthenticationError,
    BadRequest,
    DDoSProtection,
    DuplicateOrderId,
    InsufficientFunds,
    InvalidOrder,
    OrderNotFound,
    RateLimitExceeded,
)
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from kubetrade.domain import Order
from kubetrade.errors import ExchangeError
from kubetrade.live.budget import AccountBudget
from kubetrade.trading.client_ids import client_id_params, exchange_client_id
from kubetrade.trading.order_state import (
    ExchangeTrade,
    LiveOrder,
    LiveStatus,
    OrderUpdate,
    advance,
    reject,
)
from kubetrade.trading.outputs import Rejection
from kubetrade.trading.validation import MarketRules, OrderType, check_order

log = logging.getLogger(__name__)

# How each exchange finds an order by its client id: ccxt methods tried in turn, each with the
# parameter that carries the id (the exchange filters server-side), or None where the exchange
# has no such filter: ``fetch_order`` then asks by the exchange's id once it is known, a list
# is matched here on the client id (Coinbase Advanced's order list: its latest 100).
# Binance's GET /api/v3/order takes origClientOrderId; Bybit's /v5/order/realtime and
# /v5/order/history take orderLinkId; Kraken's OpenOrders and ClosedOrders take cl_ord_id (which
# ccxt fills from clientOrderId); Kraken's AddOrder does not echo it, so this is how its orders
# are found again.
FIND_BY_CLIENT_ID: dict[str, tuple[tuple[str, str | None], ...]] = {
    "binance": (("fetch_order", "origClientOrderId"),),
    "bybit": (
        ("fetch_open_orders", "orderLinkId"),
        ("fetch_canceled_and_closed_orders", "orderLinkId"),
    ),
    "kraken": (("fetch_open_orders", "clientOrderId"), ("fetch_closed_orders", "clientOrderId")),
    "coinbase": (("fetch_order", None), ("fetch_orders", None)),
}
# Exchanges whose fetch_my_trades filters by order id server-side.
TRADES_BY_ORDER_ID = {"binance": "orderId"}


class ErrorKind(StrEnum):
    """How the broker treats an exchange error."""

    RATE_LIMIT = "rate_limit"  # back off and retry the same request
    REFUSED = "refused"  # the order is invalid: record the refusal, never retry
    UNCERTAIN = "uncertain"  # the order may exist: ask the exchange by client id
    FATAL = "fatal"  # credentials or permissions: nothing can be sent


def classify(error: BaseException) -> ErrorKind:
    """The kind of a ccxt error (see the module docstring)."""
    if isinstance(error, DDoSProtection | RateLimitExceeded):
        return ErrorKind.RATE_LIMIT
    if isinstance(error, AuthenticationError):
        return ErrorKind.FATAL
    if isinstance(error, DuplicateOrderId) or "Duplicate order" in str(error):
        return ErrorKind.UNCERTAIN  # the exchange holds an order with this client id
    if isinstance(error, InvalidOrder | InsufficientFunds | BadRequest):
        return ErrorKind.REFUSED
    return ErrorKind.UNCERTAIN


class Journal(Protocol):
    """Where live orders are journaled (``kubetrade.store.AsyncStore``)."""

    async def journal_intent(self, bot: str, order: LiveOrder) -> bool:
        """Commit the intent; False when the client id is already journaled."""
        ...

    async def journal_update(self, bot: str, order: LiveOrder) -> None:
        """Commit an order's new state."""
        ...

    async def read_journal(self, bot: str) -> list[LiveOrder]:
        """Every journaled order of the bot."""
        ...

    async def record_baseline(self, bot: str, balances: Mapping[str, float]) -> dict[str, float]:
        """The account baseline (recorded the first time)."""
        ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """An order after a broker call, and the trades that call found new."""

    order: LiveOrder
    trades: tuple[ExchangeTrade, ...] = ()


class LiveBroker:
    """Sends one bot's orders to one exchange account; see the module docstring."""

    def __init__(
        self,
        exchange: ccxt_async.Exchange,
        *,
        exchange_name: str,
        bot_key: str,
        journal: Journal,
        markets: Mapping[str, MarketRules],
        attempts: int = 6,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        unresolved_grace_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        budget: AccountBudget | None = None,
        price_max_age_s: float = 60.0,
    ) -> None:
        client_id_params(exchange_name, "probe")  # an unsupported exchange fails here
        self.exchange = exchange
        self.exchange_name = exchange_name
        self.bot_key = bot_key
        self.journal = journal
        self.markets = dict(markets)
        self.orders: dict[str, LiveOrder] = {}
        self.refusals: dict[str, int] = {}
        self.rate_limited = 0
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._grace_s = unresolved_grace_s
        self._clock = clock
        self._unresolved_since: dict[str, float] = {}
        # Conversion prices read from tickers (symbol -> (price, when)), used for at most
        # ``price_max_age_s``.
        self._prices: dict[str, tuple[float, float]] = {}
        self._price_max_age_s = price_max_age_s
        # The account's request budget shared with the other bots on it (None: ccxt's own
        # per-process limiter only). Where the budget governs, ccxt's limiter is off: it knows
        # nothing of the other bots and only spaced this process's requests (~200 ms each on
        # Binance) beneath a limit the budget already keeps.
        self.budget = budget
        exchange.enableRateLimit = budget is None

    @classmethod
    async def open(
        cls,
        exchange: ccxt_async.Exchange,
        *,
        exchange_name: str,
        bot_key: str,
        journal: Journal,
        symbols: list[str],
        **options: Any,
    ) -> LiveBroker:
        """Load the exchange's markets and the bot's journal; every symbol must be listed."""
        probe = cls(
            exchange,
            exchange_name=exchange_name,
            bot_key=bot_key,
            journal=journal,
            markets={},
            **options,
        )
        await probe.load_markets(symbols)
        for order in await journal.read_journal(bot_key):
            probe.orders[order.client_id] = order
        return probe

    async def load_markets(self, symbols: list[str]) -> None:
        """(Re)load the exchange's markets and the rules of ``symbols`` from them."""
        markets = await self._call(
            lambda: self.exchange.load_markets(True), reads=True, method="load_markets"
        )
        missing = [s for s in symbols if s not in markets]
        if missing:
            raise ExchangeError(
                f"{self.exchange_name} lists no {', '.join(missing)}; check spec.symbols "
                "against the exchange's markets"
            )
        mode = int(self.exchange.precisionMode)
        self.markets = {s: MarketRules.from_ccxt(markets[s], mode) for s in symbols}

    # -- the Broker protocol ------------------------------------------------------------------

    def check(self, order: Order) -> Order | Rejection:
        """The order as the exchange will take it, or why not (the paper broker's validator)."""
        return check_order(self.markets, order)

    # -- orders -------------------------------------------------------------------------------

    async def submit(
        self,
        order: Order,
        *,
        kind: OrderType = OrderType.MARKET,
        price: float | None = None,
        leg: int = 0,
    ) -> Outcome:
        """Validate, journal, send; a decision already journaled is resolved, never resent."""
        client_id = exchange_client_id(self.bot_key, order.client_order_id, leg)
        known = self.orders.get(client_id)
        if known is not None:
            return await self.refresh(client_id) if not known.is_terminal else Outcome(known)
        checked = check_order(self.markets, order, kind, price)
        intent = LiveOrder(
            client_id=client_id,
            decision_id=order.client_order_id,
            leg=leg,
            symbol=order.symbol,
            side=order.side,
            kind=kind.value,
            amount=checked.quantity if isinstance(checked, Order) else order.quantity,
            price=price,
        )
        if isinstance(checked, Rejection):
            return Outcome(await self._refuse(intent, checked.code, checked.message, new=True))
        if not await self.journal.journal_intent(self.bot_key, intent):
            # Journaled by an earlier run that died before its update: resolve, never resend.
            self.orders[client_id] = intent
            return await self.refresh(client_id)
        self.orders[client_id] = intent
        try:
            answer = await self._call(
                lambda: self.exchange.create_order(
                    intent.symbol,
                    intent.kind,
                    intent.side.value,
                    intent.amount,
                    price,
                    client_id_params(self.exchange_name, client_id),
                ),
                method="create_order",
            )
        except Exception as error:  # classified: each kind has its own handling below
            kind_of = classify(error)
            if kind_of is ErrorKind.FATAL:
                raise ExchangeError(
                    f"{self.exchange_name} refused the credentials ({type(error).__name__}); "
                    "check the credentials Secret and the key's trading permission"
                ) from None
            if kind_of in (ErrorKind.REFUSED, ErrorKind.RATE_LIMIT):
                code = "rate_limited" if kind_of is ErrorKind.RATE_LIMIT else "exchange"
                return Outcome(await self._refuse(intent, code, _brief(error)))
            log.warning(
                "order outcome unknown; asking the exchange by client id",
                extra={"client_id": client_id, "error": type(error).__name__},
            )
            return await self.refresh(client_id)
        return await self._apply(intent, answer)

    async def refresh(self, client_id: str) -> Outcome:
        """Ask the exchange what became of a journaled order and record it."""
        order = self.orders[client_id]
        if order.is_terminal:
            return Outcome(order)
        found = await self._find(order)
        if found is None:
            return await self._unresolved(order)
        self._unresolved_since.pop(client_id, None)
        return await self._apply(order, found)

    async def refresh_open(self) -> list[Outcome]:
        """Refresh every order not yet terminal (a poll for fills)."""
        return [
            await self.refresh(cid) for cid, o in list(self.orders.items()) if not o.is_terminal
        ]

    async def cancel(self, client_id: str) -> Outcome:
        """Cancel an open order; its fills so far stay."""
        order = self.orders[client_id]
        if order.exchange_id is None and not order.is_terminal:
            # Sent, but its answer was lost: the exchange's id comes from a lookup by client id.
            order = (await self.refresh(client_id)).order
        if order.is_terminal or order.exchange_id is None:
            return Outcome(order)
        exchange_id = order.exchange_id
        # An order already gone (filled, expired) is no error: the refresh says how. Binance
        # and Kraken answer "unknown order" (OrderNotFound), Coinbase a failed cancel.
        with contextlib.suppress(OrderNotFound, BadRequest, InvalidOrder):
            await self._call(
                lambda: self.exchange.cancel_order(exchange_id, order.symbol),
                method="cancel_order",
            )
        return await self.refresh(client_id)

    async def balances(self) -> dict[str, float]:
        """Total balance per asset on the account."""
        raw = await self._call(self.exchange.fetch_balance, reads=True, method="fetch_balance")
        return {str(a): float(v or 0.0) for a, v in (raw.get("total") or {}).items()}

    async def open_orders(self, symbols: list[str]) -> list[dict[str, Any]]:
        """The account's open orders on ``symbols`` (ccxt unified orders)."""
        found: list[dict[str, Any]] = []
        for symbol in symbols:
            found.extend(
                await self._call(
                    partial(self.exchange.fetch_open_orders, symbol), True, "fetch_open_orders"
                )
            )
        return found

    async def conversion_price(self, currency: str, quote: str) -> float | None:
        """What one unit of ``currency`` is worth in ``quote`` (a fee charged in a third
        currency, e.g. Binance's BNB): the last price of the exchange's ``currency/quote``
        ticker (or the inverse of ``quote/currency``'s), read at most every
        ``price_max_age_s``; None when the exchange lists neither market or its ticker cannot
        be read now."""
        listed = self.exchange.markets or {}
        for symbol, inverse in ((f"{currency}/{quote}", False), (f"{quote}/{currency}", True)):
            if symbol not in listed:
                continue
            now = self._clock()
            cached = self._prices.get(symbol)
            if cached is None or now - cached[1] >= self._price_max_age_s:
                try:
                    ticker = await self._call(
                        partial(self.exchange.fetch_ticker, symbol), True, "fetch_ticker"
                    )
                except Exception as error:
                    if classify(error) is ErrorKind.FATAL:
                        raise
                    log.warning(
                        "conversion price not read",
                        extra={"symbol": symbol, "error": type(error).__name__},
                    )
                    return None
                last = ticker.get("last") or ticker.get("close")
                if not last or float(last) <= 0:
                    return None
                cached = (float(last), now)
                self._prices[symbol] = cached
            return 1.0 / cached[0] if inverse else cached[0]
        return None

    # -- internals ----------------------------------------------------------------------------

    async def _apply(self, order: LiveOrder, answer: Mapping[str, Any]) -> Outcome:
        update = OrderUpdate.from_ccxt(answer)
        trades: tuple[ExchangeTrade, ...] = ()
        exchange_id = order.exchange_id or update.exchange_id
        if update.filled > order.filled and exchange_id is not None:
            try:
                trades = await self._trades(order.symbol, exchange_id)
            except Exception as error:
                if classify(error) is ErrorKind.FATAL:
                    raise
                # Filled, but not yet booked: the order stays working in the journal and the
                # next refresh asks again (a fill is never booked without its trades).
                log.warning(
                    "trades of a filled order not fetched; asking again at the next refresh",
                    extra={"client_id": order.client_id, "error": type(error).__name__},
                )
                return Outcome(order)
        advanced, fresh = advance(order, update, trades)
        if advanced != order:
            await self.journal.journal_update(self.bot_key, advanced)
            self.orders[order.client_id] = advanced
        return Outcome(advanced, fresh)

    async def _unresolved(self, order: LiveOrder) -> Outcome:
        now = self._clock()
        since = self._unresolved_since.setdefault(order.client_id, now)
        if order.status is LiveStatus.NEW and now - since >= self._grace_s:
            self._unresolved_since.pop(order.client_id, None)
            return Outcome(
                await self._refuse(
                    order,
                    "not_received",
                    f"the exchange has no order with client id {order.client_id} "
                    f"{self._grace_s:g} s after it was sent; it never arrived (not resent)",
                )
            )
        return Outcome(order)

    async def _refuse(
        self, order: LiveOrder, code: str, message: str, new: bool = False
    ) -> LiveOrder:
        refused = reject(order, f"{code}: {message}")
        self.refusals[code] = self.refusals.get(code, 0) + 1
        log.warning(
            "order refused",
            extra={"client_id": order.client_id, "decision": order.decision_id, "code": code},
        )
        if new:
            await self.journal.journal_intent(self.bot_key, refused)
        else:
            await self.journal.journal_update(self.bot_key, refused)
        self.orders[order.client_id] = refused
        return refused

    async def _find(self, order: LiveOrder) -> dict[str, Any] | None:
        """The exchange's order with this client id, or None if it has none."""
        for method, param in FIND_BY_CLIENT_ID[self.exchange_name]:
            params = {} if param is None else {param: order.client_id}
            fetch = getattr(self.exchange, method)
            if method == "fetch_order":
                if param is None and order.exchange_id is None:
                    continue  # asks by the exchange's id, not known yet
                try:
                    candidates = [
                        await self._call(
                            partial(fetch, order.exchange_id, order.symbol, params), True, method
                        )
                    ]
                except OrderNotFound:
                    continue
            else:
                candidates = await self._call(
                    partial(fetch, order.symbol, None, None, params), True, method
                )
            for candidate in candidates:
                if candidate.get("clientOrderId") == order.client_id or (
                    order.exchange_id is not None and candidate.get("id") == order.exchange_id
                ):
                    return dict(candidate)
        return None

    async def _trades(self, symbol: str, exchange_id: str) -> tuple[ExchangeTrade, ...]:
        param = TRADES_BY_ORDER_ID.get(self.exchange_name)
        params = {param: exchange_id} if param else {}
        raw = await self._call(
            lambda: self.exchange.fetch_my_trades(symbol, None, None, params),
            reads=True,
            method="fetch_my_trades",
        )
        return tuple(ExchangeTrade.from_ccxt(t) for t in raw if str(t.get("order")) == exchange_id)

    async def _call(self, make: Callable[[], Any], reads: bool = False, method: str = "") -> Any:
        """Run an exchange call, backing off on rate limits (and, for reads, any network
        error: reading twice is harmless). With a budget, each attempt first takes the weight
        of ccxt's ``method`` from the account's budget, and each answer corrects it."""

        def retriable(error: BaseException) -> bool:
            kind = classify(error)
            if kind is ErrorKind.RATE_LIMIT:
                return True
            return reads and kind is ErrorKind.UNCERTAIN and not isinstance(error, OrderNotFound)

        def note(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            if error is not None and classify(error) is ErrorKind.RATE_LIMIT:
                self.rate_limited += 1
            log.warning(
                "exchange call failed; backing off",
                extra={"attempt": state.attempt_number, "error": type(error).__name__},
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception(retriable),
            wait=wait_exponential_jitter(multiplier=self._backoff_s, max=self._max_backoff_s),
            stop=stop_after_attempt(self._attempts),
            before_sleep=note,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self.budget is not None:
                    await self.budget.take(method)
                result = await make()
                if self.budget is not None:
                    await self.budget.observe(getattr(self.exchange, "last_response_headers", None))
                return result
        raise AssertionError("unreachable: tenacity reraises")


def _brief(error: BaseException) -> str:
    """An exchange error in one line (ccxt prefixes the exchange id and appends the body)."""
    return f"{type(error).__name__}: {str(error)[:200]}"
