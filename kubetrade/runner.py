"""``kubetrade run``: the bot rendered exactly as the operator would, run as local processes.

The runner renders the bot with ``kubetrade/render.py``, turns each Deployment's container into
a local process (same command, same environment after resolving ConfigMap and Secret refs),
starts embedded NATS and PostgreSQL unless URLs are given, shows progress from the workers'
status messages, stops everything it started (also on Ctrl-C), and reports from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from nats.aio.msg import Msg
from rich.console import Console
from rich.live import Live
from rich.table import Table

from kubetrade.admission import StatusAdmission
from kubetrade.bus import connect
from kubetrade.embedded import embedded_servers, free_port
from kubetrade.errors import KubetradeError
from kubetrade.messages import MessageError, StatusMessage, decode
from kubetrade.processes import LocalProcess, local_processes
from kubetrade.render import Platform, render
from kubetrade.settings import (
    ENV_DATA_FILE,
    ENV_HTTP_HOST,
    ENV_HTTP_PORT,
    ENV_TRACE_FILE,
    QUIET_ENV,
)
from kubetrade.spec import Mode, TradingBot
from kubetrade.subjects import Subjects

log = logging.getLogger(__name__)

# Each local process is started the way its container would be: `kubetrade worker <component>`,
# with this interpreter standing in for the image's `kubetrade` entry point.
LOCAL_ENTRY = [sys.executable, "-m", "kubetrade"]


class RunError(KubetradeError):
    """The local run could not complete; the message says which process and why."""


@dataclass
class RunOptions:
    """Options of ``kubetrade run``."""

    data_file: Path | None = None
    report_dir: Path = Path("reports/run")
    nats_url: str | None = None
    database_url: str | None = None
    timeout_s: float = 1800.0
    trace_file: Path | None = None


@dataclass
class Progress:
    """The newest status of each component."""

    statuses: dict[str, StatusMessage] = field(default_factory=dict)

    def done(self) -> bool:
        """True when the feed finished and the executor processed every candle it published."""
        feed, executor = self.statuses.get("feed"), self.statuses.get("executor")
        if feed is None or executor is None or feed.state != "finished":
            return False
        return executor.counters.get("processed", 0) >= feed.counters.get("candles", 0)

    def table(self, bot: TradingBot) -> Table:
        """A live table of the components' states and counters."""
        table = Table(title=f"kubetrade run {bot.key}", expand=False)
        for column in ("component", "state", "candles", "predictions", "orders", "fills", "equity"):
            table.add_column(
                column, justify="left" if column in ("component", "state") else "right"
            )
        for component in ("feed", "inference", "executor"):
            status = self.statuses.get(component)
            if status is None:
                table.add_row(component, "starting", "", "", "", "", "")
                continue
            c = status.counters
            equity = (status.trading or {}).get("equity")
            table.add_row(
                component,
                status.state,
                str(c.get("processed", c.get("candles", ""))),
                str(c.get("signals", "")) if component == "inference" else "",
                str(c.get("orders", "")),
                str(c.get("fills", "")),
                "" if equity is None else f"{equity:,.2f}",
            )
        problems = [
            f"{s.component}: {s.message}"
            for s in self.statuses.values()
            if s.state in ("degraded", "failed", "halted") and s.message
        ]
        if problems:
            table.caption = "\n".join(problems)
        return table


class LocalProcesses:
    """Starts rendered containers as process groups and stops every one of them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, process: LocalProcess) -> None:
        """Start one component in its own process group, logging to ``<component>.log``."""
        command = list(process.command)
        if command[0] == "kubetrade":
            command = LOCAL_ENTRY + command[1:]
        env = {**os.environ, **QUIET_ENV, **process.env}
        out = open(self.log_dir / f"{process.component}.log", "ab")  # noqa: SIM115 - closed by the child
        self.running[process.component] = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()

    def check(self) -> None:
        """Raise RunError when a component exited on its own."""
        for component, proc in self.running.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{component}.log").read_text(errors="replace")[-3000:]
                raise RunError(
                    f"the {component} process exited with code {proc.returncode}:\n{tail}"
                )

    def kill(self, component: str) -> None:
        """SIGKILL one component with every process it started (as a node failure would)."""
        proc = self.running[component]
        for process in [*_descendants(proc.pid), psutil.Process(proc.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every component, then SIGKILL whatever of its process tree is left.

        The tree, not just the process group: bentoml's workers run in sessions of their own.
        """
        trees = {c: _descendants(p.pid) for c, p in self.running.items() if p.poll() is None}
        for proc in self.running.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for component, proc in self.running.items():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(deadline - time.monotonic(), 0.1))
            leftovers = [p for p in trees.get(component, []) if p.is_running()]
            _, alive = psutil.wait_procs(leftovers, timeout=max(deadline - time.monotonic(), 0.1))
            for process in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def plan(
    bot: TradingBot, nats_url: str, database_url: str, options: RunOptions
) -> list[LocalProcess]:
    """The local processes of a bot: rendered objects plus local ports, host and data file."""
    objects = render(bot, Platform(nats_url=nats_url, database_url=database_url))
    overrides: dict[str, dict[str, str]] = {}
    for component in ("feed", "inference", "executor"):
        env = {ENV_HTTP_HOST: "127.0.0.1", ENV_HTTP_PORT: str(free_port())}
        if options.data_file is not None:
            env[ENV_DATA_FILE] = str(options.data_file.resolve())
        if options.trace_file is not None:
            env[ENV_TRACE_FILE] = str(options.trace_file.resolve())
        overrides[component] = env
    return local_processes(objects, overrides=overrides)


