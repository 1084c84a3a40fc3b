"""Out of sample by default: train on a file, backtest on the same file.

``kubetrade train --data F`` fits on the older part of ``F``; ``kubetrade backtest BOT --data F``
then trades only the candles after the model's training period (the candles just before it
warm the features up), and the report and the terminal say which period was evaluated. With
``--in-sample`` every candle is traded and both say so in their first line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from kubetrade.cli import main
from kubetrade.domain import MarketEvent
from kubetrade.errors import InvalidInputError
from kubetrade.market import generate
from kubetrade.modelstore.registry import resolve

NAME = "oos-check"


@pytest.fixture(scope="module")
def trained(model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ccxt OHLCV file (no symbol column) and a model trained on it through the CLI, in the
    session's private model store (the ``model`` fixture sets it up)."""
    folder = tmp_path_factory.mktemp("oos")
    data = folder / "ohlcv.csv"
    candles = generate(["BTC/USDT"], "1h", 2400, seed=11).drop(columns="symbol")
    candles.rename(columns={"open_time": "timestamp"}).to_csv(data, index=False)
    args = ["train", "--data", str(data), "--symbol", "BTC/USDT", "--name", NAME, "--trees", "20"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return data


def _manifest(folder: Path, data: Path) -> Path:
    manifest = folder / "bot.yaml"
    document = {
        "apiVersion": "kubetrade.io/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": "oos", "namespace": "t"},
        "spec": {
            "symbols": ["BTC/USDT"],
            "timeframe": "1h",
            "exchange": {"name": "replay", "uri": str(data)},
            "model": {"name": NAME, "version": "latest"},
            "strategy": {"longAbove": 0.5, "exitBelow": 0.5},
            "risk": {"breakers": {"maxDailyLossPct": 90, "maxDrawdownPct": 90}},
        },
    }
    manifest.write_text(yaml.safe_dump(document))
    return manifest


