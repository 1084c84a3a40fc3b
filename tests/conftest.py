"""Shared test configuration: fixture plugins and paths to real data."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetrade.embedded import start_nats
from kubetrade.settings import quiet_environment
from tests import shared_data
from tests.shared_data import BTC_CSV, require_shared

quiet_environment()

# A shell starts a background job (`./.ci/run &`) with SIGINT ignored, and every child inherits
# that: the tests that interrupt a run or a fixture with SIGINT need it delivered. A handler,
# unlike "ignored", is reset to the default in the processes the tests start.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = ["tests.fixtures_db", "tests.controlplane.fixtures"]


@pytest.fixture(scope="session")
def btc_csv() -> Path:
    """The real BTC/USD hourly file (CryptoDataDownload); absent, tests skip (or fail when
    ``KUBETRADE_REQUIRE_SHARED=1``)."""
    return require_shared(BTC_CSV, "real BTC data")


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real NATS server with JetStream: ``KUBETRADE_TEST_NATS_URL``, else an embedded one."""
    existing = os.environ.get("KUBETRADE_TEST_NATS_URL")
    if existing:
        yield existing
        return
    server = start_nats(tmp_path_factory.mktemp("nats"))
    try:
        yield server.url
    finally:
        server.stop()


MODEL = "itest-baseline"


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small XGBoost model trained on synthetic candles, in a private BentoML store."""
    from kubetrade.market import generate
    from kubetrade.onnx_export.pipeline import TrainConfig, train_and_register

    home = tmp_path_factory.mktemp("bentoml")
    os.environ["BENTOML_HOME"] = str(home)
    train_and_register(
        {"BTC/USDT": generate(["BTC/USDT"], "1h", 6000, seed=99)},
        TrainConfig(name=MODEL, timeframe="1h", source="synthetic seed 99", version="1"),
    )
    return MODEL


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """A banner when tests were skipped for want of the shared folder (data, TimescaleDB)."""
    if shared_data.skip_reasons:
        tr = terminalreporter
        tr.section("SHARED-DATA TESTS SKIPPED", sep="!", red=True, bold=True)
        for reason in shared_data.skip_reasons:
            tr.write_line(reason, red=True, bold=True)
        tr.write_line(
            f"Tests on real market data or TimescaleDB did NOT run; {shared_data.REQUIRE_ENV}=1 "
            "makes this an error.",
            red=True,
            bold=True,
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    """At exit, drop log handlers left writing to a stream pytest has closed by then.

    A test that runs a worker in-process points the root logger at the stderr pytest captured;
    at interpreter exit pgserver's cleanup logs through it and Python prints a "Logging error"
    traceback after the results. Registered now, this runs before that cleanup (atexit is
    last in, first out).
    """
    import atexit
    import logging

    def drop_closed() -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                root.removeHandler(handler)

    atexit.register(drop_closed)
