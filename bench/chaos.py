"""Recovery times: from NATS back to the first new decision, and from a worker kill to it.

    python bench/chaos.py [--outage 10] [--candles 20000]

Runs a paced synthetic bot (feed, inference, executor as processes) on embedded NATS and
PostgreSQL, then: stops NATS for ``--outage`` seconds and starts it again on the same port and
store; SIGKILLs the executor, then inference, then the feed, restarting each at once. A decision
is a row in the signals ledger; its ``decided_at`` is the executor's wall clock, so each figure is
the first ``decided_at`` after the event minus the event's wall-clock time. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import psycopg

from kubetrade.embedded import start_nats, start_postgres
from kubetrade.runner import LocalProcesses, RunOptions, plan
from kubetrade.settings import quiet_environment
from kubetrade.spec import TradingBot, parse_bot

MODEL = "bench-baseline"
TIMEOUT_S = 180.0


def train_model() -> None:
    """The pipeline bench's baseline model, in this run's private model store."""
    from kubetrade.market import generate
    from kubetrade.onnx_export.pipeline import TrainConfig, train_and_register

    frame = generate(["BTC/USDT"], "1h", 6000, seed=99)
    train_and_register(
        {"BTC/USDT": frame}, TrainConfig(name=MODEL, timeframe="1h", source="synthetic")
    )


def bot(candles: int, speed: float) -> TradingBot:
    """A paper bot on one synthetic symbol, paced so the run outlasts the faults."""
    return parse_bot(
        {
            "apiVersion": "kubetrade.io/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": "chaos", "namespace": "bench"},
            "spec": {
                "symbols": ["BTC/USDT"],
                "timeframe": "1h",
                "exchange": {"name": "synthetic", "seed": 3, "limit": candles, "speed": speed},
                "model": {"name": MODEL},
                "strategy": {"longAbove": 0.55, "exitBelow": 0.5},
                "risk": {"sizing": {"method": "fixed-fraction", "fractionPct": 5}},
            },
        }
    )


def last_decision_ms(db_url: str, key: str) -> int | None:
    """The newest decided_at in the ledger (ms), or None while nothing is decided or no DB."""
    try:
        with psycopg.connect(db_url, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT (extract(epoch FROM max(decided_at)) * 1000)::bigint FROM signals"
                " WHERE bot = %s",
                (key,),
            ).fetchone()
    except psycopg.Error:
        return None
    return None if row is None or row[0] is None else int(row[0])


def first_decision_after(db_url: str, key: str, event_ms: int) -> float:
    """Seconds from ``event_ms`` (wall clock) to the first decision after it."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        last = last_decision_ms(db_url, key)
        if last is not None and last > event_ms:
            # The first one after the event: the smallest decided_at above it.
            with psycopg.connect(db_url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT (extract(epoch FROM min(decided_at)) * 1000)::bigint FROM signals"
                    " WHERE bot = %s AND decided_at > to_timestamp(%s / 1000.0)",
                    (key, event_ms),
                ).fetchone()
            assert row is not None
            return (int(row[0]) - event_ms) / 1000.0
        time.sleep(0.02)
    raise TimeoutError(f"no decision within {TIMEOUT_S:.0f}s of the event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=10.0, help="seconds NATS is down")
    parser.add_argument("--candles", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=100.0, help="candles per second")
    args = parser.parse_args()
    quiet_environment()
    root = Path(tempfile.mkdtemp(prefix="kubetrade-chaos-bench-"))
    os.environ["BENTOML_HOME"] = str(root / "bentoml")
    train_model()
    the_bot = bot(args.candles, 3600 * args.rate)
    key = the_bot.key
    nats = start_nats(root / "nats")
    pg = start_postgres(root / "pg" / "data")
    procs = LocalProcesses(root / "logs")
    figures: dict[str, float] = {}
    try:
        options = RunOptions(report_dir=root, nats_url=nats.url, database_url=pg.url)
        planned = {p.component: p for p in plan(the_bot, nats.url, pg.url, options)}
        for component in ("inference", "executor", "feed"):
            procs.start(planned[component])
        first_decision_after(pg.url, key, 0)  # the pipeline runs

        nats.stop()
        time.sleep(args.outage)  # the outage itself
        nats = nats.restart()
        figures["nats_back_to_first_decision_s"] = first_decision_after(
            pg.url, key, time.time_ns() // 1_000_000
        )
        for component in ("executor", "inference", "feed"):
            killed = time.time_ns() // 1_000_000
            procs.kill(component)
            procs.start(planned[component])
            figures[f"{component}_kill_to_first_decision_s"] = first_decision_after(
                pg.url, key, killed
            )
        exits = {c: p.returncode for c, p in procs.running.items() if p.poll() is not None}
        print(json.dumps({"outage_s": args.outage, "rate": args.rate, **figures, "exited": exits}))
    finally:
        procs.stop()
        nats.stop()
        pg.stop()


if __name__ == "__main__":
    main()
