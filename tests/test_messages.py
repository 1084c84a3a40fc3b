"""Message schemas and subjects: round trips, validation, versioning."""

from __future__ import annotations

import pytest

from kubetrade.domain import Candle, Direction, MarketEvent, Prediction
from kubetrade.messages import (
    BATCH_MAX_ITEMS,
    CandleBatch,
    CandleMessage,
    ControlMessage,
    MessageError,
    SignalBatch,
    SignalMessage,
    batch_id,
    decode,
    decode_candles,
    decode_signals,
    encode,
)
from kubetrade.subjects import Subjects, symbol_token

CANDLE = Candle("BTC/USDT", "1h", 1_700_000_000_000, 100.0, 105.0, 99.0, 104.0, 12.5)


def test_candle_round_trip_keeps_every_field() -> None:
    data = encode(CandleMessage.from_candle(CANDLE, published_us=123_456_789))
    message = decode(CandleMessage, data)
    assert message.to_candle() == CANDLE
    assert message.published_us == 123_456_789
    assert message.published_at == 123_456  # whole ms, for v1 readers that know only it
    assert message.v == 1


def test_candle_from_a_feed_without_microseconds_decodes_in_whole_ms() -> None:
    old = (
        b'{"v": 1, "symbol": "BTC/USDT", "timeframe": "1h", "open_time": 1700000000000, '
        b'"open": 100, "high": 105, "low": 99, "close": 104, "volume": 12.5, '
        b'"published_at": 1700000000123}'
    )
    message = decode(CandleMessage, old)
    assert message.to_candle() == CANDLE
    assert message.published_at_us is None
    assert message.published_us == 1_700_000_000_123_000
    event = MarketEvent(CANDLE, None)
    signal = SignalMessage.from_event(event, message.published_us, produced_at=2)
    assert decode(SignalMessage, encode(signal)).candle.published_us == 1_700_000_000_123_000


def test_signal_round_trip_with_and_without_prediction() -> None:
    prediction = Prediction(0.7, Direction.UP, 0.4, "m", "3", "abc")
    for event in (MarketEvent(CANDLE, prediction), MarketEvent(CANDLE, None)):
        data = encode(SignalMessage.from_event(event, published_us=1, produced_at=2))
        assert decode(SignalMessage, data).to_event() == event


def test_a_candle_batch_carries_its_candles_in_order_and_the_feeds_cursor() -> None:
    later = Candle("ETH/USDT", "1h", CANDLE.open_time + 3_600_000, 10.0, 11.0, 9.0, 10.5, 3.0)
    batch = CandleBatch(
        candles=[CandleMessage.from_candle(c, 7) for c in (CANDLE, later)],
        through={"BTC/USDT": CANDLE.open_time, "ETH/USDT": later.open_time, "SOL/USDT": 0},
    )
    data = encode(batch)
    subjects = Subjects("ns", "bot")
    batches, single_subject = subjects.candle_batches, subjects.candles("BTC/USDT")
    assert [m.to_candle() for m in decode_candles(batches, data)] == [CANDLE, later]
    assert decode(CandleBatch, data).through["SOL/USDT"] == 0
    # The message id names the first and last candle and the count: equal batches share it,
    # and it is what the bridge names the batch's signals after.
    assert batch.batch_id() == batch_id(CANDLE, later, 2)
    assert batch.batch_id() != batch_id(CANDLE, later, 3)
    # A symbol's subject still carries single candles.
    single = encode(CandleMessage.from_candle(CANDLE, 7))
    assert [m.to_candle() for m in decode_candles(single_subject, single)] == [CANDLE]
    with pytest.raises(MessageError, match="invalid CandleBatch"):
        decode_candles(batches, single)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b'{"v": 1, "candles": [], "through": {}}', "candles: List should have at least 1 item"),
        (b'{"v": 1, "candles": [{"symbol": "BTC/USDT"}], "through": {}}', "candles.0.timeframe"),
        (b'{"v": 1, "candles": [], "through": {"BTC/USDT": -1}}', "through.BTC/USDT"),
        (
            b'{"v": 1, "candles": [' + b",".join([b"{}"] * (BATCH_MAX_ITEMS + 1)) + b"]}",
            f"at most {BATCH_MAX_ITEMS} items",
        ),
    ],
)
def test_a_malformed_candle_batch_is_refused_whole(payload: bytes, fragment: str) -> None:
    with pytest.raises(MessageError) as caught:
        decode(CandleBatch, payload)
    assert fragment in str(caught.value)


