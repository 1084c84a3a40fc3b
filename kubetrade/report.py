"""The end-of-run report: ``report.json``, ``fills.csv``, ``equity.png`` and a summary table.

``kubetrade run`` builds it from the database (the ledger); ``kubetrade backtest`` from the
in-process result. Both go through :func:`build_report`, so their figures compare directly.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kubetrade.backtest import BacktestResult, SamplePlan
from kubetrade.domain import Candle, EquityPoint, Fill, OrderReason, timeframe_ms
from kubetrade.spec import TradingBot
from kubetrade.store import Store
from kubetrade.trading.benchmark import benchmark_report, buy_and_hold_equity
from kubetrade.trading.outputs import HaltEvent, Refusal, ledger_order, refusal_counts
from kubetrade.trading.performance import performance_report


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (inf, nan) replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def build_report(
    bot: TradingBot,
    *,
    candles: int,
    signals: int,
    orders: int,
    fills: Sequence[Fill],
    equity: Sequence[EquityPoint],
    sample: SamplePlan | None = None,
    first_signal_time: int | None = None,
    last_candle_time: int | None = None,
    halts: Sequence[HaltEvent] = (),
    refusals: Sequence[Refusal] = (),
    benchmark: Sequence[EquityPoint] = (),
) -> dict[str, Any]:
    """The report's figures as a JSON-ready dict.

    The period starts at the first tradable candle (``first_signal_time``, the first with a
    prediction): the equity points of the feature warm-up before it are left out of every
    figure. With a ``sample`` plan the report opens with whether the period is in or out of
    sample, the period evaluated and the model's training period. ``halts`` lists every breaker
    trip and clear, kill and reset, with its figures, in the ledger's order; ``refusals`` are
    counted by kind and reason; ``benchmark`` (``benchmark_equity``) is buy and hold of the same
    symbols over the same period, whose return, drawdown and Sharpe stand beside the strategy's.
    """
    initial = bot.spec.execution.initial_capital
    equity = evaluated_equity(equity, first_signal_time, bot.spec.timeframe)
    perf = performance_report(equity, fills, initial, bot.spec.timeframe)
    facts = {} if sample is None else sample.facts(first_signal_time, last_candle_time)
    return {
        **facts,
        "bot": bot.key,
        "mode": bot.spec.mode.value,
        "symbols": list(bot.spec.symbols),
        "timeframe": bot.spec.timeframe,
        "strategy": bot.spec.strategy.type,
        "model": None
        if bot.spec.model is None
        else f"{bot.spec.model.name}:{bot.spec.model.version}",
        "start": _iso(equity[0].time) if equity else None,
        "end": _iso(equity[-1].time) if equity else None,
        "candles": candles,
        "signals": signals,
        "orders": orders,
        "fills": len(fills),
        "initial_capital": initial,
        "final_equity": round(perf.final_equity, 2),
        "total_return_pct": perf.total_return_pct,
        "max_drawdown_pct": perf.max_drawdown_pct,
        "sharpe": perf.sharpe,
        "sortino": perf.sortino,
        "trades": perf.trades,
        "win_rate": perf.win_rate_pct,
        "profit_factor": perf.profit_factor,
        "exposure_pct": perf.exposure_pct,
        "fees": round(perf.fees, 2),
        "buy_and_hold": asdict(benchmark_report(benchmark, initial, bot.spec.timeframe))
        if benchmark
        else None,
        "refusals": refusal_counts(list(refusals)),
        "liquidations": [
            {
                "time": _iso(f.time),
                "symbol": f.symbol,
                "quantity": f.quantity,
                "price": f.price,
                "fee": f.fee,
                "realized_pnl": f.realized_pnl,
            }
            for f in fills
            if f.reason is OrderReason.LIQUIDATION
        ],
        "halts": [
            {**event.to_dict(), "time": _iso(event.time)} for event in ledger_order(list(halts))
        ],
    }


def benchmark_equity(
    bot: TradingBot, market: Sequence[Candle], first_signal_time: int | None
) -> list[EquityPoint]:
    """Buy and hold of the bot's symbols over the candles of the evaluated period (from the
    first tradable candle), with the bot's initial capital (``trading.benchmark``)."""
    candles = [c for c in market if first_signal_time is None or c.open_time >= first_signal_time]
    if not candles:
        return []
    spec = bot.spec
    return buy_and_hold_equity(
        candles, spec.symbols, spec.execution.initial_capital, spec.timeframe
    )


