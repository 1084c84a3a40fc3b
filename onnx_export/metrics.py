"""Classification scores of predicted probabilities against 0/1 labels."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)

from kubetrade.errors import InvalidInputError

# Probabilities at or above this count as a prediction of up.
DECISION_THRESHOLD = 0.5


@dataclass(frozen=True, slots=True)
class Metrics:
    """Scores of one set of predictions (a held-out tail or one walk-forward fold)."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float | None
    mcc: float
    log_loss: float
    rows: int
    up_rate: float
    predicted_up_rate: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for metadata and reports."""
        return asdict(self)


def score(probabilities: np.ndarray, labels: np.ndarray) -> Metrics:
    """Every classification figure of ``probabilities`` (of up) against ``labels``.

    ROC AUC is None on a one-class set, where it is undefined; precision, recall and F1 are 0
    when nothing is predicted (or labelled) up, as scikit-learn's ``zero_division=0`` says.
    """
    labels = np.asarray(labels).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape != probabilities.shape or labels.ndim != 1 or labels.shape[0] == 0:
        raise InvalidInputError(
            f"scoring needs one probability per label; got {probabilities.shape} probabilities "
            f"for {labels.shape} labels"
        )
    predicted = (probabilities >= DECISION_THRESHOLD).astype(np.int64)
    both_classes = len(np.unique(labels)) == 2
    mcc = float(matthews_corrcoef(labels, predicted))
    return Metrics(
        accuracy=float(accuracy_score(labels, predicted)),
        precision=float(precision_score(labels, predicted, zero_division=0)),
        recall=float(recall_score(labels, predicted, zero_division=0)),
        f1=float(f1_score(labels, predicted, zero_division=0)),
        roc_auc=float(roc_auc_score(labels, probabilities)) if both_classes else None,
        mcc=0.0 if math.isnan(mcc) else mcc,
        log_loss=float(log_loss(labels, probabilities, labels=[0, 1])),
        rows=int(labels.shape[0]),
        up_rate=float(labels.mean()),
        predicted_up_rate=float(predicted.mean()),
    )


def mean_metrics(folds: list[Metrics]) -> dict[str, float | None]:
    """Per-figure mean over folds (None for a figure no fold defines)."""
    if not folds:
        return {}
    out: dict[str, float | None] = {}
    for name, first in folds[0].to_dict().items():
        if not isinstance(first, int | float | None):
            continue
        values = [v for v in (getattr(f, name) for f in folds) if v is not None]
        out[name] = float(np.mean(values)) if values else None
    return out
