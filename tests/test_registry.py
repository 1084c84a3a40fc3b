"""The model registry's promotion and export, the `kubetrade model` commands, and what a
bot asking for a missing model sees."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import pandas as pd
import pytest
from click.testing import CliRunner

from kubetrade.cli import main
from kubetrade.errors import InvalidInputError
from kubetrade.features import default_feature_spec
from kubetrade.market.synthetic import generate
from kubetrade.modelstore.registry import (
    ModelNotFoundError,
    ModelRecord,
    export_files,
    promote,
    promoted_version,
    register,
    resolve,
)
from kubetrade.onnx_export.export import read_onnx_metadata
from kubetrade.onnx_export.models.boosted import XGBoostParams
from kubetrade.onnx_export.pipeline import TrainConfig, train_and_register
from kubetrade.onnx_export.sources import frames_by_symbol
from tests.test_serving import Store, _kill_tree, _start


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    """One synthetic symbol, 1200 hourly candles."""
    return frames_by_symbol(generate(["BTC/USDT"], "1h", 1200, seed=41))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty BENTOML_HOME for this test."""
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    return tmp_path / "bentoml"


def _first(frames: dict[str, pd.DataFrame]) -> ModelRecord:
    config = TrainConfig(
        name="reg",
        version="1",
        timeframe="1h",
        source="t",
        model=XGBoostParams(n_estimators=10, max_depth=2),
    )
    return train_and_register(frames, config).record


def test_promotion_decides_what_latest_means(home: Path, frames: dict[str, pd.DataFrame]) -> None:
    first = _first(frames)
    data = first.onnx_path.read_bytes()
    register("reg", data, first.metadata, version="2")
    assert resolve("reg").version == "2", "without promotion latest is the newest"
    assert promoted_version("reg") is None

    promote("reg", "1")
    assert promoted_version("reg") == "1"
    assert resolve("reg").version == "1"
    register("reg", data, first.metadata, version="3")
    assert resolve("reg", "latest").version == "1", "a new version does not go live by itself"
    assert resolve("reg", "3").version == "3"
    promote("reg", "3")
    assert resolve("reg").version == "3"

    with pytest.raises(ModelNotFoundError, match=r"no version '9'.*versions: 1, 2, 3"):
        promote("reg", "9")
    with pytest.raises(InvalidInputError, match="promote a concrete version"):
        promote("reg", "latest")


def test_export_copies_the_artifact(
    home: Path, frames: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    first = _first(frames)
    onnx_file, metadata_file = export_files("reg", "latest", tmp_path / "out")
    assert onnx_file.read_bytes() == first.onnx_path.read_bytes()
    assert read_onnx_metadata(onnx.load_model(str(onnx_file)), str(onnx_file)) == first.metadata
    assert json.loads(metadata_file.read_text())["feature_hash"] == default_feature_spec().hash


def test_model_commands(home: Path, frames: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    first = _first(frames)
    register("reg", first.onnx_path.read_bytes(), first.metadata, version="2")
    runner = CliRunner()

    listed = runner.invoke(main, ["model", "list"])
    assert listed.exit_code == 0, listed.output
    assert "reg" in listed.output and "xgboost" in listed.output

    promoted = runner.invoke(main, ["model", "promote", "reg:1"])
    assert promoted.exit_code == 0 and "reg:1 is now reg:latest" in promoted.output
    listed = runner.invoke(main, ["model", "list", "reg"])
    assert "1 *" in listed.output, "the promoted version is marked"

    shown = runner.invoke(main, ["model", "show", "reg"])
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.output)
    assert (document["version"], document["model_type"], document["window"]) == (
        "1",
        "xgboost",
        1,
    )
    assert document["parity_max_abs_diff"] <= 1e-5

    out = tmp_path / "exported"
    exported = runner.invoke(main, ["model", "export", "reg:2", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert exported.output.split() == [str(out / "model.onnx"), str(out / "metadata.json")]
    assert (out / "model.onnx").read_bytes() == first.onnx_path.read_bytes()

    missing = runner.invoke(main, ["model", "show", "nope"])
    assert missing.exit_code == 3  # ModelError
    assert "no model named 'nope'" in missing.output and "reg" in missing.output
    bad = runner.invoke(main, ["model", "promote", "reg"])
    assert bad.exit_code == 2 and "name the version to promote" in bad.output


def test_a_missing_model_version_leaves_inference_not_ready(
    home: Path, frames: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    _first(frames)
    store = Store(home, np.zeros((0, 0)), [], frames["BTC/USDT"])
    server = _start(
        store, tmp_path / "serve.log", KUBETRADE_MODEL_NAME="reg", KUBETRADE_MODEL_VERSION="7"
    )
    try:
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        assert "model 'reg' has no version '7'" in ready.text and "versions: 1" in ready.text
        info = httpx.get(f"{server.url}/model").json()
        assert info["ready"] is False and "no version '7'" in info["reason"]
        assert server.stop() == 0
    finally:
        _kill_tree(server.process)