def evaluated_equity(
    equity: Sequence[EquityPoint], first_signal_time: int | None, timeframe: str
) -> list[EquityPoint]:
    """The equity points from the first tradable candle's close on (all when unknown)."""
    if first_signal_time is None:
        return list(equity)
    start = first_signal_time + timeframe_ms(timeframe)
    return [p for p in equity if p.time >= start]


def write_fills_csv(fills: Sequence[Fill], path: Path) -> None:
    """Every fill, one row each, in time order."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            [
                "time",
                "symbol",
                "side",
                "quantity",
                "price",
                "fee",
                "realized_pnl",
                "reason",
                "client_order_id",
            ]
        )
        for f in fills:
            writer.writerow(
                [_iso(f.time), f.symbol, f.side.value, repr(f.quantity), repr(f.price), repr(f.fee),
                 repr(f.realized_pnl), f.reason.value, f.client_order_id]
            )  # fmt: skip


def write_equity_csv(
    equity: Sequence[EquityPoint], benchmark: Sequence[EquityPoint], path: Path
) -> None:
    """Every equity point of the evaluated period, with buy and hold's equity at that time."""
    hold = {p.time: p.equity for p in benchmark}
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["time", "equity", "cash", "realized_pnl", "unrealized_pnl", "open_positions",
             "drawdown_pct", "buy_and_hold_equity"]
        )  # fmt: skip
        for p in equity:
            held = hold.get(p.time)
            writer.writerow(
                [_iso(p.time), repr(p.equity), repr(p.cash), repr(p.realized_pnl),
                 repr(p.unrealized_pnl), p.open_positions, repr(p.drawdown_pct),
                 "" if held is None else repr(held)]
            )  # fmt: skip


