"""Closed candles from an exchange through ccxt: REST polling of ``fetch_ohlcv``.

Exchanges return the still-open candle as the last row, with partial values that change until
it closes; publishing it would feed the model a candle that never existed. So each poll keeps
only candles whose close time has passed on the exchange's clock, drops those already
delivered, de-duplicates, and advances a cursor. The parsing and selection are pure functions
(tested on recorded responses); ``poll_closed_candles`` is the async loop around them.

:func:`create_exchange` makes the ccxt client of the feed and of the live executor alike, so
both take the same testnet (``sandbox``) and the same stand-in host
(``KUBETRADE_EXCHANGE_API_BASE``, :func:`exchange_api_base`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro
from ccxt.base.errors import NetworkError

from kubetrade.domain import Candle, timeframe_ms
from kubetrade.errors import ExchangeError
from kubetrade.market.symbols import normalize_symbol

log = logging.getLogger(__name__)

# Every request of the bot's exchange client (REST and WebSocket, feed and executor alike) to
# this host instead (``http://127.0.0.1:PORT``): a local stand-in for the exchange, as tests use.
ENV_EXCHANGE_API_BASE = "KUBETRADE_EXCHANGE_API_BASE"

# Binance answers a spot-only market load from exchangeInfo alone with these options: what the
# live executor trades (Binance spot) and all a local stand-in serves.
EXCHANGE_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {
        "fetchMarkets": {"types": ["spot"]},
        "fetchCurrencies": False,
        "fetchMargins": False,
    },
}

_HTTP_HOST = re.compile(r"^https?://[^/]+")
_WS_HOST = re.compile(r"^wss?://[^/]+")


class OhlcvExchange(Protocol):
    """What the poller needs of a ``ccxt.async_support`` exchange."""

    has: dict[str, Any]

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str = ..., since: int | None = ..., limit: int | None = ...
    ) -> list[list[Any]]:
        """Rows ``[timestamp ms, open, high, low, close, volume]``, oldest first."""
        ...

    async def fetch_time(self) -> int | None:
        """The exchange's clock in ms."""
        ...

    def milliseconds(self) -> int:
        """The local clock in ms."""
        ...


def exchange_api_base(environ: Mapping[str, str] = os.environ) -> str | None:
    """The host every exchange request goes to instead (``KUBETRADE_EXCHANGE_API_BASE``), if
    set: read the same way by the feed and the executor."""
    return environ.get(ENV_EXCHANGE_API_BASE) or None


def point_at(exchange: ccxt_async.Exchange, base_url: str) -> None:
    """Send every request of ``exchange`` to ``base_url`` (``http://host:port``), keeping each
    API's path: REST hosts become ``base_url``, WebSocket hosts its ``ws://`` twin."""
    ws_base = _HTTP_HOST.sub(lambda m: m.group(0).replace("http", "ws", 1), base_url)

    def rewrite(urls: dict[str, Any]) -> None:
        for key, value in list(urls.items()):
            if isinstance(value, dict):
                rewrite(value)
            elif isinstance(value, str):
                urls[key] = _WS_HOST.sub(ws_base, _HTTP_HOST.sub(base_url, value))

    rewrite(exchange.urls["api"])


def create_exchange(
    name: str,
    config: dict[str, Any] | None = None,
    *,
    websocket: bool = False,
    sandbox: bool = False,
    api_base: str | None = None,
) -> ccxt_async.Exchange:
    """An async ccxt exchange by id (``binance``, ``kraken``, ...), ccxt's rate limiting on
    (the live broker turns it off where the account's shared budget governs).

    ``websocket``: the ccxt.pro class when ccxt has one for this exchange (it also speaks REST).
    ``sandbox``: the exchange's testnet (refused for an exchange ccxt knows none for).
    ``api_base``: every request to that host (:func:`point_at`), with the options a stand-in
    needs (:data:`EXCHANGE_OPTIONS`). The caller owns it and must ``await exchange.close()``.
    """
    factory = getattr(ccxt_pro, name, None) if websocket else None
    factory = factory if isinstance(factory, type) else getattr(ccxt_async, name, None)
    if not isinstance(factory, type):
        raise ExchangeError(
            f"unknown exchange {name!r}; use a ccxt exchange id such as "
            f"{', '.join(ccxt_async.exchanges[:6])} (full list: ccxt.exchanges)"
        )
    settings: dict[str, Any] = {"enableRateLimit": True, **(config or {})}
    if api_base is not None:
        settings["options"] = {**EXCHANGE_OPTIONS.get(name, {}), **settings.get("options", {})}
    exchange: ccxt_async.Exchange = factory(settings)
    if sandbox:
        try:
            # ccxt lists Kraken's and Coinbase's testnet as None: set_sandbox_mode would fail
            # with a TypeError instead of NotSupported.
            if not exchange.urls.get("test"):
                raise ccxt_async.NotSupported(name)
            exchange.set_sandbox_mode(True)
        except ccxt_async.NotSupported:
            raise ExchangeError(
                f"exchange {name} has no testnet in ccxt; set spec.exchange.sandbox: false "
                "(real orders) or trade on an exchange with a sandbox"
            ) from None
    if api_base is not None:
        point_at(exchange, api_base)
    return exchange


