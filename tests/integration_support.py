"""Helpers for the integration tests: bots, a trained model, and runs of the real workers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from kubetrade.runner import LocalProcesses, Progress, RunOptions, plan, start_in_order, watch
from kubetrade.spec import TradingBot, parse_bot


def make_bot(
    name: str, exchange: dict[str, Any], symbols: list[str], model: str, **spec: Any
) -> TradingBot:
    """A paper bot with a strategy loose enough to trade on a small model."""
    document = {
        "apiVersion": "kubetrade.io/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": name, "namespace": "itest"},
        "spec": {
            "symbols": symbols,
            "timeframe": "1h",
            "exchange": exchange,
            "model": {"name": model, "version": "latest"},
            "strategy": {"longAbove": 0.52, "exitBelow": 0.48},
            "risk": {
                "sizing": {"method": "fixed-fraction", "fractionPct": 20, "maxPositionPct": 25},
                "maxHolding": "24h",
                "breakers": {
                    "maxDailyLossPct": 50,
                    "maxDrawdownPct": 90,
                    "maxConsecutiveLosses": 50,
                },
            },
            **spec,
        },
    }
    return parse_bot(document, f"<test bot {name}>")


def start_workers(
    bot: TradingBot, nats_url: str, db_url: str, work: Path, options: RunOptions
) -> tuple[LocalProcesses, dict[str, Any]]:
    """Start the rendered feed, inference and executor as local processes."""
    procs = LocalProcesses(work / "logs")
    processes = plan(bot, nats_url, db_url, options)
    start_in_order(bot, nats_url, procs, processes)
    return procs, {p.component: p for p in processes}


def wait_for(
    bot: TradingBot, nats_url: str, procs: LocalProcesses, until: Any, timeout: float
) -> Progress:
    """Block until ``until(progress)`` holds (or fail with the dead worker's log)."""
    return asyncio.run(watch(bot, nats_url, procs, until, timeout))


def read_spans(path: Path) -> list[dict[str, Any]]:
    """Spans written by every worker to the shared trace file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
