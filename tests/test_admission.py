"""Admission: schema-valid forgeries are refused before they touch any state.

Unit tests run the pure checks on real BTC/USD candles with forgeries mixed in; the integration
test publishes the known attacks into a running bot (real NATS, PostgreSQL, model) and checks
the fills are exactly those of the backtest, with every forgery dead-lettered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetrade.admission import (
    AdmissionPolicy,
    CandleAdmission,
    StatusAdmission,
    check_control,
    status_subject_key,
)
from kubetrade.domain import Candle, Direction, Fill, MarketEvent, Prediction
from kubetrade.market.sources import load_source_candles
from kubetrade.messages import ControlMessage, SignalMessage, StatusMessage
from kubetrade.spec import TradingBot, parse_bot
from kubetrade.trading import TradingEngine

YEAR_MS = 365 * 86_400_000
NOW_MS = 1_764_460_800_000  # 2025-11-30: the tests' clock is an argument, never the wall


def _bot(exchange: dict[str, object], symbols: list[str], name: str = "adm") -> TradingBot:
    return parse_bot(
        {
            "apiVersion": "kubetrade.io/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": name, "namespace": "itest"},
            "spec": {
                "symbols": symbols,
                "timeframe": "1h",
                "exchange": exchange,
                "model": {"name": "m", "version": "latest"},
                "strategy": {"longAbove": 0.52, "exitBelow": 0.48},
            },
        },
        "<test bot>",
    )


@pytest.fixture(scope="module")
def btc(btc_csv: Path) -> tuple[TradingBot, list[Candle]]:
    bot = _bot({"name": "replay", "uri": str(btc_csv)}, ["BTC/USD"])
    return bot, load_source_candles(bot)


async def _dead_letter_payloads(
    nats_url: str, subjects: Any, component: str
) -> list[Candle | None]:
    """The candle each of ``component``'s dead letters holds (None for one that is no candle)."""
    from kubetrade.bus import connect
    from kubetrade.messages import CandleMessage, MessageError, decode

    nc = await connect(nats_url, "reader")
    js = nc.jetstream()
    sub = await js.subscribe(
        subjects.dead_letter(component), stream=subjects.stream, ordered_consumer=True
    )
    found: list[Candle | None] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2)
            except TimeoutError:
                return found
            try:
                found.append(decode(CandleMessage, msg.data).to_candle())
            except MessageError:
                found.append(None)
    finally:
        await nc.drain()


def _forge(candle: Candle, **changes: object) -> Candle:
    return dataclasses.replace(candle, **changes)  # type: ignore[arg-type]


def test_real_btc_history_is_admitted_whole(btc: tuple[TradingBot, list[Candle]]) -> None:
    bot, candles = btc
    admission = CandleAdmission(AdmissionPolicy.for_bot(bot))
    refused = [(c.open_time, admission.admit(c, NOW_MS)) for c in candles]
    assert len(candles) > 17_000
    assert [r for r in refused if r[1] is not None] == []


def test_synthetic_source_is_admitted_whole() -> None:
    bot = _bot({"name": "synthetic", "seed": 3, "limit": 3000}, ["BTC/USDT", "ETH/USDT"])
    admission = CandleAdmission(AdmissionPolicy.for_bot(bot))
    candles = load_source_candles(bot)
    assert admission.replayed(candles, NOW_MS) == candles


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"open_time_offset": 100 * YEAR_MS}, "time_gap"),
        ({"open_time_offset": 10 * YEAR_MS}, "time_gap"),
        ({"open_time_offset": 0}, "not_monotone"),
        ({"open_time_offset": -3_600_000}, "not_monotone"),
        ({"open_time_offset": 3_600_000 + 1}, "misaligned_time"),
        ({"symbol": "DOGE/USD"}, "unknown_symbol"),
        ({"timeframe": "5m"}, "wrong_timeframe"),
        ({"high": 1e12, "close": 1e12, "open": 1e12, "low": 1e12}, "price_out_of_range"),
        ({"low": 0.0}, "price_out_of_range"),
        ({"high": 1.0}, "inconsistent_prices"),
        ({"close": 1e6, "high": 1e6}, "price_jump"),
        ({"volume": 1e300}, "volume_out_of_range"),
    ],
)
def test_forged_candle_is_refused_and_moves_nothing(
    btc: tuple[TradingBot, list[Candle]], changes: dict[str, object], reason: str
) -> None:
    bot, candles = btc
    admission = CandleAdmission(AdmissionPolicy.for_bot(bot))
    history, following = candles[:5000], candles[5000:5200]
    assert admission.replayed(history, NOW_MS) == history
    before = (dict(admission.last_open), dict(admission.last_close))
    changes = dict(changes)
    offset = changes.pop("open_time_offset", None)
    forged = _forge(following[0], **changes)
    if offset is not None:
        forged = _forge(forged, open_time=history[-1].open_time + int(offset))  # type: ignore[call-overload]
    refusal = admission.admit(forged, NOW_MS)
    assert refusal is not None and refusal.reason == reason, refusal
    assert (admission.last_open, admission.last_close) == before
    assert admission.replayed(following, NOW_MS) == following, "a real candle was refused"