async def watch(
    bot: TradingBot,
    nats_url: str,
    procs: LocalProcesses,
    until: Callable[[Progress], bool],
    timeout_s: float,
    console: Console | None = None,
) -> Progress:
    """Follow the workers' status messages until ``until(progress)``; raise if one dies."""
    progress = Progress()
    subjects = Subjects(bot.metadata.namespace, bot.metadata.name)
    nc = await connect(nats_url, f"{bot.key}/runner")
    admission = StatusAdmission()

    async def on_status(msg: Msg) -> None:
        with contextlib.suppress(MessageError):
            status = decode(StatusMessage, msg.data)
            refusal = admission.admit(msg.subject, status, time.time_ns() // 1_000_000)
            if refusal is not None:
                log.warning("ignored a status message", extra={"refusal": str(refusal)})
                return
            progress.statuses[status.component] = status

    sub = await nc.subscribe(subjects.status, cb=on_status)
    deadline = time.monotonic() + timeout_s
    live = Live(progress.table(bot), console=console, refresh_per_second=4) if console else None
    try:
        with live or contextlib.nullcontext():
            while not until(progress):
                procs.check()
                if time.monotonic() > deadline:
                    raise RunError(f"the run did not finish within {timeout_s:.0f}s")
                await asyncio.sleep(0.2)
                if live is not None:
                    live.update(progress.table(bot))
            if live is not None:
                # One more status round so the table shows the final figures.
                await asyncio.sleep(1.2)
                live.update(progress.table(bot))
    finally:
        await sub.unsubscribe()
        await nc.drain()
    return progress


def consumers_ready(progress: Progress) -> bool:
    """True once inference and executor report running (or a state that needs attention)."""
    states = {c: s.state for c, s in progress.statuses.items()}
    return all(
        states.get(c) in ("running", "degraded", "halted") for c in ("inference", "executor")
    )


def start_in_order(
    bot: TradingBot, nats_url: str, procs: LocalProcesses, processes: list[LocalProcess]
) -> None:
    """Start inference and executor, wait until both consume, then start the feed.

    Their durable consumers would catch up on anything published earlier, but candles
    published while the model loads would wait in the stream and show up as latency.
    """
    for process in processes:
        if process.component != "feed":
            procs.start(process)
    asyncio.run(watch(bot, nats_url, procs, consumers_ready, 120))
    for process in processes:
        if process.component == "feed":
            procs.start(process)


@contextlib.contextmanager
def _workdir(report_dir: Path) -> Iterator[Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kubetrade-run-") as tmp:
        yield Path(tmp)


def run_bot(bot: TradingBot, options: RunOptions, console: Console | None = None) -> Path:
    """Run the bot locally until its source is exhausted; return the report directory."""
    from kubetrade.report import report_from_database

    console = console or Console()
    replay = options.data_file or (
        Path(bot.spec.exchange.uri)
        if bot.spec.exchange.name == "replay" and bot.spec.exchange.uri
        else None
    )
    if replay is not None and not replay.is_file():
        raise RunError(
            f"replay file {replay} not found (relative to {Path.cwd()}); "
            "point exchange.uri at a candle file or pass --data FILE"
        )
    if bot.spec.mode is Mode.LIVE:
        raise RunError(
            "kubetrade run trades on paper only; live mode runs in a cluster with credentials"
        )
    with (
        _workdir(options.report_dir) as work,
        embedded_servers(work, options.nats_url, options.database_url) as (nats_url, db_url),
    ):
        log_dir = options.report_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        procs = LocalProcesses(log_dir)
        interrupted = False
        try:
            start_in_order(bot, nats_url, procs, plan(bot, nats_url, db_url, options))
            asyncio.run(watch(bot, nats_url, procs, Progress.done, options.timeout_s, console))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            procs.stop()
        # Also after Ctrl-C: the ledger holds everything committed so far, so report it.
        report_from_database(bot, db_url, options.report_dir, console)
    if interrupted:
        raise KeyboardInterrupt
    return options.report_dir
