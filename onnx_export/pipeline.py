"""Candles in, registered model out: dataset, training, scoring, export, parity, registry."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd

from kubetrade.features import FeatureSpec, default_feature_spec
from kubetrade.onnx_export.dataset import (
    ClassBalance,
    LabelSpec,
    build_dataset,
    chronological_split,
)
from kubetrade.onnx_export.export import (
    INPUT_NAME,
    PROBABILITIES_OUTPUT,
    check_parity,
    to_onnx,
    write_onnx_metadata,
)
from kubetrade.onnx_export.metadata import (
    LabelInfo,
    ModelMetadata,
    TrainingWindow,
    package_versions,
)
from kubetrade.onnx_export.registry import ModelRecord, register
from kubetrade.onnx_export.train import (
    Metrics,
    TrainParams,
    score,
    train_classifier,
    up_probabilities,
)

log = logging.getLogger(__name__)

# Held-out rows fed to the parity check: enough to cover every tree path that matters, few
# enough to run in milliseconds.
PARITY_ROWS = 2000

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """What to train and where to register it."""

    name: str
    timeframe: str
    source: str
    version: str | None = None
    label: LabelSpec = field(default_factory=LabelSpec)
    params: TrainParams = field(default_factory=TrainParams)
    test_fraction: float = 0.2
    feature_spec: FeatureSpec | None = None


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


def _ignore(_: str) -> None:
    return None


def train_and_register(
    frames: Mapping[str, pd.DataFrame], config: TrainConfig, progress: Progress = _ignore
) -> TrainResult:
    """Train the baseline on ``frames`` (symbol -> candles) and register it as ``config.name``.

    Raises ParityError (nothing registered) when the ONNX model does not reproduce XGBoost.
    """
    started = time.perf_counter()
    spec = config.feature_spec or default_feature_spec()
    progress("building features and labels")
    dataset = build_dataset(frames, spec, config.label)
    train, test = chronological_split(dataset, config.test_fraction)

    progress(f"training XGBoost on {len(train)} rows")
    fit_started = time.perf_counter()
    model = train_classifier(train, config.params)
    train_seconds = time.perf_counter() - fit_started
    metrics = score(up_probabilities(model, test.features), test.labels)

    progress("exporting to ONNX and checking parity")
    onnx_model = to_onnx(model, len(spec.names))
    parity = check_parity(model, onnx_model, test.features[-PARITY_ROWS:])

    first = min(int(f["open_time"].iloc[0]) for f in frames.values())
    last = max(int(f["open_time"].iloc[-1]) for f in frames.values())
    metadata = ModelMetadata(
        feature_spec=spec.to_dict(),
        feature_names=list(spec.names),
        feature_hash=spec.hash,
        warmup=spec.warmup,
        label=LabelInfo(**config.label.to_dict()),
        training=TrainingWindow(
            symbols=list(frames),
            timeframe=config.timeframe,
            first_open_time=first,
            last_open_time=last,
            test_start_time=int(test.open_time[0]),
            train_rows=len(train),
            test_rows=len(test),
            class_balance={
                "train_up_rate": train.balance.up_rate,
                "test_up_rate": test.balance.up_rate,
            },
            source=config.source,
        ),
        params=config.params.to_dict(),
        metrics=metrics.to_dict(),
        parity_max_abs_diff=parity,
        input_name=INPUT_NAME,
        output_name=PROBABILITIES_OUTPUT,
        versions=package_versions(),
        created_at=int(time.time() * 1000),
    )
    write_onnx_metadata(onnx_model, metadata)

    progress("registering")
    record = register(config.name, onnx_model.SerializeToString(), metadata, config.version)
    result = TrainResult(
        record=record,
        metrics=metrics,
        train_balance=train.balance,
        test_balance=test.balance,
        parity_max_abs_diff=parity,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
    )
    log.info(
        "model trained",
        extra={
            "model": record.name,
            "version": record.version,
            "train_seconds": round(train_seconds, 3),
            "parity_max_abs_diff": parity,
            **metrics.to_dict(),
        },
    )
    return result