def test_live_feed_candles_are_bounded_by_now() -> None:
    bot = _bot({"name": "binance"}, ["BTC/USDT"])
    admission = CandleAdmission(AdmissionPolicy.for_bot(bot))
    hour = 3_600_000
    now = NOW_MS + 30 * 60_000
    closed = Candle("BTC/USDT", "1h", NOW_MS - hour, 100, 101, 99, 100.5, 3)
    still_open = _forge(closed, open_time=NOW_MS)
    ancient = _forge(closed, open_time=NOW_MS - 2 * YEAR_MS)
    assert admission.check(still_open, now).reason == "future_time"  # type: ignore[union-attr]
    assert admission.check(ancient, now).reason == "stale_time"  # type: ignore[union-attr]
    assert admission.admit(closed, now) is None


def _events(candles: list[Candle]) -> list[MarketEvent]:
    """Real candles with a deterministic prediction: up after a rise, down after a fall."""
    events = []
    for previous, candle in itertools.pairwise(candles):
        up = candle.close > previous.close
        prob = 0.6 if up else 0.4
        direction = Direction.UP if up else Direction.DOWN
        events.append(MarketEvent(candle, Prediction(prob, direction, 0.2, "m", "1", "h")))
    return events


def _fills(
    bot: TradingBot, events: list[MarketEvent], admission: CandleAdmission | None
) -> list[Fill]:
    engine = TradingEngine(bot)
    fills: list[Fill] = []
    for event in events:
        signal = SignalMessage.from_event(event, 0, 0)
        if admission is not None and admission.admit_signal(signal, NOW_MS) is not None:
            continue
        fills.extend(engine.on_event(signal.to_event()).fills)
    return fills


def test_signal_ten_years_ahead_cannot_make_real_signals_stale(
    btc: tuple[TradingBot, list[Candle]],
) -> None:
    """The attack: one forged signal dated ten years ahead, then the real ones."""
    bot, candles = btc
    events = _events(candles[:4000])
    first = events[1000].candle
    forged = MarketEvent(
        _forge(first, open_time=first.open_time + 10 * YEAR_MS), events[1000].prediction
    )
    attacked = [*events[:1000], forged, *events[1000:]]
    clean = _fills(bot, events, None)
    assert len(clean) > 50
    # Without admission the forgery stops trading for good (the 8 fills of 997) ...
    assert len(_fills(bot, attacked, None)) < len(clean) // 2
    # ... with it, the same fills as without the forgery.
    policy = AdmissionPolicy.for_bot(bot)
    assert _fills(bot, attacked, CandleAdmission(policy, repeats=True)) == clean


def test_executor_admits_a_second_model_signing_the_same_candle(
    btc: tuple[TradingBot, list[Candle]],
) -> None:
    bot, candles = btc
    admission = CandleAdmission(AdmissionPolicy.for_bot(bot), repeats=True)
    events = _events(candles[:10])
    for event in events:
        signal = SignalMessage.from_event(event, 0, 0)
        assert admission.admit_signal(signal, NOW_MS) is None
        assert admission.admit_signal(signal, NOW_MS) is None  # the rollout's other pod
    assert admission.last_open["BTC/USD"] == events[-1].candle.open_time