def test_a_signal_batch_round_trips_and_a_single_signal_still_decodes() -> None:
    prediction = Prediction(0.7, Direction.UP, 0.4, "m", "3", "abc")
    events = [MarketEvent(CANDLE, prediction), MarketEvent(CANDLE, None)]
    signals = [SignalMessage.from_event(e, published_us=1, produced_at=2) for e in events]
    data = encode(SignalBatch(signals=signals))
    subjects = Subjects("ns", "bot")
    batches, single_subject = subjects.signal_batches, subjects.signals("BTC/USDT")
    assert [s.to_event() for s in decode_signals(batches, data)] == events
    assert [s.to_event() for s in decode_signals(single_subject, encode(signals[0]))] == events[:1]
    with pytest.raises(MessageError, match="signals: List should have at least 1 item"):
        decode_signals(batches, b'{"v": 1, "signals": []}')


def test_batch_subjects_are_apart_from_every_symbols_subject() -> None:
    subjects = Subjects("ns", "bot")
    assert subjects.candle_batches == "kubetrade.ns.bot.candles.batch"
    assert subjects.signal_batches == "kubetrade.ns.bot.signals.batch"
    assert Subjects.is_batch(subjects.candle_batches)
    assert Subjects.is_batch(subjects.signal_batches)
    # Symbol tokens are upper case with a dash: none can be "batch".
    assert not Subjects.is_batch(subjects.candles("BAT/CH"))
    assert not Subjects.is_batch(subjects.signals("BTC/USDT"))


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"not json", "invalid CandleMessage"),
        (b'{"v": 1, "symbol": "BTC/USDT"}', "timeframe: Field required"),
        (
            b'{"v": 1, "symbol": "BTC/USDT", "timeframe": "1h", "open_time": 0, "open": -1, '
            b'"high": 1, "low": 1, "close": 1, "volume": 1, "published_at": 0}',
            "open: Input should be greater than 0",
        ),
        (
            b'{"v": 2, "symbol": "BTC/USDT", "timeframe": "1h", "open_time": 0, "open": 1, '
            b'"high": 1, "low": 1, "close": 1, "volume": 1, "published_at": 0}',
            "v: Input should be 1",
        ),
        (
            b'{"v": 1, "symbol": "BTC/USDT", "timeframe": "1h", "open_time": 0, "open": 1, '
            b'"high": 1, "low": 1, "close": NaN, "volume": 1, "published_at": 0}',
            "invalid CandleMessage",
        ),
    ],
)
def test_malformed_messages_are_refused_with_the_field_named(payload: bytes, fragment: str) -> None:
    with pytest.raises(MessageError) as error:
        decode(CandleMessage, payload)
    assert fragment in str(error.value)


def test_unknown_control_action_is_refused() -> None:
    with pytest.raises(MessageError, match="action"):
        decode(ControlMessage, b'{"v": 1, "action": "explode"}')


def test_subjects_follow_the_design_layout() -> None:
    s = Subjects("bots", "btc-trend")
    assert s.candles("BTC/USDT") == "kubetrade.bots.btc-trend.candles.BTC-USDT"
    assert s.signals("ETH/USDT") == "kubetrade.bots.btc-trend.signals.ETH-USDT"
    assert s.orders == "kubetrade.bots.btc-trend.orders"
    assert s.dead_letter("executor") == "kubetrade.bots.btc-trend.dlq.executor"
    assert s.stream == "KUBETRADE_BOTS_BTC_TREND"
    assert all(sub.startswith(s.prefix) for sub in s.stream_subjects)
    assert symbol_token("BTC.X/USDT") == "BTC-X-USDT"  # '.' would split the subject


def test_a_signal_carries_the_candle_message_it_came_in_as_it_is() -> None:
    received = CandleMessage.from_candle(CANDLE, 1_700_000_000_123_456)
    event = MarketEvent(CANDLE, Prediction(0.7, Direction.UP, 0.4, "m", "3", "abc"))
    reused = SignalMessage.from_event(event, received.published_us, 2, received=received)
    built = SignalMessage.from_event(event, received.published_us, 2)
    assert reused.candle is received
    assert encode(reused) == encode(built)
