"""The baseline model pipeline: dataset, training, ONNX export with parity, registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from kubetrade.features import compute_features, default_feature_spec
from kubetrade.market.loaders import load_candles
from kubetrade.market.synthetic import generate
from kubetrade.onnx_export.cli import frames_by_symbol
from kubetrade.onnx_export.dataset import (
    LabelSpec,
    build_dataset,
    chronological_split,
    forward_returns,
    label_returns,
)
from kubetrade.onnx_export.export import (
    ParityError,
    check_parity,
    read_onnx_metadata,
    to_onnx,
)
from kubetrade.onnx_export.metadata import MetadataError
from kubetrade.onnx_export.pipeline import TrainConfig, TrainResult, train_and_register
from kubetrade.onnx_export.registry import (
    ModelNotFoundError,
    RegistryError,
    list_models,
    register,
    resolve,
)
from kubetrade.onnx_export.train import TrainParams, train_classifier

SMALL = TrainParams(n_estimators=60, max_depth=3)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty BentoML model store for this test."""
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    return tmp_path / "bentoml" / "models"


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    """Two synthetic symbols, 3000 hourly candles each."""
    return frames_by_symbol(generate(["BTC/USDT", "ETH/USDT"], "1h", 3000, seed=11))


def _train(frames: dict[str, pd.DataFrame], name: str, version: str | None = None) -> TrainResult:
    config = TrainConfig(
        name=name, version=version, timeframe="1h", source="synthetic(seed=11)", params=SMALL
    )
    return train_and_register(frames, config)


def test_labels_are_forward_returns_beyond_the_threshold() -> None:
    close = np.array([100.0, 101.0, 99.0, 102.0, 102.0, 90.0])
    returns = forward_returns(close, 2)
    np.testing.assert_allclose(returns[:4], [-0.01, 1 / 101, 3 / 99, 90 / 102 - 1])
    assert np.isnan(returns[4:]).all()

    labels = label_returns(returns, LabelSpec(horizon=2))
    np.testing.assert_array_equal(labels[:4], [0.0, 1.0, 1.0, 0.0])
    assert np.isnan(labels[4:]).all()

    dead = label_returns(returns, LabelSpec(horizon=2, threshold=0.0, dead_zone=0.015))
    np.testing.assert_array_equal(dead[[1, 2, 3]], [np.nan, 1.0, 0.0])
    assert np.isnan(dead[0]), "a return of -1% lies inside a 1.5% dead zone"


