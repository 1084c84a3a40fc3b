"""LSTM, Transformer and ensembles: reproducible training, ONNX parity, registry, the shared
signal pipeline on windows, checkpoints, and a real `bentoml serve` of a windowed model.

PyTorch is the `train` extra; without it every test here is skipped, loudly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

pytest.importorskip(
    "torch",
    reason="PyTorch is not installed: LSTM/Transformer/ensemble tests SKIPPED "
    "(install the train extra: pip install -e '.[dev,train]')",
)

from kubetrade.backtest import run_backtest
from kubetrade.cli import main
from kubetrade.domain import MarketEvent
from kubetrade.errors import ModelError
from kubetrade.features import compute_features, default_feature_spec
from kubetrade.market.frame import to_candles
from kubetrade.market.synthetic import generate
from kubetrade.modelstore.predictor import OnnxPredictor
from kubetrade.onnx_export.dataset import (
    Dataset,
    LabelSpec,
    build_dataset,
    chronological_split,
)
from kubetrade.onnx_export.export import ParityError, check_parity
from kubetrade.onnx_export.models.boosted import XGBoostParams
from kubetrade.onnx_export.models.ensemble import EnsembleModel, EnsembleParams
from kubetrade.onnx_export.models.neural import NeuralModel, NeuralParams
from kubetrade.onnx_export.pipeline import (
    Checkpoint,
    TrainConfig,
    fit_checkpoint,
    train_and_register,
)
from kubetrade.onnx_export.preprocess import Standardizer
from kubetrade.onnx_export.sources import frames_by_symbol
from kubetrade.signals import SignalPipeline
from tests.integration_support import make_bot
from tests.test_serving import Server, Store, _candles_in, _kill_tree, _start

WINDOW = 8
LSTM = NeuralParams("lstm", window=WINDOW, hidden=16, epochs=2, batch_size=128)
TRANSFORMER = NeuralParams("transformer", window=WINDOW, hidden=16, heads=2, epochs=2)
TREES = XGBoostParams(n_estimators=30, max_depth=3)


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    """One synthetic symbol, 1300 hourly candles (about 880 usable rows)."""
    return frames_by_symbol(generate(["BTC/USDT"], "1h", 1300, seed=21))


@pytest.fixture(scope="module")
def split(frames: dict[str, pd.DataFrame]) -> tuple[Dataset, Dataset]:
    dataset = build_dataset(frames, default_feature_spec(), LabelSpec(), window=WINDOW)
    return chronological_split(dataset, 0.25)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty BentoML model store for this test."""
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    return tmp_path / "bentoml"


@pytest.mark.parametrize("params", [LSTM, TRANSFORMER], ids=["lstm", "transformer"])
def test_training_is_seeded_and_exports_with_parity(
    split: tuple[Dataset, Dataset], params: NeuralParams
) -> None:
    train, test = split
    first, second, other = (NeuralModel(params) for _ in range(3))
    first.fit(train)
    second.fit(train)
    other = NeuralModel(NeuralParams(**{**params.to_dict(), "seed": params.seed + 1}))
    other.fit(train)
    inputs = test.inputs(WINDOW)
    np.testing.assert_array_equal(first.predict_proba(inputs), second.predict_proba(inputs))
    assert not np.array_equal(first.predict_proba(inputs), other.predict_proba(inputs))
    assert first.losses == second.losses and len(first.losses) == params.epochs

    exported = first.to_onnx(inputs.shape[2])
    dims = exported.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", WINDOW, inputs.shape[2]]
    assert check_parity(first, exported, inputs) <= 1e-5
    # Scaling is fitted on the training rows only and lives inside the graph.
    scaler = Standardizer.fit(train.features)
    np.testing.assert_allclose(first.describe()["preprocessing"]["mean"], scaler.mean)
    assert first.describe()["preprocessing"]["applied_in"] == "onnx graph"


def test_parity_check_refuses_a_changed_network(split: tuple[Dataset, Dataset]) -> None:
    train, test = split
    model = NeuralModel(LSTM)
    model.fit(train)
    exported = model.to_onnx(test.inputs(WINDOW).shape[2])
    head = max(
        (i for i in exported.graph.initializer if i.name.startswith("head.bias")),
        key=lambda i: i.name,
    )
    head.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(head) + 0.5, head.name))
    with pytest.raises(ParityError, match=r"lstm model refused: .*differ by up to"):
        check_parity(model, exported, test.inputs(WINDOW))


