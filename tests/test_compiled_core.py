"""The trading core compiled with mypyc: `make install` builds it, it trades exactly as its
Python sources do, and a stale build is never run (kubetrade/trading/compiled.py).

Only pytest and kubetrade imported here: the parity test runs this file as a script under
``KUBETRADE_PURE=1`` to get the sources' results beside the compiled ones.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kubetrade.trading
from kubetrade.domain import Candle, Direction, MarketEvent, Prediction
from kubetrade.spec import parse_bot
from kubetrade.trading import EngineOutput, TradingEngine
from kubetrade.trading.compiled import COMPILED, MANIFEST, compiled_modules, digests, stale_modules

TRADING = Path(kubetrade.trading.__file__).parent
REQUIRED = os.environ.get("KUBETRADE_REQUIRE_COMPILED") == "1"
HOUR = 3_600_000


def _compiled() -> bool:
    """Whether this interpreter runs the compiled core (not the sources, by choice or fallback)."""
    from kubetrade.trading import engine

    return not engine.__file__.endswith(".py")


needs_compiled = pytest.mark.skipif(
    not REQUIRED and not _compiled(),
    reason="a pure-Python install (`make install` compiles the trading core)",
)


def scenario() -> str:
    """A day-trading bot with every rule that moves money, on 6,000 random-walk candles with
    random predictions: stops, trailing stop, take-profit, time exits, shorts with margin,
    borrow and liquidation, a volume cap, fees and slippage, breakers tripping and clearing
    by cooldown. Everything the engine produced, as text (exact float reprs)."""
    bot = parse_bot(
        {
            "metadata": {"name": "parity"},
            "spec": {
                "symbols": ["BTC/USDT", "ETH/USDT"],
                "timeframe": "1h",
                "model": {"name": "m"},
                "strategy": {
                    "longAbove": 0.6,
                    "exitBelow": 0.45,
                    "allowShort": True,
                    "shortBelow": 0.35,
                    "exitAbove": 0.6,
                },
                "risk": {
                    "sizing": {"method": "volatility", "riskPerTradePct": 2, "maxPositionPct": 90},
                    "stopLoss": {"atrMultiplier": 2, "atrPeriod": 14},
                    "takeProfit": {"riskReward": 2},
                    "trailingStop": {"activationPct": 1, "trailPct": 0.5},
                    "maxHolding": "12h",
                    "breakers": {
                        "maxDailyLossPct": 3,
                        "maxDrawdownPct": 8,
                        "drawdownCooldown": "2d",
                        "maxConsecutiveLosses": 4,
                        "consecutiveLossCooldown": "6h",
                        "maxTradesPerDay": 6,
                    },
                },
                "execution": {
                    "initialCapital": 10_000,
                    "feeRate": 0.001,
                    "slippageBps": 3,
                    "maxVolumePct": 20,
                    "margin": {
                        "maintenancePct": 95,
                        "borrowPctPerDay": 0.1,
                        "liquidationFeeRate": 0.005,
                    },
                },
            },
        }
    )
    rng = random.Random(7)
    prices = {"BTC/USDT": 100.0, "ETH/USDT": 50.0}
    engine = TradingEngine(bot)
    out = EngineOutput()
    for i in range(3_000):
        for symbol in bot.spec.symbols:
            open_ = prices[symbol]
            close = open_ * (1 + rng.gauss(0, 0.012))
            high = max(open_, close) * (1 + abs(rng.gauss(0, 0.006)))
            low = min(open_, close) * (1 - abs(rng.gauss(0, 0.006)))
            prices[symbol] = close
            volume = 0.0 if rng.random() < 0.01 else rng.uniform(5, 500)
            candle = Candle(
                symbol, "1h", 1_700_000_000_000 + i * HOUR, open_, high, low, close, volume
            )
            p = rng.random()
            direction = Direction.UP if p > 0.5 else Direction.DOWN
            prediction = Prediction(p, direction, abs(2 * p - 1), "m", "1", "h")
            engine.on_event(MarketEvent(candle, prediction if i >= 20 else None, None, None), out)
    engine.flush(out)
    return json.dumps(
        {
            "build": "compiled" if _compiled() else "sources",
            "orders": [repr(order) for order in out.orders],
            "fills": [repr(fill) for fill in out.fills],
            "equity": [repr(point) for point in out.equity],
            "notices": [repr(notice) for notice in out.notices],
            "snapshot": repr(engine.snapshot()),
        }
    )


@needs_compiled
def test_make_install_compiles_the_trading_core_and_runs_it() -> None:
    assert compiled_modules(TRADING) == list(COMPILED)
    assert stale_modules(TRADING) == []
    assert _compiled()


@needs_compiled
def test_the_compiled_core_trades_exactly_as_its_sources() -> None:
    compiled = json.loads(scenario())
    run = subprocess.run(
        [sys.executable, "-P", __file__],
        env={**os.environ, "KUBETRADE_PURE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    sources = json.loads(run.stdout)
    assert (compiled["build"], sources["build"]) == ("compiled", "sources")
    kinds = {notice.split("(", 1)[1].split(",", 1)[0] for notice in compiled["notices"]}
    # The scenario reaches what it is meant to: trips, clears, liquidations, caps, refusals.
    for kind in ("BREAKER_TRIPPED", "BREAKER_CLEARED", "LIQUIDATED", "PARTIALLY_FILLED"):
        assert any(kind in k for k in kinds), (kind, kinds)
    assert len(compiled["fills"]) > 200
    for part in ("orders", "fills", "equity", "notices", "snapshot"):
        assert compiled[part] == sources[part], part


def _package_copy(tmp_path: Path) -> Path:
    """A copy of the kubetrade package (compiled modules included) under ``tmp_path``."""
    shutil.copytree(
        TRADING.parent, tmp_path / "kubetrade", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path / "kubetrade" / "trading"


@needs_compiled
def test_an_edited_source_runs_instead_of_its_stale_compiled_module(tmp_path: Path) -> None:
    trading = _package_copy(tmp_path)
    with (trading / "exits.py").open("a") as source:
        source.write("\n# edited after the build\n")
    probe = (
        "import warnings; warnings.simplefilter('always')\n"
        "import kubetrade.trading.engine as e, kubetrade.trading.exits as x\n"
        "print(e.__file__); print(x.__file__)"
    )
    run = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert run.stdout.split() == [str(trading / "engine.py"), str(trading / "exits.py")]
    assert "compiled trading core is older than its sources (exits changed" in run.stderr


def test_stale_modules_compares_each_source_with_its_recorded_digest(tmp_path: Path) -> None:
    for name in COMPILED:
        shutil.copy(TRADING / f"{name}.py", tmp_path)
    assert stale_modules(tmp_path) == []  # nothing compiled: a pure-Python install
    for name in ("engine", "portfolio"):
        (tmp_path / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert stale_modules(tmp_path) == ["engine", "portfolio"]  # no manifest: none trusted
    (tmp_path / MANIFEST).write_text(json.dumps(digests(tmp_path)))
    assert stale_modules(tmp_path) == []
    with (tmp_path / "portfolio.py").open("a") as source:
        source.write("\n")
    assert stale_modules(tmp_path) == ["portfolio"]
    (tmp_path / MANIFEST).write_text("{not json")
    assert stale_modules(tmp_path) == ["engine", "portfolio"]


if __name__ == "__main__":
    print(scenario())
