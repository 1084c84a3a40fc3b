"""What every worker process shares: start-up from the environment, stop on SIGTERM, status."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nats.aio.client import Client

from kubetrade.domain import HaltCause
from kubetrade.errors import OutageError
from kubetrade.messages import StatusMessage, encode
from kubetrade.settings import WorkerSettings, quiet_environment
from kubetrade.subjects import Subjects
from kubetrade.telemetry import setup_logging, setup_tracing

log = logging.getLogger(__name__)

State = Literal["starting", "running", "finished", "degraded", "failed", "halted"]
STATUS_INTERVAL_S = 1.0
CLEANUP_TIMEOUT_S = 5.0
STOP_GRACE_S = 10.0
EXIT_OUTAGE = OutageError.exit_code
# Kubernetes shows what a container wrote here as its last termination message.
TERMINATION_LOG = Path(os.environ.get("KUBETRADE_TERMINATION_LOG", "/dev/termination-log"))


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when the thread that started it dies.

    Passed as ``preexec_fn`` by ``kubetrade run``: a run killed with SIGKILL (the OOM killer,
    ``kill -9``) gets no chance to stop what it started, and the workers and NATS would trade
    on as orphans. Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing changes.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


# Looked up once, in the parent: the child between fork and exec only calls a C function.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def now_ms() -> int:
    """Wall-clock milliseconds (status and admission times)."""
    return time.time_ns() // 1_000_000


def now_us() -> int:
    """Wall-clock microseconds (decision latency compares these across processes)."""
    return time.time_ns() // 1_000


@dataclass
class WorkerStatus:
    """A worker's state and counters, published on the bot's status subject every second."""

    component: Literal["feed", "inference", "executor"]
    bot: str
    state: State = "starting"
    message: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    trading: dict[str, Any] | None = None
    halt_causes: list[HaltCause] = field(default_factory=list)
    model: str | None = None

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a counter."""
        self.counters[name] = self.counters.get(name, 0) + amount

    def to_message(self) -> StatusMessage:
        """The status as a message."""
        return StatusMessage(
            component=self.component,
            bot=self.bot,
            state=self.state,
            message=self.message,
            time=now_ms(),
            counters=dict(self.counters),
            trading=self.trading,
            halt_causes=list(self.halt_causes),
            model=self.model,
        )


async def publish_status_forever(nc: Client, subjects: Subjects, status: WorkerStatus) -> None:
    """Publish the status every STATUS_INTERVAL_S until cancelled."""
    while True:
        if nc.is_connected:
            # A connection that breaks between the check and the send loses one status.
            with contextlib.suppress(Exception):
                await nc.publish(subjects.status, encode(status.to_message()))
        await asyncio.sleep(STATUS_INTERVAL_S)


def settle_heap() -> None:
    """Put everything a worker allocated while starting (modules, the model, its clients) out of
    the garbage collector's reach, once it is about to run.

    A full collection otherwise walks that whole start-up heap, 120,000-160,000 objects here:
    a pause of 50-200 ms in the middle of a decision, recurring for as long as the worker runs.
    Afterwards it walks only what the worker allocated since (``gc.freeze``).
    """
    gc.collect()
    gc.freeze()


async def quietly(step: Awaitable[object], what: str) -> None:
    """Run a shutdown step, bounded in time; its failure is logged, never raised.

    Shutdown after an outage must not hang on a dead server nor replace the error that
    stopped the worker with one from its cleanup.
    """
    try:
        await asyncio.wait_for(step, CLEANUP_TIMEOUT_S)
    except Exception as error:
        log.debug("shutdown step failed", extra={"step": what, "error": str(error)})


def prepare(component: str) -> WorkerSettings:
    """Read settings and set up logs and traces for a worker process."""
    quiet_environment()
    settings = WorkerSettings.from_env(component)
    setup_logging(component, settings.log_level)
    setup_tracing(f"kubetrade-{component}", settings.bot.key)
    return settings


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` on a fresh loop; SIGTERM and SIGINT set ``stop`` for a clean exit.

    ``main`` gets ``STOP_GRACE_S`` to finish what it is doing (a batch, a commit); then it is
    cancelled, so a worker stuck on a server that is gone (its publish retried until the
    outage limit) still stops well within Kubernetes' grace period.
    """

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        work = asyncio.ensure_future(main(stop))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not work.done():
            done, _ = await asyncio.wait({work}, timeout=STOP_GRACE_S)
            if not done:
                log.warning("still busy after the stop grace period; cancelling")
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                return
        await work  # its result, or the error it stopped with

    try:
        asyncio.run(wrapper())
    except KeyboardInterrupt:
        pass
    except OutageError as error:
        # One line with the reason, also as the pod's termination message; a non-zero exit
        # makes Kubernetes (or kubetrade run) restart the worker.
        log.error(f"exiting: {error}")
        if TERMINATION_LOG.exists() or "KUBETRADE_TERMINATION_LOG" in os.environ:
            with contextlib.suppress(OSError):
                TERMINATION_LOG.write_text(str(error))
        raise SystemExit(EXIT_OUTAGE) from None
