"""The end-of-run report: ``report.json``, ``fills.csv``, ``equity.png`` and a summary table.

``kubetrade run`` builds it from the database (the ledger); ``kubetrade backtest`` from the
in-process result. Both go through :func:`build_report`, so their figures compare directly.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kubetrade.backtest import SamplePlan
from kubetrade.domain import EquityPoint, Fill, timeframe_ms
from kubetrade.spec import TradingBot
from kubetrade.store import Store
from kubetrade.trading.outputs import HaltEvent, ledger_order
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
) -> dict[str, Any]:
    """The report's figures as a JSON-ready dict.

    The period starts at the first tradable candle (``first_signal_time``, the first with a
    prediction): the equity points of the feature warm-up before it are left out of every
    figure. With a ``sample`` plan the report opens with whether the period is in or out of
    sample, the period evaluated and the model's training period. ``halts`` lists every breaker
    trip and clear, kill and reset, with its figures, in the ledger's order.
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
        "halts": [
            {**event.to_dict(), "time": _iso(event.time)} for event in ledger_order(list(halts))
        ],
    }


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


def plot_equity(equity: Sequence[EquityPoint], path: Path, title: str) -> None:
    """Equity curve above its drawdown, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [datetime.fromtimestamp(p.time / 1000, UTC) for p in equity]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot(times, [p.equity for p in equity], color="#1f77b4", linewidth=1.2)
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
) -> None:
    """Write report.json, fills.csv and equity.png into ``report_dir``; print the summary."""
    report_dir.mkdir(parents=True, exist_ok=True)
    # Strict JSON: a non-finite figure is written as null, never as Infinity or NaN.
    (report_dir / "report.json").write_text(
        json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"
    )
    write_fills_csv(fills, report_dir / "fills.csv")
    if equity:
        plot_equity(equity, report_dir / "equity.png", f"{report['bot']} equity")
    headline = report.get("headline")
    if headline:
        style = "bold yellow" if report.get("sample") == "in-sample" else "green"
        console.print(headline, style=style, markup=False, highlight=False, soft_wrap=True)
    console.print(summary_table(report))
    console.print(f"report written to {report_dir}/ (report.json, fills.csv, equity.png)")


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
    predicted = [s.time for s in records if s.prob_up is not None]
    report = build_report(
        bot,
        candles=counts.candles,
        signals=len(predicted),
        orders=counts.orders,
        fills=fills,
        equity=equity,
        sample=sample,
        first_signal_time=min(predicted) if predicted else None,
        last_candle_time=max((s.time for s in records), default=None),
        halts=halts,
    )
    report.update(extra or {})
    write_report(report, fills, equity, report_dir, console)
    return report
