"""Closed candles over an exchange's WebSocket (ccxt.pro ``watch_ohlcv``), gaps filled by REST.

A kline stream sends the open candle over and over as it changes, then its final update, then
the next candle. ccxt keeps only the values (Binance's ``x`` "closed" flag does not survive its
parsing), so a candle counts as closed once a newer one starts **on the same connection**: its
last update seen before that is the final one. A connection can drop at any time; the candle in
progress is then forgotten (its last values seen may not be final) and, once reconnected, every
candle between the last one delivered and the first one of the new connection is fetched by
REST (``fetch_ohlcv``). So a dropped connection loses nothing, and since a candle is only ever
delivered if it is newer than the last one delivered, nothing is doubled either. A connection
the server closed while nobody was waiting on it raises nothing: ccxt opens a new one at the
next watch, which shows as a new client object, and is treated as the same loss.

Reconnection backs off exponentially with jitter (tenacity); every wait is bounded: a stream
silent for ``idle_timeout_s`` is closed and reconnected. Exchanges without ``watchOHLCV`` (and
bots with ``exchange.websocket: false``) use the REST poller instead (:func:`closed_candles`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

from ccxt.base.errors import ExchangeClosedByUser, NetworkError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from kubetrade.domain import Candle, timeframe_ms
from kubetrade.market.exchange import OhlcvExchange, parse_ohlcv, poll_closed_candles
from kubetrade.market.symbols import normalize_symbol

log = logging.getLogger(__name__)

# What ends a connection and calls for a reconnect: the network, the server closing it, or
# silence past the idle bound (``TimeoutError``).
DISCONNECTED = (NetworkError, ExchangeClosedByUser, TimeoutError)


class StreamingExchange(OhlcvExchange, Protocol):
    """What the stream needs of a ``ccxt.pro`` exchange."""

    async def watch_ohlcv(
        self, symbol: str, timeframe: str = ..., since: int | None = ..., limit: int | None = ...
    ) -> list[list[Any]]:
        """The candle rows updated since the last call (waits for at least one)."""
        ...

    async def close_ws_clients(self) -> None:
        """Close every WebSocket connection (the next watch opens a new one)."""
        ...


def streams(exchange: object) -> TypeGuard[StreamingExchange]:
    """True when ``exchange`` is a ccxt.pro exchange that can watch candles."""
    has = getattr(exchange, "has", {})
    return bool(has.get("watchOHLCV")) and hasattr(exchange, "close_ws_clients")


def closed_candles(
    exchange: OhlcvExchange, symbol: str, timeframe: str, *, stream: bool = True
) -> AsyncGenerator[Candle, None]:
    """Each closed candle of ``symbol`` once, in order, forever: over the WebSocket when
    ``stream`` and the exchange can (:func:`stream_closed_candles`), else by REST polling."""
    if stream and streams(exchange):
        return stream_closed_candles(exchange, symbol, timeframe)
    return poll_closed_candles(exchange, symbol, timeframe)


async def stream_closed_candles(
    exchange: StreamingExchange,
    symbol: str,
    timeframe: str,
    *,
    since: int | None = None,
    limit: int = 500,
    idle_timeout_s: float = 60.0,
    max_backoff_s: float = 30.0,
) -> AsyncGenerator[Candle, None]:
    """Yield each closed candle of ``symbol`` once, in time order, forever.

    Starts at ``since`` (ms; None: the latest ``limit`` closed candles, fetched by REST as the
    poller starts), then follows the stream. Disconnections reconnect with exponential backoff
    (at most ``max_backoff_s`` between attempts, tried for as long as the feed runs) and the
    gap is filled by REST; other exchange errors propagate.
    """
    state = _Stream(exchange, normalize_symbol(symbol), timeframe, limit, idle_timeout_s)
    if since is not None:
        state.last = since - since % state.step - state.step
    while True:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DISCONNECTED),
            wait=wait_exponential_jitter(multiplier=0.2, max=max_backoff_s, jitter=0.2),
            before_sleep=_log_reconnect,
            reraise=True,
        )
        closed: list[Candle] = await retrying(state.advance)
        for candle in closed:
            yield candle


@dataclass
class _Stream:
    """The stream of one symbol: what was delivered, and the candle open on this connection."""

    exchange: StreamingExchange
    symbol: str
    timeframe: str
    limit: int
    idle_timeout_s: float
    last: int | None = None  # open time of the last candle delivered
    # The newest candle seen on the current connection (None: none since it opened). It is
    # closed, with the values of its last update, once a newer one starts on this connection.
    current: Candle | None = None
    clients: frozenset[object] = frozenset()

    @property
    def step(self) -> int:
        return timeframe_ms(self.timeframe)

    async def advance(self) -> list[Candle]:
        """Wait for the stream's next update; the candles it closes (with any gap, by REST).

        A failure leaves nothing half-done: ``last`` moves only with what is returned, and
        the connection's open candle is forgotten.
        """
        try:
            if not self.clients <= self._clients():
                # The server closed a connection while nobody waited on it: ccxt will open a
                # new one, but its cache still holds rows of the old one (possibly not final).
                self._forget()
            async with asyncio.timeout(self.idle_timeout_s):
                rows = await self.exchange.watch_ohlcv(self.symbol, self.timeframe)
            self.clients = self._clients()
            updates = self._parse(rows, "streamed")
            closed: list[Candle] = []
            last = self.last
            for candle in updates:
                if last is not None and candle.open_time <= last:
                    continue  # delivered already: a repeat
                if self.current is not None and candle.open_time <= self.current.open_time:
                    if candle.open_time == self.current.open_time:
                        self.current = candle  # its latest update
                    continue
                if self.current is not None:
                    closed.append(self.current)
                    last = self.current.open_time
                if last is None or candle.open_time > last + self.step:
                    # The connection's first candle, or one after a skip: the gap by REST.
                    closed.extend(await self._backfill(last, candle.open_time))
                    last = closed[-1].open_time if closed else last
                self.current = candle
        except DISCONNECTED as error:
            if isinstance(error, TimeoutError):
                await self.exchange.close_ws_clients()  # silent, maybe dead: ccxt would wait
            self._forget()
            raise
        self.last = last
        return closed

    def _clients(self) -> frozenset[object]:
        """The exchange's open WebSocket connections (ccxt makes a new client per connection)."""
        return frozenset(getattr(self.exchange, "clients", {}).values())

    def _forget(self) -> None:
        """A connection was lost: forget its open candle and the rows ccxt cached from it, so
        nothing of it passes for final (what it missed comes by REST)."""
        self.current = None
        cache = getattr(self.exchange, "ohlcvs", None)
        if isinstance(cache, dict):
            cache.get(self.symbol, {}).pop(self.timeframe, None)

    async def _backfill(self, last: int | None, before: int) -> list[Candle]:
        """The candles after ``last`` and before open time ``before`` (all closed), by REST;
        ``last`` None: the latest page of them."""
        got: list[Candle] = []
        cursor = None if last is None else last + self.step
        while True:
            async with asyncio.timeout(self.idle_timeout_s):
                rows = await self.exchange.fetch_ohlcv(
                    self.symbol, self.timeframe, since=cursor, limit=self.limit
                )
            floor = got[-1].open_time if got else (-1 if last is None else last)
            page = [c for c in self._parse(rows, "returned") if floor < c.open_time < before]
            got.extend(page)
            if cursor is None or len(rows) < self.limit or not page:
                return got
            if got[-1].open_time + self.step >= before:
                return got
            cursor = got[-1].open_time + self.step

    def _parse(self, rows: list[list[Any]], how: str) -> list[Candle]:
        """Valid candles of ``rows``, one per open time (the last row's), ascending."""
        candles, errors = parse_ohlcv(rows, symbol=self.symbol, timeframe=self.timeframe)
        for message in errors:
            log.error(f"exchange {how} a malformed candle, skipped", extra={"error": message})
        return sorted({c.open_time: c for c in candles}.values(), key=lambda c: c.open_time)


def _log_reconnect(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning(
        "candle stream disconnected; reconnecting, the gap comes by REST",
        extra={"attempt": state.attempt_number, "error": str(error), "retry_in_s": delay},
    )