def parse_ohlcv_row(row: Sequence[Any], *, symbol: str, timeframe: str) -> Candle:
    """One ccxt OHLCV row → Candle; a malformed row is refused naming its content and fault.

    A missing (None) volume, which some exchanges return for candles without trades, becomes 0.
    """
    where = f"{symbol} {timeframe} OHLCV row {list(row)!r}"
    if len(row) < 6:
        raise ExchangeError(f"{where}: expected [timestamp, open, high, low, close, volume]")
    try:
        open_time = int(row[0])
        o, h, low, c = (float(v) for v in row[1:5])
        volume = 0.0 if row[5] is None else float(row[5])
    except (TypeError, ValueError) as error:
        raise ExchangeError(f"{where}: not numeric ({error})") from None
    if open_time % timeframe_ms(timeframe):
        raise ExchangeError(f"{where}: open time is not on the {timeframe} grid")
    if not all(math.isfinite(p) and p > 0 for p in (o, h, low, c)) or not volume >= 0:
        raise ExchangeError(f"{where}: prices must be positive and volume non-negative")
    if h < max(o, c, low) or low > min(o, c, h):
        raise ExchangeError(f"{where}: high/low do not envelope open and close")
    return Candle(symbol, timeframe, open_time, o, h, low, c, volume)


def parse_ohlcv(
    rows: Sequence[Sequence[Any]], *, symbol: str, timeframe: str
) -> tuple[list[Candle], list[str]]:
    """A ``fetch_ohlcv`` response → (valid Candles, one error message per refused row).

    A bad row must not stop a feed, so it is reported instead of raised; the caller logs it.
    """
    name = normalize_symbol(symbol)
    candles: list[Candle] = []
    errors: list[str] = []
    for row in rows:
        try:
            candles.append(parse_ohlcv_row(row, symbol=name, timeframe=timeframe))
        except ExchangeError as error:
            errors.append(str(error))
    return candles, errors


def select_closed(candles: Sequence[Candle], *, now_ms: int, after: int | None) -> list[Candle]:
    """Closed candles (close time <= now) newer than ``after``, one per open time, ascending.

    Duplicates keep the last row returned (the exchange's latest word on that candle).
    """
    fresh = {
        c.open_time: c
        for c in candles
        if c.close_time <= now_ms and (after is None or c.open_time > after)
    }
    return [fresh[t] for t in sorted(fresh)]


async def poll_closed_candles(
    exchange: OhlcvExchange,
    symbol: str,
    timeframe: str,
    *,
    since: int | None = None,
    limit: int = 500,
    settle_ms: int = 1_500,
    max_backoff_s: float = 60.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncGenerator[Candle, None]:
    """Yield each closed candle of ``symbol`` once, in time order, forever.

    Starts at ``since`` (ms; None: the exchange's latest ``limit`` candles). While behind it
    pages through history without waiting; once caught up it sleeps until the next candle
    closes (plus ``settle_ms`` for the exchange to finalize it). Network errors are retried
    with exponential backoff; other exchange errors propagate. The exchange clock is read once
    (``fetch_time``) to correct the local clock.
    """
    symbol = normalize_symbol(symbol)
    step = timeframe_ms(timeframe)
    offset = await _clock_offset(exchange)
    last: int | None = None if since is None else since - since % step - step
    backoff = 1.0
    while True:
        cursor = None if last is None else last + step
        try:
            rows = await exchange.fetch_ohlcv(symbol, timeframe, since=cursor, limit=limit)
        except NetworkError as error:
            log.warning(
                "fetch_ohlcv failed, retrying",
                extra={"symbol": symbol, "error": str(error), "retry_in_s": backoff},
            )
            await sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
            continue
        backoff = 1.0
        now = exchange.milliseconds() + offset
        candles, errors = parse_ohlcv(rows, symbol=symbol, timeframe=timeframe)
        for message in errors:
            log.error("exchange returned a malformed candle, skipped", extra={"error": message})
        for candle in select_closed(candles, now_ms=now, after=last):
            yield candle
            last = candle.open_time
        open_rows = any(c.close_time > now for c in candles)
        if len(rows) >= limit and not open_rows:
            continue  # a full page of closed candles: more history is waiting
        next_close = (now // step + 1) * step
        await sleep((next_close - now + settle_ms) / 1000)


async def _clock_offset(exchange: OhlcvExchange) -> int:
    """Exchange clock minus local clock in ms (0 when the exchange cannot tell its time)."""
    if not exchange.has.get("fetchTime"):
        return 0
    server = await exchange.fetch_time()
    return 0 if server is None else int(server) - exchange.milliseconds()
