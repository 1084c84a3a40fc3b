"""Gradient-boosted trees: a small, seeded XGBoost classifier on one feature row.

Trees need no scaling (a split does not care about the unit), so the model takes the raw
features; ONNX conversion goes through onnxmltools into an ``ai.onnx.ml`` tree ensemble.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import xgboost as xgb

from kubetrade.errors import ModelError
from kubetrade.onnx_export.dataset import Dataset
from kubetrade.onnx_export.models.base import (
    INPUT_NAME,
    MODEL_FILE,
    PROBABILITIES_OUTPUT,
    NotFittedError,
    check_inputs,
    up_column,
)

# Pinned so a newer onnx package cannot raise the opset past what deployed runtimes know; the
# tree ensemble itself lands in ai.onnx.ml opset 1, which every onnxruntime runs.
TARGET_OPSET = 15
NATIVE_FILE = "xgboost.json"


@dataclass(frozen=True, slots=True)
class XGBoostParams:
    """XGBoost settings; small by default so training takes seconds.

    ``n_jobs`` defaults to 1: on a shared two-core machine XGBoost's threads spin against each
    other and two threads train many times slower than one.
    """

    n_estimators: int = 200
    max_depth: int = 4
    learning_rate: float = 0.05
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 5.0
    max_bin: int = 128
    seed: int = 7
    n_jobs: int = 1

    @property
    def kind(self) -> str:
        """Always ``xgboost``."""
        return "xgboost"

    @property
    def window(self) -> int:
        """One feature row per prediction."""
        return 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the kind."""
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> XGBoostParams:
        """Inverse of ``to_dict`` (unknown keys are refused by the constructor)."""
        return cls(**{k: v for k, v in data.items() if k != "kind"})

    def with_seed(self, seed: int) -> XGBoostParams:
        """The same settings with another seed."""
        return replace(self, seed=seed)


def train_classifier(train: Dataset, params: XGBoostParams) -> xgb.XGBClassifier:
    """Fit a classifier on ``train`` (probability of up as class 1)."""
    if len(np.unique(train.labels)) < 2:
        raise ModelError(
            f"the training set has only one class ({train.balance.to_dict()}); "
            "use more candles or a different label threshold"
        )
    model = xgb.XGBClassifier(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        learning_rate=params.learning_rate,
        subsample=params.subsample,
        colsample_bytree=params.colsample_bytree,
        min_child_weight=params.min_child_weight,
        max_bin=params.max_bin,
        random_state=params.seed,
        n_jobs=params.n_jobs,
        tree_method="hist",
        objective="binary:logistic",
        eval_metric="logloss",
    )
    # float32 is what ONNX Runtime will see; training on it keeps the split thresholds exact.
    model.fit(train.features.astype(np.float32), train.labels)
    return model


def classifier_to_onnx(model: xgb.XGBClassifier, n_features: int) -> onnx.ModelProto:
    """Convert a fitted classifier: input ``features`` float32 [batch, n_features]."""
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    onnx_model: onnx.ModelProto = convert_xgboost(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        target_opset=TARGET_OPSET,
    )
    outputs = [o.name for o in onnx_model.graph.output]
    if PROBABILITIES_OUTPUT not in outputs:
        raise ModelError(
            f"the converted model has outputs {outputs}, not {PROBABILITIES_OUTPUT!r}; "
            "the onnxmltools version changed its naming"
        )
    return onnx_model


class XGBoostModel:
    """The tabular model."""

    packages = ("xgboost", "onnxmltools")

    def __init__(self, config: XGBoostParams | None = None) -> None:
        self.config = config or XGBoostParams()
        self.classifier: xgb.XGBClassifier | None = None

    @property
    def kind(self) -> str:
        """``xgboost``."""
        return self.config.kind

    @property
    def window(self) -> int:
        """1: one feature row per prediction."""
        return 1

    def _fitted(self) -> xgb.XGBClassifier:
        if self.classifier is None:
            raise NotFittedError("the XGBoost model is not fitted yet: call fit first")
        return self.classifier

    def fit(self, train: Dataset) -> None:
        """Fit a fresh classifier on ``train``."""
        self.classifier = train_classifier(train, self.config)

    def predict_proba(self, inputs: np.ndarray) -> np.ndarray:
        """Native XGBoost probability of up per row, on float32-cast inputs."""
        rows = check_inputs(inputs, 1, "the XGBoost model")
        return up_column(self._fitted().predict_proba(rows))

    def to_onnx(self, n_features: int) -> onnx.ModelProto:
        """The tree ensemble as ONNX (ai.onnx.ml TreeEnsembleClassifier)."""
        return classifier_to_onnx(self._fitted(), n_features)

    def describe(self) -> dict[str, Any]:
        """Parameters; no preprocessing (trees take raw features)."""
        return {
            "params": self.config.to_dict(),
            "preprocessing": {"kind": "none", "reason": "tree splits are scale-invariant"},
        }

    def save(self, directory: Path) -> None:
        """``model.json`` (kind and params) and the booster as XGBoost JSON."""
        directory.mkdir(parents=True, exist_ok=True)
        self._fitted().save_model(str(directory / NATIVE_FILE))
        (directory / MODEL_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))

    @classmethod
    def load(cls, directory: Path, data: dict[str, Any]) -> XGBoostModel:
        """Read back what ``save`` wrote; ``data`` is the parsed ``model.json``."""
        model = cls(XGBoostParams.from_dict(data))
        classifier = xgb.XGBClassifier()
        classifier.load_model(str(directory / NATIVE_FILE))
        model.classifier = classifier
        return model
