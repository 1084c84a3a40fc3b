"""A report a researcher trusts: the period starts after the warm-up, buy and hold of the same
symbols stands beside the strategy, equity.csv, halts and refusals by reason, the sample
marked; the equity picture shows buy and hold and the halts."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from kubetrade.backtest import iso_time, run_backtest
from kubetrade.domain import Candle
from kubetrade.market import generate, to_candles
from kubetrade.modelstore.predictor import OnnxPredictor
from kubetrade.report import backtest_report, halt_spans
from kubetrade.trading.benchmark import buy_and_hold_equity
from tests.test_trading_engine import make_bot

# The report's JSON, its folder, and the candles of the evaluated period.
Made = tuple[dict[str, Any], Path, list[Candle]]


@pytest.fixture(scope="module")
def report(model: str, tmp_path_factory: pytest.TempPathFactory) -> Made:
    bot = make_bot(
        model={"name": model, "version": "latest"},
        strategy={"longAbove": 0.5, "exitBelow": 0.5},
        risk={
            "sizing": {"fractionPct": 50},
            "breakers": {"maxDrawdownPct": 3, "drawdownCooldown": "2d", "maxTradesPerDay": 2},
        },
    )
    candles = to_candles(generate(["BTC/USDT"], "1h", 1600, seed=8), "1h")
    result = run_backtest(bot, candles, OnnxPredictor.load(model))
    folder = tmp_path_factory.mktemp("report")
    document = backtest_report(bot, result, candles, None, folder, Console(file=None))
    lead = OnnxPredictor.load(model).metadata.first_prediction_lead
    return document, folder, candles[lead:]


def test_the_period_starts_at_the_first_tradable_candle_after_the_warm_up(
    report: Made,
) -> None:
    document, folder, evaluated = report
    with (folder / "equity.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # The model predicts first once its features are warm: the period starts at the close of
    # that candle, and no equity point of the warm-up is in any figure.
    assert len(evaluated) < 1600 - 400
    assert document["start"] == rows[0]["time"] == iso_time(evaluated[0].close_time)
    assert len(rows) == len(evaluated)


def test_buy_and_hold_of_the_same_candles_stands_beside_the_strategy(
    report: Made,
) -> None:
    document, folder, evaluated = report
    expected = (evaluated[-1].close / evaluated[0].close - 1) * 100
    hold = document["buy_and_hold"]
    assert hold["total_return_pct"] == pytest.approx(expected, rel=1e-12)
    assert hold["max_drawdown_pct"] >= 0 and hold["sharpe"] is not None
    with (folder / "equity.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[-1]["buy_and_hold_equity"]) == pytest.approx(10_000 * (1 + expected / 100))
    points = buy_and_hold_equity(evaluated, ["BTC/USDT"], 10_000, "1h")
    assert [float(r["buy_and_hold_equity"]) for r in rows] == [p.equity for p in points]


def test_halts_and_refusals_by_reason_are_in_the_report(
    report: Made,
) -> None:
    document, folder, _ = report
    saved = json.loads((folder / "report.json").read_text())
    assert saved["halts"] == document["halts"]
    assert {h["cause"] for h in saved["halts"]} >= {"drawdown"}
    refused = saved["refusals"]["entry_rejected"]
    assert refused["drawdown"] > 0 and refused["max_trades_per_day"] > 0
    assert (folder / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_halt_spans_run_from_a_trip_to_its_clear_or_a_reset() -> None:
    def event(kind: str, cause: str, time: str) -> dict[str, str]:
        return {"kind": kind, "cause": cause, "time": time}

    halts = [
        event("breaker_tripped", "drawdown", "t1"),
        event("breaker_tripped", "daily_loss", "t2"),
        event("breaker_cleared", "daily_loss", "t3"),
        event("halted", "kill_switch", "t4"),
        event("halt_cleared", "reset", "t5"),
        event("breaker_tripped", "drawdown", "t6"),
    ]
    assert halt_spans(halts) == [
        ("daily_loss", "t2", "t3"),
        ("drawdown", "t1", "t5"),
        ("kill_switch", "t4", "t5"),
        ("drawdown", "t6", None),
    ]
