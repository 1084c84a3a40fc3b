"""End to end on real servers: feed -> inference -> executor over NATS, state in PostgreSQL.

Every test starts the three workers as processes from the rendered bot, exactly as
``kubetrade run`` does, against a real NATS server and a real PostgreSQL, with a real
XGBoost model exported to ONNX and served by the BentoML service process.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubetrade.backtest import run_backtest
from kubetrade.bus import connect, ensure_stream
from kubetrade.domain import Fill, HaltCause, OrderReason
from kubetrade.features import default_feature_spec
from kubetrade.market.sources import load_source_candles
from kubetrade.messages import ControlMessage, encode
from kubetrade.modelstore.predictor import OnnxPredictor
from kubetrade.runner import Progress, RunOptions, run_bot
from kubetrade.spec import TradingBot, parse_bot
from kubetrade.store import Store
from kubetrade.subjects import Subjects
from tests.integration_support import make_bot, read_spans, start_workers, wait_for

pytestmark = pytest.mark.integration


def _fills(progress: Progress) -> int:
    executor = progress.statuses.get("executor")
    return 0 if executor is None else executor.counters.get("fills", 0)


def _fill_key(fill: Fill) -> tuple[int, str, str, float, float]:
    return (fill.time, fill.symbol, fill.side.value, fill.price, fill.quantity)


def _backtest(bot: TradingBot, data_file: str | None = None) -> tuple[list[Fill], float]:
    model = bot.spec.model
    predictor = None if model is None else OnnxPredictor.load(model.name, model.version)
    result = run_backtest(bot, load_source_candles(bot, data_file), predictor)
    return result.fills, result.equity[-1].equity


async def _publish_garbage(nats_url: str, bot: TradingBot) -> None:
    subjects = Subjects(bot.metadata.namespace, bot.metadata.name)
    nc = await connect(nats_url, "itest")
    js = nc.jetstream()
    await ensure_stream(js, subjects)
    await js.publish(
        subjects.candles(bot.spec.symbols[0]), b'{"v": 1, "symbol": "BTC/USDT", "open": -1}'
    )
    await js.publish(subjects.signals(bot.spec.symbols[0]), b"not json at all")
    await nc.drain()


async def _dead_letters(nats_url: str, bot: TradingBot) -> dict[str, int]:
    subjects = Subjects(bot.metadata.namespace, bot.metadata.name)
    nc = await connect(nats_url, "itest")
    js = nc.jetstream()
    info = await js.stream_info(subjects.stream, subjects_filter=f"{subjects.prefix}.dlq.>")
    await nc.drain()
    return {s.split(".")[-1]: n for s, n in (info.state.subjects or {}).items()}


def test_synthetic_bot_trades_end_to_end(
    model: str, nats_url: str, db_url: str, tmp_path: Path
) -> None:
    """Candles flow through all three processes; every table fills; one trace per batch."""
    bot = make_bot(
        "e2e", {"name": "synthetic", "seed": 11, "limit": 600}, ["BTC/USDT", "ETH/USDT"], model
    )
    asyncio.run(_publish_garbage(nats_url, bot))
    spans_file = tmp_path / "spans.jsonl"
    report_dir = tmp_path / "report"
    options = RunOptions(
        report_dir=report_dir,
        nats_url=nats_url,
        database_url=db_url,
        timeout_s=240,
        trace_file=spans_file,
    )
    run_bot(bot, options)

    report = json.loads((report_dir / "report.json").read_text())
    warmup = default_feature_spec().warmup
    assert report["candles"] == 1200
    assert report["signals"] == 2 * (600 - warmup + 1)  # every candle once features are warm
    assert report["fills"] > 0 and report["orders"] >= report["fills"]
    for key in ("final_equity", "total_return_pct", "max_drawdown_pct", "sharpe", "win_rate"):
        assert key in report
    assert (report_dir / "fills.csv").read_text().count("\n") == report["fills"] + 1
    assert (report_dir / "equity.png").stat().st_size > 10_000

    with Store.connect(db_url) as db:
        counts = db.count_rows(bot.key)
        signals = db.read_signals(bot.key)
    assert counts.candles == 1200
    assert counts.signals == 1200  # the malformed signal was dead-lettered, not counted
    assert counts.equity == 600
    assert counts.fills == report["fills"]
    assert all(s.decided_us >= s.candle_published_us for s in signals)

    # The malformed candle and signal went to the dead-letter subjects; nothing crashed.
    assert asyncio.run(_dead_letters(nats_url, bot)) == {"inference": 1, "executor": 1}

    # One trace per candle batch, through all three workers; together they hold every candle.
    spans = read_spans(spans_file)
    by_trace: dict[str, set[str]] = defaultdict(set)
    batched: dict[str, int] = {}
    for span in spans:
        by_trace[span["trace_id"]].add(span["name"])
        if span["name"] == "feed.candles":
            batched[span["trace_id"]] = span["attributes"]["kubetrade.candles"]
    full = [
        t
        for t, names in by_trace.items()
        if {"feed.candles", "inference.signals", "executor.decide"} <= names
    ]
    assert sorted(full) == sorted(batched), "a batch's trace misses a worker"
    assert sum(batched.values()) == 1200


def test_run_and_backtest_give_identical_fills_on_real_btc(
    model: str, nats_url: str, db_url: str, tmp_path: Path, btc_csv: Path
) -> None:
    """Parity: the distributed run and the in-process backtest agree fill for fill."""
    bot = make_bot("parity", {"name": "replay", "uri": str(btc_csv)}, ["BTC/USD"], model)
    options = RunOptions(
        report_dir=tmp_path / "report", nats_url=nats_url, database_url=db_url, timeout_s=300
    )
    run_bot(bot, options)
    with Store.connect(db_url) as db:
        run_fills = db.read_fills(bot.key)
        run_equity = db.read_equity(bot.key)
    backtest_fills, backtest_equity = _backtest(bot)

    assert len(run_fills) > 20
    assert [_fill_key(f) for f in run_fills] == [_fill_key(f) for f in backtest_fills]
    assert round(run_equity[-1].equity, 2) == round(backtest_equity, 2)


def test_a_rule_bot_without_a_model_runs_with_the_backtests_fills(
    nats_url: str, db_url: str, tmp_path: Path
) -> None:
    """An SMA-crossover bot has no model: inference loads none and computes the averages, and
    the run's fills are the backtest's, to the cent."""
    document = make_bot(
        "sma", {"name": "synthetic", "seed": 5, "limit": 700}, ["BTC/USDT", "ETH/USDT"], "unused"
    ).model_dump(by_alias=True, exclude_none=True, exclude={"status"})
    del document["spec"]["model"]
    document["spec"]["strategy"] = {"type": "sma-crossover", "params": {"fast": 10, "slow": 30}}
    bot = parse_bot(document)
    options = RunOptions(
        report_dir=tmp_path / "report", nats_url=nats_url, database_url=db_url, timeout_s=240
    )
    run_bot(bot, options)
    with Store.connect(db_url) as db:
        run_fills = db.read_fills(bot.key)
        run_equity = db.read_equity(bot.key)
    backtest_fills, backtest_equity = _backtest(bot)

    assert len(run_fills) > 10
    assert [_fill_key(f) for f in run_fills] == [_fill_key(f) for f in backtest_fills]
    assert round(run_equity[-1].equity, 2) == round(backtest_equity, 2)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["model"] is None and report["strategy"] == "sma-crossover"


def test_a_hybrid_bot_runs_with_its_model_and_the_backtests_fills(
    model: str, nats_url: str, db_url: str, tmp_path: Path
) -> None:
    """A hybrid bot: inference serves the model and computes the rule's averages; crossover
    entries are taken only when the model agrees."""
    bot = make_bot(
        "hybrid",
        {"name": "synthetic", "seed": 8, "limit": 700},
        ["BTC/USDT"],
        model,
        strategy={
            "type": "hybrid",
            "params": {"ruleParams": {"fast": 5, "slow": 20}, "probAbove": 0.5},
        },
    )
    options = RunOptions(
        report_dir=tmp_path / "report", nats_url=nats_url, database_url=db_url, timeout_s=240
    )
    run_bot(bot, options)
    with Store.connect(db_url) as db:
        run_fills = db.read_fills(bot.key)
    backtest_fills, _ = _backtest(bot)
    rule_only = make_bot(
        "rule", {"name": "synthetic", "seed": 8, "limit": 700}, ["BTC/USDT"], model
    ).model_dump(by_alias=True, exclude_none=True, exclude={"status"})
    del rule_only["spec"]["model"]
    rule_only["spec"]["strategy"] = {"type": "sma-crossover", "params": {"fast": 5, "slow": 20}}
    rule_fills, _ = _backtest(parse_bot(rule_only))

    assert len(run_fills) > 4
    assert [_fill_key(f) for f in run_fills] == [_fill_key(f) for f in backtest_fills]
    # The model held some of the rule's entries back.
    entries = [f for f in backtest_fills if f.reason is OrderReason.ENTRY_LONG]
    assert 0 < len(entries) < len([f for f in rule_fills if f.reason is OrderReason.ENTRY_LONG])


@pytest.fixture(scope="module")
def custom_features_model(model: str) -> str:
    """A model trained on a feature list other than the default (in the `model` store)."""
    from kubetrade.features.choice import parse_feature_list
    from kubetrade.market import generate
    from kubetrade.onnx_export.pipeline import TrainConfig, train_and_register

    spec = parse_feature_list("sma(window=30),rsi(windows=[14]),log_return(windows=[1, 4])")
    assert spec.hash != default_feature_spec().hash
    train_and_register(
        {"BTC/USDT": generate(["BTC/USDT"], "1h", 4000, seed=98)},
        TrainConfig(name="itest-custom", timeframe="1h", source="seed 98", feature_spec=spec),
    )
    return "itest-custom"


def test_a_model_on_a_non_default_feature_list_serves_with_the_backtests_fills(
    custom_features_model: str, nats_url: str, db_url: str, tmp_path: Path
) -> None:
    """Inference computes whatever features the model carries (here 4 of them, one an SMA(30)
    the defaults lack), in the run as in the backtest."""
    bot = make_bot(
        "custom",
        {"name": "synthetic", "seed": 12, "limit": 600},
        ["BTC/USDT", "ETH/USDT"],
        custom_features_model,
    )
    options = RunOptions(
        report_dir=tmp_path / "report", nats_url=nats_url, database_url=db_url, timeout_s=240
    )
    run_bot(bot, options)
    with Store.connect(db_url) as db:
        run_fills = db.read_fills(bot.key)
        signals = db.read_signals(bot.key)
    backtest_fills, _ = _backtest(bot)

    assert len(run_fills) > 4
    assert [_fill_key(f) for f in run_fills] == [_fill_key(f) for f in backtest_fills]
    predicted = {s.feature_hash for s in signals if s.prob_up is not None}
    model_spec = OnnxPredictor.load(custom_features_model, "latest").feature_spec
    assert predicted == {model_spec.hash}
    assert model_spec.names == ("log_return_1", "log_return_4", "sma_ratio_30", "rsi_14")


@pytest.mark.parametrize("victim", ["executor", "inference"])
def test_worker_killed_mid_run_resumes_with_identical_fills(
    victim: str, model: str, nats_url: str, db_url: str, tmp_path: Path
) -> None:
    """SIGKILL a worker mid-run, restart it: same fills as an uninterrupted run.

    The executor resumes from its database checkpoint; inference from its consumer's ack
    floor, rebuilding its feature windows from the stream (re-published signals are
    de-duplicated by message id).
    """
    bot = make_bot(
        f"kill-{victim}", {"name": "synthetic", "seed": 5, "limit": 1500, "speed": 360000},
        ["BTC/USDT", "ETH/USDT"], model,
    )  # fmt: skip
    options = RunOptions(report_dir=tmp_path, nats_url=nats_url, database_url=db_url)
    procs, planned = start_workers(bot, nats_url, db_url, tmp_path, options)
    try:
        wait_for(bot, nats_url, procs, lambda p: _fills(p) >= 3, timeout=180)
        procs.kill(victim)
        procs.start(planned[victim])
        progress = wait_for(bot, nats_url, procs, lambda p: p.done(), timeout=240)
    finally:
        procs.stop()
    assert progress.statuses["feed"].counters["candles"] == 3000

    with Store.connect(db_url) as db:
        run_fills = db.read_fills(bot.key)
        run_equity = db.read_equity(bot.key)
        counts = db.count_rows(bot.key)
    backtest_fills, backtest_equity = _backtest(bot)
    assert counts.signals == 3000  # nothing lost, nothing doubled
    assert [_fill_key(f) for f in run_fills] == [_fill_key(f) for f in backtest_fills]
    assert round(run_equity[-1].equity, 2) == round(backtest_equity, 2)


async def _control(nats_url: str, bot: TradingBot, action: str) -> None:
    subjects = Subjects(bot.metadata.namespace, bot.metadata.name)
    nc = await connect(nats_url, "itest")
    await nc.publish(subjects.control, encode(ControlMessage(action=action, reason="test")))
    await nc.drain()


def _entries(db_url: str, bot: TradingBot) -> int:
    with Store.connect(db_url) as db:
        orders = [stored.order for stored in db.read_orders(bot.key)]
    return sum(o.reason in (OrderReason.ENTRY_LONG, OrderReason.ENTRY_SHORT) for o in orders)


def _processed(progress: Progress) -> int:
    executor = progress.statuses.get("executor")
    return 0 if executor is None else executor.counters.get("processed", 0)


def _trading(progress: Progress) -> dict[str, Any]:
    executor = progress.statuses.get("executor")
    return {} if executor is None or executor.trading is None else executor.trading


def test_pause_and_kill_switch_over_the_control_subject(
    model: str, nats_url: str, db_url: str, tmp_path: Path
) -> None:
    """Pause stops entries; kill flattens every position and halts; health and metrics answer."""
    bot = make_bot(
        "control",
        {"name": "synthetic", "seed": 21, "limit": 2000, "speed": 3600 * 40},
        ["BTC/USDT", "ETH/USDT"],
        model,
    )
    options = RunOptions(report_dir=tmp_path, nats_url=nats_url, database_url=db_url)
    procs, planned = start_workers(bot, nats_url, db_url, tmp_path, options)
    try:
        wait_for(bot, nats_url, procs, lambda p: _trading(p).get("openPositions", 0) >= 1, 180)

        executor_port = planned["executor"].http_port
        feed_port = planned["feed"].http_port
        metrics = httpx.get(f"http://127.0.0.1:{executor_port}/metrics", timeout=5).text
        assert 'kubetrade_signals_processed_total{bot="itest/control"}' in metrics
        assert "kubetrade_decision_latency_seconds_bucket" in metrics
        assert httpx.get(f"http://127.0.0.1:{executor_port}/readyz", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{feed_port}/healthz", timeout=5).status_code == 200
        feed_metrics = httpx.get(f"http://127.0.0.1:{feed_port}/metrics", timeout=5).text
        assert "kubetrade_candles_published_total" in feed_metrics
        inference = f"http://127.0.0.1:{planned['inference'].http_port}"
        assert (
            "kubetrade_candles_received_total" in httpx.get(f"{inference}/metrics", timeout=5).text
        )
        assert httpx.get(f"{inference}/readyz", timeout=5).status_code == 200

        asyncio.run(_control(nats_url, bot, "kill"))

        def flat_and_halted(p: Progress) -> bool:
            status = p.statuses.get("executor")
            return (
                status is not None
                and status.state == "halted"
                and _trading(p).get("openPositions") == 0
            )

        progress = wait_for(bot, nats_url, procs, flat_and_halted, 60)
        assert "kill" in progress.statuses["executor"].message.lower()
        assert progress.statuses["executor"].halt_causes == [HaltCause.MANUAL]
        entries = _entries(db_url, bot)
        processed = _processed(progress)
        later = wait_for(bot, nats_url, procs, lambda p: _processed(p) > processed + 100, 60)
        assert _entries(db_url, bot) == entries, "the kill switch let a new entry through"
        assert _trading(later)["openPositions"] == 0

        asyncio.run(_control(nats_url, bot, "reset"))  # entries resume after a reset...
        wait_for(bot, nats_url, procs, lambda _: _entries(db_url, bot) > entries, 60)
        asyncio.run(_control(nats_url, bot, "pause"))  # ...and stop again while paused
        paused = wait_for(bot, nats_url, procs, lambda p: _trading(p).get("paused") is True, 30)
        entries, processed = _entries(db_url, bot), _processed(paused)
        wait_for(bot, nats_url, procs, lambda p: _processed(p) > processed + 100, 60)
        assert _entries(db_url, bot) == entries, "a paused bot opened a position"
    finally:
        procs.stop()
