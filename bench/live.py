"""Live trading benchmark: the live broker against the fake Binance, through the real async ccxt
client, with its journal and the account's request budget in a real (embedded) PostgreSQL.

Reports, in one run on this machine:
- decision -> order acknowledged by the exchange, p50 / p99 / max, for market orders (filled at
  once, answered FULL) and limit orders (resting, answered ACK): from ``LiveBroker.submit``'s
  call to ccxt's ``create_order`` answer, so the validator, the journal commit of the intent
  before the send and the budget's take are in it; also the whole submit (a filled order's
  trades fetched and the journal updated) and the journal commit, budget take and
  ``create_order`` call alone. Once as the executor runs (the shared budget alone: the live
  broker turns ccxt's own per-instance rate limiter off where the budget governs), and once
  with ccxt's limiter on as well, as the executor ran before (it holds each request back by
  the previous request's cost x ``rateLimit``, 50 ms for Binance: 200 ms after a ``myTrades``);
- orders per second through one account's shared budget with N bots (market orders, each filled
  and its trades fetched: 21 request weight), at a weight limit that binds (Binance's 6,000 a
  minute scaled to the same 100 a second in shorter windows, so the run takes seconds), and with
  no limit in reach (the machinery alone); requests the fake refused for rate (0 expected), and
  the same bots without the budget (ccxt's limiter on, as a broker without a budget keeps it)
  as the control (refusals expected);
- the machine's load average before and after, and the CPU seconds this process used.

Bots, ccxt clients and the fake share one process and one event loop (each bot has its own ccxt
instance and PostgreSQL connection, as separate executors would), so the machinery's throughput
is one core's; the fake's work is inside every round trip.

    .venv/bin/python bench/live.py                                  # 300 orders; 1 and 5 bots
    .venv/bin/python bench/live.py --orders 100 --bots 1 5 10 --seconds 12
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubetrade.embedded import start_postgres  # noqa: E402
from kubetrade.live.broker import LiveBroker  # noqa: E402
from kubetrade.live.budget import LIMITS, AccountBudget, WeightLimit  # noqa: E402
from kubetrade.live.exchange import Credentials, connect_exchange  # noqa: E402
from kubetrade.settings import quiet_environment  # noqa: E402
from kubetrade.store import AsyncStore  # noqa: E402
from kubetrade.trading.order_state import LiveStatus  # noqa: E402
from kubetrade.trading.validation import OrderType  # noqa: E402
from tests.fake_exchanges.binance import WEIGHTS, FakeBinance  # noqa: E402
from tests.test_live_broker import decision  # noqa: E402

SYMBOL = "BTC/USDT"
QUANTITY = 0.001  # 60 USDT at the fake's 60,000: above its 5 USDT minimum notional
LIMIT_PRICE = 59_000.0  # a resting buy
WARMUP = 10  # orders before the measured ones (connection set-up, first queries planned)
BINANCE = LIMITS["binance"]
NO_LIMIT = WeightLimit(1e12, BINANCE.window_ms, BINANCE.header)


def rich_account() -> dict[str, Decimal]:
    """Balances no run spends."""
    return {"USDT": Decimal(10) ** 12, "BTC": Decimal(0), "ETH": Decimal(0)}


@dataclass
class Timings:
    """Start and end (perf_counter s) of each call of the wrapped methods, by name."""

    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def wrap(self, owner: Any, name: str) -> None:
        """Time every call of ``owner``'s async method ``name`` from now on."""
        original: Callable[..., Awaitable[Any]] = getattr(owner, name)
        spans = self.spans.setdefault(name, [])

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            answer = await original(*args, **kwargs)
            spans.append((start, time.perf_counter()))
            return answer

        setattr(owner, name, timed)  # an instance attribute, over the class's method

    def durations_ms(self, name: str, skip: int = 0) -> np.ndarray:
        """How long each call of ``name`` took, in ms, the first ``skip`` left out."""
        spans = self.spans.get(name, [])[skip:]
        return np.array([(end - start) * 1000 for start, end in spans])


@dataclass
class Bot:
    """One bot's broker with its own ccxt instance and PostgreSQL connection."""

    broker: LiveBroker
    timings: Timings


