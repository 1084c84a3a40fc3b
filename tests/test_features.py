"""Features: both paths agree, nothing looks ahead, warm-up is exact and settled, the spec hash
is stable and a mismatch is a clear error.

The agreement, warm-up and warm-suffix checks run on two series: generated candles with a
stretch of flat zero-volume gap fills (always there, so the checks never silently skip) and the
real BTC/USD file (from the shared folder; see tests/shared_data.py).

Agreement tolerance everywhere: ``|a - b| <= 1e-9 * max(1, |a|)`` (absolute for values below 1,
relative above), ``a`` being the vectorized value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from kubetrade.domain import Candle
from kubetrade.features import (
    DEFAULT_GROUPS,
    REGISTRY,
    FeatureEngine,
    FeatureMismatchError,
    FeatureSpec,
    check_feature_spec,
    compute_features,
    default_feature_spec,
    feature_spec,
)
from kubetrade.market import clean_candles, generate, load_candles, to_candles

# Changes only with the feature definitions; then bump FEATURE_VERSION and update this.
DEFAULT_HASH = "75b617b9f8eef3c3cd2cb003016c63256c8ff111d48eb59c719ce4409491e752"
TOLERANCE = 1e-9

Matrix = npt.NDArray[np.float64]


def _close(a: Matrix, b: Matrix) -> npt.NDArray[np.bool_]:
    """Elementwise agreement, NaN agreeing with NaN."""
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        return both_nan | (np.abs(a - b) <= TOLERANCE * np.maximum(1.0, np.abs(a)))


def _stream(candles: list[Candle], spec: FeatureSpec) -> Matrix:
    """Engine rows stacked, NaN rows while warming up."""
    engine = FeatureEngine(spec)
    blank = np.full(len(spec.names), np.nan)
    rows = []
    for candle in candles:
        row = engine.update(candle)
        rows.append(blank if row is None else row)
    return np.vstack(rows)


# The default spec, and every registered group with its defaults (the smart-money and
# multi-timeframe groups are chosen by name, outside the default): every agreement, warm-up and
# no-lookahead check runs on both.
EVERY_GROUP = feature_spec({g.key: dict(g.defaults) for g in REGISTRY})


@pytest.fixture(scope="module", params=["default", "every group"])
def spec(request: pytest.FixtureRequest) -> FeatureSpec:
    return default_feature_spec() if request.param == "default" else EVERY_GROUP


@pytest.fixture(scope="module")
def default_spec() -> FeatureSpec:
    return default_feature_spec()


@dataclass(frozen=True)
class Series:
    """A candle series, its timeframe, its vectorized features and the rows worth probing."""

    frame: pd.DataFrame
    timeframe: str
    features: Matrix
    probes: tuple[int, ...]


def _generated_with_flat_stretch() -> tuple[pd.DataFrame, int]:
    """Generated hourly candles where 40 missing hours were filled by the cleaner with flat
    zero-volume candles (longer than every window, so the flat-window branches run), and the
    index of the last filled candle."""
    raw = generate(["BTC/USDT"], "1h", 2_500, seed=8)
    frame, report = clean_candles(raw.drop(index=range(1_500, 1_540)), "1h")
    assert report.gaps_filled == 40
    return frame, 1_539


@pytest.fixture(scope="module", params=["generated", "btc"])
def series(request: pytest.FixtureRequest, spec: FeatureSpec) -> Series:
    if request.param == "generated":
        frame, flat_end = _generated_with_flat_stretch()
        probes: tuple[int, ...] = (spec.warmup, 1_000, flat_end, flat_end + 30, len(frame) - 1)
    else:
        frame = load_candles(request.getfixturevalue("btc_csv"))
        # 16_905: inside the vendor-copied hours.
        probes = (spec.warmup, 3_000, 16_905, len(frame) - 1)
    return Series(frame, "1h", compute_features(frame, spec), probes)


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    return generate(["ETH/USDT"], "15m", 1500, seed=21)


def _first_difference(a: Matrix, b: Matrix, spec: FeatureSpec) -> str:
    bad = np.argwhere(~_close(a, b))
    if bad.size == 0:
        return "none"
    row, col = bad[0]
    return f"row {row} feature {spec.names[col]}: {a[row, col]} vs {b[row, col]}"


def test_at_least_40_distinct_features(default_spec: FeatureSpec) -> None:
    spec = default_spec
    assert len(spec.names) >= 40
    assert len(set(spec.names)) == len(spec.names)
    assert list(spec.params) == [g.key for g in DEFAULT_GROUPS]
    assert len(set(EVERY_GROUP.names)) == len(EVERY_GROUP.names)
    assert EVERY_GROUP.names[: len(spec.names)] == spec.names  # new groups come after


def test_paths_agree_on_every_feature(series: Series, spec: FeatureSpec) -> None:
    streamed = _stream(to_candles(series.frame, series.timeframe), spec)
    agree = _close(series.features, streamed)
    assert agree.all(), _first_difference(series.features, streamed, spec)


def test_paths_agree_bit_for_bit(series: Series, spec: FeatureSpec) -> None:
    """Beyond the tolerance: the same bits, what lets a backtest compute its features with the
    vectorized path and still fill exactly as the incremental path in ``kubetrade run``."""
    streamed = _stream(to_candles(series.frame, series.timeframe), spec)
    warm = spec.warmup - 1
    differ = [
        name
        for j, name in enumerate(spec.names)
        if not np.array_equal(series.features[warm:, j], streamed[warm:, j])
    ]
    assert not differ, f"the paths differ in the last bits of {differ}"


def test_warmup_is_exact_and_every_later_value_finite(series: Series, spec: FeatureSpec) -> None:
    features = series.features
    defined = ~np.isnan(features).any(axis=1)
    assert int(np.flatnonzero(defined)[0]) == spec.warmup - 1
    assert np.isnan(features[: spec.warmup - 1]).all()
    assert np.isfinite(features[spec.warmup - 1 :]).all()
    assert spec.warmup == max(
        g.from_params(spec.params[g.key]).warmup for g in REGISTRY if g.key in spec.params
    )


def test_warm_rows_depend_only_on_the_last_warmup_candles(
    series: Series, spec: FeatureSpec
) -> None:
    """What lets a restarted worker replay just ``warmup`` candles: the vectorized path on a
    suffix of exactly ``warmup`` candles, and a fresh engine fed the same suffix, both give the
    row of the full history."""
    frame, features = series.frame, series.features
    candles = to_candles(frame, series.timeframe)
    w = spec.warmup
    for t in series.probes:
        suffix = compute_features(frame.iloc[t - w + 1 : t + 1], spec)[-1]
        assert _close(features[t], suffix).all(), t
        engine = FeatureEngine(spec)
        assert engine.warm_up(candles[t - w + 1 : t]) is None
        row = engine.update(candles[t])
        assert row is not None and _close(features[t], row).all(), t


def _perturbed(frame: pd.DataFrame, after: int, seed: int) -> pd.DataFrame:
    """Candles after index ``after`` scaled by random factors (still valid OHLC)."""
    rng = np.random.default_rng(seed)
    changed = frame.copy()
    tail = len(frame) - after - 1
    factor = np.exp(rng.normal(0, 0.05, tail))
    for column in ("open", "high", "low", "close"):
        changed.loc[after + 1 :, column] = frame.loc[after + 1 :, column].to_numpy() * factor
    changed.loc[after + 1 :, "volume"] = rng.uniform(0, 1e4, tail)
    return changed


def test_no_lookahead_in_the_vectorized_path(synthetic: pd.DataFrame, spec: FeatureSpec) -> None:
    base = compute_features(synthetic, spec)
    for t in (spec.warmup - 1, 700, 1100, 1498):
        changed = compute_features(_perturbed(synthetic, t, seed=t), spec)
        np.testing.assert_array_equal(base[: t + 1], changed[: t + 1])
        assert not np.array_equal(base[t + 1 :], changed[t + 1 :])


def test_no_lookahead_in_the_incremental_path(synthetic: pd.DataFrame, spec: FeatureSpec) -> None:
    window = synthetic.iloc[:900].reset_index(drop=True)
    base = _stream(to_candles(window, "15m"), spec)
    for t in (spec.warmup - 1, 600, 898):
        changed = _stream(to_candles(_perturbed(window, t, seed=t), "15m"), spec)
        np.testing.assert_array_equal(base[: t + 1], changed[: t + 1])


def test_features_are_scale_free(synthetic: pd.DataFrame, spec: FeatureSpec) -> None:
    """A model trained at one price level and volume unit works at another."""
    scaled = synthetic.copy()
    scaled[["open", "high", "low", "close"]] *= 1000.0
    scaled["volume"] *= 0.37
    a, b = compute_features(synthetic, spec), compute_features(scaled, spec)
    assert _close(a, b).all(), _first_difference(a, b, spec)


def test_engine_fills_stream_gaps_like_the_cleaner(
    synthetic: pd.DataFrame, spec: FeatureSpec
) -> None:
    from kubetrade.market import clean_candles

    window = synthetic.iloc[:700]
    holed = window.drop(index=[500, 501, 650])
    cleaned, report = clean_candles(holed, "15m")
    assert report.gaps_filled == 3
    engine = FeatureEngine(spec)
    last = engine.warm_up(to_candles(holed, "15m"))
    assert engine.gaps_filled == 3 and engine.candles_seen == 700
    expected = compute_features(cleaned, spec)[-1]
    assert last is not None and _close(expected, last).all()


def test_engine_refuses_out_of_order_and_foreign_candles(
    synthetic: pd.DataFrame, spec: FeatureSpec
) -> None:
    candles = to_candles(synthetic.iloc[:10], "15m")
    engine = FeatureEngine(spec)
    engine.warm_up(candles[:5])
    with pytest.raises(ValueError, match="duplicate or out of order"):
        engine.update(candles[4])
    other = Candle("BTC/USDT", "15m", candles[5].open_time, 1.0, 1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="one engine per symbol"):
        engine.update(other)
    broken = Candle("ETH/USDT", "15m", candles[5].open_time, 1.0, 0.5, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="invalid candle"):
        engine.update(broken)
    assert engine.candles_seen == 5
    engine.update(candles[5])  # the refused candles changed nothing
    assert engine.candles_seen == 6 and not engine.is_warm


def test_compute_features_refuses_unusable_frames(synthetic: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="gap-free"):
        compute_features(synthetic.drop(index=[10]))
    two = generate(["BTC/USDT", "ETH/USDT"], "1h", 5, seed=1)
    with pytest.raises(ValueError, match="per symbol"):
        compute_features(two)
    with pytest.raises(ValueError, match="lack"):
        compute_features(synthetic.drop(columns="volume"))


def test_spec_hash_is_stable_across_runs_and_processes(default_spec: FeatureSpec) -> None:
    assert default_spec.hash == DEFAULT_HASH
    code = "from kubetrade.features import default_feature_spec as d; print(d().hash)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert other.stdout.strip() == DEFAULT_HASH


def test_spec_travels_as_json_and_refuses_a_tampered_hash(default_spec: FeatureSpec) -> None:
    spec = default_spec
    data = json.loads(json.dumps(spec.to_dict()))
    restored = FeatureSpec.from_dict(data)
    assert restored == spec and restored.hash == spec.hash and restored.warmup == spec.warmup
    data["params"]["rsi"]["windows"] = [7, 21]
    with pytest.raises(ValueError, match="does not match its content"):
        FeatureSpec.from_dict(data)


def test_custom_spec_computes_only_its_groups(synthetic: pd.DataFrame) -> None:
    small = feature_spec({"rsi": {"windows": [14]}, "log_return": {"windows": [1, 3]}})
    assert small.names == ("log_return_1", "log_return_3", "rsi_14")
    values = compute_features(synthetic, small)
    assert values.shape == (len(synthetic), 3)
    assert np.isfinite(values[small.warmup - 1 :]).all()
    default = default_feature_spec()
    full = compute_features(synthetic, default)
    rsi = default.names.index("rsi_14")
    assert _close(values[default.warmup :, 2], full[default.warmup :, rsi]).all()
    with pytest.raises(ValueError, match=r"'rsi': 'windows' must be a list of distinct integers"):
        feature_spec({"rsi": {"windows": [1]}})
    with pytest.raises(ValueError, match=r"unknown feature groups \['adx'\]"):
        feature_spec({"adx": {}})


def test_mismatch_error_names_both_lists_and_the_first_difference(
    default_spec: FeatureSpec,
) -> None:
    spec = default_spec
    params = {k: dict(v) for k, v in spec.params.items()}
    params["rsi"] = {"windows": (7, 21)}
    model = feature_spec(params)
    with pytest.raises(FeatureMismatchError) as caught:
        check_feature_spec(model, spec)
    message = str(caught.value)
    index = spec.names.index("rsi_14")
    assert f"model expects {len(model.names)} features [" in message
    assert f"this code computes {len(spec.names)} [" in message
    assert f"first difference at index {index}: 'rsi_21' vs 'rsi_14'" in message
    assert "Retrain the model or pin kubetrade" in message

    shorter = feature_spec({k: v for k, v in spec.params.items() if k != "calendar"})
    with pytest.raises(FeatureMismatchError, match=r"index 55: \(none\) vs 'hour_sin'"):
        check_feature_spec(shorter, spec)

    params["bollinger"] = {"window": 20, "width": 2.5}
    params["rsi"] = dict(spec.params["rsi"])
    wider = feature_spec(params)
    with pytest.raises(FeatureMismatchError, match=r"bollinger: .*2\.5.* vs .*2\.0"):
        check_feature_spec(wider, spec)

    foreign = FeatureSpec(spec.names, {"adx": {"window": 14}}, spec.version, spec.warmup)
    with pytest.raises(FeatureMismatchError, match="cannot compute"):
        FeatureEngine(foreign)
    check_feature_spec(FeatureSpec.from_dict(spec.to_dict()), spec)  # equal specs pass
