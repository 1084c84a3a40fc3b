"""Pipeline benchmark: feed -> inference -> executor as three processes on real servers.

Reports, in one run on this machine:
- sustained candles/s with persistence (10 symbols, as fast as the pipeline takes them),
- candle published -> order decision latency (p50, p99) at a paced 200 candles/s, and its two
  legs: published -> received by the executor, received -> decided,
- each worker's peak resident memory (process tree: bentoml's arbiter and worker count).

    .venv/bin/python bench/pipeline.py                 # defaults: 10 symbols x 2,000 candles
    .venv/bin/python bench/pipeline.py --per-symbol 5000 --paced-seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from kubetrade.embedded import embedded_servers
from kubetrade.runner import LocalProcesses, Progress, RunOptions, plan, start_in_order, watch
from kubetrade.settings import quiet_environment
from kubetrade.spec import TradingBot, parse_bot
from kubetrade.store import Store

SYMBOLS = [
    f"{base}/USDT"
    for base in ("BTC", "ETH", "SOL", "BNB", "XRP", "ADA", "DOGE", "AVAX", "DOT", "LINK")
]
MODEL = "bench-baseline"


def bot(name: str, symbols: list[str], per_symbol: int, speed: float) -> TradingBot:
    """A paper bot on the synthetic market."""
    return parse_bot(
        {
            "apiVersion": "kubetrade.io/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {
                "symbols": symbols,
                "timeframe": "1h",
                "exchange": {"name": "synthetic", "seed": 3, "limit": per_symbol, "speed": speed},
                "model": {"name": MODEL},
                "strategy": {"longAbove": 0.55, "exitBelow": 0.5},
                "risk": {"sizing": {"method": "fixed-fraction", "fractionPct": 5}},
            },
        }
    )


def train_model() -> None:
    """A baseline model on synthetic candles, registered in this run's private model store."""
    from kubetrade.market import generate
    from kubetrade.onnx_export.pipeline import TrainConfig, train_and_register

    frame = generate(["BTC/USDT"], "1h", 6000, seed=99)
    train_and_register(
        {"BTC/USDT": frame}, TrainConfig(name=MODEL, timeframe="1h", source="synthetic")
    )


class MemorySampler:
    """Samples the resident memory and CPU time of each worker's process tree until stopped."""

    def __init__(self, procs: LocalProcesses) -> None:
        self.procs = procs
        self.peak: dict[str, int] = {}
        self.cpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        trees: dict[int, list[psutil.Process]] = {}
        found_at: dict[int, float] = {}
        while not self._stop.is_set():
            # A copy: the runner adds and restarts workers while this thread samples them.
            for component, popen in list(self.procs.running.items()):
                try:
                    # Finding a tree's children scans all of /proc: every 2 s, not every sample,
                    # so that the sampler does not take the CPU it measures.
                    if time.monotonic() - found_at.get(popen.pid, 0.0) > 2.0:
                        root = psutil.Process(popen.pid)
                        trees[popen.pid] = [root, *root.children(recursive=True)]
                        found_at[popen.pid] = time.monotonic()
                    tree = [p for p in trees[popen.pid] if p.is_running()]
                    rss = sum(p.memory_info().rss for p in tree)
                    cpu = sum(sum(p.cpu_times()[:2]) for p in tree)
                except psutil.Error:
                    found_at.pop(popen.pid, None)
                    continue
                self.peak[component] = max(self.peak.get(component, 0), rss)
                self.cpu[component] = max(self.cpu.get(component, 0.0), cpu)
            self._stop.wait(0.2)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def run_phase(b: TradingBot, nats_url: str, db_url: str, work: Path) -> MemorySampler:
    """Run the bot to completion (feed started once its consumers are up); sample its workers."""
    procs = LocalProcesses(work)
    try:
        with MemorySampler(procs) as sampler:
            start_in_order(b, nats_url, procs, plan(b, nats_url, db_url, RunOptions()))
            asyncio.run(watch(b, nats_url, procs, Progress.done, 1800))
    finally:
        procs.stop()
    return sampler


