"""``kubetrade run`` as a user runs it: embedded servers, progress, Ctrl-C, nothing left behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
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

from kubetrade.bus import connect
from kubetrade.cli import main
from kubetrade.embedded import start_nats
from kubetrade.messages import StatusMessage, encode
from kubetrade.processes import LocalProcess
from kubetrade.runner import (
    LocalProcesses,
    Progress,
    RestartPolicy,
    RunError,
    ledger_shortfall,
    watch,
)
from kubetrade.spec import parse_bot
from kubetrade.subjects import Subjects

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


# --- behaving like Kubernetes: restarts, SIGTERM, a run that ends early says so -----------


def _own_worker(runner: subprocess.Popen[bytes], component: str) -> psutil.Process:
    """The ``kubetrade worker <component>`` process that this runner started (and no other)."""
    for child in psutil.Process(runner.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.cmdline()[-2:] == ["worker", component]:
                return child
    raise AssertionError(f"the runner has no {component} worker")


def _start_run(manifest: Path, report_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "kubetrade", "run", str(manifest), "--report-dir", str(report_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "120"},
    )


def _wait_for_log(runner: subprocess.Popen[bytes], log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        assert runner.poll() is None, runner.communicate()[0].decode()
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {log} within {timeout}s")


def test_a_killed_executor_is_restarted_and_the_run_completes(model: str, tmp_path: Path) -> None:
    """SIGKILL of the executor mid-run: restarted with backoff, every candle traded, exit 0."""
    manifest = _manifest(
        tmp_path,
        "restarts",
        ["BTC/USDT"],
        {"name": "synthetic", "limit": 3000, "speed": 3600 * 100},
        model,
    )
    report_dir = tmp_path / "report"
    runner = _start_run(manifest, report_dir)
    try:
        _wait_for_log(runner, report_dir / "logs" / "feed.log", "feed started", 120)
        victim = _own_worker(runner, "executor")
        victim.kill()
        output, _ = runner.communicate(timeout=240)
    finally:
        if runner.poll() is None:
            runner.kill()
    text = output.decode()
    assert runner.returncode == 0, text
    assert "executor exited with code -9; restarting it" in text
    report = json.loads((report_dir / "report.json").read_text())
    assert report["complete"] is True
    assert report["restarts"] == {"executor": 1}
    assert report["candles"] == 3000


def _running_bot(model: str, tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A ``kubetrade run`` of a long synthetic bot, returned once its feed publishes."""
    manifest = _manifest(
        tmp_path, name, ["BTC/USDT"], {"name": "synthetic", "speed": 3600 * 200}, model
    )
    report_dir = tmp_path / "report"
    runner = _start_run(manifest, report_dir)
    try:
        _wait_for_log(runner, report_dir / "logs" / "feed.log", "feed started", 120)
    except BaseException:
        runner.kill()
        raise
    return runner, report_dir


def _started_by(runner: subprocess.Popen[bytes]) -> list[psutil.Process]:
    started = psutil.Process(runner.pid).children(recursive=True)
    names = [" ".join(p.cmdline()[-3:]) for p in started]
    assert len(started) >= 4, names  # nats-server, feed, bentoml (+ its worker), executor
    return started


def test_sigterm_stops_every_process_and_still_reports(model: str, tmp_path: Path) -> None:
    """SIGTERM (timeout, systemd, CI) does what Ctrl-C does, and the report says why it ended."""
    runner, report_dir = _running_bot(model, tmp_path, "terminated")
    try:
        started = _started_by(runner)
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode in (130, 143), output.decode()
    survivors = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, f"left running: {[p.cmdline() for p in survivors]}"
    report = json.loads((report_dir / "report.json").read_text())
    assert report["complete"] is False
    assert report["incomplete_reason"] == "stopped by SIGTERM"


