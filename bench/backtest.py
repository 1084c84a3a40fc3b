"""Backtest speed beside a peer: the SMA(10/30) crossover on the same candles in kubetrade and in
backtesting.py, candles per second of each and their ratio, in one run; then kubetrade's
threshold strategy on a loaded XGBoost model, and ten symbols.

kubetrade runs its event-driven engine with the peer's conventions (docs/
backtest-conventions.md: next-open fills, fee both sides, all equity, no stops or breakers),
and with full risk (ATR stop-loss, take-profit, trailing stop, time exit, every breaker): the
crossover on one symbol, the model bot (an XGBoost model trained on other generated candles
first, in a private model store, not timed) on one symbol, and both on ten symbols sharing the
same number of candles in all. The time is the backtest alone (features, model, strategy, risk,
broker, equity points), not making the candles; backtesting.py's includes its indicators.
Each is run three times and the best run is reported, for both tools; the crossover's three
backtests (backtesting.py and kubetrade's two) take turns in each of the three rounds.

    .venv/bin/python bench/backtest.py                   # 1,000,000 candles
    .venv/bin/python bench/backtest.py --candles 100000  # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubetrade.backtest import run_backtest
from kubetrade.market import generate, to_candles
from kubetrade.signals import Predictor
from kubetrade.spec import TradingBot, parse_bot

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_peer_agreement import CAPITAL, FEE, run_peer

FAST, SLOW = 10, 30
TEN = [f"S{i}/USDT" for i in range(10)]
MODEL = "bench-xgboost"
# Runs of each backtest; the best is reported, for kubetrade and backtesting.py alike.
REPEAT = 3


def candles_frame(n: int) -> pd.DataFrame:
    """``n`` generated hourly candles, each opening at the previous close."""
    frame = generate(["BTC/USDT"], "1h", n, seed=1, start_price=100.0)
    opens = np.concatenate((frame["open"].to_numpy()[:1], frame["close"].to_numpy()[:-1]))
    frame["open"] = opens
    frame["high"] = np.maximum(frame["high"], opens)
    frame["low"] = np.minimum(frame["low"], opens)
    return frame


def bot(
    full_risk: bool, symbols: tuple[str, ...] = ("BTC/USDT",), model: bool = False
) -> TradingBot:
    """The crossover bot: the peer's conventions, or with every risk rule on; with ``model``,
    the threshold strategy on the bench's XGBoost model instead of the crossover."""
    risk: dict[str, Any] = {
        "sizing": {"method": "fixed-fraction", "fractionPct": 100, "maxPositionPct": 100},
        "stopLoss": None,
        "takeProfit": None,
        "breakers": {
            "maxDailyLossPct": None,
            "maxDrawdownPct": None,
            "maxConsecutiveLosses": None,
        },
    }
    if full_risk:
        risk = {
            "sizing": {"method": "volatility", "riskPerTradePct": 1, "maxPositionPct": 100},
            "stopLoss": {"atrMultiplier": 3, "atrPeriod": 14},
            "takeProfit": {"riskReward": 3},
            "trailingStop": {"activationPct": 2, "trailPct": 1},
            "maxHolding": "7d",
            "breakers": {
                # Loose enough to keep trading through a million candles, on to be evaluated.
                "maxDailyLossPct": 50,
                "maxDrawdownPct": 99,
                "maxConsecutiveLosses": 10_000,
                "maxTradesPerDay": 1_000,
            },
        }
    strategy: dict[str, Any] = {"type": "sma-crossover", "params": {"fast": FAST, "slow": SLOW}}
    if model:
        strategy = {"type": "threshold", "longAbove": 0.55, "exitBelow": 0.5}
    return parse_bot(
        {
            "metadata": {"name": "bench"},
            "spec": {
                "symbols": list(symbols),
                "timeframe": "1h",
                **({"model": {"name": MODEL, "version": "1"}} if model else {}),
                "strategy": strategy,
                "risk": risk,
                "execution": {"initialCapital": CAPITAL, "feeRate": FEE, "slippageBps": 0},
            },
        }
    )


