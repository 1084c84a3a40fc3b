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
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from nats.aio.msg import Msg
from rich.console import Console
from rich.live import Live
from rich.table import Table
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from kubetrade.admission import StatusAdmission
from kubetrade.backtest import SamplePlan
from kubetrade.bus import connect
from kubetrade.embedded import embedded_servers, free_port
from kubetrade.errors import KubetradeError
from kubetrade.live.exchange import ENV_EXCHANGE_API_BASE
from kubetrade.messages import MessageError, StatusMessage, decode
from kubetrade.natsauth import LocalAuth, process_credentials
from kubetrade.processes import LocalProcess, local_processes
from kubetrade.render import CREDENTIAL_KEYS, NatsAuth, Platform, render
from kubetrade.runtime import die_with_parent
from kubetrade.settings import (
    ENV_DATA_FILE,
    ENV_HTTP_HOST,
    ENV_HTTP_PORT,
    ENV_REPLAY_FROM,
    ENV_REPLAY_TO,
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


@dataclass(frozen=True)
class RestartPolicy:
    """Kubernetes' CrashLoopBackOff for local processes: a crashed worker is started again after
    an exponentially growing wait (10 s to 5 min in a cluster; seconds here), and a run whose
    worker keeps crashing gives up after ``max_restarts`` restarts of that worker."""

    max_restarts: int = 5
    initial_s: float = 1.0
    max_s: float = 30.0


@dataclass
class RunOptions:
    """Options of ``kubetrade run``."""

    data_file: Path | None = None
    report_dir: Path = Path("reports/run")
    nats_url: str | None = None
    database_url: str | None = None
    timeout_s: float = 1800.0
    trace_file: Path | None = None
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    # In or out of sample (kubetrade.backtest.plan_sample): which candles of a replay file the
    # feed replays, and what the report's first lines say. None replays every candle.
    sample: SamplePlan | None = None


@dataclass
class Progress:
    """The newest status of each component."""

    statuses: dict[str, StatusMessage] = field(default_factory=dict)
    # Why the ledger does not (yet) confirm what the status messages claim; None when it does.
    unconfirmed: str | None = None

    def done(self) -> bool:
        """True when the feed finished, the executor processed every candle it published and
        (live) no order of it is still working on the exchange."""
        feed, executor = self.statuses.get("feed"), self.statuses.get("executor")
        if feed is None or executor is None or feed.state != "finished":
            return False
        if executor.counters.get("orders_working", 0):
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


class WorkerExitedError(KubetradeError):
    """A worker process exited while the run still needed it (a container crash)."""

    def __init__(self, component: str, code: int, tail: str) -> None:
        self.component, self.code, self.tail = component, code, tail
        super().__init__(f"the {component} process exited with code {code}")


class LocalProcesses:
    """Starts rendered containers as process groups, restarts them when they crash (as their
    Deployments would), and stops every one of them."""

    def __init__(
        self,
        log_dir: Path,
        policy: RestartPolicy | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.policy = policy or RestartPolicy()
        self.notify = notify or log.warning
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}
        self.failure: str | None = None
        self._trees: dict[str, list[psutil.Process]] = {}
        self._supervisors: dict[str, asyncio.Task[None]] = {}

    def start(self, process: LocalProcess) -> None:
        """Start one component in its own process group, logging to ``<component>.log``."""
        command = list(process.command)
        if command[0] == "kubetrade":
            command = LOCAL_ENTRY + command[1:]
        # Exchange credentials reach only the process whose rendered env names them.
        inherited = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_KEYS}
        env = {**inherited, **QUIET_ENV, **process.env}
        out = open(self.log_dir / f"{process.component}.log", "ab")  # noqa: SIM115 - closed by the child
        self.running[process.component] = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (a C call only)
        )
        out.close()
        self._trees[process.component] = []

    def supervise(self, process: LocalProcess) -> None:
        """Start one component and restart it whenever it exits, with backoff, until the run
        stops it (call from inside the event loop that watches the run)."""
        self._supervisors[process.component] = asyncio.get_running_loop().create_task(
            self._supervise(process), name=f"supervise {process.component}"
        )

    async def _supervise(self, process: LocalProcess) -> None:
        component = process.component
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(WorkerExitedError),
            wait=wait_exponential(multiplier=self.policy.initial_s, max=self.policy.max_s),
            stop=stop_after_attempt(self.policy.max_restarts + 1),
            before_sleep=lambda state: self._crashed(component, state),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self._reap(component)
                        self.restarts[component] = attempt.retry_state.attempt_number - 1
                        self._log_line(component, f"restart {self.restarts[component]}")
                    self.start(process)
                    await self._exited(component)
        except WorkerExitedError as error:
            self.failure = (
                f"the {component} process kept crashing: it exited {self.policy.max_restarts + 1} "
                f"times, last with code {error.code}; see {self.log_dir / component}.log:\n"
                f"{error.tail}"
            )

    async def _exited(self, component: str) -> None:
        """Wait until the component's process exits, then raise WorkerExitedError."""
        proc = self.running[component]
        polls = 0
        while proc.poll() is None:
            if polls % 5 == 0:
                # Remember the process tree: once the parent is gone its children (bentoml's
                # workers live in sessions of their own) can no longer be found from it.
                self._trees[component] = _descendants(proc.pid)
            polls += 1
            await asyncio.sleep(0.2)
        tail = (self.log_dir / f"{component}.log").read_text(errors="replace")[-3000:]
        raise WorkerExitedError(component, proc.returncode, tail)

    def _crashed(self, component: str, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        code = error.code if isinstance(error, WorkerExitedError) else "?"
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        self.notify(
            f"{component} exited with code {code}; restarting it in {wait:.0f}s "
            f"(restart {state.attempt_number} of at most {self.policy.max_restarts})"
        )

    def _reap(self, component: str) -> None:
        """Kill what is left of a crashed component's process tree before it starts again."""
        for process in self._trees.get(component, []):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()

    def _log_line(self, component: str, text: str) -> None:
        with (self.log_dir / f"{component}.log").open("a") as out:
            out.write(f"--- kubetrade run: {text} ---\n")

    def check(self) -> None:
        """Raise RunError when a component kept crashing (its restarts were used up), or, for
        a component started without supervision, when it exited at all."""
        if self.failure is not None:
            raise RunError(self.failure)
        for component, proc in self.running.items():
            if component not in self._supervisors and proc.poll() is not None:
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

    def stop_supervising(self) -> None:
        """Restart nothing any more (the run is ending)."""
        for task in self._supervisors.values():
            task.cancel()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every component, then SIGKILL whatever of its process tree is left.

        The tree, not just the process group: bentoml's workers run in sessions of their own.
        """
        for task in self._supervisors.values():
            task.cancel()
        trees = {
            c: [*self._trees.get(c, []), *_descendants(p.pid)] for c, p in self.running.items()
        }
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
    bot: TradingBot,
    nats_url: str,
    database_url: str,
    options: RunOptions,
    auth: LocalAuth | None = None,
) -> list[LocalProcess]:
    """The local processes of a bot: rendered objects plus local ports, host and data file."""
    nats_auth = NatsAuth(secret=auth.secret) if auth is not None else None
    platform = Platform(nats_url=nats_url, database_url=database_url, nats_auth=nats_auth)
    objects = render(bot, platform)
    overrides: dict[str, dict[str, str]] = {}
    for component in ("feed", "inference", "executor"):
        env = {ENV_HTTP_HOST: "127.0.0.1", ENV_HTTP_PORT: str(free_port())}
        if options.data_file is not None:
            env[ENV_DATA_FILE] = str(options.data_file.resolve())
        if options.trace_file is not None:
            env[ENV_TRACE_FILE] = str(options.trace_file.resolve())
        sample = options.sample
        if sample is not None and sample.replay_from is not None:
            env[ENV_REPLAY_FROM] = str(sample.replay_from)
        if sample is not None and sample.replay_to is not None:
            env[ENV_REPLAY_TO] = str(sample.replay_to)
        overrides[component] = env
    secrets = dict(auth.secrets) if auth is not None else {}
    secrets.update(live_credentials(bot))
    return local_processes(objects, secrets=secrets, overrides=overrides)


def refuse_live_replay(
    bot: TradingBot, data_file: Path | None, environ: Mapping[str, str] = os.environ
) -> None:
    """A live bot trading on replayed candles would send real orders at yesterday's prices:
    only a testnet (``exchange.sandbox``) or a local stand-in for the exchange
    (``KUBETRADE_EXCHANGE_API_BASE``, as in tests) may take them."""
    if bot.spec.mode is not Mode.LIVE or data_file is None:
        return
    if bot.spec.exchange.sandbox or environ.get(ENV_EXCHANGE_API_BASE):
        return
    raise RunError(
        f"bot {bot.key} trades live: replaying {data_file} would send real orders on old "
        "candles; drop --data, or set exchange.sandbox: true to trade them on the testnet"
    )


def live_credentials(
    bot: TradingBot, environ: Mapping[str, str] = os.environ
) -> dict[str, dict[str, str]]:
    """A live bot's credentials Secret, as ``kubetrade run`` holds it: from the runner's own
    ``KUBETRADE_EXCHANGE_API_KEY`` and ``KUBETRADE_EXCHANGE_SECRET`` (the names the executor
    reads in a pod). Paper bots need none."""
    secret = bot.spec.exchange.credentials_secret
    if bot.spec.mode is not Mode.LIVE or secret is None:
        return {}
    missing = [name for name in CREDENTIAL_KEYS if not environ.get(name)]
    if missing:
        raise RunError(
            f"bot {bot.key} trades live: set {' and '.join(missing)} to the API key and secret "
            f"of Secret {secret} (kubetrade run passes them to the executor only)"
        )
    return {secret: {key: environ[name] for name, key in CREDENTIAL_KEYS.items()}}


async def watch(
    bot: TradingBot,
    nats_url: str,
    procs: LocalProcesses,
    until: Callable[[Progress], bool],
    timeout_s: float,
    console: Console | None = None,
    confirm: Callable[[Progress], Awaitable[str | None]] | None = None,
) -> Progress:
    """Follow the workers' status messages until ``until(progress)`` and, when given,
    ``confirm()`` (the ledger) agrees; raise RunError if a worker keeps crashing or time is up.

    Status messages only say what a worker claims (and anyone on the bus can send one), so a
    run is over when the ledger confirms it: ``confirm`` returns None then, else the shortfall.
    """
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
            confirmed_at = 0.0
            while True:
                procs.check()
                if until(progress):
                    if confirm is None:
                        break
                    if time.monotonic() - confirmed_at >= 1.0:
                        confirmed_at = time.monotonic()
                        progress.unconfirmed = await confirm(progress)
                        if progress.unconfirmed is None:
                            break
                if time.monotonic() > deadline:
                    why = f" ({progress.unconfirmed})" if progress.unconfirmed else ""
                    raise RunError(f"the run did not finish within {timeout_s:.0f}s{why}")
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


def ledger_shortfall(candles: int, signals: int, expected: int) -> str | None:
    """Why the ledger does not show a finished run (None when it does): every candle of the
    source stored, and the executor's decision on each recorded."""
    if candles < expected:
        return f"the ledger holds {candles:,} of {expected:,} candles"
    if signals < expected:
        return f"the executor recorded {signals:,} of {expected:,} candles"
    return None


def expected_candles(
    bot: TradingBot, data_file: Path | None, sample: SamplePlan | None = None
) -> int | None:
    """How many candles the bot's source holds (of a replay file, those ``sample`` replays),
    or None for an endless one.

    A replay file is read and checked here, before any server or worker starts, so a bad
    file is refused in one line (CandleDataError, SourceError, InSampleError) instead of by a
    crashing feed.
    """
    from kubetrade.market import to_candles
    from kubetrade.market.download import replay_file
    from kubetrade.market.sources import replay_frame

    spec = bot.spec
    # Downloads an http(s) exchange.uri into the cache the feed then reads; checks sha256.
    found = replay_file(spec.exchange, str(data_file) if data_file else None)
    replay = Path(found) if found is not None else None
    if replay is not None:
        if not replay.is_file():
            raise RunError(
                f"replay file {replay} not found (relative to {Path.cwd()}); "
                "point exchange.uri at a candle file or pass --data FILE"
            )
        frame = replay_frame(bot, str(replay))
        if sample is None:
            return len(frame)
        return len(sample.select(to_candles(frame, spec.timeframe), str(replay)))
    if spec.exchange.name == "synthetic" and spec.exchange.limit is not None:
        return spec.exchange.limit * len(spec.symbols)
    return None


def _ledger_confirmation(
    bot: TradingBot, database_url: str, expected: int | None
) -> Callable[[Progress], Awaitable[str | None]]:
    """``watch``'s confirm: the ledger's counts against the source (or, for a source of unknown
    length, against the count the feed reports)."""
    from kubetrade.store import AsyncStore

    async def confirm(progress: Progress) -> str | None:
        feed = progress.statuses.get("feed")
        want = (
            expected if expected is not None else (feed.counters.get("candles", 0) if feed else 0)
        )
        async with await AsyncStore.connect(database_url) as db:
            counts = await db.count_rows(bot.key)
        return ledger_shortfall(counts.candles, counts.signals, want)

    return confirm


def start_in_order(
    bot: TradingBot, nats_url: str, procs: LocalProcesses, processes: list[LocalProcess]
) -> None:
    """Start inference and executor without supervision, wait until both consume, then start
    the feed (for tests and benches that kill and restart workers themselves)."""
    for process in processes:
        if process.component != "feed":
            procs.start(process)
    asyncio.run(watch(bot, nats_url, procs, consumers_ready, 120))
    for process in processes:
        if process.component == "feed":
            procs.start(process)


async def run_workers(
    bot: TradingBot,
    nats_url: str,
    procs: LocalProcesses,
    processes: list[LocalProcess],
    timeout_s: float,
    confirm: Callable[[Progress], Awaitable[str | None]] | None,
    console: Console | None = None,
) -> Progress:
    """Start inference and executor, then the feed once both consume; restart any that crash;
    return when the source is traded to its end (and ``confirm`` agrees).

    Their durable consumers would catch up on anything published earlier, but candles
    published while the model loads would wait in the stream and show up as latency.
    """
    try:
        for process in processes:
            if process.component != "feed":
                procs.supervise(process)
        await watch(bot, nats_url, procs, consumers_ready, 120)
        for process in processes:
            if process.component == "feed":
                procs.supervise(process)
        return await watch(bot, nats_url, procs, Progress.done, timeout_s, console, confirm)
    finally:
        procs.stop_supervising()


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, systemd, a CI runner): the run stops and reports as on Ctrl-C."""

    signum = signal.SIGTERM


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _deferred(signum: int, frame: object) -> None:
    log.warning("already stopping every process and writing the report; signal %d ignored", signum)


@contextlib.contextmanager
def _stop_signals() -> Iterator[Callable[[], None]]:
    """While the run works, SIGTERM ends it like Ctrl-C; the yielded ``shield()`` then defers
    SIGINT and SIGTERM so that stopping the processes and writing the report complete.
    (Signal handlers exist only in the main thread; elsewhere this does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def shield() -> None:
        for s in previous:
            signal.signal(s, _deferred)

    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield shield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interrupt_reason(error: KeyboardInterrupt) -> str:
    return "stopped by SIGTERM" if isinstance(error, Terminated) else "interrupted (Ctrl-C)"


def run_bot(bot: TradingBot, options: RunOptions, console: Console | None = None) -> Path:
    """Run the bot locally until its source is exhausted; return the report directory.

    A crashed worker is restarted with backoff (``options.restart_policy``). However the run
    ends, every process and server it started is stopped and the report is written from the
    ledger; ``report.json`` says whether the run is complete and, if not, why. An incomplete
    run raises RunError (the embedded database is then kept, and named), an interrupt
    (Ctrl-C, SIGTERM) KeyboardInterrupt (``Terminated`` for SIGTERM).
    """
    from kubetrade.report import report_from_database

    console = console or Console()
    live_credentials(bot)  # a live bot without credentials is refused before anything starts
    refuse_live_replay(bot, options.data_file)
    expected = expected_candles(bot, options.data_file, options.sample)
    options.report_dir.mkdir(parents=True, exist_ok=True)
    log_dir = options.report_dir / "logs"
    work = Path(tempfile.mkdtemp(prefix="kubetrade-run-"))
    failure: str | None = None
    interrupt: KeyboardInterrupt | None = None

    def notify(text: str) -> None:
        console.print(text, style="yellow", markup=False, highlight=False)

    with _stop_signals() as shield:
        try:
            # An embedded NATS admits the bot's user and the runner (as the operator) only.
            auth = None
            if options.nats_url is None:
                subjects = Subjects(bot.metadata.namespace, bot.metadata.name)
                auth = LocalAuth.generate(subjects, f"{bot.metadata.name}-nats")
            users = auth.users if auth is not None else None
            credentials: contextlib.AbstractContextManager[None] = (
                process_credentials(auth.operator_security) if auth else contextlib.nullcontext()
            )
            with (
                credentials,
                embedded_servers(work, options.nats_url, options.database_url, users) as (
                    nats_url,
                    db_url,
                ),
            ):
                procs = LocalProcesses(log_dir, options.restart_policy, notify)
                confirm = _ledger_confirmation(bot, db_url, expected)
                try:
                    asyncio.run(
                        run_workers(
                            bot,
                            nats_url,
                            procs,
                            plan(bot, nats_url, db_url, options, auth),
                            options.timeout_s,
                            confirm,
                            console,
                        )
                    )
                except RunError as error:
                    failure = str(error)
                except KeyboardInterrupt as error:
                    interrupt = error
                finally:
                    shield()
                    procs.stop()
                reason = failure or (_interrupt_reason(interrupt) if interrupt else None)
                if reason is None and expected is None:
                    reason = "the source has no end"
                completeness = {
                    "complete": reason is None,
                    "incomplete_reason": reason.splitlines()[0] if reason else None,
                    "restarts": dict(procs.restarts),
                }
                # However the run ended, the ledger holds everything committed so far.
                report_from_database(
                    bot, db_url, options.report_dir, console, completeness, options.sample
                )
        except KeyboardInterrupt as error:
            # Interrupted while a server started: whatever started was stopped on the way out.
            shield()
            interrupt = interrupt or error
        finally:
            if failure is None:
                shutil.rmtree(work, ignore_errors=True)
    if failure is not None:
        kept = f"; the embedded servers' data is kept in {work}" if any(work.iterdir()) else ""
        summary, _, details = failure.partition("\n")
        raise RunError(
            f"run incomplete: {summary}; the report in {options.report_dir} covers what the "
            f"ledger holds{kept}" + (f"\n{details}" if details else "")
        )
    if interrupt is not None:
        raise interrupt
    return options.report_dir