def _backtest(
    manifest: Path, data: Path, report: Path, *extra: str
) -> tuple[str, dict[str, Any], list[dict[str, str]]]:
    args = ["backtest", str(manifest), "--data", str(data), "--report-dir", str(report), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with (report / "fills.csv").open() as handle:
        fills = list(csv.DictReader(handle))
    return result.output, json.loads((report / "report.json").read_text()), fills


def test_backtest_on_the_training_file_trades_only_after_the_training_period(
    trained: Path, tmp_path: Path
) -> None:
    manifest = _manifest(tmp_path, trained)
    start, end = resolve(NAME).metadata.training_period()
    from kubetrade.backtest import iso_time

    output, report, fills = _backtest(manifest, trained, tmp_path / "oos")
    assert output.splitlines()[0].startswith("out-of-sample: evaluated")
    assert next(iter(report)) == "sample"
    assert report["sample"] == "out-of-sample"
    assert report["model_training_period"] == {"start": iso_time(start), "end": iso_time(end)}
    # The first candle evaluated is the first one after the training period: the replay
    # started just early enough for the features to be warm on it.
    assert report["evaluated_period"]["start"] == iso_time(end)
    assert report["start"] > iso_time(end)
    assert fills, "the bot should trade out of sample"
    assert min(f["time"] for f in fills) > iso_time(end)

    output, report, fills = _backtest(manifest, trained, tmp_path / "is", "--in-sample")
    assert output.splitlines()[0].startswith("IN-SAMPLE: the candles evaluated")
    assert report["sample"] == "in-sample"
    assert report["evaluated_period"]["start"] < iso_time(end)
    assert min(f["time"] for f in fills) < iso_time(end)


def test_a_file_inside_the_training_period_is_refused_in_one_line(
    trained: Path, tmp_path: Path
) -> None:
    early = tmp_path / "early.csv"
    early.write_text("".join(trained.read_text().splitlines(keepends=True)[:1500]))
    manifest = _manifest(tmp_path, early)
    args = ["backtest", str(manifest), "--data", str(early), "--report-dir", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == InvalidInputError.exit_code
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "early.csv: every candle" in lines[0]
    assert "lies inside the training period of model oos-check:latest" in lines[0]
    assert "--in-sample" in lines[0]


def test_a_file_before_the_training_period_is_out_of_sample(trained: Path, tmp_path: Path) -> None:
    """A model trained on later candles trades an older file: nothing in it was learned."""
    import pandas as pd

    from kubetrade.backtest import iso_time

    start, _ = resolve(NAME).metadata.training_period()
    older = tmp_path / "older.csv"
    table = pd.read_csv(trained)
    table["timestamp"] -= int(table["timestamp"].iloc[-1]) - start + 3_600_000 * 10
    table.to_csv(older, index=False)
    output, report, fills = _backtest(_manifest(tmp_path, older), older, tmp_path / "old")
    assert report["sample"] == "out-of-sample"
    assert output.splitlines()[0].startswith("out-of-sample: evaluated")
    assert report["evaluated_period"]["end"] < iso_time(start)
    assert fills


def test_kubetrade_run_replays_exactly_the_candles_the_backtest_does(
    trained: Path, tmp_path: Path
) -> None:
    """The feed of ``kubetrade run`` gets the plan's replay start through its environment and
    streams the same candles the backtest replays; the runner expects that many."""
    import asyncio

    from kubetrade.backtest import bot_sample_plan
    from kubetrade.market.sources import candle_source, load_source_candles
    from kubetrade.runner import RunOptions, expected_candles, plan
    from kubetrade.settings import WorkerSettings
    from kubetrade.spec import load_bot

    bot = load_bot(_manifest(tmp_path, trained))
    sample = bot_sample_plan(bot, str(trained))
    assert sample is not None and sample.replay_from is not None
    replayed = sample.select(load_source_candles(bot, str(trained)), str(trained))
    assert replayed[0].open_time == sample.replay_from

    options = RunOptions(data_file=trained, sample=sample)
    processes = plan(bot, "nats://127.0.0.1:4222", "postgresql://u@127.0.0.1/db", options)
    feed = next(p for p in processes if p.component == "feed")
    settings = WorkerSettings.from_env("feed", feed.env)

    async def stream() -> list[object]:
        window = (settings.replay_from, settings.replay_to)
        source = candle_source(settings.bot, settings.data_file, window)
        return [candle async for candle in source]

    assert asyncio.run(stream()) == replayed
    assert expected_candles(bot, trained, sample) == len(replayed)


def test_inference_makes_no_prediction_inside_the_training_period_of_a_replay(
    trained: Path, tmp_path: Path
) -> None:
    """A replay bot in a cluster streams its whole file: its feed knows no model. Inference
    (serving/bridge.py builds its pipeline this way) predicts nothing on the candles the model
    learned from, candle by candle as in a pod and replayed at once as in a backtest, unless
    the manifest says ``inSample``; the synthetic market and live feeds are never withheld."""
    from kubetrade.backtest import trading_in_sample
    from kubetrade.market.sources import load_source_candles
    from kubetrade.modelstore.predictor import OnnxPredictor
    from kubetrade.signals import SignalPipeline, withheld_period
    from kubetrade.spec import load_bot, parse_bot

    bot = load_bot(_manifest(tmp_path, trained))
    predictor = OnnxPredictor.load(NAME, "latest")
    start, end = predictor.training_period or (0, 0)
    withhold = withheld_period(bot, predictor, None)  # its replay URI
    assert withhold == (start, end)
    candles = load_source_candles(bot, None)
    inside = [c for c in candles if start <= c.open_time < end]
    assert inside and len(inside) < len(candles)

    full = SignalPipeline.for_bot(bot, predictor).process(candles)  # nothing withheld
    live = SignalPipeline.for_bot(bot, predictor, withhold)
    streamed = [e for i in range(0, len(candles), 64) for e in live.process(candles[i : i + 64])]
    at_once = SignalPipeline.for_bot(bot, predictor, withhold)
    replay = at_once.replay(candles)
    assert replay is not None
    replayed = list(replay)
    learned = sum(
        1
        for e in full
        if isinstance(e, MarketEvent) and e.prediction and start <= e.candle.open_time < end
    )
    assert learned > 0
    assert live.withheld == at_once.withheld == learned
    for events in (streamed, replayed):
        assert len(events) == len(full)
        for event, unwithheld in zip(events, full, strict=True):
            assert isinstance(event, MarketEvent) and isinstance(unwithheld, MarketEvent)
            inside_period = start <= event.candle.open_time < end
            assert event.prediction == (None if inside_period else unwithheld.prediction)

    in_sample = trading_in_sample(bot)
    assert in_sample.spec.model is not None and in_sample.spec.model.in_sample
    assert withheld_period(in_sample, predictor, None) is None
    # Not a file replay (the synthetic market, a live feed): its timestamps say nothing.
    synthetic = parse_bot(
        {
            **bot.model_dump(by_alias=True, exclude={"status"}),
            "spec": {**bot.spec.model_dump(by_alias=True), "exchange": {"name": "synthetic"}},
        }
    )
    assert withheld_period(synthetic, predictor, None) is None


def test_a_manifest_in_sample_trades_the_training_period_and_says_so(
    trained: Path, tmp_path: Path
) -> None:
    manifest = _manifest(tmp_path, trained)
    document = yaml.safe_load(manifest.read_text())
    document["spec"]["model"]["inSample"] = True
    manifest.write_text(yaml.safe_dump(document))
    _, end = resolve(NAME).metadata.training_period()
    from kubetrade.backtest import iso_time

    output, report, fills = _backtest(manifest, trained, tmp_path / "is")
    assert output.splitlines()[0].startswith("IN-SAMPLE: the candles evaluated")
    assert report["sample"] == "in-sample"
    assert min(f["time"] for f in fills) < iso_time(end)
