"""Hyperparameter search with Optuna, scored on validation folds only.

The walk-forward folds are split in time: the earlier ones validate the search (mean log loss of
their test windows), the later ones are never seen by it and report the chosen settings, so the
reported figures are out of sample for the search too. Optuna is optional
(``pip install -e '.[train]'``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from kubetrade.errors import InvalidInputError
from kubetrade.onnx_export.models.base import ModelConfig
from kubetrade.onnx_export.walkforward import Fold, WalkForwardConfig, walk_forward, with_model

log = logging.getLogger(__name__)

TrialProgress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The best settings and how the search went."""

    best: ModelConfig
    best_log_loss: float
    trials: list[dict[str, Any]]
    validation_folds: list[int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "best": self.best.to_dict(),
            "best_validation_log_loss": self.best_log_loss,
            "validation_folds": self.validation_folds,
            "trials": self.trials,
        }


def suggest(trial: Any, base: ModelConfig) -> ModelConfig:
    """Settings of ``base``'s kind drawn by ``trial`` (an optuna Trial)."""
    if base.kind == "xgboost":
        return replace(
            base,  # type: ignore[type-var]
            n_estimators=trial.suggest_int("n_estimators", 50, 400, step=50),
            max_depth=trial.suggest_int("max_depth", 2, 6),
            learning_rate=trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            subsample=trial.suggest_float("subsample", 0.5, 1.0),
            colsample_bytree=trial.suggest_float("colsample_bytree", 0.5, 1.0),
            min_child_weight=trial.suggest_float("min_child_weight", 1.0, 20.0, log=True),
        )
    if base.kind in ("lstm", "transformer"):
        return replace(
            base,  # type: ignore[type-var]
            hidden=trial.suggest_categorical("hidden", [16, 32, 64]),
            dropout=trial.suggest_float("dropout", 0.0, 0.3),
            learning_rate=trial.suggest_float("learning_rate", 3e-4, 5e-3, log=True),
            epochs=trial.suggest_int("epochs", 2, 10),
        )
    raise InvalidInputError(
        f"hyperparameter search covers xgboost, lstm and transformer models, not {base.kind}; "
        "search the members one by one, then ensemble them"
    )


def search(
    frames: Mapping[str, pd.DataFrame],
    config: WalkForwardConfig,
    validation_folds: Sequence[Fold],
    trials: int,
    seed: int = 7,
    progress: TrialProgress | None = None,
) -> SearchResult:
    """Run ``trials`` Optuna trials (TPE, seeded) minimizing mean log loss on
    ``validation_folds``."""
    try:
        import optuna
    except ImportError as error:
        raise ImportError(
            f"hyperparameter search needs Optuna ({error}); install it with "
            "`pip install -e '.[train]'`"
        ) from None
    if not validation_folds:
        raise InvalidInputError("the search needs at least one validation fold")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    records: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        candidate = suggest(trial, config.model)
        result = walk_forward(frames, with_model(config, candidate), folds=validation_folds)
        loss = float(np.mean([f.metrics.log_loss for f in result.folds]))
        records.append({"number": trial.number, "params": trial.params, "log_loss": loss})
        if progress is not None:
            progress(len(records), trials)
        return loss

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    best = suggest(optuna.trial.FixedTrial(study.best_params), config.model)
    log.info(
        "search done",
        extra={"trials": trials, "best_log_loss": study.best_value, **study.best_params},
    )
    return SearchResult(
        best=best,
        best_log_loss=float(study.best_value),
        trials=records,
        validation_folds=[f.index for f in validation_folds],
    )
