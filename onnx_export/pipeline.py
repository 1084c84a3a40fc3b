"""Candles in, registered model out: dataset, training, scoring, export, parity, registry.

Training ends in a ``Checkpoint``: the fitted native model with what its export needs (feature
spec, label, training window, held-out scores and the held-out inputs of the parity check).
``kubetrade train`` exports it at once; ``kubetrade train --checkpoint DIR --no-register`` saves
it and ``kubetrade export DIR`` exports it later, through the same ``export_checkpoint``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd

from kubetrade.errors import InvalidInputError
from kubetrade.features import FeatureSpec, default_feature_spec
from kubetrade.modelstore.metadata import (
    LabelInfo,
    ModelMetadata,
    TrainingWindow,
    model_type,
    package_versions,
)
from kubetrade.modelstore.registry import ModelRecord, register
from kubetrade.onnx_export.dataset import (
    ClassBalance,
    Dataset,
    LabelSpec,
    build_dataset,
    chronological_split,
)
from kubetrade.onnx_export.export import check_parity, write_onnx_metadata
from kubetrade.onnx_export.metrics import Metrics, score
from kubetrade.onnx_export.models.base import (
    INPUT_NAME,
    PROBABILITIES_OUTPUT,
    Model,
    ModelConfig,
)
from kubetrade.onnx_export.models.boosted import XGBoostParams
from kubetrade.onnx_export.models.factory import build_model, load_model

log = logging.getLogger(__name__)

# Held-out rows fed to the parity check: enough to cover every tree path and activation range
# that matters, few enough to run in milliseconds.
PARITY_ROWS = 2000
CHECKPOINT_FILE = "checkpoint.json"
PARITY_FILE = "parity_inputs.npy"
MODEL_DIR = "model"

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """What to train and where to register it."""

    name: str
    timeframe: str
    source: str
    version: str | None = None
    label: LabelSpec = field(default_factory=LabelSpec)
    model: ModelConfig = field(default_factory=XGBoostParams)
    test_fraction: float = 0.2
    feature_spec: FeatureSpec | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A fitted model and everything its export needs."""

    model: Model
    feature_spec: FeatureSpec
    label: LabelSpec
    training: TrainingWindow
    metrics: dict[str, Any]
    parity_inputs: np.ndarray

    def save(self, directory: Path) -> None:
        """The native model, ``checkpoint.json`` and the parity inputs, under ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(directory / MODEL_DIR)
        np.save(directory / PARITY_FILE, self.parity_inputs)
        document = {
            "feature_spec": self.feature_spec.to_dict(),
            "label": self.label.to_dict(),
            "training": self.training.model_dump(mode="json"),
            "metrics": self.metrics,
        }
        (directory / CHECKPOINT_FILE).write_text(json.dumps(document, indent=2))

    @classmethod
    def load(cls, directory: Path) -> Checkpoint:
        """Read back what ``save`` wrote."""
        file = directory / CHECKPOINT_FILE
        if not file.is_file():
            raise InvalidInputError(
                f"{directory} holds no {CHECKPOINT_FILE}: write one with "
                "`kubetrade train --checkpoint DIR`"
            )
        document = json.loads(file.read_text())
        return cls(
            model=load_model(directory / MODEL_DIR),
            feature_spec=FeatureSpec.from_dict(document["feature_spec"]),
            label=LabelSpec.from_dict(document["label"]),
            training=TrainingWindow.model_validate(document["training"]),
            metrics=document["metrics"],
            parity_inputs=np.load(directory / PARITY_FILE),
        )


@dataclass(frozen=True, slots=True)
class FitResult:
    """A checkpoint and the figures of its training run."""

    checkpoint: Checkpoint
    metrics: Metrics
    train_balance: ClassBalance
    test_balance: ClassBalance
    train_seconds: float


@dataclass(frozen=True, slots=True)
class TrainResult:
    """The registered model and the figures of its training run."""

    record: ModelRecord
    metrics: Metrics
    train_balance: ClassBalance
    test_balance: ClassBalance
    parity_max_abs_diff: float
    train_seconds: float
    total_seconds: float

    @classmethod
    def of(cls, fitted: FitResult, record: ModelRecord, started: float) -> TrainResult:
        """The result of a fit registered as ``record``; ``started`` is a perf_counter time."""
        return cls(
            record=record,
            metrics=fitted.metrics,
            train_balance=fitted.train_balance,
            test_balance=fitted.test_balance,
            parity_max_abs_diff=record.metadata.parity_max_abs_diff,
            train_seconds=fitted.train_seconds,
            total_seconds=time.perf_counter() - started,
        )


def _ignore(_: str) -> None:
    return None


def fit_and_score(model: Model, train: Dataset, test: Dataset) -> tuple[Metrics, np.ndarray, float]:
    """Fit ``model`` on ``train``; its scores, probabilities on ``test`` and fit seconds."""
    started = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - started
    probabilities = model.predict_proba(test.inputs(model.window))
    return score(probabilities, test.labels), probabilities, seconds


def fit_checkpoint(
    frames: Mapping[str, pd.DataFrame], config: TrainConfig, progress: Progress = _ignore
) -> FitResult:
    """Build the dataset of ``frames`` (symbol -> candles), fit, score on the held-out tail."""
    spec = config.feature_spec or default_feature_spec()
    progress("building features and labels")
    dataset = build_dataset(frames, spec, config.label, config.model.window)
    train, test = chronological_split(dataset, config.test_fraction)

    progress(f"training {config.model.kind} on {len(train)} rows")
    model = build_model(config.model)
    metrics, _, train_seconds = fit_and_score(model, train, test)
    training = TrainingWindow(
        symbols=list(frames),
        timeframe=config.timeframe,
        first_open_time=min(int(f["open_time"].iloc[0]) for f in frames.values()),
        last_open_time=max(int(f["open_time"].iloc[-1]) for f in frames.values()),
        train_start_time=int(train.open_time[0]),
        train_end_time=int(train.open_time[-1]),
        test_start_time=int(test.open_time[0]),
        train_rows=len(train),
        test_rows=len(test),
        class_balance={
            "train_up_rate": train.balance.up_rate,
            "test_up_rate": test.balance.up_rate,
        },
        source=config.source,
    )
    checkpoint = Checkpoint(
        model=model,
        feature_spec=spec,
        label=config.label,
        training=training,
        metrics=metrics.to_dict(),
        parity_inputs=np.ascontiguousarray(
            test.inputs(model.window)[-PARITY_ROWS:], dtype=np.float32
        ),
    )
    return FitResult(checkpoint, metrics, train.balance, test.balance, train_seconds)


def export_checkpoint(checkpoint: Checkpoint) -> tuple[onnx.ModelProto, ModelMetadata]:
    """The checkpoint's model as ONNX with its metadata; ParityError when they disagree."""
    model = checkpoint.model
    spec = checkpoint.feature_spec
    onnx_model = model.to_onnx(len(spec.names))
    parity = check_parity(model, onnx_model, checkpoint.parity_inputs)
    description = model.describe()
    metadata = ModelMetadata(
        model_type=model_type(model.kind),
        window=model.window,
        feature_spec=spec.to_dict(),
        feature_names=list(spec.names),
        feature_hash=spec.hash,
        warmup=spec.warmup,
        label=LabelInfo(**checkpoint.label.to_dict()),
        training=checkpoint.training,
        params=description.pop("params"),
        model=description,
        metrics=checkpoint.metrics,
        parity_max_abs_diff=parity,
        parity_rows=int(checkpoint.parity_inputs.shape[0]),
        input_name=INPUT_NAME,
        output_name=PROBABILITIES_OUTPUT,
        versions=package_versions(model.packages),
        created_at=int(time.time() * 1000),
    )
    write_onnx_metadata(onnx_model, metadata)
    return onnx_model, metadata


def register_checkpoint(checkpoint: Checkpoint, name: str, version: str | None) -> ModelRecord:
    """Export ``checkpoint`` (parity checked) and register it; nothing is stored on failure."""
    onnx_model, metadata = export_checkpoint(checkpoint)
    return register(name, onnx_model.SerializeToString(), metadata, version)


def train_and_register(
    frames: Mapping[str, pd.DataFrame], config: TrainConfig, progress: Progress = _ignore
) -> TrainResult:
    """Train ``config.model`` on ``frames`` (symbol -> candles) and register it.

    Raises ParityError (nothing registered) when the ONNX model does not reproduce the native
    one.
    """
    started = time.perf_counter()
    fitted = fit_checkpoint(frames, config, progress)
    progress("exporting to ONNX, checking parity, registering")
    record = register_checkpoint(fitted.checkpoint, config.name, config.version)
    result = TrainResult.of(fitted, record, started)
    log.info(
        "model trained",
        extra={
            "model": record.name,
            "version": record.version,
            "kind": config.model.kind,
            "train_seconds": round(fitted.train_seconds, 3),
            "parity_max_abs_diff": result.parity_max_abs_diff,
            **fitted.metrics.to_dict(),
        },
    )
    return result