def ten_symbols(n: int) -> pd.DataFrame:
    """``n`` generated hourly candles in all, a tenth per symbol, in stream order."""
    return generate(TEN, "1h", n // len(TEN), seed=2, start_price=100.0)


def xgboost_model(store: str) -> Predictor:
    """The bench's XGBoost model, trained on other generated candles into the model store
    ``store`` (the session keeps the model: the store may go once it is loaded)."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ["BENTOML_HOME"] = store
    from kubetrade.modelstore.predictor import OnnxPredictor
    from kubetrade.onnx_export.pipeline import TrainConfig, train_and_register

    train_and_register(
        {"BTC/USDT": generate(["BTC/USDT"], "1h", 6000, seed=99)},
        TrainConfig(name=MODEL, timeframe="1h", source="synthetic seed 99", version="1"),
    )
    return OnnxPredictor.load(MODEL, "1")


@dataclass(frozen=True)
class Rate:
    """Candles per second of one run: by the wall clock, and by the process's CPU time (what
    other work on a shared machine disturbs least)."""

    wall: float
    cpu: float

    @classmethod
    def timed(cls, candles: int, run: Callable[[], int]) -> tuple[Rate, int]:
        """The best rate of ``REPEAT`` runs of ``run`` over ``candles`` (the run least
        disturbed by other work on the machine, as ``timeit`` reports), and the count it
        returns."""
        return cls.interleaved(candles, [run])[0]

    @classmethod
    def interleaved(cls, candles: int, runs: list[Callable[[], int]]) -> list[tuple[Rate, int]]:
        """``timed`` for several runs compared with each other: ``REPEAT`` rounds, each run
        once per round in turn, so that a slow spell of a shared machine falls on all of them
        alike rather than on whichever ran then."""
        walls: list[list[float]] = [[] for _ in runs]
        cpus: list[list[float]] = [[] for _ in runs]
        counts = [0] * len(runs)
        for _ in range(REPEAT):
            for index, run in enumerate(runs):
                wall, cpu = time.perf_counter(), time.process_time()
                counts[index] = run()
                walls[index].append(time.perf_counter() - wall)
                cpus[index].append(time.process_time() - cpu)
        return [
            (cls(candles / min(w), candles / min(c)), count)
            for w, c, count in zip(walls, cpus, counts, strict=True)
        ]

    def text(self) -> str:
        """Both rates, aligned."""
        return f"{self.wall:>10,.0f} candles/s ({self.cpu:>9,.0f} per CPU second)"


def kubetrade_run(
    frame: pd.DataFrame, trading_bot: TradingBot, predictor: Predictor | None = None
) -> Callable[[], int]:
    """One run of ``kubetrade backtest``'s core on ``frame``: the fills it made."""
    candles = to_candles(frame, "1h")
    return lambda: len(run_backtest(trading_bot, candles, predictor).fills)


def peer_run(frame: pd.DataFrame) -> Callable[[], int]:
    """One run of backtesting.py's SmaCross (long only): its trades. The very peer the
    agreement test checks trade by trade (tests/test_peer_agreement.py)."""
    import backtesting  # noqa: F401  (imported before the clock starts)

    return lambda: int(run_peer(frame, FAST, SLOW)["# Trades"])


def main() -> None:
    """Print the rates, and kubetrade's ratios to backtesting.py."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candles", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubetrade-bench-") as store:
        predictor = xgboost_model(store)
    frame = candles_frame(args.candles)
    print(f"SMA({FAST}/{SLOW}) crossover on {len(frame):,} generated 1h candles", flush=True)
    (peer, trades), *ours = Rate.interleaved(
        len(frame),
        [peer_run(frame), kubetrade_run(frame, bot(False)), kubetrade_run(frame, bot(True))],
    )
    print(f"  backtesting.py                {peer.text()}   {trades:,} trades", flush=True)
    for label, (rate, fills) in zip(("peer conventions", "full risk"), ours, strict=True):
        print(
            f"  kubetrade, {label:<18} {rate.text()}   {fills:,} fills   "
            f"{rate.wall / peer.wall:.2f}x backtesting.py ({rate.cpu / peer.cpu:.2f}x per CPU "
            "second)",
            flush=True,
        )
    ten = ten_symbols(args.candles)
    print(f"kubetrade with full risk on {len(frame):,} candles of one symbol, {len(ten):,} of ten")
    runs = (
        ("crossover, ten symbols", ten, bot(True, tuple(TEN)), None),
        ("XGBoost threshold, one symbol", frame, bot(True, model=True), predictor),
        ("XGBoost threshold, ten symbols", ten, bot(True, tuple(TEN), model=True), predictor),
    )
    for label, candles, trading_bot, model in runs:
        rate, fills = Rate.timed(len(candles), kubetrade_run(candles, trading_bot, model))
        print(f"  {label:<29} {rate.text()}   {fills:,} fills", flush=True)


if __name__ == "__main__":
    main()
