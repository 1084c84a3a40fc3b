"""Live mode of the executor: the engine's orders to an exchange, its fills back to the engine.

The executor decides as in paper mode (``trading.live_engine.LiveEngine`` shares the paper
engine's strategy, risk and control) and commits each decision with its checkpoint; only then
does :class:`LiveRouter` send it, through the live broker (``kubetrade.live.broker``: validated,
journaled before the request, sent under a client id derived from the decision). What the
exchange reports is handed to the engine as cumulative progress, so a report seen twice books
nothing twice:

- at start the router **reconciles** (``kubetrade.live.reconcile``): orders journaled but not
  finished are completed from the exchange; an order or balance the journal cannot explain
  disarms the engine (no new position; exits, control commands and the kill switch still work),
  and the executor's status says ``Reconciled=False`` with the reason. It reconciles again every
  ``RECONCILE_EVERY_S`` while disarmed, and arms once the exchange agrees;
- an order the engine holds that has no journal row (decided and committed, then the executor
  died before sending it) is sent now; while disarmed an unsent entry is dropped instead;
- the exchange's markets (lot steps, minimums) are reloaded every ``MARKETS_EVERY_S``, for the
  broker's and the engine's checks alike;
- every request first takes its weight from the exchange account's budget, shared by all bots
  on the account (``kubetrade.live.budget``);
- orders still working on the exchange are asked about every ``POLL_EVERY_S``; once the kill
  switch is engaged, an entry still working is cancelled on the exchange (the engine flattens
  whatever it filled, and its kill already flattened the rest).

Configuration comes from the bot (``spec.exchange.name``, ``sandbox``) and the environment:
the credentials Secret's keys (``kubetrade.live.exchange.Credentials``), and for tests
``KUBETRADE_EXCHANGE_API_BASE`` (every request to another host, e.g. a local fake exchange),
``KUBETRADE_EXCHANGE_TIMEOUT_MS`` and ``KUBETRADE_LIVE_UNRESOLVED_GRACE_S`` (how long an order
sent but unknown to the exchange may stay unresolved before it counts as never received).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kubetrade.errors import InvalidInputError
from kubetrade.live.broker import LiveBroker
from kubetrade.live.budget import AccountBudget
from kubetrade.live.exchange import Credentials, connect_exchange
from kubetrade.live.reconcile import Reconciliation, reconcile
from kubetrade.market.exchange import exchange_api_base
from kubetrade.market.symbols import base_currency
from kubetrade.spec import TradingBot
from kubetrade.store import AsyncStore
from kubetrade.trading import EngineOutput
from kubetrade.trading.client_ids import exchange_client_id
from kubetrade.trading.live_engine import LiveEngine, OrderProgress
from kubetrade.trading.order_state import LiveOrder, fee_in_quote
from kubetrade.trading.orders import ENTRY_REASONS

log = logging.getLogger(__name__)

ENV_TIMEOUT_MS = "KUBETRADE_EXCHANGE_TIMEOUT_MS"
ENV_UNRESOLVED_GRACE_S = "KUBETRADE_LIVE_UNRESOLVED_GRACE_S"
POLL_EVERY_S = 1.0
RECONCILE_EVERY_S = 5.0
MARKETS_EVERY_S = 3600.0


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInputError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise InvalidInputError(f"{name}={raw!r} must be positive")
    return value


async def open_broker(bot: TradingBot, store: AsyncStore, environ: Mapping[str, str]) -> LiveBroker:
    """The bot's live broker: one exchange connection, its markets loaded, the journal read,
    every request within the account's budget shared with the other bots on it."""
    exchange_spec = bot.spec.exchange
    credentials = Credentials.from_environment(environ)
    exchange = connect_exchange(
        exchange_spec.name,
        credentials,
        sandbox=exchange_spec.sandbox,
        api_base=exchange_api_base(environ),
        timeout_ms=int(_number(environ, ENV_TIMEOUT_MS, 10_000)),
    )
    try:
        return await LiveBroker.open(
            exchange,
            exchange_name=exchange_spec.name,
            bot_key=bot.key,
            journal=store,
            symbols=list(bot.spec.symbols),
            unresolved_grace_s=_number(environ, ENV_UNRESOLVED_GRACE_S, 30.0),
            budget=AccountBudget.for_account(store, exchange_spec.name, credentials.api_key),
        )
    except BaseException:
        await exchange.close()
        raise


def quote_currency(symbol: str) -> str:
    """``BTC/USDT`` -> ``USDT`` (``BTC/USDT:USDT`` too)."""
    return symbol.split("/")[1].split(":", maxsplit=1)[0]


def third_currency_fees(order: LiveOrder) -> dict[str, float]:
    """The order's fees charged in neither its base nor its quote (e.g. Binance's BNB)."""
    pair = (base_currency(order.symbol), quote_currency(order.symbol))
    return {c: a for c, a in order.fees.items() if c not in pair and a}


