"""Strategies: the built-in rules, their parameters in the manifest, and installed plugins."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from kubetrade.backtest import run_backtest
from kubetrade.cli import main
from kubetrade.domain import Candle, Direction, MarketEvent, OrderReason, Prediction, Side
from kubetrade.features import compute_features
from kubetrade.market.frame import to_candles
from kubetrade.market.synthetic import generate
from kubetrade.signals import SignalPipeline
from kubetrade.spec import ManifestError, TradingBot, parse_bot
from kubetrade.strategies import (
    Intent,
    PositionSide,
    Strategy,
    StrategyInputs,
    StrategyParams,
    available,
    builtin,
    make_strategy,
    strategy_class,
)
from kubetrade.trading.strategy import Intent as EngineIntent

LONG, SHORT = PositionSide.LONG, PositionSide.SHORT


def rule_bot(strategy: dict[str, Any], **spec: Any) -> TradingBot:
    """A rule-only 1h bot with no costs, stops or breakers unless asked for."""
    document: dict[str, Any] = {
        "metadata": {"name": "rule"},
        "spec": {
            "symbols": ["BTC/USDT"],
            "timeframe": "1h",
            "strategy": strategy,
            "risk": {
                "sizing": {"method": "fixed-fraction", "fractionPct": 100, "maxPositionPct": 100},
                "stopLoss": None,
                "takeProfit": None,
                "breakers": {
                    "maxDailyLossPct": None,
                    "maxDrawdownPct": None,
                    "maxConsecutiveLosses": None,
                },
            },
            "execution": {"feeRate": 0.001, "slippageBps": 0},
            **spec,
        },
    }
    return parse_bot(document)


def inputs(
    now: dict[str, float] | None,
    before: dict[str, float] | None = None,
    p: float | None = None,
) -> StrategyInputs:
    prediction = None if p is None else Prediction(p, Direction.UP, 1.0, "m", "1", "h")
    return StrategyInputs(prediction, now, before if before is not None else now)


def test_the_engine_and_the_strategies_share_one_vocabulary() -> None:
    assert EngineIntent is Intent


# -- built-in rules -----------------------------------------------------------------------------

# sma_ratio_w = close / SMA(w) - 1: the fast SMA is above the slow one when its ratio is smaller.
FAST_ABOVE = {"sma_ratio_10": 0.01, "sma_ratio_30": 0.02}
FAST_BELOW = {"sma_ratio_10": 0.03, "sma_ratio_30": 0.02}


@pytest.mark.parametrize(
    ("now", "before", "holding", "params", "intent"),
    [
        (FAST_ABOVE, FAST_BELOW, None, {}, Intent.ENTER_LONG),  # the cross up
        (FAST_ABOVE, FAST_ABOVE, None, {}, Intent.HOLD),  # above, but no cross on this candle
        (FAST_ABOVE, FAST_ABOVE, None, {"entryOnCross": False}, Intent.ENTER_LONG),
        (FAST_BELOW, FAST_ABOVE, None, {}, Intent.HOLD),  # cross down: no shorts by default
        (FAST_BELOW, FAST_ABOVE, None, {"allowShort": True}, Intent.ENTER_SHORT),
        (FAST_BELOW, FAST_ABOVE, LONG, {}, Intent.EXIT),
        (FAST_ABOVE, FAST_ABOVE, LONG, {}, Intent.HOLD),
        (FAST_ABOVE, FAST_BELOW, SHORT, {"allowShort": True}, Intent.EXIT),
    ],
)
def test_sma_crossover(
    now: dict[str, float],
    before: dict[str, float],
    holding: PositionSide | None,
    params: dict[str, Any],
    intent: Intent,
) -> None:
    strategy = make_strategy("sma-crossover", {"fast": 10, "slow": 30, **params})

    assert strategy.decide(inputs(now, before), holding) is intent


def test_ema_crossover_reads_ema_ratios() -> None:
    strategy = make_strategy("ema-crossover", {"fast": 12, "slow": 26})
    assert strategy.feature_spec is not None
    assert strategy.feature_spec.names == ("ema_ratio_12", "ema_ratio_26")
    up = {"ema_ratio_12": 0.0, "ema_ratio_26": 0.01}
    down = {"ema_ratio_12": 0.02, "ema_ratio_26": 0.01}

    assert strategy.decide(inputs(up, down), None) is Intent.ENTER_LONG
    assert strategy.decide(inputs(down, up), LONG) is Intent.EXIT


@pytest.mark.parametrize(
    ("roc", "holding", "intent"),
    [
        (0.03, None, Intent.ENTER_LONG),
        (0.02, None, Intent.HOLD),  # strictly above
        (-0.03, None, Intent.ENTER_SHORT),
        (-0.001, LONG, Intent.EXIT),
        (0.001, LONG, Intent.HOLD),
        (0.001, SHORT, Intent.EXIT),
        (-0.001, SHORT, Intent.HOLD),
    ],
)
def test_momentum(roc: float, holding: PositionSide | None, intent: Intent) -> None:
    strategy = make_strategy("momentum", {"window": 12, "enterAbove": 0.02, "allowShort": True})

    assert strategy.decide(inputs({"roc_12": roc}), holding) is intent


@pytest.mark.parametrize(
    ("pct_b", "holding", "intent"),
    [
        (-0.1, None, Intent.ENTER_LONG),  # below the lower band
        (0.2, None, Intent.HOLD),
        (1.1, None, Intent.HOLD),  # above the upper band, shorts off
        (0.6, LONG, Intent.EXIT),  # back above the mean
        (0.4, LONG, Intent.HOLD),
    ],
)
def test_bollinger_reversion(pct_b: float, holding: PositionSide | None, intent: Intent) -> None:
    strategy = make_strategy("bollinger-reversion", {"window": 20})

    assert strategy.decide(inputs({"bb_pct_b_20": pct_b}), holding) is intent


@pytest.mark.parametrize(
    ("rsi", "holding", "intent"),
    [
        (0.25, None, Intent.ENTER_LONG),  # RSI 25 < 30
        (0.75, None, Intent.ENTER_SHORT),  # RSI 75 > 70, shorts on
        (0.5, None, Intent.HOLD),
        (0.51, LONG, Intent.EXIT),
        (0.49, SHORT, Intent.EXIT),
    ],
)
def test_rsi_reversion(rsi: float, holding: PositionSide | None, intent: Intent) -> None:
    strategy = make_strategy("rsi-reversion", {"window": 14, "allowShort": True})

    assert strategy.decide(inputs({"rsi_14": rsi}), holding) is intent


def test_hybrid_takes_rule_entries_only_when_the_model_agrees_and_rule_exits_always() -> None:
    hybrid = make_strategy(
        "hybrid",
        {"rule": "sma-crossover", "ruleParams": {"fast": 10, "slow": 30}, "probAbove": 0.6},
    )
    assert hybrid.needs_model
    assert hybrid.feature_spec == make_strategy("sma-crossover", {}).feature_spec

    assert hybrid.decide(inputs(FAST_ABOVE, FAST_BELOW, p=0.7), None) is Intent.ENTER_LONG
    assert hybrid.decide(inputs(FAST_ABOVE, FAST_BELOW, p=0.6), None) is Intent.HOLD
    assert hybrid.decide(inputs(FAST_BELOW, FAST_ABOVE, p=0.9), LONG) is Intent.EXIT
    # Not ready without the model, even with warm features.
    assert not hybrid.ready(inputs(FAST_ABOVE, FAST_BELOW))
    assert hybrid.ready(inputs(FAST_ABOVE, FAST_BELOW, p=0.5))


# -- the manifest ---------------------------------------------------------------------------


def test_bad_strategy_parameters_are_each_named_by_path() -> None:
    document: dict[str, Any] = {
        "metadata": {"name": "rule"},
        "spec": {
            "symbols": ["BTC/USDT"],
            "strategy": {
                "type": "hybrid",
                "longAbove": 0.7,
                "params": {"rule": "sma-crossover", "ruleParams": {"fast": 50}, "probAbove": 2},
            },
        },
    }
    with pytest.raises(ManifestError) as caught:
        parse_bot(document)

    assert caught.value.errors == [
        "spec.strategy.longAbove: applies to type threshold only; set the parameters of "
        "hybrid under params",
        "spec.strategy.params.probAbove: must be less than or equal to 1",
    ]
    document["spec"]["strategy"] = {"type": "hybrid", "params": {"ruleParams": {"fast": 50}}}
    document["spec"]["model"] = {"name": "m"}
    with pytest.raises(ManifestError) as caught:
        parse_bot(document)
    assert caught.value.errors == [
        "spec.strategy.params.ruleParams: fast (50) must be below slow (30)"
    ]


def test_a_bot_with_its_strategy_built_copies_and_pickles() -> None:
    bot = rule_bot({"type": "hybrid", "params": {"ruleParams": {"fast": 5}}}, model={"name": "m"})
    strategy = bot.spec.strategy.build()

    for copied in (copy.deepcopy(bot), pickle.loads(pickle.dumps(bot))):
        assert copied == bot
        assert copied.spec.strategy.build() == strategy
        assert copied.spec.strategy.build().feature_spec == strategy.feature_spec


def test_a_strategy_that_refuses_its_parameters_itself_is_named_like_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Picky(Strategy[StrategyParams]):
        def features(self) -> None:
            raise ValueError("window must be even")

        def decide(self, inputs: StrategyInputs, holding: PositionSide | None) -> Intent:
            return Intent.HOLD

    monkeypatch.setitem(builtin.BUILTINS, "picky", Picky)  # the registry's table
    with pytest.raises(ManifestError) as caught:
        rule_bot({"type": "picky"})
    assert caught.value.errors == ["spec.strategy.params: window must be even"]


def test_the_threshold_manifest_form_is_unchanged() -> None:
    bot = parse_bot(
        {
            "metadata": {"name": "ml"},
            "spec": {
                "symbols": ["BTC/USDT"],
                "model": {"name": "m"},
                "strategy": {"longAbove": 0.7, "exitBelow": 0.4},
            },
        }
    )

    assert bot.spec.strategy.type == "threshold"
    strategy = bot.spec.strategy.build()
    assert strategy.needs_model and strategy.feature_spec is None
    assert strategy.decide(inputs(None, p=0.71), None) is Intent.ENTER_LONG


# -- rule-only bots through the backtest -----------------------------------------------------


def _candles(n: int, seed: int = 11) -> list[Candle]:
    return to_candles(generate(["BTC/USDT"], "1h", n, seed=seed), "1h")


def test_an_sma_crossover_bot_trades_without_a_model_at_the_crosses() -> None:
    bot = rule_bot({"type": "sma-crossover", "params": {"fast": 10, "slow": 30}})
    candles = _candles(1500)

    result = run_backtest(bot, candles, None)

    assert result.fills and result.signals == 0  # no model: no predictions
    # Every entry fills at the open after a candle whose close made the fast SMA cross above the
    # slow one, computed here with the vectorized feature path.
    closes = np.array([c.close for c in candles])
    fast = np.convolve(closes, np.ones(10) / 10, "valid")[20:]
    slow = np.convolve(closes, np.ones(30) / 30, "valid")
    above = fast > slow
    crosses = {int(i) + 29 for i in np.flatnonzero(above[1:] & ~above[:-1]) + 1}
    entries = [f for f in result.fills if f.reason is OrderReason.ENTRY_LONG]
    opens = {c.open_time: i for i, c in enumerate(candles)}
    assert {opens[f.time] - 1 for f in entries} <= crosses
    assert all(f.side is Side.BUY for f in entries)
    assert len(entries) >= len(crosses) - 1  # each cross entered (the last may be unfilled)


def test_rule_features_equal_the_vectorized_path() -> None:
    strategy = make_strategy("rsi-reversion", {"window": 9})
    assert strategy.feature_spec is not None
    frame = generate(["BTC/USDT"], "1h", 400, seed=5)
    batch = compute_features(frame, strategy.feature_spec)
    pipeline = SignalPipeline(None, strategy_features=strategy.feature_spec)
    events = pipeline.process(_candles(400, seed=5))
    streamed = [
        np.nan if e.features is None else e.features["rsi_9"]  # type: ignore[union-attr]
        for e in events
    ]
    np.testing.assert_allclose(streamed, batch[:, 0], rtol=1e-9, equal_nan=True)


def test_a_restarted_pipeline_rebuilds_the_strategy_inputs_from_history() -> None:
    """What a restarted inference does: replay recent candles, then go on; every event after
    the restart carries the features and previous features of an uninterrupted pipeline."""
    strategy = make_strategy("ema-crossover", {"fast": 5, "slow": 12})
    candles = _candles(400, seed=8)
    whole = SignalPipeline(None, strategy_features=strategy.feature_spec).process(candles)
    restarted = SignalPipeline(None, strategy_features=strategy.feature_spec)
    cut = 300
    restarted.warm_up(candles[:cut])
    after = restarted.process(candles[cut:])

    for ours, theirs in zip(after, whole[cut:], strict=True):
        assert isinstance(ours, MarketEvent) and isinstance(theirs, MarketEvent)
        assert ours.features is not None and ours.previous_features is not None
        assert theirs.features is not None and theirs.previous_features is not None
        for name in ours.features:
            assert ours.features[name] == pytest.approx(theirs.features[name], abs=1e-9)
            assert ours.previous_features[name] == pytest.approx(
                theirs.previous_features[name], abs=1e-9
            )


# -- installed strategies -------------------------------------------------------------------

PLUGIN = '''
"""A strategy from another package: long while the close is above its SMA."""

from pydantic import Field

from kubetrade.features import feature_spec
from kubetrade.strategies import Intent, Strategy, StrategyParams


class AboveParams(StrategyParams):
    window: int = Field(default=20, ge=2)


class AboveAverage(Strategy[AboveParams]):
    """Long while the close is above its simple moving average."""

    params_model = AboveParams

    def features(self):
        return feature_spec({"sma_ratio": {"windows": [self.params.window]}})

    def decide(self, inputs, holding):
        ratio = inputs.features[f"sma_ratio_{self.params.window}"]
        if holding is None:
            return Intent.ENTER_LONG if ratio > 0 else Intent.HOLD
        return Intent.EXIT if ratio < 0 else Intent.HOLD
'''

PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "kt-above-average"
version = "0.1"

[project.entry-points."kubetrade.strategies"]
above-average = "kt_above_average:AboveAverage"
"""


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A separate package with a strategy, pip-installed into a target directory of its own."""
    source = tmp_path_factory.mktemp("plugin-source")
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "kt_above_average.py").write_text(textwrap.dedent(PLUGIN))
    target = tmp_path_factory.mktemp("plugin-target")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--target", str(target), str(source),
        ],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    return target


def test_a_strategy_from_an_installed_package_is_discovered_and_run(
    installed_plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ManifestError, match="unknown strategy 'above-average'"):
        rule_bot({"type": "above-average"})
    monkeypatch.syspath_prepend(str(installed_plugin))

    listed = {info.name: info for info in available()}
    assert listed["above-average"].source == "kt-above-average"
    assert strategy_class("above-average").__name__ == "AboveAverage"
    bot = rule_bot({"type": "above-average", "params": {"window": 15}})
    result = run_backtest(bot, _candles(300), None)
    assert [f.reason for f in result.fills][:2] == [OrderReason.ENTRY_LONG, OrderReason.EXIT_SIGNAL]
    with pytest.raises(ManifestError, match=r"spec.strategy.params.window: .*greater than or"):
        rule_bot({"type": "above-average", "params": {"window": 1}})

    output = CliRunner().invoke(main, ["strategies"])
    assert output.exit_code == 0, output.output
    assert "above-average" in output.output and "kt-above-average" in output.output
    assert "sma-crossover" in output.output