def halt_spans(halts: Sequence[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    """(cause, start, end) of each halt in a report's ``halts`` (ISO times; end None while
    still in force): a trip until its cause clears, or until a reset."""
    spans: list[tuple[str, str, str | None]] = []
    open_since: dict[str, str] = {}
    for event in halts:
        kind, cause, time = event["kind"], event["cause"], event["time"]
        if kind in ("breaker_tripped", "halted"):
            open_since.setdefault(cause, time)
        elif kind == "breaker_cleared" and cause in open_since:
            spans.append((cause, open_since.pop(cause), time))
        elif kind == "halt_cleared":
            spans += [(c, start, time) for c, start in open_since.items()]
            open_since.clear()
    spans += [(c, start, None) for c, start in open_since.items()]
    return spans


def plot_equity(
    equity: Sequence[EquityPoint],
    path: Path,
    title: str,
    benchmark: Sequence[EquityPoint] = (),
    halts: Sequence[dict[str, Any]] = (),
) -> None:
    """Equity curve (with buy and hold, and the halts shaded) above its drawdown, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def when(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC)

    def parsed(iso: str) -> datetime:
        return datetime.fromisoformat(iso.replace("Z", "+00:00"))

    times = [when(p.time) for p in equity]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot(times, [p.equity for p in equity], color="#1f77b4", linewidth=1.2, label="strategy")
    if benchmark:
        top.plot(
            [when(p.time) for p in benchmark],
            [p.equity for p in benchmark],
            color="#7f7f7f",
            linewidth=1.0,
            label="buy and hold",
        )
    labelled = False
    for _, start, end in halt_spans(halts):
        stop = parsed(end) if end is not None else times[-1]
        top.axvspan(
            parsed(start), stop, color="#d62728", alpha=0.12, label=None if labelled else "halted"
        )
        labelled = True
    top.legend(loc="upper left")
    top.set_title(title)
    top.set_ylabel("equity")
    top.grid(alpha=0.3)
    bottom.fill_between(times, [-p.drawdown_pct for p in equity], 0, color="#d62728", alpha=0.4)
    bottom.set_ylabel("drawdown %")
    bottom.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(report: dict[str, Any]) -> Table:
    """The headline figures as a rich table."""
    # A rule-only bot has no model: its strategy names what decided.
    decided_by = report.get("model") or report.get("strategy")
    table = Table(title=f"{report['bot']} ({report['mode']}, {decided_by})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in (
        "candles", "signals", "orders", "fills", "trades", "final_equity", "total_return_pct",
        "max_drawdown_pct", "sharpe", "sortino", "win_rate", "profit_factor",
    ):  # fmt: skip
        value = report.get(key)
        text = f"{value:,.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
        table.add_row(key, text)
    for key, value in (report.get("buy_and_hold") or {}).items():
        text = "n/a" if value is None else f"{value:,.4f}".rstrip("0").rstrip(".")
        table.add_row(f"buy_and_hold {key}", text)
    for kind, by_code in (report.get("refusals") or {}).items():
        reasons = ", ".join(f"{code} {count}" for code, count in by_code.items())
        table.add_row(kind, f"{sum(by_code.values())} ({reasons})")
    halts = report.get("halts") or []
    trips = [h for h in halts if h["kind"] in ("breaker_tripped", "halted")]
    if trips:
        causes = ", ".join(sorted({h["cause"] for h in trips}))
        table.add_row("halts", f"{len(trips)} ({causes}; see report.json halts)")
    if report.get("complete") is False:
        table.caption = f"INCOMPLETE RUN: {report.get('incomplete_reason')}"
        table.caption_style = "bold yellow"
    return table


def write_report(
    report: dict[str, Any],
    fills: Sequence[Fill],
    equity: Sequence[EquityPoint],
    report_dir: Path,
    console: Console,
    benchmark: Sequence[EquityPoint] = (),
) -> None:
    """Write report.json, fills.csv, equity.csv and equity.png into ``report_dir`` (``equity``:
    the evaluated period's points); print the headline and the summary."""
    report_dir.mkdir(parents=True, exist_ok=True)
    # Strict JSON: a non-finite figure is written as null, never as Infinity or NaN.
    (report_dir / "report.json").write_text(
        json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"
    )
    write_fills_csv(fills, report_dir / "fills.csv")
    write_equity_csv(equity, benchmark, report_dir / "equity.csv")
    if equity:
        sample = f" ({report['sample']})" if report.get("sample") else ""
        title = f"{report['bot']} equity{sample}"
        halts = report.get("halts") or []
        plot_equity(equity, report_dir / "equity.png", title, benchmark, halts)
    headline = report.get("headline")
    if headline:
        style = "bold yellow" if report.get("sample") == "in-sample" else "green"
        console.print(headline, style=style, markup=False, highlight=False, soft_wrap=True)
    console.print(summary_table(report))
    console.print(
        f"report written to {report_dir}/ (report.json, fills.csv, equity.csv, equity.png)"
    )


def backtest_report(
    bot: TradingBot,
    result: BacktestResult,
    market: Sequence[Candle],
    sample: SamplePlan | None,
    report_dir: Path,
    console: Console,
) -> dict[str, Any]:
    """Build and write the report of a backtest of ``market`` (the candles replayed)."""
    hold = benchmark_equity(bot, market, result.first_signal_time)
    report = build_report(
        bot,
        candles=result.candles,
        signals=result.signals,
        orders=len(result.orders),
        fills=result.fills,
        equity=result.equity,
        sample=sample,
        first_signal_time=result.first_signal_time,
        last_candle_time=result.last_candle_time,
        halts=result.halts,
        refusals=result.refusals,
        benchmark=hold,
    )
    equity = evaluated_equity(result.equity, result.first_signal_time, bot.spec.timeframe)
    write_report(report, result.fills, equity, report_dir, console, hold)
    return report


def report_from_database(
    bot: TradingBot,
    database_url: str,
    report_dir: Path,
    console: Console,
    extra: Mapping[str, Any] | None = None,
    sample: SamplePlan | None = None,
) -> dict[str, Any]:
    """Build and write the report of a run from what reached the database; ``extra`` adds
    figures the ledger does not hold (whether the run is complete, worker restarts)."""
    with Store.connect(database_url) as db:
        fills = db.read_fills(bot.key)
        equity = db.read_equity(bot.key)
        counts = db.count_rows(bot.key)
        records = db.read_signals(bot.key)
        halts = db.read_halts(bot.key)
        refusals = db.read_refusals(bot.key)
        market = db.read_candles(bot.key)
    predicted = [s.time for s in records if s.prob_up is not None]
    first_signal_time = min(predicted) if predicted else None
    hold = benchmark_equity(bot, market, first_signal_time)
    report = build_report(
        bot,
        candles=counts.candles,
        signals=len(predicted),
        orders=counts.orders,
        fills=fills,
        equity=equity,
        sample=sample,
        first_signal_time=first_signal_time,
        last_candle_time=max((s.time for s in records), default=None),
        halts=halts,
        refusals=refusals,
        benchmark=hold,
    )
    report.update(extra or {})
    evaluated = evaluated_equity(equity, first_signal_time, bot.spec.timeframe)
    write_report(report, fills, evaluated, report_dir, console, hold)
    return report