def _status(bot: str = "itest/run", **fields: object) -> StatusMessage:
    base: dict[str, object] = {
        "component": "feed",
        "bot": bot,
        "state": "running",
        "time": NOW_MS,
        "counters": {"candles": 6000},
    }
    return StatusMessage.model_validate({**base, **fields})


SUBJECT = "kubetrade.itest.run.status"


def test_forged_status_cannot_finish_a_run_early() -> None:
    """A third into the run, a forgery claims the feed finished at fewer candles."""
    admission = StatusAdmission()
    assert admission.admit(SUBJECT, _status(), NOW_MS) is None
    forged = _status(state="finished", counters={"candles": 2000})
    refusal = admission.admit(SUBJECT, forged, NOW_MS + 400)
    assert refusal is not None and refusal.reason == "counters_decreased"
    # The real feed's next heartbeat is still admitted.
    assert admission.admit(SUBJECT, _status(counters={"candles": 6100}), NOW_MS + 1000) is None


def test_status_of_a_restarted_component_is_admitted() -> None:
    admission = StatusAdmission()
    assert admission.admit(SUBJECT, _status(), NOW_MS) is None
    restarted = _status(counters={"candles": 10})
    assert admission.admit(SUBJECT, _status(state="starting", counters={}), NOW_MS + 100) is None
    assert admission.admit(SUBJECT, restarted, NOW_MS + 200) is None
    assert admission.admit(SUBJECT, _status(counters={"candles": 3}), NOW_MS + 3000) is None


@pytest.mark.parametrize(
    ("subject", "message", "reason"),
    [
        (SUBJECT, _status(bot="itest/other"), "wrong_bot"),
        ("kubetrade.itest.other.status", _status(), "wrong_bot"),
        ("kubetrade.itest.run.control", _status(), "wrong_subject"),
        (SUBJECT, _status(time=NOW_MS + 3_600_000), "status_time"),
        (SUBJECT, _status(time=NOW_MS - 3_600_000), "status_time"),
        (SUBJECT, _status(counters={"candles": -5}), "bad_counters"),
    ],
)
def test_forged_status_is_refused(subject: str, message: StatusMessage, reason: str) -> None:
    refusal = StatusAdmission().admit(subject, message, NOW_MS)
    assert refusal is not None and refusal.reason == reason, refusal


def test_status_subject_names_the_bot() -> None:
    assert status_subject_key("kubetrade.ns.bot.status") == "ns/bot"
    assert status_subject_key("kubetrade.ns.bot.x.status") is None
    assert status_subject_key("other.ns.bot.status") is None


def test_control_reason_must_be_short_printable_text() -> None:
    assert check_control(ControlMessage(action="pause", reason="operator: spec.paused")) is None
    refused = check_control(ControlMessage(action="kill", reason="x" * 5000))
    assert refused is not None and refused.reason == "bad_text"
    refused = check_control(ControlMessage(action="kill", reason="a\x1b[2Jb"))
    assert refused is not None


