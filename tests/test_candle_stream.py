"""Live candles over the WebSocket (ccxt.pro) against the fake Binance: every closed candle once,
in order, across a dropped connection (the gap filled by REST), and REST polling as fallback."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro
import pytest

from kubetrade.domain import Candle
from kubetrade.market import exchange as market_exchange
from kubetrade.market.exchange import EXCHANGE_OPTIONS, point_at
from kubetrade.market.sources import candle_source
from kubetrade.market.stream import closed_candles, stream_closed_candles, streams
from kubetrade.spec import parse_bot
from tests.fake_exchanges.binance import DROP, FakeBinance, kline_event

MINUTE = 60_000
T0 = 1_700_000_040_000  # on the minute grid, long closed
# Final values of candles 0..11; each one's close differs so a wrong candle shows.
ROWS = [[T0 + i * MINUTE, 100.0 + i, 110.0 + i, 90.0 + i, 101.0 + i, 5.0 + i] for i in range(12)]


def final(i: int) -> dict[str, Any]:
    return kline_event("BTCUSDT", "1m", MINUTE, ROWS[i], closed=True)


def partial(i: int) -> dict[str, Any]:
    """An update of candle ``i`` while it is open: values it does not close with."""
    t, o, h, low, _, _ = ROWS[i]
    return kline_event("BTCUSDT", "1m", MINUTE, [t, o, h, low, o + 0.5, 1.0], closed=False)


def as_candle(i: int) -> Candle:
    return Candle("BTC/USDT", "1m", *ROWS[i])  # type: ignore[arg-type]


def pro_binance(base_url: str) -> ccxt_pro.Exchange:
    """A ccxt.pro Binance whose REST and WebSocket URLs all lead to the fake."""
    exchange: ccxt_pro.Exchange = ccxt_pro.binance(
        {"options": dict(EXCHANGE_OPTIONS["binance"]), "timeout": 5_000}
    )
    point_at(exchange, base_url)
    ws = exchange.urls["api"]["ws"]
    host = base_url.replace("http://", "ws://")
    for key, value in ws.items():
        if isinstance(value, str):
            ws[key] = re.sub(r"^wss?://[^/]+", host, value)
    return exchange


def rest_binance(base_url: str) -> ccxt_async.Exchange:
    """A REST-only ccxt Binance pointed at the fake."""
    exchange: ccxt_async.Exchange = ccxt_async.binance(
        {"options": dict(EXCHANGE_OPTIONS["binance"]), "timeout": 5_000}
    )
    point_at(exchange, base_url)
    return exchange


async def take(candles: AsyncIterator[Candle], n: int, limit_s: float = 10) -> list[Candle]:
    got: list[Candle] = []
    async with asyncio.timeout(limit_s):
        async for candle in candles:
            got.append(candle)
            if len(got) == n:
                break
    return got


async def nothing_more(candles: AsyncGenerator[Candle, None], wait_s: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(wait_s):
            await anext(candles)


def klines_requests(fake: FakeBinance) -> list[dict[str, str]]:
    return [r["params"] for r in fake.requests if r["path"] == "/api/v3/klines"]


def test_every_closed_candle_once_in_order_across_a_dropped_connection() -> None:
    async def scenario() -> None:
        # REST knows the candles up to 8: 9 closes only on the stream.
        fake = FakeBinance(klines=[list(r) for r in ROWS[:9]])
        # Connection 1: candles 3 and 4 close (4's final update twice), 5 is open when the
        # server drops the connection. Connection 2 starts at 8: 5, 6 and 7 were missed.
        fake.ws_sessions.append(
            [partial(3), final(3), partial(4), final(4), final(4), partial(5), DROP]
        )
        fake.ws_sessions.append([partial(8), final(8), final(3), partial(9), final(9), partial(10)])
        base = await fake.start()
        exchange = pro_binance(base)
        stream = stream_closed_candles(
            exchange, "BTCUSDT", "1m", since=T0, idle_timeout_s=5, max_backoff_s=0.2
        )
        try:
            got = await take(stream, 10)
            assert got == [as_candle(i) for i in range(10)]
            # 10 is open (its unclosed updates are never delivered), and nothing is repeated.
            await nothing_more(stream)
            assert fake.ws_connections == 2
            # REST filled the gaps: from 0 before the first connection, and after the drop from
            # the candle after the last one delivered (5 at the latest: it was still open).
            starts = [int(p["startTime"]) for p in klines_requests(fake)]
            assert len(starts) == 2 and starts[0] == T0
            assert T0 + 3 * MINUTE <= starts[1] <= T0 + 5 * MINUTE
        finally:
            await stream.aclose()
            await exchange.close()
            await fake.stop()

    asyncio.run(scenario())


def test_without_a_start_the_stream_begins_with_the_latest_closed_candles() -> None:
    async def scenario() -> None:
        fake = FakeBinance(klines=[list(r) for r in ROWS[:6]])
        fake.ws_sessions.append([partial(5), final(5), partial(6)])
        base = await fake.start()
        exchange = pro_binance(base)
        stream = stream_closed_candles(exchange, "BTC/USDT", "1m", limit=3, idle_timeout_s=5)
        try:
            # The latest page by REST (3 and 4; 5 is the stream's), then 5 as it closes.
            assert await take(stream, 3) == [as_candle(i) for i in (3, 4, 5)]
            await nothing_more(stream)
        finally:
            await stream.aclose()
            await exchange.close()
            await fake.stop()

    asyncio.run(scenario())


def test_a_silent_stream_is_reconnected_within_its_idle_bound() -> None:
    async def scenario() -> None:
        fake = FakeBinance(klines=[list(r) for r in ROWS])
        fake.ws_sessions.append([])  # subscribed, then silence
        fake.ws_sessions.append([partial(4), final(4), partial(5)])
        base = await fake.start()
        exchange = pro_binance(base)
        stream = stream_closed_candles(
            exchange, "BTCUSDT", "1m", since=T0 + 2 * MINUTE, idle_timeout_s=0.5
        )
        try:
            assert await take(stream, 3) == [as_candle(i) for i in (2, 3, 4)]
            assert fake.ws_connections == 2
        finally:
            await stream.aclose()
            await exchange.close()
            await fake.stop()

    asyncio.run(scenario())


def test_rest_polling_is_the_fallback() -> None:
    async def scenario() -> None:
        fake = FakeBinance(klines=[list(r) for r in ROWS[:4]])
        base = await fake.start()
        rest = rest_binance(base)
        pro = pro_binance(base)
        try:
            assert (streams(pro), streams(rest)) == (True, False)
            for exchange, stream in ((rest, True), (pro, False)):
                candles = closed_candles(exchange, "BTCUSDT", "1m", stream=stream)
                # The fake's candles are long closed: the poller's first page has them all.
                assert await take(candles, 4) == [as_candle(i) for i in range(4)]
                await candles.aclose()
            assert fake.ws_connections == 0
        finally:
            await rest.close()
            await pro.close()
            await fake.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("websocket", [True, False])
def test_the_feed_source_follows_spec_exchange_websocket_and_the_api_base(
    websocket: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed's exchange client goes where the executor's does: KUBETRADE_EXCHANGE_API_BASE
    sends its REST and WebSocket requests to the fake (no other candle source needed)."""
    document = {
        "apiVersion": "kubetrade.io/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": "btc-live", "namespace": "bots"},
        "spec": {
            "symbols": ["BTC/USDT"],
            "timeframe": "1m",
            "model": {"name": "btc-xgb"},
            "exchange": {"name": "binance", "websocket": websocket},
        },
    }
    bot = parse_bot(document)
    assert bot.spec.exchange.websocket is websocket

    async def scenario() -> None:
        fake = FakeBinance(klines=[list(r) for r in ROWS[:6]])
        fake.ws_sessions.append([partial(5), final(5), partial(6)])
        base = await fake.start()
        asked: list[bool] = []
        made: list[Any] = []

        real = market_exchange.create_exchange

        def create(name: str, config: Any = None, **options: Any) -> Any:
            asked.append(options["websocket"])
            made.append(real(name, config, **options))
            return made[-1]

        monkeypatch.setattr(market_exchange, "create_exchange", create)
        monkeypatch.setenv("KUBETRADE_EXCHANGE_API_BASE", base)
        source = candle_source(bot)
        assert isinstance(source, AsyncGenerator)
        try:
            # REST has 0-5 closed; the stream closes 5 itself (the poller reads it by REST).
            assert await take(source, 6) == [as_candle(i) for i in range(6)]
            assert asked == [websocket]
            assert fake.ws_connections == (1 if websocket else 0)
            # Closing the source closes the exchange's connections at once.
            await source.aclose()
            assert made[0].session is None and not getattr(made[0], "clients", {})
        finally:
            await source.aclose()
            await fake.stop()

    asyncio.run(scenario())


def test_websocket_must_be_a_boolean() -> None:
    from kubetrade.spec import ManifestError

    document = {
        "apiVersion": "kubetrade.io/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": "btc-live", "namespace": "bots"},
        "spec": {
            "symbols": ["BTC/USDT"],
            "model": {"name": "btc-xgb"},
            "exchange": {"name": "binance", "websocket": "sometimes"},
        },
    }
    with pytest.raises(ManifestError, match="websocket"):
        parse_bot(document)