def test_a_run_killed_with_sigkill_leaves_no_worker_or_nats_server(
    model: str, tmp_path: Path
) -> None:
    """``kill -9`` (or the OOM killer) gives the run no chance to clean up: the kernel stops
    what it started (parent-death signal), so no orphan keeps trading."""
    runner_started = time.time()
    runner, _ = _running_bot(model, tmp_path, "orphans")
    try:
        started = _started_by(runner)
        runner.kill()
        runner.wait(timeout=10)
    finally:
        if runner.poll() is None:
            runner.kill()
    # SIGTERM gives each worker its stop grace (runtime.STOP_GRACE_S) and bounded clean-ups.
    _, alive = psutil.wait_procs(started, timeout=60)
    survivors = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for p in survivors:  # a failed test must not leave them running either
        with contextlib.suppress(psutil.Error):
            p.kill()
    _stop_orphaned_postgres(since=runner_started)
    assert not survivors, f"left running: {[p.cmdline() for p in survivors]}"


def _stop_orphaned_postgres(since: float) -> None:
    """The embedded PostgreSQL (pgserver starts it detached, through pg_ctl) is the known
    exception that outlives a SIGKILLed run (docs/architecture.md): stop the one this test
    orphaned, and its data directory with it."""
    for p in psutil.process_iter(["cmdline", "ppid", "create_time"]):
        line = p.info["cmdline"] or []
        if p.info["ppid"] != 1 or p.info["create_time"] < since or "-D" not in line:
            continue
        data = Path(line[line.index("-D") + 1])
        if data.parent.name.startswith("kubetrade-run-") and Path(line[0]).name == "postgres":
            with contextlib.suppress(psutil.Error):
                p.terminate()
                p.wait(30)
            shutil.rmtree(data.parent, ignore_errors=True)


def test_a_worker_that_keeps_crashing_uses_up_its_restarts(tmp_path: Path) -> None:
    """A real process that always exits 3: restarted with backoff, then the run gives up."""
    procs = LocalProcesses(tmp_path, RestartPolicy(max_restarts=2, initial_s=0.05, max_s=0.1))
    crashing = LocalProcess(
        component="executor",
        command=[sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
        env={},
        http_port=0,
        probes={},
    )

    async def supervise_until_given_up() -> None:
        procs.supervise(crashing)
        deadline = time.monotonic() + 30
        while procs.failure is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        procs.stop_supervising()

    asyncio.run(supervise_until_given_up())
    procs.stop()

    assert procs.restarts == {"executor": 2}
    with pytest.raises(RunError, match="kept crashing: it exited 3 times, last with code 3"):
        procs.check()
    assert (tmp_path / "executor.log").read_text().count("boom") == 3


def test_ledger_shortfall_decides_completeness() -> None:
    assert ledger_shortfall(candles=10, signals=10, expected=10) is None
    assert ledger_shortfall(candles=4, signals=4, expected=10) == "the ledger holds 4 of 10 candles"
    assert ledger_shortfall(10, 7, 10) == "the executor recorded 7 of 10 candles"


def test_a_forged_finished_status_does_not_end_the_run(tmp_path: Path) -> None:
    """Status messages claim; the ledger decides. A 'finished' that the ledger does not back
    keeps the run going until its timeout, which then names the shortfall."""
    bot = parse_bot(
        {"metadata": {"name": "forged"}, "spec": {"symbols": ["BTC/USDT"], "model": {"name": "m"}}}
    )
    subjects = Subjects(bot.metadata.namespace, bot.metadata.name)
    nats = start_nats(tmp_path / "nats")
    procs = LocalProcesses(tmp_path / "logs")

    async def forge_and_watch() -> None:
        nc = await connect(nats.url, "forger")
        feed = StatusMessage(
            component="feed", bot=bot.key, state="finished", time=int(time.time() * 1000),
            counters={"candles": 5},
        )  # fmt: skip
        executor = StatusMessage(
            component="executor", bot=bot.key, state="running", time=int(time.time() * 1000),
            counters={"processed": 5},
        )  # fmt: skip

        async def forge() -> None:
            for _ in range(20):
                for message in (feed, executor):
                    await nc.publish(subjects.status, encode(message))
                await asyncio.sleep(0.1)

        async def ledger(progress: Progress) -> str | None:
            return ledger_shortfall(candles=0, signals=0, expected=3000)

        forger = asyncio.create_task(forge())
        try:
            await watch(bot, nats.url, procs, Progress.done, 3.0, confirm=ledger)
        finally:
            forger.cancel()
            await nc.drain()

    try:
        with pytest.raises(RunError, match="did not finish within 3s"):
            asyncio.run(forge_and_watch())
    finally:
        nats.stop()