@pytest.mark.parametrize("method", ["stacked", "average"])
def test_ensemble_combines_members_in_one_graph(
    split: tuple[Dataset, Dataset], method: str
) -> None:
    train, test = split
    model = EnsembleModel(EnsembleParams((TREES, LSTM), method=method))
    model.fit(train)
    inputs = test.inputs(WINDOW)
    members = np.column_stack(
        [model.members[0].predict_proba(inputs[:, -1, :]), model.members[1].predict_proba(inputs)]
    )
    np.testing.assert_allclose(model.predict_proba(inputs), model.combine(members))
    assert model.coefficients is not None
    if method == "average":
        np.testing.assert_allclose(model.coefficients, [0.5, 0.5])
    else:
        assert model.out_of_fold_rows > 0
        assert model.out_of_fold_rows < len(train), "only blocks after the first are out of fold"
    exported = model.to_onnx(inputs.shape[2])
    assert check_parity(model, exported, inputs) <= 1e-5
    domains = {o.domain for o in exported.opset_import}
    assert "ai.onnx.ml" in domains, "the tree member's graph is inside"
    assert model.describe()["combiner"]["method"] == method


def test_windowed_model_registers_loads_and_streams_like_training(
    store: Path, frames: dict[str, pd.DataFrame], split: tuple[Dataset, Dataset]
) -> None:
    config = TrainConfig(name="lstm-test", version="1", timeframe="1h", source="t", model=LSTM)
    result = train_and_register(frames, config)
    meta = result.record.metadata
    assert (meta.model_type, meta.window) == ("lstm", WINDOW)
    assert meta.input_shape == ["batch", WINDOW, len(default_feature_spec().names)]
    assert meta.parity_max_abs_diff <= 1e-5
    assert "torch" in meta.versions and meta.versions["torch"] != "not installed"
    assert len(meta.model["preprocessing"]["std"]) == len(meta.feature_names)

    predictor = OnnxPredictor.load("lstm-test")
    assert predictor.window == WINDOW
    _, test = split
    served = predictor.predict_proba(test.inputs(WINDOW))
    with pytest.raises(ModelError, match=rf"windows of {WINDOW} rows .*got shape"):
        predictor.predict_proba(test.features)

    # The live path (one candle at a time, rolling windows) gives the training windows' numbers.
    candles = to_candles(frames["BTC/USDT"], "1h")
    pipeline = SignalPipeline(predictor)
    streamed = {
        e.candle.open_time: e.prediction.prob_up
        for e in pipeline.process(candles)
        if isinstance(e, MarketEvent) and e.prediction is not None
    }
    first_predicted = min(streamed)
    spec = default_feature_spec()
    assert first_predicted == candles[spec.warmup - 1 + WINDOW - 1].open_time
    common = [t for t in test.open_time.tolist() if t in streamed]
    assert len(common) == len(test)
    np.testing.assert_allclose([streamed[t] for t in common], served, atol=1e-6)

    # A restart replays warm-up + window - 1 candles and predicts the next one the same way.
    restarted = SignalPipeline(predictor)
    restarted.warm_up(candles[:-1])
    (event,) = restarted.process(candles[-1:])
    assert isinstance(event, MarketEvent) and event.prediction is not None
    assert event.prediction.prob_up == pytest.approx(streamed[candles[-1].open_time], abs=1e-6)

    # The shared backtest runs windowed models too.
    bot = make_bot("lstm-bt", {"name": "synthetic"}, ["BTC/USDT"], model="lstm-test")
    backtest = run_backtest(bot, candles, predictor)
    assert backtest.signals == len(streamed)


