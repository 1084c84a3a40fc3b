"""The baseline model: a small, seeded XGBoost classifier and its held-out scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import xgboost as xgb
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from kubetrade.onnx_export.dataset import Dataset


@dataclass(frozen=True, slots=True)
class TrainParams:
    """XGBoost settings of the baseline; small on purpose so training takes seconds.

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the model's metadata."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Metrics:
    """Scores on the held-out tail."""

    accuracy: float
    roc_auc: float | None
    log_loss: float
    rows: int
    up_rate: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the model's metadata."""
        return asdict(self)


def train_classifier(train: Dataset, params: TrainParams) -> xgb.XGBClassifier:
    """Fit the baseline classifier on ``train`` (probability of up as class 1)."""
    if len(np.unique(train.labels)) < 2:
        raise ValueError(
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


def up_probabilities(model: xgb.XGBClassifier, rows: np.ndarray) -> np.ndarray:
    """Native XGBoost probability of up per row, on float32-cast inputs."""
    proba = model.predict_proba(np.asarray(rows, dtype=np.float32))
    return np.asarray(proba[:, 1], dtype=np.float64)


def score(probabilities: np.ndarray, labels: np.ndarray) -> Metrics:
    """Accuracy (at 0.5), ROC AUC and log loss of probabilities against 0/1 labels."""
    labels = np.asarray(labels)
    both_classes = len(np.unique(labels)) == 2
    return Metrics(
        accuracy=float(accuracy_score(labels, probabilities >= 0.5)),
        # AUC is undefined on a one-class test set; None says so instead of a made-up number.
        roc_auc=float(roc_auc_score(labels, probabilities)) if both_classes else None,
        log_loss=float(log_loss(labels, probabilities, labels=[0, 1])),
        rows=int(labels.shape[0]),
        up_rate=float(labels.mean()) if labels.shape[0] else 0.0,
    )
