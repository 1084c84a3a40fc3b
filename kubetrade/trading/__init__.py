"""The trading core: strategy, risk, portfolio and paper broker, shared by backtest and live.

Plain deterministic Python with no I/O and no wall clock. The executor worker and the
backtester drive :class:`TradingEngine` with the same events and get the same fills. Its hot
modules may be compiled with mypyc (see ``compiled``); a stale compiled build is never run.
"""

# The stale-build guard must run before any compiled module is imported: imports follow it.
# ruff: noqa: E402

from pathlib import Path

from kubetrade.trading.compiled import prefer_sources_if_stale

prefer_sources_if_stale(Path(__file__).parent)

from kubetrade.trading.control import ControlAction, ControlCommand
from kubetrade.trading.engine import EventError, TradingEngine
from kubetrade.trading.outputs import EngineOutput, Notice, NoticeKind
from kubetrade.trading.performance import PerformanceReport, RoundTrip, performance_report
from kubetrade.trading.state import SnapshotError
from kubetrade.trading.summary import TradingSummary

__all__ = [
    "ControlAction",
    "ControlCommand",
    "EngineOutput",
    "EventError",
    "Notice",
    "NoticeKind",
    "PerformanceReport",
    "RoundTrip",
    "SnapshotError",
    "TradingEngine",
    "TradingSummary",
    "performance_report",
]
