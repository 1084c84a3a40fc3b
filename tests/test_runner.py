"""``kubetrade run`` as a user runs it: embedded servers, progress, Ctrl-C, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from click.testing import CliRunner

from kubetrade.cli import main

pytestmark = pytest.mark.integration


def _manifest(
    tmp_path: Path, name: str, symbols: list[str], exchange: dict[str, Any], model: str
) -> Path:
    """A bot manifest file, as a user would write it."""
    manifest = tmp_path / "bot.yaml"
    document = {
        "apiVersion": "kubetrade.io/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": name},
        "spec": {
            "symbols": symbols,
            "exchange": exchange,
            "model": {"name": model},
            "strategy": {"longAbove": 0.52, "exitBelow": 0.48},
        },
    }
    manifest.write_text(yaml.safe_dump(document))
    return manifest


def test_ctrl_c_stops_every_process_and_still_reports(model: str, tmp_path: Path) -> None:
    """An endless synthetic bot, interrupted: workers and embedded servers stop, report written."""
    manifest = _manifest(
        tmp_path, "endless", ["BTC/USDT"], {"name": "synthetic", "speed": 3600 * 200}, model
    )
    report_dir = tmp_path / "report"
    runner = subprocess.Popen(
        [sys.executable, "-m", "kubetrade", "run", str(manifest), "--report-dir", str(report_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "120"},
    )
    try:
        deadline = time.monotonic() + 120
        feed_log = report_dir / "logs" / "feed.log"
        while time.monotonic() < deadline:
            if feed_log.exists() and "feed started" in feed_log.read_text():
                break
            assert runner.poll() is None, runner.communicate()[0].decode()
            time.sleep(0.5)
        time.sleep(3)  # let candles flow
        started = psutil.Process(runner.pid).children(recursive=True)
        assert len(started) >= 4  # nats-server, feed, bentoml (+ its worker), executor
        runner.send_signal(signal.SIGINT)
        output, _ = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 130, output.decode()
    assert "every process and server was stopped" in output.decode()
    survivors = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, f"left running: {[p.cmdline() for p in survivors]}"
    report = json.loads((report_dir / "report.json").read_text())
    assert report["candles"] > 0


def test_backtest_command_writes_the_same_report_files(
    model: str, tmp_path: Path, btc_csv: Path
) -> None:
    """``kubetrade backtest`` on real candles: every figure of the run report, and the files."""
    manifest = _manifest(
        tmp_path, "bt", ["BTC/USD"], {"name": "replay", "uri": str(btc_csv)}, model
    )
    result = CliRunner().invoke(
        main, ["backtest", str(manifest), "--report-dir", str(tmp_path / "bt")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bt" / "report.json").read_text())
    assert report["candles"] == 20111
    assert report["fills"] > 0
    assert {"final_equity", "total_return_pct", "max_drawdown_pct", "sharpe", "win_rate"} <= set(
        report
    )
    assert (tmp_path / "bt" / "equity.png").exists()


def test_a_bad_manifest_is_refused_with_every_field_named(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "apiVersion: kubetrade.io/v1alpha1\nkind: TradingBot\nmetadata: {name: bad}\n"
        "spec: {symbols: [btc], model: {name: m}, risk: {breakers: {maxDrawdownPct: 150}}}\n"
    )
    result = CliRunner().invoke(main, ["check", str(manifest)])
    assert result.exit_code == 2
    assert "spec.symbols" in result.output
    assert "spec.risk.breakers.maxDrawdownPct: must be between 0 and 100" in result.output
    assert "Traceback" not in result.output