@dataclass(frozen=True)
class Timings:
    """Each signal's µs timestamps in the ledger: its candle published (feed), the signal
    received by the executor, and decided. Microseconds: whole ms would put a p50 of 5.4 ms at
    5 or 6."""

    published: np.ndarray
    received: np.ndarray
    decided: np.ndarray

    @classmethod
    def read(cls, db_url: str, b: TradingBot) -> Timings:
        """The timestamps of every signal of ``b``, read once from the ledger."""
        with Store.connect(db_url) as db:
            signals = db.read_signals(b.key)

        def column(values: list[int]) -> np.ndarray:
            return np.array(values, dtype=np.int64)

        return cls(
            column([s.candle_published_us for s in signals]),
            column([s.received_us for s in signals]),
            column([s.decided_us for s in signals]),
        )

    def latencies(self) -> np.ndarray:
        """Per-candle decision latency, published -> decided (ms, µs resolution)."""
        latencies: np.ndarray = (self.decided - self.published) / 1000.0
        return latencies

    def rate(self) -> float:
        """The sustained rate: signals decided per second from the first publish to the last
        decision (candles/s)."""
        return len(self.decided) / (float(self.decided.max() - self.published.min()) / 1e6)

    def legs(self) -> dict[str, dict[str, float]]:
        """Where the decision latency goes, p50 and p99 of each leg (ms): candle published ->
        signal received by the executor (feed ack, inference, signal publish, delivery), and
        received -> decided (the executor's queue and its engine)."""
        return {
            name: {
                "p50": ms_figure(np.percentile(values, 50)),
                "p99": ms_figure(np.percentile(values, 99)),
            }
            for name, values in (
                ("published_to_executor_ms", (self.received - self.published) / 1000.0),
                ("executor_received_to_decided_ms", (self.decided - self.received) / 1000.0),
            )
        }


def ms_figure(value: float) -> float:
    """A latency in ms rounded to the µs the ledger records."""
    return round(float(value), 3)


def main() -> None:
    """Run both phases and print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--per-symbol", type=int, default=2000)
    parser.add_argument("--paced-rate", type=float, default=200.0, help="candles/s across symbols")
    parser.add_argument("--paced-seconds", type=float, default=30.0)
    args = parser.parse_args()
    quiet_environment()
    symbols = SYMBOLS[: args.symbols]

    with tempfile.TemporaryDirectory(prefix="kubetrade-bench-") as tmp:
        root = Path(tmp)
        os.environ["BENTOML_HOME"] = str(root / "bentoml")
        train_model()
        with embedded_servers(root) as (nats_url, db_url):
            fast = bot("throughput", symbols, args.per_symbol, speed=0)
            fast_sample = run_phase(fast, nats_url, db_url, root / "fast")
            rate = Timings.read(db_url, fast).rate()

            per_symbol = int(args.paced_rate * args.paced_seconds / len(symbols))
            # 1h candles: candle times per second x 3600 s per candle
            speed = args.paced_rate / len(symbols) * 3600
            paced = bot("paced", symbols, per_symbol, speed=speed)
            paced_sample = run_phase(paced, nats_url, db_url, root / "paced")
            paced_timings = Timings.read(db_url, paced)
            lat = paced_timings.latencies()

    workers = ("feed", "inference", "executor")
    total = len(symbols) * args.per_symbol
    figures = {
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "throughput": {
            "candles": total,
            "symbols": len(symbols),
            "sustained_candles_per_s": round(rate, 1),
            "cpu_s_per_worker": {c: round(fast_sample.cpu.get(c, 0.0), 2) for c in workers},
        },
        "paced": {
            "rate_candles_per_s": args.paced_rate,
            "candles": len(lat),
            "decision_latency_ms_p50": ms_figure(np.percentile(lat, 50)),
            "decision_latency_ms_p99": ms_figure(np.percentile(lat, 99)),
            "decision_latency_ms_max": ms_figure(lat.max()),
            **paced_timings.legs(),
        },
        "peak_rss_mib": {
            c: round(max(fast_sample.peak.get(c, 0), paced_sample.peak.get(c, 0)) / 2**20, 1)
            for c in workers
        },
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
