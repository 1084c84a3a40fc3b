"""Shared test configuration: fixture plugins and paths to real data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetrade.embedded import start_nats
from kubetrade.settings import quiet_environment
from tests.shared_data import BTC_CSV

quiet_environment()

pytest_plugins = ["tests.fixtures_db", "tests.controlplane.fixtures"]


@pytest.fixture(scope="session")
def btc_csv() -> Path:
    """The real BTC/USD hourly file (CryptoDataDownload); tests skip when it is absent."""
    if not BTC_CSV.exists():
        pytest.skip(f"real BTC data not found at {BTC_CSV}")
    return BTC_CSV


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