@settings(max_examples=300, deadline=None)
@given(
    open_time=st.integers(min_value=0, max_value=2**62),
    prices=st.lists(
        st.floats(min_value=1e-12, max_value=1e15, allow_nan=False), min_size=4, max_size=4
    ),
    volume=st.floats(min_value=0, max_value=1e20, allow_nan=False),
)
def test_fuzzed_candles_never_move_admission_backwards(
    open_time: int, prices: list[float], volume: float
) -> None:
    """Whatever a forger sends, what admission remembers only moves forward, within bounds."""
    bot = _bot({"name": "synthetic"}, ["BTC/USDT"])
    policy = AdmissionPolicy.for_bot(bot)
    admission = CandleAdmission(policy)
    hour = 3_600_000
    real = Candle("BTC/USDT", "1h", 1_700_000_000_000 // hour * hour, 100, 101, 99, 100, 1)
    assert admission.admit(real, NOW_MS) is None
    o, h, lo, c = prices
    forged = Candle("BTC/USDT", "1h", open_time, o, h, lo, c, volume)
    if admission.admit(forged, NOW_MS) is None:
        assert 0 < open_time - real.open_time <= policy.max_gap_ms
        assert 0.1 <= c / 100 <= 10 and lo <= min(o, c) and max(o, c) <= h
    else:
        assert admission.last_open["BTC/USDT"] == real.open_time


# -- the attacks, on a running bot ---------------------------------------------------------------


@pytest.mark.integration
def test_forged_messages_on_a_running_bot_are_dead_lettered_and_fills_match_backtest(
    model: str, nats_url: str, db_url: str, tmp_path: Path
) -> None:
    """Schema-valid forgeries published into a live run change nothing the bot decides; in a
    batch, each forged item is dead-lettered alone."""
    from kubetrade.bus import connect
    from kubetrade.messages import CandleBatch, CandleMessage, SignalBatch, encode
    from kubetrade.runner import RunOptions
    from kubetrade.store import Store
    from kubetrade.subjects import Subjects
    from tests.integration_support import make_bot, start_workers, wait_for
    from tests.test_pipeline import _backtest, _dead_letters, _fill_key, _fills

    bot = make_bot(
        "forged", {"name": "synthetic", "seed": 5, "limit": 1500, "speed": 360000},
        ["BTC/USDT", "ETH/USDT"], model,
    )  # fmt: skip
    subjects = Subjects(bot.metadata.namespace, bot.metadata.name)
    source = load_source_candles(bot)
    template = source[100]

    async def attack() -> None:
        nc = await connect(nats_url, "attacker")
        js = nc.jetstream()
        ahead = _forge(template, open_time=template.open_time + 100 * YEAR_MS)
        await js.publish(
            subjects.candles(template.symbol), encode(CandleMessage.from_candle(ahead, 0))
        )
        event = MarketEvent(
            _forge(template, open_time=template.open_time + 10 * YEAR_MS),
            Prediction(0.9, Direction.UP, 0.8, model, "1", "forged"),
        )
        await js.publish(
            subjects.signals(template.symbol), encode(SignalMessage.from_event(event, 0, 0))
        )
        # The same forgeries inside batches, beside a candle of a symbol the bot does not trade.
        stranger = _forge(template, symbol="SOL/USDT")
        batch = CandleBatch(
            candles=[CandleMessage.from_candle(c, 0) for c in (ahead, stranger)], through={}
        )
        await js.publish(subjects.candle_batches, encode(batch))
        signals = SignalBatch(signals=[SignalMessage.from_event(event, 0, 0)])
        await js.publish(subjects.signal_batches, encode(signals))
        await nc.publish(
            subjects.status,
            encode(
                StatusMessage(
                    component="feed",
                    bot=bot.key,
                    state="finished",
                    time=time.time_ns() // 1_000_000,
                    counters={"candles": 1},
                )
            ),
        )
        await nc.publish(subjects.control, b'{"v": 1, "action": "kill", "reason": "\\u001b[2J"}')
        await nc.drain()

    options = RunOptions(report_dir=tmp_path, nats_url=nats_url, database_url=db_url)
    procs, _ = start_workers(bot, nats_url, db_url, tmp_path, options)
    try:
        wait_for(bot, nats_url, procs, lambda p: _fills(p) >= 3, timeout=180)
        asyncio.run(attack())
        progress = wait_for(bot, nats_url, procs, lambda p: p.done(), timeout=240)
    finally:
        procs.stop()
    assert progress.statuses["feed"].counters["candles"] == 3000
    assert not (progress.statuses["executor"].trading or {}).get("halted")
    with Store.connect(db_url) as db:
        run_fills = db.read_fills(bot.key)
        counts = db.count_rows(bot.key)
    backtest_fills, _ = _backtest(bot)
    assert counts.signals == 3000
    assert [_fill_key(f) for f in run_fills] == [_fill_key(f) for f in backtest_fills]
    dead = asyncio.run(_dead_letters(nats_url, bot))
    assert dead.get("inference", 0) >= 3 and dead.get("executor", 0) >= 3, dead
    items = asyncio.run(_dead_letter_payloads(nats_url, subjects, "inference"))
    assert {c.symbol for c in items if c is not None} >= {"SOL/USDT", template.symbol}