def test_rows_never_see_candles_after_their_label(frames: dict[str, pd.DataFrame]) -> None:
    spec = default_feature_spec()
    label = LabelSpec(horizon=4)
    original = frames["BTC/USDT"]
    t = 2000
    perturbed = original.copy()
    rng = np.random.default_rng(0)
    factor = rng.uniform(0.5, 1.5, size=len(original) - t - 1)
    for column in ("open", "high", "low", "close"):
        perturbed.loc[t + 1 :, column] = original.loc[t + 1 :, column].to_numpy() * factor
    perturbed.loc[t + 1 :, "volume"] = original.loc[t + 1 :, "volume"].to_numpy() * factor

    def rows(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        features = compute_features(frame, spec)
        labels = label_returns(forward_returns(frame["close"].to_numpy(), label.horizon), label)
        return features, labels

    features_a, labels_a = rows(original)
    features_b, labels_b = rows(perturbed)
    safe = t - label.horizon + 1
    np.testing.assert_array_equal(features_a[: t + 1], features_b[: t + 1])
    np.testing.assert_array_equal(labels_a[:safe], labels_b[:safe])
    # The check has teeth: the perturbation does reach the labels whose window passes t.
    returns_a = forward_returns(original["close"].to_numpy(), label.horizon)
    returns_b = forward_returns(perturbed["close"].to_numpy(), label.horizon)
    assert not np.allclose(returns_a[safe : t + 1], returns_b[safe : t + 1])


def test_dataset_drops_warmup_and_unlabelled_rows(frames: dict[str, pd.DataFrame]) -> None:
    spec = default_feature_spec()
    dataset = build_dataset(frames, spec, LabelSpec(horizon=4))
    assert dataset.feature_names == tuple(spec.names)
    assert np.isfinite(dataset.features).all()
    assert set(np.unique(dataset.labels)) == {0, 1}
    assert len(dataset) <= 2 * (3000 - spec.warmup - 4 + 1)
    assert len(dataset) > 2 * (3000 - 2 * spec.warmup - 8)
    assert np.all(np.diff(dataset.open_time) >= 0), "rows are in time order"
    assert dataset.balance.up + dataset.balance.not_up == len(dataset)


def test_split_is_chronological_and_purged(frames: dict[str, pd.DataFrame]) -> None:
    dataset = build_dataset(frames, default_feature_spec(), LabelSpec(horizon=4))
    train, test = chronological_split(dataset, 0.25)
    test_start = test.open_time.min()
    assert train.open_time.max() < test_start
    assert train.label_time.max() < test_start, "no training label looks into the test period"
    assert 0.2 < len(test) / len(dataset) < 0.3
    assert len(train) + len(test) < len(dataset), "rows straddling the cut are purged"


def test_train_export_register_on_synthetic(store: Path, frames: dict[str, pd.DataFrame]) -> None:
    result = _train(frames, "synthetic-test", version="1")
    spec = default_feature_spec()
    record = result.record
    assert record.tag == "synthetic-test:1"
    assert record.onnx_path.is_file()
    assert record.path.parent.parent == store
    assert result.parity_max_abs_diff <= 1e-5

    meta = record.metadata
    assert meta.feature_names == list(spec.names)
    assert meta.feature_hash == spec.hash
    assert meta.spec().hash == spec.hash
    assert meta.warmup == spec.warmup
    assert (meta.label.horizon, meta.label.threshold) == (4, 0.0)
    assert meta.training.symbols == ["BTC/USDT", "ETH/USDT"]
    assert meta.training.first_open_time == int(frames["BTC/USDT"]["open_time"].iloc[0])
    assert meta.training.last_open_time == int(frames["BTC/USDT"]["open_time"].iloc[-1])
    assert meta.training.first_open_time < meta.training.test_start_time
    assert set(meta.versions) == {"kubetrade", "xgboost", "onnx", "onnxruntime", "onnxmltools"}
    assert meta.parity_max_abs_diff == result.parity_max_abs_diff
    assert meta.metrics == result.metrics.to_dict()
    assert 0 <= result.metrics.accuracy <= 1
    assert 0 < result.metrics.log_loss < 2
    assert result.metrics.roc_auc is not None

    from_file = read_onnx_metadata(onnx.load_model(str(record.onnx_path)), "model.onnx")
    assert from_file == meta, "the ONNX file and the registry carry the same metadata"
    assert resolve("synthetic-test", "1").metadata == meta


def test_parity_check_refuses_a_model_that_predicts_differently(
    frames: dict[str, pd.DataFrame],
) -> None:
    dataset = build_dataset(frames, default_feature_spec(), LabelSpec())
    train, test = chronological_split(dataset, 0.2)
    model = train_classifier(train, SMALL)
    exported = to_onnx(model, len(dataset.feature_names))
    assert check_parity(model, exported, test.features) <= 1e-5

    tree = next(n for n in exported.graph.node if n.op_type == "TreeEnsembleClassifier")
    weights = next(a for a in tree.attribute if a.name == "class_weights")
    weights.floats[:] = [w + 0.05 for w in weights.floats]
    with pytest.raises(ParityError, match=r"differ by up to .* the limit is 1e-05"):
        check_parity(model, exported, test.features)


def test_registry_resolves_versions_and_names_what_exists(
    store: Path, frames: dict[str, pd.DataFrame]
) -> None:
    first = _train(frames, "reg-test", version="1").record
    second = register("reg-test", first.onnx_path.read_bytes(), first.metadata, version="2")
    automatic = register("reg-test", first.onnx_path.read_bytes(), first.metadata)

    assert resolve("reg-test").version == automatic.version
    assert resolve("reg-test", "latest").version == automatic.version
    assert resolve("reg-test", "1").version == "1"
    assert resolve("reg-test", "2").path == second.path
    listed = [r.version for r in list_models("reg-test")]
    assert listed == ["1", "2", automatic.version]
    assert [r.tag for r in list_models()] == [f"reg-test:{v}" for v in listed]

    with pytest.raises(ModelNotFoundError, match=r"no version '3'.*versions: .*1, 2"):
        resolve("reg-test", "3")
    with pytest.raises(ModelNotFoundError, match=r"no model named 'other'.*models: reg-test"):
        resolve("other")
    with pytest.raises(RegistryError, match="already exists"):
        register("reg-test", first.onnx_path.read_bytes(), first.metadata, version="2")
    with pytest.raises(ValueError, match="invalid model name"):
        register("Bad Name", first.onnx_path.read_bytes(), first.metadata)


def test_onnx_file_without_metadata_is_refused(frames: dict[str, pd.DataFrame]) -> None:
    dataset = build_dataset(frames, default_feature_spec(), LabelSpec())
    model = train_classifier(dataset, SMALL)
    bare = to_onnx(model, len(dataset.feature_names))
    with pytest.raises(MetadataError, match=r"no 'kubetrade\.metadata' metadata"):
        read_onnx_metadata(bare, "bare.onnx")


def test_train_on_real_btc_history(store: Path, btc_csv: Path) -> None:
    btc = frames_by_symbol(load_candles(btc_csv, timeframe="1h"))
    config = TrainConfig(name="btc-test", timeframe="1h", source=str(btc_csv))
    result = train_and_register(btc, config)
    meta = result.record.metadata
    assert meta.training.symbols == list(btc)
    assert meta.training.train_rows > 10_000
    assert result.parity_max_abs_diff <= 1e-5
    assert result.train_seconds < 30, "the baseline must train in seconds"
    auc = result.metrics.roc_auc
    assert auc is not None
    assert 0.4 < auc < 0.7, "hourly BTC direction is close to a coin flip"
