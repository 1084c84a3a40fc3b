"""The walk-forward report: ``walkforward.json`` and ``walkforward.html`` with per-fold charts.

The page embeds its charts as PNG (matplotlib, no display needed), so it is one file to open,
attach or publish.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubetrade.onnx_export.walkforward import WalkForwardResult

JSON_FILE = "walkforward.json"
HTML_FILE = "walkforward.html"
CHART_FILE = "walkforward.png"


def _chart(result: WalkForwardResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folds = result.folds
    index = [f.fold.index for f in folds]
    figure, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    auc = [f.metrics.roc_auc or 0.5 for f in folds]
    axes[0][0].bar(index, [a - 0.5 for a in auc], bottom=0.5, color="tab:blue")
    axes[0][0].axhline(0.5, color="grey", linewidth=0.8)
    axes[0][0].set_title("ROC AUC per fold (0.5 = coin flip)")
    axes[0][1].plot(index, [f.metrics.accuracy for f in folds], marker="o", label="accuracy")
    axes[0][1].plot(index, [f.metrics.f1 for f in folds], marker="o", label="F1")
    axes[0][1].plot(index, [f.metrics.mcc for f in folds], marker="o", label="MCC")
    axes[0][1].legend()
    axes[0][1].set_title("Classification per fold")
    returns = [f.trading.total_return_pct for f in folds]
    axes[1][0].bar(index, returns, color=["tab:green" if r > 0 else "tab:red" for r in returns])
    axes[1][0].set_title("Backtest return per test window (%)")
    for curve, label, color in (
        (result.stitched(), "strategy", "tab:blue"),
        (result.stitched_benchmark(), "buy and hold", "tab:grey"),
    ):
        times = [datetime.fromtimestamp(p.time / 1000, UTC) for p in curve]
        axes[1][1].plot(times, [p.equity for p in curve], linewidth=0.9, label=label, color=color)
    for fold in folds:
        axes[1][1].axvline(
            datetime.fromtimestamp(fold.fold.test_start / 1000, UTC), color="#ddd", linewidth=0.6
        )
    axes[1][1].legend()
    axes[1][1].set_title("Out-of-sample equity, folds stitched (lines: fold starts)")
    axes[1][1].tick_params(axis="x", labelrotation=30)
    for axis in axes.flat:
        axis.grid(alpha=0.3)
    for axis in (axes[0][0], axes[0][1], axes[1][0]):
        axis.set_xlabel("fold")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_number(row.get(c))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(document: dict[str, Any], chart: bytes) -> str:
    aggregate = document["aggregate"]
    config = document["config"]
    folds = [
        {
            "fold": f["index"],
            "train rows": f["train_rows"],
            "test rows": f["test_rows"],
            "accuracy": f["metrics"]["accuracy"],
            "F1": f["metrics"]["f1"],
            "ROC AUC": f["metrics"]["roc_auc"],
            "MCC": f["metrics"]["mcc"],
            "log loss": f["metrics"]["log_loss"],
            "return %": f["trading"]["total_return_pct"],
            "B&H return %": f["buy_and_hold"]["total_return_pct"],
            "Sharpe": f["trading"]["sharpe"],
            "Sortino": f["trading"]["sortino"],
            "max DD %": f["trading"]["max_drawdown_pct"],
            "B&H max DD %": f["buy_and_hold"]["max_drawdown_pct"],
            "B&H Sharpe": f["buy_and_hold"]["sharpe"],
            "profit factor": f["trading"]["profit_factor"],
            "trades": f["trading"]["trades"],
        }
        for f in document["folds"]
    ]
    summary = [{"figure": k, "value": v} for k, v in aggregate["pooled_metrics"].items()]
    summary += [{"figure": k, "value": v} for k, v in aggregate["trading"].items()]
    image = base64.b64encode(chart).decode()
    kind = html.escape(config["model"]["kind"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Walk-forward: {kind}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}</style>
</head><body>
<h1>Walk-forward validation: {kind}</h1>
<p><b>out-of-sample</b>: each fold trades only its test window, with a model fit on the candles
before it; test windows do not overlap, and the curve below chains them (each fold starts
from the equity the previous one ended with), beside buy and hold of the same symbols over
the same windows (equal weights, no costs).</p>
<p>{aggregate["folds"]} folds, {html.escape(config["mode"])} windows: train
{html.escape(str(config["train"]))}, test {html.escape(str(config["test"]))}, step
{html.escape(str(config["step"]))} (timeframe {html.escape(config["timeframe"])}); label
{html.escape(json.dumps(config["label"]))}.</p>
<img alt="per-fold charts" src="data:image/png;base64,{image}">
<h2>All folds</h2>{_table(summary, ["figure", "value"])}
<h2>Per fold</h2>{_table(folds, list(folds[0]) if folds else [])}
<h2>Model</h2><pre>{html.escape(json.dumps(config["model"], indent=2))}</pre>
</body></html>
"""


def write_report(
    result: WalkForwardResult, directory: Path, extra: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write the JSON, the chart and the HTML page into ``directory``; their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    document = result.to_dict() | (extra or {})
    chart = _chart(result)
    paths = {
        "json": directory / JSON_FILE,
        "png": directory / CHART_FILE,
        "html": directory / HTML_FILE,
    }
    paths["json"].write_text(json.dumps(document, indent=2, default=str))
    paths["png"].write_bytes(chart)
    paths["html"].write_text(_html(document, chart))
    return paths
