"""``kubetrade run`` ≡ ``kubetrade backtest`` for research runs: out of sample by default, with
halts that trip and reset, shorts on margin and gaps, on the real BTC/USD history.

A model is trained on the file's first 80 %; the run replays only what the sample plan selects
(the feed gets the window through its environment) and must give the backtest's fills to the
cent, the same final equity and the same halt events (the ledger's against the backtest's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from kubetrade.backtest import SamplePlan, bot_sample_plan, run_backtest
from kubetrade.domain import EquityPoint, Fill
from kubetrade.market import load_candles
from kubetrade.market.sources import load_source_candles
from kubetrade.modelstore.predictor import OnnxPredictor
from kubetrade.report import backtest_report
from kubetrade.runner import RunOptions, run_bot
from kubetrade.spec import TradingBot
from kubetrade.store import Store
from tests.integration_support import make_bot

pytestmark = pytest.mark.integration

NAME = "parity-oos"


def _run(
    bot: TradingBot, sample: SamplePlan, nats_url: str, db_url: str, report_dir: Path
) -> tuple[dict[str, Any], list[Fill], list[EquityPoint]]:
    """``kubetrade run`` of ``bot`` on ``sample``: its report, and the fills and equity points
    its ledger holds."""
    options = RunOptions(
        report_dir=report_dir, nats_url=nats_url, database_url=db_url, timeout_s=300, sample=sample
    )
    run_bot(bot, options)
    with Store.connect(db_url) as db:
        fills, equity = db.read_fills(bot.key), db.read_equity(bot.key)
    return json.loads((report_dir / "report.json").read_text()), fills, equity


def _key(fill: Fill) -> tuple[object, ...]:
    """What must agree between a run's fill and the backtest's."""
    return (fill.time, fill.symbol, fill.side, fill.price, fill.quantity)


def test_run_and_backtest_agree_out_of_sample_with_halts_and_shorts(
    model: str, nats_url: str, db_url: str, tmp_path: Path, btc_csv: Path
) -> None:
    from kubetrade.onnx_export.models.boosted import XGBoostParams
    from kubetrade.onnx_export.pipeline import TrainConfig, train_and_register

    # The real file with a gap cut into the part traded (the cleaner fills it with flat
    # candles without volume, as it does the vendor's own 28 fills).
    lines = btc_csv.read_text().splitlines(keepends=True)
    cut = [i for i, line in enumerate(lines) if line.startswith("2019-07-1")][:6]
    gapped = tmp_path / "btc_with_gaps.csv"
    gapped.write_text("".join(line for i, line in enumerate(lines) if i not in cut))
    frames = {"BTC/USD": load_candles(gapped)}
    config = TrainConfig(
        name=NAME, timeframe="1h", source=str(gapped), model=XGBoostParams(n_estimators=30)
    )
    train_and_register(frames, config)
    bot = make_bot(
        "oos-halts",
        {"name": "replay", "uri": str(gapped)},
        ["BTC/USD"],
        NAME,
        strategy={
            "longAbove": 0.52,
            "exitBelow": 0.5,
            "allowShort": True,
            "shortBelow": 0.48,
            "exitAbove": 0.5,
        },
        risk={
            "sizing": {"method": "fixed-fraction", "fractionPct": 50, "maxPositionPct": 60},
            "maxHolding": "24h",
            "breakers": {
                "maxDrawdownPct": 3,
                "drawdownCooldown": "3d",
                "maxDailyLossPct": 2,
                "maxConsecutiveLosses": None,
            },
        },
    )
    sample = bot_sample_plan(bot, None)
    assert sample is not None and sample.replay_from is not None

    run_report, run_fills, run_equity = _run(bot, sample, nats_url, db_url, tmp_path / "run")

    predictor = OnnxPredictor.load(NAME)
    candles = sample.select(load_source_candles(bot), str(gapped))
    assert sum(c.volume == 0 for c in candles) >= 6, "the traded part holds gaps"
    result = run_backtest(bot, candles, predictor)
    backtest = backtest_report(bot, result, candles, sample, tmp_path / "bt", Console())

    assert [_key(f) for f in run_fills] == [_key(f) for f in result.fills]
    assert round(run_equity[-1].equity, 2) == round(result.equity[-1].equity, 2)
    assert any(f.reason.value == "entry_short" for f in result.fills), "no short was taken"
    kinds = [(h["kind"], h["cause"]) for h in backtest["halts"]]
    assert ("breaker_tripped", "drawdown") in kinds
    assert ("breaker_cleared", "drawdown") in kinds
    assert run_report["halts"] == backtest["halts"]
    assert sum(backtest["refusals"]["entry_rejected"].values()) > 0
    for field in (
        "sample", "headline", "evaluated_period", "model_training_period", "start", "end",
        "buy_and_hold", "refusals", "total_return_pct", "max_drawdown_pct", "sharpe",
    ):  # fmt: skip
        assert run_report[field] == backtest[field], field
    assert run_report["sample"] == "out-of-sample"
    assert run_report["evaluated_period"]["start"] == run_report["model_training_period"]["end"]


def test_an_in_sample_run_trades_the_training_period_as_its_backtest_does(
    model: str, nats_url: str, db_url: str, tmp_path: Path, btc_csv: Path
) -> None:
    """``inSample`` (what ``--in-sample`` sets) reaches inference through the bot's config:
    it predicts inside the training period, so the run trades the candles the model learned
    from exactly as the in-sample backtest does, and both say so."""
    from kubetrade.backtest import iso_time, trading_in_sample
    from kubetrade.onnx_export.models.boosted import XGBoostParams
    from kubetrade.onnx_export.pipeline import TrainConfig, train_and_register

    name = "parity-is"
    config = TrainConfig(
        name=name, timeframe="1h", source=str(btc_csv), model=XGBoostParams(n_estimators=20)
    )
    train_and_register({"BTC/USD": load_candles(btc_csv)}, config)
    bot = trading_in_sample(
        make_bot("in-sample", {"name": "replay", "uri": str(btc_csv)}, ["BTC/USD"], name)
    )
    sample = bot_sample_plan(bot, None)  # the manifest's inSample decides
    assert sample is not None and sample.in_sample

    run_report, run_fills, _ = _run(bot, sample, nats_url, db_url, tmp_path / "run")
    predictor = OnnxPredictor.load(name)
    result = run_backtest(bot, sample.select(load_source_candles(bot), str(btc_csv)), predictor)

    _, end = predictor.training_period or (0, 0)
    assert [_key(f) for f in run_fills] == [_key(f) for f in result.fills]
    assert any(f.time < end for f in run_fills), "nothing traded inside the training period"
    assert run_report["sample"] == "in-sample"
    assert run_report["evaluated_period"]["start"] < iso_time(end)
