"""Walk-forward validation: fold geometry, purging, fresh fits, figures through the shared
trading code, the report, and the Optuna search on validation folds only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from kubetrade.backtest import run_backtest
from kubetrade.cli import main
from kubetrade.domain import timeframe_ms
from kubetrade.errors import InvalidInputError
from kubetrade.features import default_feature_spec
from kubetrade.market.frame import to_candles
from kubetrade.market.synthetic import generate
from kubetrade.onnx_export.dataset import LabelSpec, build_dataset
from kubetrade.onnx_export.models.boosted import XGBoostModel, XGBoostParams
from kubetrade.onnx_export.sources import frames_by_symbol
from kubetrade.onnx_export.walkforward import (
    Fold,
    NativePredictor,
    WalkForwardConfig,
    backtest_window,
    default_bot,
    plan_folds,
    walk_forward,
    window_ms,
)
from kubetrade.onnx_export.wf_report import write_report
from tests.integration_support import make_bot

HOUR = timeframe_ms("1h")
TREES = XGBoostParams(n_estimators=20, max_depth=2)


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    """Two synthetic symbols, 2400 hourly candles each."""
    return frames_by_symbol(generate(["BTC/USDT", "ETH/USDT"], "1h", 2400, seed=31))


def test_fold_sizes_in_candles_or_durations() -> None:
    assert window_ms(24, "1h") == window_ms("24", "1h") == window_ms("1d", "1h") == 24 * HOUR
    with pytest.raises(InvalidInputError, match="invalid duration"):
        window_ms("a week", "1h")
    with pytest.raises(InvalidInputError, match="at least 1 candle"):
        window_ms(0, "1h")


def test_rolling_and_expanding_folds_tile_time() -> None:
    rolling = WalkForwardConfig(model=TREES, timeframe="1h", train=100, test=20, step=30)
    folds = plan_folds(0, 199 * HOUR, rolling)
    assert folds[0] == Fold(0, 0, 100 * HOUR, 120 * HOUR)
    assert folds[1] == Fold(1, 30 * HOUR, 130 * HOUR, 150 * HOUR)
    assert folds[-1].test_end == 180 * HOUR, "the last complete test window"
    assert len(folds) == 3
    assert all(f.test_start - f.train_start == 100 * HOUR for f in folds)

    expanding = WalkForwardConfig(
        model=TREES, timeframe="1h", train="4d", test="1d", mode="expanding"
    )
    grown = plan_folds(0, 199 * HOUR, expanding)
    assert [f.train_start for f in grown] == [0] * len(grown)
    assert [f.test_start for f in grown] == [96 * HOUR, 120 * HOUR, 144 * HOUR, 168 * HOUR]
    with pytest.raises(InvalidInputError, match="no walk-forward fold fits"):
        plan_folds(0, 50 * HOUR, rolling)
    with pytest.raises(InvalidInputError, match="unknown walk-forward mode"):
        WalkForwardConfig(model=TREES, timeframe="1h", mode="sliding")


def test_overlapping_test_windows_are_refused() -> None:
    """A step shorter than the test window would count the overlap's candles in several folds
    (compounding them into the aggregate return): refused in one line."""
    overlapping = WalkForwardConfig(model=TREES, timeframe="1h", train=100, test=20, step=10)
    with pytest.raises(InvalidInputError, match=r"step 10 is shorter than the test window 20"):
        plan_folds(0, 199 * HOUR, overlapping)
    result = CliRunner().invoke(
        main,
        ["validate", "--synthetic", "--candles", "900", "--train", "500", "--test", "100",
         "--step", "50"],
    )  # fmt: skip
    assert result.exit_code == InvalidInputError.exit_code
    assert "would overlap" in result.output and "Traceback" not in result.output


def test_folds_stitch_into_one_out_of_sample_curve_beside_buy_and_hold(
    frames: dict[str, pd.DataFrame],
) -> None:
    config = WalkForwardConfig(model=TREES, timeframe="1h", train=1000, test=400, step=500)
    result = walk_forward(frames, config)
    stitched = result.stitched()
    assert len(stitched) == sum(len(f.equity) for f in result.folds), "every test point once"
    times = [p.time for p in stitched]
    assert times == sorted(set(times)), "no candle time counted twice"
    # Each fold starts from the equity the previous one ended with.
    growth = [f.trading.final_equity / f.trading.initial_capital for f in result.folds]
    final = 10_000 * float(np.prod(growth))
    assert stitched[-1].equity == pytest.approx(final, rel=1e-12)
    aggregate = result.aggregate()["trading"]
    assert aggregate["compounded_return_pct"] == pytest.approx((final / 10_000 - 1) * 100)
    # Buy and hold of both symbols over each test window, equal weights, bought at its first
    # candle's close.
    for fold in result.folds:
        first, last = fold.fold.test_start, fold.fold.test_end - HOUR
        ratios = [
            float(f.loc[f.open_time == last, "close"].iloc[0])
            / float(f.loc[f.open_time == first, "close"].iloc[0])
            for f in frames.values()
        ]
        expected = (np.mean(ratios) - 1) * 100
        assert fold.benchmark.total_return_pct == pytest.approx(expected, rel=1e-9)
        assert fold.benchmark_equity[0].time == first + HOUR
    assert "buy_and_hold_return_pct" in aggregate and "folds_beating_buy_and_hold" in aggregate
    document = result.to_dict()
    assert document["sample"] == "out-of-sample"
    assert len(document["stitched_buy_and_hold"]) == len(document["stitched_equity"])
    assert "buy_and_hold" in document["folds"][0]


def test_every_fold_is_fitted_fresh_scored_and_traded(frames: dict[str, pd.DataFrame]) -> None:
    config = WalkForwardConfig(model=TREES, timeframe="1h", train=1000, test=400, step=400)
    bot = make_bot("wf", {"name": "synthetic"}, list(frames), model="wf")
    result = walk_forward(frames, config, bot)
    assert len(result.folds) == 3, "1000 + 3 x 400 candles fit in 2400"
    assert default_bot(list(frames), "1h").spec.symbols == list(frames)
    dataset = build_dataset(frames, default_feature_spec(), LabelSpec())
    for fold_result in result.folds:
        fold = fold_result.fold
        in_train = (dataset.open_time >= fold.train_start) & (dataset.open_time < fold.test_start)
        purged = in_train & (dataset.label_time >= fold.test_start)
        assert purged.sum() > 0, "rows whose label reaches into the test window exist"
        assert fold_result.train_rows == int(in_train.sum() - purged.sum())
        in_test = (dataset.open_time >= fold.test_start) & (dataset.open_time < fold.test_end)
        assert fold_result.test_rows == int(in_test.sum())
        assert fold_result.metrics.rows == fold_result.test_rows
        assert 0 < fold_result.metrics.log_loss < 2
        # The trading figures come from equity inside the test window only.
        assert fold_result.equity[0].time >= fold.test_start
        assert fold_result.equity[-1].time <= fold.test_end, "the last candle closes at the end"
        assert fold_result.trading.initial_capital == 10_000
    assert result.pooled.rows == sum(f.test_rows for f in result.folds)
    aggregate = result.aggregate()
    assert aggregate["folds"] == 3
    assert aggregate["trading"]["trades"] == sum(f.trading.trades for f in result.folds)
    assert set(aggregate["mean_metrics"]) >= {"accuracy", "f1", "roc_auc", "mcc", "log_loss"}


def test_fold_backtest_is_the_shared_backtest(frames: dict[str, pd.DataFrame]) -> None:
    """Without history a fold backtest is `run_backtest` exactly; with history it starts warm."""
    spec = default_feature_spec()
    dataset = build_dataset(frames, spec, LabelSpec())
    model = XGBoostModel(TREES)
    model.fit(dataset)
    bot = make_bot("wf", {"name": "synthetic"}, list(frames), model="wf")
    candles = sorted(
        (c for frame in frames.values() for c in to_candles(frame, "1h")),
        key=lambda c: (c.open_time, bot.spec.symbols.index(c.symbol)),
    )
    predictor = NativePredictor(model, spec)
    full = run_backtest(bot, candles, predictor)
    _, fills, equity = backtest_window(bot, predictor, [], candles)
    assert fills == full.fills and equity == full.equity
    assert len(full.fills) > 0, "the model trades, so the comparison has teeth"

    split = 2 * len(frames) * spec.warmup
    report, fills, equity = backtest_window(bot, predictor, candles[:split], candles[split:])
    assert equity[0].time == candles[split].close_time
    assert len(equity) == len({c.open_time for c in candles[split:]})
    assert report.final_equity == equity[-1].equity


def test_report_has_json_chart_and_page(frames: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    config = WalkForwardConfig(model=TREES, timeframe="1h", train=1000, test=400)
    result = walk_forward(frames, config)
    paths = write_report(result, tmp_path, {"source": "synthetic"})
    document = json.loads(paths["json"].read_text())
    assert document["source"] == "synthetic"
    assert len(document["folds"]) == 3
    assert document["folds"][0]["metrics"]["rows"] == result.folds[0].test_rows
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = paths["html"].read_text()
    assert "data:image/png;base64," in page and "Per fold" in page
    assert "out-of-sample" in page and "B&amp;H return %" in page


def test_validate_cli_with_search_on_the_earlier_folds(tmp_path: Path) -> None:
    pytest.importorskip(
        "optuna",
        reason="Optuna is not installed: the search test is SKIPPED (pip install -e '.[train]')",
    )
    result = CliRunner().invoke(
        main,
        [
            "validate",
            "--synthetic",
            "--symbols",
            "BTC/USDT",
            "--candles",
            "2400",
            "--train",
            "800",
            "--test",
            "300",
            "--trials",
            "2",
            "--report-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "out-of-sample: 3 folds, each trading only its test window" in result.output
    document = json.loads((tmp_path / "walkforward.json").read_text())
    search = document["search"]
    assert search["validation_folds"] == [0, 1]
    assert len(search["trials"]) == 2
    reported = [f["index"] for f in document["folds"]]
    assert reported == [2, 3, 4], "the report covers only folds the search never saw"
    best = {k: v for k, v in search["best"].items() if k in search["trials"][0]["params"]}
    assert best in [t["params"] for t in search["trials"]]
    assert document["config"]["model"] == search["best"]
    assert np.isfinite(search["best_validation_log_loss"])


def test_walk_forward_on_real_btc_history(btc_csv: Path) -> None:
    from kubetrade.onnx_export.sources import file_frames

    frames = file_frames(btc_csv, "1h")
    config = WalkForwardConfig(
        model=TREES, timeframe="1h", train="180d", test="90d", mode="expanding"
    )
    result = walk_forward(frames, config)
    first = min(int(f["open_time"].iloc[0]) for f in frames.values())
    assert result.folds[0].fold.test_start == first + 180 * 24 * HOUR
    assert len(result.folds) >= 6
    assert result.folds[-1].train_rows > result.folds[0].train_rows, "expanding windows grow"
    auc = result.pooled.roc_auc
    assert auc is not None and 0.4 < auc < 0.7, "hourly BTC direction is close to a coin flip"
    trading = result.aggregate()["trading"]
    assert trading["trades"] > 0 and np.isfinite(trading["compounded_return_pct"])
