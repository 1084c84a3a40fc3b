"""Health that means progress: bounds from the spec, the stall decision, the HTTP answers."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client import generate_latest

from kubetrade.embedded import free_port
from kubetrade.health import (
    STALL_FLOOR_S,
    HealthServer,
    ProgressBound,
    Vitals,
    assess,
    progress_bound,
    watch_forever,
)
from kubetrade.runtime import WorkerStatus
from kubetrade.spec import TradingBot, parse_bot


def _bot(exchange: dict[str, Any], timeframe: str = "1h") -> TradingBot:
    return parse_bot(
        {
            "apiVersion": "kubetrade.io/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": "health", "namespace": "itest"},
            "spec": {
                "symbols": ["BTC/USDT"],
                "timeframe": timeframe,
                "exchange": exchange,
                "model": {"name": "m", "version": "latest"},
            },
        },
        "<test bot>",
    )


def test_bounds_follow_timeframe_and_speed() -> None:
    live = progress_bound(_bot({"name": "binance"}, "1h"))
    assert live == ProgressBound(3600, 2 * 3600 + 300)
    paced = progress_bound(_bot({"name": "synthetic", "speed": 3600}, "1h"))
    assert paced.expected_s == 1.0 and paced.stall_s == STALL_FLOOR_S
    slow = progress_bound(_bot({"name": "synthetic", "speed": 60}, "1h"))
    assert slow.expected_s == 60 and slow.stall_s == 600
    fastest = progress_bound(_bot({"name": "synthetic", "speed": 0}, "1m"))
    assert fastest == ProgressBound(0.0, STALL_FLOOR_S)


BOUND = ProgressBound(1.0, 30.0)


def _assess(**changes: Any) -> Any:
    arguments: dict[str, Any] = {
        "component": "executor",
        "bound": BOUND,
        "now": 1000.0,
        "clock_from": 990.0,
        "pending": 0,
        "finished": False,
        "down": {"nats": False, "database": False},
    }
    return assess(**{**arguments, **changes})


def test_a_consumer_with_work_waiting_and_no_progress_is_stalled() -> None:
    stalled = _assess(pending=12, clock_from=900.0)
    assert (stalled.live, stalled.ready, stalled.stalled) == (False, False, True)
    assert "no decision with 12 waiting for 100s" in stalled.reason


def test_an_idle_consumer_or_a_finished_feed_is_live() -> None:
    assert _assess(pending=0, clock_from=0.0).live
    assert _assess(pending=None, clock_from=0.0).live
    assert _assess(component="feed", finished=True, clock_from=0.0, pending=None).live


def test_a_feed_that_publishes_nothing_is_stalled() -> None:
    health = _assess(component="feed", pending=None, clock_from=900.0)
    assert not health.live and "no candle published" in health.reason


def test_an_outage_is_ridden_out_not_ready_but_live() -> None:
    health = _assess(pending=50, clock_from=0.0, down={"nats": True, "database": False})
    assert (health.live, health.ready) == (True, False)
    assert "nats not connected" in health.reason


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


async def _get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}{path}", timeout=5)


async def _until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def test_a_stuck_worker_fails_liveness_shows_why_and_recovers() -> None:
    """A worker stuck with messages waiting: 503 on /healthz, degraded status, lag metrics."""

    async def scenario() -> None:
        clock = Clock()
        connected = {"nats": True}
        vitals = Vitals(
            "itest/stuck",
            "executor",
            ProgressBound(1.0, 60.0),
            {"nats": lambda: connected["nats"]},
            clock,
        )
        status = WorkerStatus("executor", "itest/stuck", state="running")
        port = free_port()
        server = HealthServer("127.0.0.1", port, lambda: (True, "running"), vitals)
        await server.start()

        async def pending() -> int:
            return 7

        watchdog = asyncio.create_task(watch_forever(vitals, status, pending))
        try:
            vitals.progress(int(clock.now * 1000) - 3_600_000)
            await _until(lambda: vitals.pending == 7)
            assert (await _get(port, "/healthz")).status_code == 200

            clock.now += 61  # a minute without a decision, seven signals waiting
            await _until(lambda: vitals.health.stalled)
            live = await _get(port, "/healthz")
            assert live.status_code == 503 and "stalled" in live.json()["reason"]
            assert (await _get(port, "/livez")).status_code == 503
            assert (await _get(port, "/readyz")).status_code == 503
            await _until(lambda: status.state == "degraded")
            assert "no decision with 7 waiting" in status.message
            metrics = generate_latest().decode()
            labels = '{bot="itest/stuck",component="executor"}'
            assert f"kubetrade_stalled{labels} 1.0" in metrics
            assert f"kubetrade_consumer_pending_messages{labels} 7.0" in metrics
            assert f"kubetrade_last_progress_age_seconds{labels} 61.0" in metrics
            assert f"kubetrade_candle_lag_seconds{labels} 3661.0" in metrics

            vitals.progress()  # progress again: live, and the status it had is back
            await _until(lambda: status.state == "running")
            assert (await _get(port, "/healthz")).status_code == 200

            connected["nats"] = False  # an outage: not ready, live, the stall clock waits
            clock.now += 600
            await _until(lambda: not vitals.health.ready)
            assert (await _get(port, "/healthz")).status_code == 200
            ready = await _get(port, "/readyz")
            assert ready.status_code == 503 and "nats not connected" in ready.json()["reason"]
            connected["nats"] = True
            await _until(lambda: vitals.health.ready)
            assert status.state == "running"
        finally:
            watchdog.cancel()
            await server.stop()

    asyncio.run(scenario())


def test_a_finished_feed_stays_live_without_progress() -> None:

    async def scenario() -> None:
        clock = Clock()
        vitals = Vitals("itest/done", "feed", ProgressBound(1.0, 60.0), {}, clock)
        status = WorkerStatus("feed", "itest/done", state="finished")
        watchdog = asyncio.create_task(watch_forever(vitals, status))
        try:
            clock.now += 3600
            await _until(lambda: vitals.finished and vitals.health.reason == "finished")
            assert vitals.health.live and status.state == "finished"
        finally:
            watchdog.cancel()

    asyncio.run(scenario())
