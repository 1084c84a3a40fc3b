"""Where a bot's candles come from: the synthetic market, a replay file, or an exchange.

The feed streams them; the backtest loads the same finite sources into memory. Both get the
candles in the same order (time, then the order of ``spec.symbols``), which is what makes a
run and a backtest over the same candles comparable fill for fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

import pandas as pd

from kubetrade.domain import Candle, timeframe_ms
from kubetrade.errors import InvalidInputError
from kubetrade.market import infer_frame_timeframe, iter_candles, load_candles, resample, to_candles
from kubetrade.market.download import replay_file
from kubetrade.spec import TradingBot

log = logging.getLogger(__name__)


class SourceError(InvalidInputError):
    """The bot's source cannot give the candles it asks for."""


def replay_frame(bot: TradingBot, path: str) -> pd.DataFrame:
    """The replay file's candles for the bot's symbols and timeframe, in stream order."""
    spec = bot.spec
    # A file without a symbol column (a ccxt export) holds the market of a one-symbol bot.
    frame = load_candles(path, default_symbol=spec.symbols[0] if len(spec.symbols) == 1 else None)
    available = list(dict.fromkeys(frame["symbol"]))
    if set(spec.symbols) <= set(available):
        frame = frame[frame["symbol"].isin(spec.symbols)]
    elif len(available) == 1 and len(spec.symbols) == 1:
        # A single-market file (e.g. BTCUSD from one venue) stands in for the bot's one symbol.
        if available[0] != spec.symbols[0]:
            log.warning(
                "replay file symbol differs from the bot's; using it as the bot's symbol",
                extra={"file_symbol": available[0], "bot_symbol": spec.symbols[0], "file": path},
            )
        frame = frame.assign(symbol=spec.symbols[0])
    else:
        raise SourceError(
            f"{path} holds candles for {', '.join(available)}; the bot trades "
            f"{', '.join(spec.symbols)}. Replay a file with those symbols or change spec.symbols."
        )
    source_tf = infer_frame_timeframe(frame, where=path)
    if timeframe_ms(source_tf) != timeframe_ms(spec.timeframe):
        frame = resample(frame, spec.timeframe, source_timeframe=source_tf)
    order = {symbol: i for i, symbol in enumerate(spec.symbols)}
    frame = frame.assign(_order=frame["symbol"].map(order))
    frame = frame.sort_values(["open_time", "_order"], kind="stable").drop(columns="_order")
    if spec.exchange.limit is not None:
        frame = frame.groupby("symbol", sort=False).head(spec.exchange.limit)
    return frame.reset_index(drop=True)


ReplayWindow = tuple[int | None, int | None]


def _finite_candles(
    bot: TradingBot, data_file: str | None, window: ReplayWindow = (None, None)
) -> Iterator[Candle]:
    spec = bot.spec
    # An http(s) exchange.uri is downloaded (or found in the cache) and checked here.
    path = replay_file(spec.exchange, data_file)
    if path is not None:
        frame = replay_frame(bot, path)
        low, high = window
        if low is not None:
            frame = frame[frame["open_time"] >= low]
        if high is not None:
            frame = frame[frame["open_time"] < high]
        yield from to_candles(frame, spec.timeframe)
        return
    if spec.exchange.name == "synthetic":
        yield from iter_candles(
            spec.symbols, spec.timeframe, spec.exchange.seed, n=spec.exchange.limit
        )
        return
    raise SourceError(
        f"exchange {spec.exchange.name!r} is a live market: it has no end to load; "
        "pass a candle file (--data) to replay instead"
    )


def load_source_candles(bot: TradingBot, data_file: str | None = None) -> list[Candle]:
    """Every candle of a finite source (a replay file, or synthetic with ``exchange.limit``)."""
    if (
        data_file is None
        and bot.spec.exchange.name == "synthetic"
        and bot.spec.exchange.limit is None
    ):
        raise SourceError(
            "the synthetic source is endless without exchange.limit; set it to backtest"
        )
    return list(_finite_candles(bot, data_file))


async def candle_source(
    bot: TradingBot, data_file: str | None = None, window: ReplayWindow = (None, None)
) -> AsyncIterator[Candle]:
    """Stream the bot's candles: a file or the synthetic market, or a live exchange via ccxt.
    ``window`` (open times in ms, ``[from, to)``, either end open) keeps a replay file's
    candles inside it (see ``kubetrade.backtest.SamplePlan``)."""
    spec = bot.spec
    if data_file is not None or not spec.exchange.is_exchange:
        # A download must not block the event loop (the health server shares it).
        data_file = await asyncio.to_thread(replay_file, spec.exchange, data_file)
        for candle in _finite_candles(bot, data_file, window):
            yield candle
        return
    # Closed with this generator, so the exchange's connections close with it.
    async with contextlib.aclosing(_exchange_candles(bot)) as candles:
        async for candle in candles:
            yield candle


async def _exchange_candles(bot: TradingBot) -> AsyncGenerator[Candle, None]:
    """Every symbol concurrently (over the WebSocket, or polled by REST: ``exchange.websocket``);
    candles are yielded as each one closes."""
    from kubetrade.market.exchange import create_exchange, exchange_api_base
    from kubetrade.market.stream import closed_candles

    spec = bot.spec
    websocket = spec.exchange.websocket
    # The executor's connection takes the same testnet and the same stand-in host, so a live
    # bot's candles and orders come from one exchange.
    exchange = create_exchange(
        spec.exchange.name,
        websocket=websocket,
        sandbox=spec.exchange.sandbox,
        api_base=exchange_api_base(),
    )
    queue: asyncio.Queue[Candle | BaseException] = asyncio.Queue(maxsize=10_000)

    async def follow(symbol: str) -> None:
        try:
            async for candle in closed_candles(exchange, symbol, spec.timeframe, stream=websocket):
                await queue.put(candle)
        except Exception as error:
            await queue.put(error)

    tasks = [asyncio.create_task(follow(symbol)) for symbol in spec.symbols]
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await exchange.close()