def test_checkpoint_then_export_through_the_cli(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    checkpoint = tmp_path / "ckpt"
    common = ["--synthetic", "--symbols", "BTC/USDT", "--candles", "1100"]
    neural = ["--window", "6", "--epochs", "1", "--hidden", "8"]
    result = runner.invoke(
        main,
        [
            "train",
            *common,
            "--model",
            "ensemble",
            "--members",
            "xgboost,transformer",
            "--ensemble-method",
            "average",
            *neural,
            "--trees",
            "20",
            "--checkpoint",
            str(checkpoint),
            "--no-register",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (checkpoint / "checkpoint.json").is_file()
    assert not (store / "models").exists() or not any((store / "models").iterdir())

    loaded = Checkpoint.load(checkpoint)
    assert loaded.model.kind == "ensemble" and loaded.model.window == 6

    result = runner.invoke(main, ["export", str(checkpoint), "--name", "ens", "--promote"])
    assert result.exit_code == 0, result.output
    assert "registered ens:" in result.output
    predictor = OnnxPredictor.load("ens")
    np.testing.assert_allclose(
        predictor.predict_proba(loaded.parity_inputs),
        loaded.model.predict_proba(loaded.parity_inputs),
        atol=1e-5,
    )

    missing = runner.invoke(main, ["export", str(tmp_path), "--name", "x"])
    assert missing.exit_code == 2 and "holds no checkpoint.json" in missing.output


@dataclass(frozen=True)
class Windowed:
    store: Store
    frame: pd.DataFrame
    windows: np.ndarray


@pytest.fixture(scope="module")
def windowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Windowed]:
    """A store with `serve-ens:1`, a stacked XGBoost + Transformer ensemble."""
    home = tmp_path_factory.mktemp("bentoml-windowed")
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        frames = frames_by_symbol(generate(["BTC/USDT"], "1h", 1300, seed=22))
        fitted = fit_checkpoint(
            frames,
            TrainConfig(
                name="serve-ens",
                timeframe="1h",
                source="t",
                model=EnsembleParams((TREES, TRANSFORMER)),
            ),
        )
        from kubetrade.onnx_export.pipeline import register_checkpoint

        register_checkpoint(fitted.checkpoint, "serve-ens", "1")
        names = list(default_feature_spec().names)
        yield Windowed(
            Store(home, np.zeros((0, len(names))), names, frames["BTC/USDT"]),
            frames["BTC/USDT"],
            fitted.checkpoint.parity_inputs[-5:],
        )
    finally:
        if previous is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = previous


def test_serving_a_windowed_ensemble_over_http(windowed: Windowed, tmp_path: Path) -> None:
    server: Server = _start(
        windowed.store, tmp_path / "serve.log", KUBETRADE_MODEL_NAME="serve-ens"
    )
    try:
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        info = httpx.get(f"{server.url}/model").json()
        assert (info["model"]["model_type"], info["model"]["window"]) == ("ensemble", WINDOW)
        names = windowed.store.names
        body = {"windows": windowed.windows.tolist(), "feature_names": names}
        response = httpx.post(f"{server.url}/predict", json=body, timeout=10)
        assert response.status_code == 200, response.text
        os.environ["BENTOML_HOME"] = str(windowed.store.home)
        expected = OnnxPredictor.load("serve-ens").predict_proba(windowed.windows)
        np.testing.assert_allclose(response.json()["probabilities"], expected, atol=1e-6)

        short = {"windows": [w[:-1] for w in body["windows"]], "feature_names": names}
        response = httpx.post(f"{server.url}/predict", json=short, timeout=10)
        assert response.status_code == 422
        assert f"window 0 has {WINDOW - 1} rows" in response.text
        rows = {"rows": body["windows"][0], "feature_names": names}
        response = httpx.post(f"{server.url}/predict", json=rows, timeout=10)
        assert response.status_code == 422 and "send them as `windows`" in response.text

        recent = windowed.frame.iloc[-(default_feature_spec().warmup + WINDOW + 3) :]
        signal = httpx.post(
            f"{server.url}/signal",
            json={"symbol": "BTC/USDT", "candles": [c.model_dump() for c in _candles_in(recent)]},
            timeout=10,
        )
        assert signal.status_code == 200, signal.text
        last = compute_features(windowed.frame, default_feature_spec())[-WINDOW:]
        expected_signal = OnnxPredictor.load("serve-ens").predict_proba(last[None])[0]
        assert signal.json()["prob_up"] == pytest.approx(expected_signal, abs=1e-5)
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert server.stop() == 0
    finally:
        _kill_tree(server.process)


def test_lstm_on_real_btc_history(store: Path, btc_csv: Path) -> None:
    from kubetrade.onnx_export.sources import file_frames

    btc = {s: f.iloc[-3000:].reset_index(drop=True) for s, f in file_frames(btc_csv, "1h").items()}
    config = TrainConfig(name="btc-lstm", timeframe="1h", source=str(btc_csv), model=LSTM)
    result = train_and_register(btc, config)
    meta = result.record.metadata
    assert meta.parity_max_abs_diff <= 1e-5 and meta.parity_rows == meta.training.test_rows
    assert result.train_seconds < 30, "small sequence models train in seconds"
    auc = result.metrics.roc_auc
    assert auc is not None and 0.35 < auc < 0.7
