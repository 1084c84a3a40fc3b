"""kubetrade and backtesting.py agree on an SMA(10/30) crossover under the same conventions.

The conventions (docs/backtest-conventions.md): orders fill at the next candle's open, a fee on
both sides, no slippage, all equity in the position, long only, no stops or breakers. The one
difference left is the position size: backtesting.py buys whole units, kubetrade lots of 1e-8;
with a billion of capital at prices near 100 a whole unit is 1e-7 of a position, so the final
equities agree to 1e-7 (measured: about 1e-8) and the trades exactly.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kubetrade.backtest import run_backtest
from kubetrade.domain import OrderReason
from kubetrade.market import generate, to_candles
from kubetrade.spec import TradingBot, parse_bot

CAPITAL = 1e9
FEE = 0.001


def peer_candles(n: int, seed: int) -> pd.DataFrame:
    """Generated candles whose open is the previous close (as on a market that never closes),
    so sizing at the signal's close and at the next open see the same price."""
    frame = generate(["BTC/USDT"], "1h", n, seed=seed, start_price=100.0)
    opens = np.concatenate((frame["open"].to_numpy()[:1], frame["close"].to_numpy()[:-1]))
    frame["open"] = opens
    frame["high"] = np.maximum(frame["high"], opens)
    frame["low"] = np.minimum(frame["low"], opens)
    return frame


def crossover_bot(fast: int = 10, slow: int = 30) -> TradingBot:
    """The SMA crossover under the peer conventions."""
    return parse_bot(
        {
            "metadata": {"name": "peer"},
            "spec": {
                "symbols": ["BTC/USDT"],
                "timeframe": "1h",
                "strategy": {"type": "sma-crossover", "params": {"fast": fast, "slow": slow}},
                "risk": {
                    "sizing": {
                        "method": "fixed-fraction",
                        "fractionPct": 100,
                        "maxPositionPct": 100,
                    },
                    "stopLoss": None,
                    "takeProfit": None,
                    "breakers": {
                        "maxDailyLossPct": None,
                        "maxDrawdownPct": None,
                        "maxConsecutiveLosses": None,
                        "minSecondsBetweenTrades": None,
                    },
                },
                "execution": {"initialCapital": CAPITAL, "feeRate": FEE, "slippageBps": 0},
            },
        }
    )


def run_peer(frame: pd.DataFrame, fast: int = 10, slow: int = 30) -> Any:
    """backtesting.py's SmaCross, long only: buy on a cross up, close on a cross down."""
    pytest.importorskip("backtesting", reason="backtesting.py is a dev dependency")
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    class SmaCross(Strategy):  # type: ignore[misc]
        def init(self) -> None:
            close = pd.Series(self.data.Close)
            self.fast = self.I(lambda: close.rolling(fast).mean().to_numpy())
            self.slow = self.I(lambda: close.rolling(slow).mean().to_numpy())

        def next(self) -> None:
            if crossover(self.fast, self.slow):
                self.buy(size=1 - 1e-12)  # all the equity the fee leaves (whole units)
            elif crossover(self.slow, self.fast) and self.position:
                self.position.close()

    data = pd.DataFrame(
        {
            "Open": frame["open"].to_numpy(),
            "High": frame["high"].to_numpy(),
            "Low": frame["low"].to_numpy(),
            "Close": frame["close"].to_numpy(),
            "Volume": frame["volume"].to_numpy(),
        },
        index=pd.to_datetime(frame["open_time"], unit="ms"),
    )
    test = Backtest(data, SmaCross, cash=CAPITAL, commission=FEE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its progress and "some trades remain open" notes
        return test.run()


@pytest.mark.parametrize("seed", [3, 17])
def test_sma_crossover_trades_and_equity_match_backtesting_py(seed: int) -> None:
    frame = peer_candles(3000, seed)
    ours = run_backtest(crossover_bot(), to_candles(frame, "1h"), None)
    stats = run_peer(frame)

    peer = stats["_trades"]
    closed = [f for f in ours.fills if f.reason is OrderReason.EXIT_SIGNAL]
    entries = [f for f in ours.fills if f.reason is OrderReason.ENTRY_LONG]
    assert len(closed) > 20
    # backtesting.py lists closed trades; a position still open at the end is in both equities.
    still_open = len(entries) - len(closed)
    assert still_open in (0, 1) and len(peer) == len(closed)
    entries = entries[: len(closed)]
    times = pd.to_datetime([f.time for f in entries], unit="ms")
    assert list(times) == list(peer["EntryTime"])  # every trade, at the same open
    assert [f.price for f in entries] == pytest.approx(list(peer["EntryPrice"]), rel=1e-12)
    exits = pd.to_datetime([f.time for f in closed], unit="ms")
    assert list(exits) == list(peer["ExitTime"].dropna())
    # Same quantities but for backtesting.py's whole units.
    assert [f.quantity for f in entries] == pytest.approx(list(peer["Size"]), rel=2e-7)
    final = ours.equity[-1].equity
    assert math.isclose(final, stats["Equity Final [$]"], rel_tol=1e-7), (
        final,
        stats["Equity Final [$]"],
    )
