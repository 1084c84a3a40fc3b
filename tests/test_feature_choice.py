"""Any model's feature set: a chosen list or file becomes a FeatureSpec both paths compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kubetrade.features import (
    FeatureMismatchError,
    FeatureSpec,
    compute_features,
    default_feature_spec,
    feature_spec,
)
from kubetrade.features.choice import (
    FeatureChoiceError,
    feature_choice,
    load_feature_choice,
    parse_feature_list,
)
from kubetrade.market.frame import to_candles
from kubetrade.market.synthetic import generate
from kubetrade.signals import SignalPipeline


def test_a_list_names_groups_with_parameters_and_defaults_fill_the_rest() -> None:
    spec = parse_feature_list("sma(window=30), rsi, bollinger(width=2.5),log_return(windows=[1,4])")

    assert spec == feature_spec(
        {
            "sma_ratio": {"windows": [30]},
            "rsi": {"windows": [7, 14]},
            "bollinger": {"window": 20, "width": 2.5},
            "log_return": {"windows": [1, 4]},
        }
    )
    # Registry order, whatever order the list gives.
    assert spec.names[:2] == ("log_return_1", "log_return_4")
    assert spec.hash != default_feature_spec().hash


def test_a_file_holds_a_list_or_a_mapping(tmp_path: Path) -> None:
    listed = tmp_path / "features.yaml"
    listed.write_text("- sma(window=30)\n- rsi(windows=[14])\n")
    mapped = tmp_path / "features.json"
    mapped.write_text('{"sma_ratio": {"windows": [30]}, "rsi": {"windows": [14]}}')

    assert load_feature_choice(listed) == load_feature_choice(mapped)
    assert feature_choice(str(listed)) == feature_choice("sma(window=30),rsi(window=14)")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("smaa", "unknown feature group 'smaa'; known: log_return(windows=[1, 2, 4, 8, 24])"),
        ("sma(window=0)", "'windows' must be a list of distinct integers >= 1, got [0]"),
        ("sma(windw=3)", "unknown parameters ['windw']"),
        ("rsi,rsi", "group 'rsi' is named twice"),
        ("sma(window)", "parameter 'window' is not name=value"),
        ("", "name at least one feature group"),
    ],
)
def test_a_bad_choice_says_what_and_where(text: str, message: str) -> None:
    with pytest.raises(FeatureChoiceError) as caught:
        parse_feature_list(text)
    assert message in str(caught.value)


class Fixed:
    """A predictor stand-in whose probability is the first feature's sign."""

    model_name, model_version, window = "fixed", "1", 1
    training_period: tuple[int, int] | None = None

    def __init__(self, spec: FeatureSpec) -> None:
        self.feature_spec = spec

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return (rows[:, 0] > 0).astype(float) * 0.5 + 0.25


def test_the_pipeline_serves_a_model_on_any_computable_features() -> None:
    spec = parse_feature_list("sma(window=30),atr")
    frame = generate(["BTC/USDT"], "1h", 300, seed=4)
    pipeline = SignalPipeline(Fixed(spec))

    events = pipeline.process(to_candles(frame, "1h"))

    expected = compute_features(frame, spec)[:, 0]
    probs = [np.nan if e.prediction is None else e.prediction.prob_up for e in events]  # type: ignore[union-attr]
    np.testing.assert_array_equal(
        np.isnan(probs), np.isnan(expected)
    )  # predictions from the same candle as the vectorized rows
    warm = ~np.isnan(expected)
    np.testing.assert_array_equal(np.array(probs)[warm], (expected[warm] > 0) * 0.5 + 0.25)


def test_a_model_whose_features_this_code_cannot_compute_is_refused_naming_both_lists() -> None:
    good = parse_feature_list("sma(window=30),rsi(window=14)")
    swapped = FeatureSpec(tuple(reversed(good.names)), good.params, good.version, good.warmup)

    with pytest.raises(FeatureMismatchError) as caught:
        SignalPipeline(Fixed(swapped))

    assert "['rsi_14', 'sma_ratio_30']" in str(caught.value)  # what the model expects
    assert "['sma_ratio_30', 'rsi_14']" in str(caught.value)  # what this code computes