def progress_of(
    order: LiveOrder, now_ms: int, rates: Mapping[str, float] | None = None
) -> OrderProgress:
    """A journaled order as the engine books it: cumulative amounts, fees in the quote (a fee
    in a third currency at ``rates``, quote per unit; one without a rate is left out)."""
    base, quote = base_currency(order.symbol), quote_currency(order.symbol)
    price = order.average_price or order.price or 0.0
    known = {c: a for c, a in order.fees.items() if c in (base, quote) or c in (rates or {})}
    fee = fee_in_quote(known, base=base, quote=quote, price=price, rates=rates)
    return OrderProgress(
        client_order_id=order.decision_id,
        filled=order.filled,
        cost=order.cost,
        fee=fee or 0.0,
        fee_base=order.fees.get(base, 0.0),
        time=now_ms,
        done=order.is_terminal,
        reason=order.reason,
    )


@dataclass
class LiveRouter:
    """Sends one live engine's orders and books what the exchange did with them."""

    broker: LiveBroker
    engine: LiveEngine
    symbols: list[str]
    verdict: Reconciliation | None = None
    clock: Callable[[], float] = time.monotonic
    markets_every_s: float = MARKETS_EVERY_S
    # Fees charged in a currency no price was found for (currency -> amount), left out of
    # equity: logged as errors when their order ends.
    unconverted_fees: dict[str, float] = field(default_factory=dict)
    _polled_at: float = float("-inf")
    _reconciled_at: float = float("-inf")
    _markets_at: float | None = None
    # Each order's conversion rates for third-currency fees, fixed when first read so that its
    # cumulative fee in the quote never moves with the price between two reports.
    _fee_rates: dict[str, dict[str, float]] = field(default_factory=dict)

    async def fee_rates(self, order: LiveOrder) -> dict[str, float]:
        """Quote per unit of each third currency ``order`` paid fees in, as far as known; an
        order that ends with a fee still unpriced records it in ``unconverted_fees``."""
        fees = third_currency_fees(order)
        if not fees:
            return {}
        rates = self._fee_rates.setdefault(order.client_id, {})
        quote = quote_currency(order.symbol)
        for currency in fees.keys() - rates.keys():
            price = await self.broker.conversion_price(currency, quote)
            if price is not None:
                rates[currency] = price
        if order.is_terminal:
            del self._fee_rates[order.client_id]
            for currency in fees.keys() - rates.keys():
                self.unconverted_fees[currency] = (
                    self.unconverted_fees.get(currency, 0.0) + fees[currency]
                )
                log.error(
                    "fee left out of equity: the exchange has no price for its currency",
                    extra={
                        "client_id": order.client_id,
                        "currency": currency,
                        "amount": fees[currency],
                        "quote": quote,
                    },
                )
        return rates

    async def reconcile(self) -> Reconciliation:
        """Complete the journal from the exchange; arm the engine only if it agrees."""
        self.verdict = await reconcile(self.broker, self.symbols)
        self._reconciled_at = self.clock()
        if self.verdict.reconciled:
            if self.engine.disarmed is not None:
                log.warning("reconciled with the exchange: armed")
            self.engine.arm()
        else:
            log.error("not reconciled: disarmed", extra={"reasons": list(self.verdict.reasons)})
            self.engine.disarm(self.verdict.message)
        return self.verdict

    async def step(self, now_ms: int) -> tuple[EngineOutput, bool]:
        """Send what the engine decided and nobody sent, ask about orders still working (at
        most every ``POLL_EVERY_S``), re-reconcile while disarmed; the engine's output and
        whether its state changed (so that it is checkpointed)."""
        now = self.clock()
        if self._markets_at is None:
            self._markets_at = now  # loaded when the broker opened
        elif now - self._markets_at >= self.markets_every_s:
            await self.broker.load_markets(self.symbols)
            self.engine.set_markets(self.broker.markets)
            self._markets_at = now
        if self.engine.disarmed is not None and now - self._reconciled_at >= RECONCILE_EVERY_S:
            await self.reconcile()
        poll = now - self._polled_at >= POLL_EVERY_S
        if poll:
            self._polled_at = now
        out, changed = EngineOutput(), False
        for order in self.engine.pending_orders():
            client_id = exchange_client_id(self.broker.bot_key, order.client_order_id)
            live = self.broker.orders.get(client_id)
            if live is None:
                if self.engine.disarmed is not None and order.reason in ENTRY_REASONS:
                    progress = OrderProgress(
                        order.client_order_id, 0, 0, 0, 0, now_ms, True, "disarmed: not sent"
                    )
                    out.extend(self.engine.on_order_progress(progress))
                    changed = True
                    continue
                live = (await self.broker.submit(order)).order
            elif (
                not live.is_terminal and self.engine.kill_engaged and order.reason in ENTRY_REASONS
            ):
                # Killed: an entry still working is cancelled; what it filled gets flattened.
                live = (await self.broker.cancel(client_id)).order
            elif not live.is_terminal and poll:
                live = (await self.broker.refresh(client_id)).order
            rates = await self.fee_rates(live)
            step = self.engine.on_order_progress(progress_of(live, now_ms, rates))
            changed = changed or live.is_terminal or bool(step.fills)
            out.extend(step)
        return out, changed
