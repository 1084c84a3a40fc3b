"""The feed's candle batches on a real NATS server: the cursor a restart resumes after, and a
batch re-sent after a lost acknowledgement stored once."""

from __future__ import annotations

import asyncio

import pytest

from kubetrade.bus import connect, ensure_stream
from kubetrade.domain import Candle
from kubetrade.messages import CandleBatch, decode
from kubetrade.subjects import Subjects
from kubetrade.workers.feed import _publish, published_through, stream_head

pytestmark = pytest.mark.integration

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR


def _candle(symbol: str, at: int) -> Candle:
    return Candle(symbol, "1h", T0 + at * HOUR, 10.0, 11.0, 9.0, 10.5, 1.0)


def test_a_restarted_feed_resumes_after_the_last_batchs_cursor(nats_url: str) -> None:
    subjects = Subjects("feedtest", "cursor")
    symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]

    async def scenario() -> tuple[dict[str, int | None], dict[str, int | None], int, int, int]:
        nc = await connect(nats_url, "feed-test")
        js = nc.jetstream()
        await ensure_stream(js, subjects)
        before = await published_through(js, subjects, symbols)
        cursor: dict[str, int] = {}
        # ETH has a gap at the second candle time: only the first batch holds its newest candle.
        first = [_candle("BTC/USDT", 0), _candle("ETH/USDT", 0)]
        second = [_candle("BTC/USDT", 1)]
        await _publish(js, subjects, first, "feedtest/cursor", 30, cursor)
        await _publish(js, subjects, second, "feedtest/cursor", 30, cursor)
        head = await stream_head(js, subjects)
        # The second batch again, as confirm() re-sends it after a lost acknowledgement: the
        # same message id, so the stream keeps one.
        await _publish(js, subjects, second, "feedtest/cursor", 30, dict(cursor))
        after = await published_through(js, subjects, symbols)
        info = await js.stream_info(subjects.stream)
        last = await js.get_last_msg(subjects.stream, subjects.candle_batches)
        batch = decode(CandleBatch, last.data or b"")
        await nc.drain()
        return before, after, head, info.state.messages, len(batch.candles)

    before, after, head, messages, last_size = asyncio.run(scenario())
    assert before == dict.fromkeys(symbols)
    assert after == {"BTC/USDT": T0 + HOUR, "ETH/USDT": T0, "SOL/USDT": None}
    assert messages == 2 and head == 2 and last_size == 1
