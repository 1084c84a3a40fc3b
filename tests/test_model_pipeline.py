"""The baseline model pipeline: dataset, training, ONNX export with parity, registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from kubetrade.errors import InvalidInputError
from kubetrade.features import compute_features, default_feature_spec
from kubetrade.market.loaders import load_candles
from kubetrade.market.synthetic import generate
from kubetrade.modelstore.metadata import MetadataError
from kubetrade.modelstore.registry import (
    ModelNotFoundError,
    RegistryError,
    list_models,
    register,
    resolve,
)
from kubetrade.onnx_export.dataset import (
    LabelSpec,
    build_dataset,
    chronological_split,
    forward_returns,
    label_returns,
    label_rows,
    triple_barrier_labels,
)
from kubetrade.onnx_export.export import ParityError, check_parity, read_onnx_metadata
from kubetrade.onnx_export.metrics import score
from kubetrade.onnx_export.models.boosted import XGBoostModel, XGBoostParams
from kubetrade.onnx_export.pipeline import TrainConfig, TrainResult, train_and_register
from kubetrade.onnx_export.sources import frames_by_symbol

SMALL = XGBoostParams(n_estimators=60, max_depth=3)


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
        name=name, version=version, timeframe="1h", source="synthetic(seed=11)", model=SMALL
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
    assert (meta.label.kind, meta.label.horizon, meta.label.threshold) == (
        "forward_return",
        4,
        0.0,
    )
    assert (meta.model_type, meta.window) == ("xgboost", 1)
    assert meta.params["n_estimators"] == 60
    assert meta.model["preprocessing"]["kind"] == "none"
    assert meta.parity_rows == min(2000, meta.training.test_rows)
    assert meta.training.symbols == ["BTC/USDT", "ETH/USDT"]
    assert meta.training.first_open_time == int(frames["BTC/USDT"]["open_time"].iloc[0])
    assert meta.training.last_open_time == int(frames["BTC/USDT"]["open_time"].iloc[-1])
    assert meta.training.first_open_time < meta.training.test_start_time
    assert set(meta.versions) == {
        "kubetrade",
        "numpy",
        "xgboost",
        "onnx",
        "onnxruntime",
        "onnxmltools",
    }
    assert "not installed" not in meta.versions.values()
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
    model = XGBoostModel(SMALL)
    model.fit(train)
    exported = model.to_onnx(len(dataset.feature_names))
    assert check_parity(model, exported, test.features) <= 1e-5

    tree = next(n for n in exported.graph.node if n.op_type == "TreeEnsembleClassifier")
    weights = next(a for a in tree.attribute if a.name == "class_weights")
    weights.floats[:] = [w + 0.05 for w in weights.floats]
    with pytest.raises(ParityError, match=r"xgboost model refused: .*differ by up to .*1e-05"):
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
    with pytest.raises(InvalidInputError, match="invalid model name"):
        register("Bad Name", first.onnx_path.read_bytes(), first.metadata)


def test_onnx_file_without_metadata_is_refused(frames: dict[str, pd.DataFrame]) -> None:
    dataset = build_dataset(frames, default_feature_spec(), LabelSpec())
    model = XGBoostModel(SMALL)
    model.fit(dataset)
    bare = model.to_onnx(len(dataset.feature_names))
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


def test_triple_barrier_labels_take_the_first_barrier_touched() -> None:
    # Flat history (sigma from tiny alternating returns), then four scripted futures.
    n_history = 30
    base = 100.0 * np.exp(0.001 * ((np.arange(n_history) % 2) * 2 - 1))
    close = np.concatenate([base, [100.0] * 6])
    high = close.copy()
    low = close.copy()
    label = LabelSpec(kind="triple_barrier", horizon=3, vol_window=10)
    t = n_history - 1
    sigma = np.std(np.diff(np.log(close[t - 10 : t + 1])), ddof=1)
    up = close[t] * np.exp(sigma * np.sqrt(3))
    down = close[t] * np.exp(-sigma * np.sqrt(3))

    def label_at_t(h: list[float], lo: list[float], c: list[float]) -> float:
        hi_, lo_, c_ = high.copy(), low.copy(), close.copy()
        hi_[t + 1 : t + 4], lo_[t + 1 : t + 4], c_[t + 1 : t + 4] = h, lo, c
        return float(triple_barrier_labels(hi_, lo_, c_, label)[t])

    mid = close[t]
    assert label_at_t([mid, up * 1.001, mid], [mid, mid, down * 0.99], [mid] * 3) == 1.0
    assert label_at_t([mid, mid, up * 1.01], [down * 0.999, mid, mid], [mid] * 3) == 0.0
    # Both barriers inside one candle: the cautious reading, not up.
    assert label_at_t([up * 1.01, mid, mid], [down * 0.99, mid, mid], [mid] * 3) == 0.0
    # Neither touched: the forward return decides (slightly up, inside both barriers).
    assert label_at_t([mid] * 3, [mid] * 3, [mid, mid, mid * 1.0001]) == 1.0
    labels = triple_barrier_labels(high, low, close, label)
    assert np.isnan(labels[:10]).all(), "no sigma yet"
    assert np.isnan(labels[-3:]).all(), "no full horizon ahead"


@pytest.mark.parametrize("kind", ["forward_return", "triple_barrier"])
def test_no_lookahead_features_windows_and_labels(
    frames: dict[str, pd.DataFrame], kind: str
) -> None:
    spec = default_feature_spec()
    label = LabelSpec(kind=kind, horizon=4, dead_zone=0.001)
    original = frames["BTC/USDT"]
    # A candle labelled not up: the jump below must turn its label (decided after t) up.
    t = 2000 + int(np.flatnonzero(label_rows(original, label)[2000:] == 0)[0])
    cut_time = int(original["open_time"].iloc[t])
    perturbed = original.copy()
    # Every candle after t jumps 50% up.
    for column in ("open", "high", "low", "close"):
        perturbed.loc[t + 1 :, column] = original.loc[t + 1 :, column].to_numpy() * 1.5

    a = build_dataset({"BTC/USDT": original}, spec, label, window=8)
    b = build_dataset({"BTC/USDT": perturbed}, spec, label, window=8)
    known_a = a.open_time <= cut_time
    known_b = b.open_time <= cut_time
    np.testing.assert_array_equal(a.open_time[known_a], b.open_time[known_b])
    np.testing.assert_array_equal(a.features[known_a], b.features[known_b])
    assert a.windows is not None and b.windows is not None
    np.testing.assert_array_equal(a.windows[known_a], b.windows[known_b])
    decided_a = a.label_time <= cut_time
    decided_b = b.label_time <= cut_time
    np.testing.assert_array_equal(a.labels[decided_a], b.labels[decided_b])
    # The test has teeth: rows whose label window passes t see the perturbation.
    undecided = known_a & ~decided_a
    assert undecided.sum() > 0
    rows_a = a.subset(undecided)
    rows_b = b.subset(known_b & ~decided_b)
    assert (rows_a.labels[-1], rows_b.labels[-1]) == (0, 1), "row t sees the jump"
    later_a, later_b = a.features[~known_a], b.features[~known_b]
    assert later_a.shape != later_b.shape or not np.array_equal(later_a, later_b)
    # Labels are never features: another label leaves the feature matrix unchanged.
    other = build_dataset({"BTC/USDT": original}, spec, LabelSpec(horizon=12), window=8)
    common = np.intersect1d(a.open_time, other.open_time)
    np.testing.assert_array_equal(
        a.features[np.isin(a.open_time, common)], other.features[np.isin(other.open_time, common)]
    )


def test_windows_are_the_rows_before_each_row(frames: dict[str, pd.DataFrame]) -> None:
    spec = default_feature_spec()
    frame = frames["ETH/USDT"]
    dataset = build_dataset({"ETH/USDT": frame}, spec, LabelSpec(), window=5)
    features = compute_features(frame, spec)
    times = frame["open_time"].to_numpy()
    assert dataset.windows is not None and dataset.windows.shape[1:] == (5, len(spec.names))
    for i in (0, len(dataset) // 2, len(dataset) - 1):
        end = int(np.searchsorted(times, dataset.open_time[i]))
        np.testing.assert_array_equal(dataset.windows[i], features[end - 4 : end + 1].astype("f4"))
    assert int(dataset.open_time[0]) == int(times[spec.warmup - 1 + 4]), "first full window"
    np.testing.assert_array_equal(dataset.inputs(3), dataset.windows[:, -3:, :])
    with pytest.raises(InvalidInputError, match="window >= 9"):
        dataset.inputs(9)


def test_scores_are_the_textbook_figures() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    probabilities = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.7, 0.4])
    metrics = score(probabilities, labels)
    # TP=3 (0.9, 0.8, 0.7), FN=1 (0.3), FP=1 (0.6), TN=3.
    assert metrics.accuracy == pytest.approx(6 / 8)
    assert metrics.precision == pytest.approx(3 / 4)
    assert metrics.recall == pytest.approx(3 / 4)
    assert metrics.f1 == pytest.approx(3 / 4)
    assert metrics.mcc == pytest.approx((3 * 3 - 1 * 1) / 16)
    assert metrics.roc_auc == pytest.approx(14 / 16), "pairs ranked right: 4 + 4 + 4 + 2"
    assert metrics.log_loss == pytest.approx(
        -np.mean(labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities))
    )
    one_class = score(np.array([0.2, 0.4]), np.array([0, 0]))
    assert one_class.roc_auc is None and one_class.precision == 0.0
    with pytest.raises(InvalidInputError, match="one probability per label"):
        score(np.array([0.5]), np.array([1, 0]))


def test_training_reads_candles_from_the_database(db_url: str) -> None:
    from kubetrade.market.frame import to_candles
    from kubetrade.onnx_export.sources import database_frames
    from kubetrade.store import Store

    frame = generate(["BTC/USDT", "ETH/USDT"], "1h", 50, seed=4)
    with Store.connect(db_url) as store:
        store.migrate()
        store.write_candles("research/feed", to_candles(frame, "1h"))
    read = database_frames(db_url, "research/feed", "1h")
    expected = frames_by_symbol(frame)
    assert sorted(read) == sorted(expected)
    for symbol, part in expected.items():
        pd.testing.assert_frame_equal(read[symbol], part, check_like=True)
    only_eth = database_frames(db_url, "research/feed", "1h", ["ETH/USDT"])
    assert list(only_eth) == ["ETH/USDT"]
    with pytest.raises(InvalidInputError, match=r"no 4h candles of bot 'research/feed'"):
        database_frames(db_url, "research/feed", "4h")