async def open_bot(
    stack: AsyncExitStack,
    fake: FakeBinance,
    db_url: str,
    key: str,
    limit: WeightLimit | None,
    ccxt_limiter: bool | None = None,
    **options: Any,
) -> Bot:
    """A live broker on the fake's account, its budget at ``limit`` (None: no shared budget);
    ``ccxt_limiter`` forces ccxt's own per-instance rate limiter on or off (None: as the
    broker sets it, off under a shared budget and on without, as the executor runs)."""
    store = await AsyncStore.connect(db_url)
    stack.push_async_callback(store.close)
    exchange = connect_exchange(
        "binance", Credentials(fake.api_key, fake.secret), api_base=fake.base_url
    )
    stack.push_async_callback(exchange.close)
    budget = (
        None
        if limit is None
        else AccountBudget.for_account(store, "binance", fake.api_key, limit=limit)
    )
    broker = await LiveBroker.open(
        exchange,
        exchange_name="binance",
        bot_key=key,
        journal=store,
        symbols=[SYMBOL],
        budget=budget,
        **options,
    )
    if ccxt_limiter is not None:
        exchange.enableRateLimit = ccxt_limiter
    timings = Timings()
    timings.wrap(exchange, "create_order")
    timings.wrap(store, "journal_intent")
    if budget is not None:
        timings.wrap(budget, "take")
    return Bot(broker, timings)


def ms(values: np.ndarray) -> dict[str, float]:
    """p50 / p99 / max of latencies in ms, to the µs."""
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p99": round(float(np.percentile(values, 99)), 3),
        "max": round(float(values.max()), 3),
    }


async def latency(db_url: str, orders: int, ccxt_limiter: bool | None) -> dict[str, Any]:
    """One bot, one order at a time, market and limit alternating, under Binance's own limit;
    ``ccxt_limiter`` as in :func:`open_bot`."""
    mode = {None: "as-executor", True: "on", False: "off"}[ccxt_limiter]
    tag = f"latency-ccxt-limiter-{mode}"
    fake = FakeBinance(api_key=f"bench-{tag}", weight_limit=int(BINANCE.weight))
    fake.balances = rich_account()
    await fake.start()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(fake.stop)
        bot = await open_bot(stack, fake, db_url, f"bench/live-{tag}", BINANCE, ccxt_limiter)
        ack: dict[str, list[float]] = {"market": [], "limit": []}
        whole: dict[str, list[float]] = {"market": [], "limit": []}
        statuses: Counter[str] = Counter()
        sent = bot.timings.spans.setdefault("create_order", [])
        for n in range(WARMUP + orders):
            kind = OrderType.LIMIT if n % 2 else OrderType.MARKET
            if kind is OrderType.LIMIT:
                fake.fill_script.append("never")
            sent_before, start = len(sent), time.perf_counter()
            outcome = await bot.broker.submit(
                decision(n, quantity=QUANTITY),
                kind=kind,
                price=LIMIT_PRICE if kind is OrderType.LIMIT else None,
            )
            done = time.perf_counter()
            if n < WARMUP:
                continue
            statuses[f"{kind.value}:{outcome.order.status.value}"] += 1
            if len(sent) == sent_before:
                continue  # refused before it was sent: nothing acknowledged
            ack[kind.value].append((sent[-1][1] - start) * 1000)
            whole[kind.value].append((done - start) * 1000)
        assert bot.broker.budget is not None
        return {
            "ccxt_rate_limiter": bool(bot.broker.exchange.enableRateLimit),
            "orders": orders,
            "statuses": dict(statuses),
            "decision_to_ack_ms": {k: ms(np.array(v)) for k, v in ack.items()},
            "submit_whole_ms": {k: ms(np.array(v)) for k, v in whole.items()},
            "parts_ms": {
                "journal_commit": ms(bot.timings.durations_ms("journal_intent", WARMUP)),
                "budget_take": ms(bot.timings.durations_ms("take", WARMUP)),
                "create_order_call": ms(bot.timings.durations_ms("create_order", WARMUP)),
            },
            "budget_waited_s": round(bot.broker.budget.waited_s, 3),
            "refused_for_rate_by_fake": fake.rate_limited,
        }


async def throughput(
    db_url: str,
    tag: str,
    bots: int,
    seconds: float,
    limit: WeightLimit | None,
    budget: bool,
    ccxt_limiter: bool | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``bots`` bots on one account submit market orders back to back for ``seconds``; the
    fake refuses weight beyond ``limit`` (None: never), the bots share a budget at that limit
    (or an unreachable one) when ``budget``; ``ccxt_limiter`` as in :func:`open_bot`."""
    fake = FakeBinance(
        api_key=f"bench-{tag}",
        weight_limit=None if limit is None else int(limit.weight),
        weight_window_s=(limit or BINANCE).window_ms // 1000,
    )
    fake.balances = rich_account()
    await fake.start()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(fake.stop)
        shared = (limit or NO_LIMIT) if budget else None
        opened = [
            await open_bot(
                stack, fake, db_url, f"bench/live-{tag}-{i}", shared, ccxt_limiter, **options
            )
            for i in range(bots)
        ]
        first_request = len(fake.requests)
        refused_at_start = fake.rate_limited
        deadline = time.perf_counter() + seconds

        async def trade(bot: Bot) -> Counter[str]:
            statuses: Counter[str] = Counter()
            n = 0
            while time.perf_counter() < deadline:
                try:
                    outcome = await bot.broker.submit(decision(n, quantity=QUANTITY))
                except Exception as error:  # what the broker let out, counted by kind
                    statuses[f"raised {type(error).__name__}"] += 1
                else:
                    statuses[outcome.order.status.value] += 1
                n += 1
            return statuses

        cpu, start = time.process_time(), time.perf_counter()
        counts = await asyncio.gather(*(trade(b) for b in opened))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        statuses = sum(counts, Counter[str]())
        filled = statuses[LiveStatus.FILLED.value]
        weight = sum(
            WEIGHTS.get((r["method"], r["path"]), 1) for r in fake.requests[first_request:]
        )
        figures: dict[str, Any] = {
            "bots": bots,
            "seconds": round(elapsed, 2),
            "statuses": dict(statuses),
            "orders_filled_per_s": round(filled / elapsed, 2),
            "weight_per_order": round(weight / max(sum(statuses.values()), 1), 1),
            "refused_for_rate_by_fake": fake.rate_limited - refused_at_start,
            "cpu_s": round(cpu, 2),
        }
        if limit is not None:
            figures["fake_limit"] = f"{limit.weight:g} weight / {limit.window_ms / 1000:g} s"
        if limit is not None and opened[0].broker.budget is not None:
            # The long-run average the budget allows; a run of a few windows may start late in
            # its first one and so exceed it a little.
            per_s = limit.weight * opened[0].broker.budget.margin / (limit.window_ms / 1000)
            figures["budget_average_orders_per_s"] = round(per_s / figures["weight_per_order"], 2)
        if budget:
            figures["budget_waited_s"] = round(
                sum(b.broker.budget.waited_s for b in opened if b.broker.budget), 2
            )
        else:
            figures["rate_retries"] = sum(b.broker.rate_limited for b in opened)
        return figures


async def run(db_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every phase, one after the other, on one database."""
    store = await AsyncStore.connect(db_url)
    try:
        await store.migrate()
    finally:
        await store.close()
    binding = WeightLimit(args.weight_limit, int(args.window_s * 1000), BINANCE.header)
    # As the executor runs (the shared budget alone), and with ccxt's limiter on as well, as
    # the executor ran before (after each request it holds the next one back for the request's
    # cost x 50 ms).
    figures: dict[str, Any] = {
        "latency": await latency(db_url, args.orders, ccxt_limiter=None),
        "latency_with_ccxt_limiter": await latency(db_url, args.orders, ccxt_limiter=True),
    }
    figures["throughput_at_limit"] = [
        await throughput(db_url, f"limit-{n}", n, args.seconds, binding, budget=True)
        for n in args.bots
    ]
    # The machinery alone: no limit in reach (with ccxt's limiter on, as before, a bot was
    # capped at about 4.5 filled market orders a second by it).
    figures["throughput_no_limit"] = [
        await throughput(db_url, f"free-{n}", n, args.seconds / 3, None, budget=True)
        for n in args.bots
    ]
    # The control: the most bots, the same limit, no shared budget (each bot's own ccxt
    # limiter only), few and short retries so that the run ends near its deadline.
    figures["control_without_budget"] = await throughput(
        db_url,
        "control",
        max(args.bots),
        args.window_s,
        binding,
        budget=False,
        attempts=2,
        backoff_s=0.05,
    )
    return figures


def main() -> None:
    """Run the phases and print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=300, help="measured orders (latency)")
    parser.add_argument("--bots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--seconds", type=float, default=18.0, help="per throughput run")
    parser.add_argument("--weight-limit", type=float, default=600.0, help="binding limit")
    parser.add_argument("--window-s", type=int, default=6, help="the limit's window (whole s)")
    args = parser.parse_args()
    quiet_environment()
    # Backing off and refusals are what the control measures, not news.
    logging.basicConfig(level=logging.ERROR)

    load_before = os.getloadavg()
    cpu = time.process_time()
    with tempfile.TemporaryDirectory(prefix="kubetrade-bench-live-") as tmp:
        postgres = start_postgres(Path(tmp) / "pg")
        try:
            figures = asyncio.run(run(postgres.url, args))
        finally:
            postgres.stop()
    figures = {
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "load_average_1_5_15_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        "bench_cpu_s": round(time.process_time() - cpu, 1),
        **figures,
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
