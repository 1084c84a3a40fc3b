"""What a model artifact says about itself: features, label, training window, scores, versions.

The same document is written into the ONNX file's ``metadata_props`` (see ``export``) and into
the registry's ``metadata.json``, so a model file that travels alone still names its features.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubetrade.domain import timeframe_ms
from kubetrade.errors import ModelError
from kubetrade.features import FeatureSpec

# Recorded for every model; each model kind adds its own libraries (``Model.packages``).
BASE_PACKAGES = ("kubetrade", "numpy", "onnx", "onnxruntime")

ModelType = Literal["xgboost", "lstm", "transformer", "ensemble"]
MODEL_TYPES: tuple[ModelType, ...] = ("xgboost", "lstm", "transformer", "ensemble")


class MetadataError(ModelError):
    """A model's metadata is missing or does not describe a kubetrade model."""


class LabelInfo(BaseModel):
    """The label the model was trained to predict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["forward_return", "triple_barrier"] = "forward_return"
    horizon: int = Field(ge=1, description="Candles ahead the label looks.")
    threshold: float = Field(description="Forward return above which a row is labelled up.")
    dead_zone: float = Field(default=0.0, ge=0)
    take_profit: float | None = Field(default=None, description="Upper barrier, in sigmas.")
    stop_loss: float | None = Field(default=None, description="Lower barrier, in sigmas.")
    vol_window: int | None = Field(default=None, description="Candles of the barrier sigma.")


class TrainingWindow(BaseModel):
    """Which candles the model learned from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbols: list[str]
    timeframe: str
    first_open_time: int = Field(description="First candle of the data, ms UTC.")
    last_open_time: int = Field(description="Last candle of the data, ms UTC.")
    train_start_time: int | None = Field(
        default=None, description="First training row's candle, ms UTC."
    )
    train_end_time: int | None = Field(
        default=None, description="Last training row's candle, ms UTC."
    )
    test_start_time: int = Field(description="First candle of the held-out tail, ms UTC.")
    train_rows: int
    test_rows: int
    class_balance: dict[str, float]
    source: str = Field(description="Data file or generator the candles came from.")


class ModelMetadata(BaseModel):
    """Everything needed to serve, audit and reproduce a registered model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: ModelType = "xgboost"
    window: int = Field(default=1, ge=1, description="Feature rows per prediction.")
    feature_spec: dict[str, Any] = Field(description="FeatureSpec.to_dict(): names, params, hash.")
    feature_names: list[str]
    feature_hash: str
    warmup: int = Field(ge=0, description="Candles the features need before the first row.")
    label: LabelInfo
    training: TrainingWindow
    params: dict[str, Any]
    model: dict[str, Any] = Field(
        default_factory=dict,
        description="The model's own description: preprocessing, members, combiner.",
    )
    metrics: dict[str, float | int | None]
    parity_max_abs_diff: float = Field(description="Max |native - ONNX Runtime| probability.")
    parity_rows: int | None = Field(default=None, description="Held-out rows it was measured on.")
    input_name: str
    output_name: str
    versions: dict[str, str]
    created_at: int = Field(description="Export time, ms UTC.")

    @property
    def input_shape(self) -> list[int | str]:
        """The ONNX input shape: ``[batch, features]`` or ``[batch, window, features]``."""
        width = len(self.feature_names)
        return ["batch", width] if self.window == 1 else ["batch", self.window, width]

    @property
    def first_prediction_lead(self) -> int:
        """Candles per symbol before the first one the model predicts on: the features'
        warm-up (the first row comes on the ``warmup``-th candle) and the rest of a window."""
        return max(self.warmup - 1, 0) + self.window - 1

    def training_period(self) -> tuple[int, int]:
        """The candles the model learned from, as ``[start, end)`` open times in ms UTC.

        It runs from the first training row's candle to the first candle of the held-out
        tail. Training rows whose label reached into the tail were purged, so no candle from
        ``end`` on was ever a training row or a training label; ``end`` is pushed past the last
        training row's label horizon as well (an embargo of the horizon), for metadata whose
        tail started earlier.
        """
        training = self.training
        start = training.train_start_time or training.first_open_time
        end = training.test_start_time
        if training.train_end_time is not None:
            step = timeframe_ms(training.timeframe)
            end = max(end, training.train_end_time + (self.label.horizon + 1) * step)
        return start, end

    def spec(self) -> FeatureSpec:
        """The FeatureSpec the model was trained with."""
        return FeatureSpec.from_dict(self.feature_spec)

    def to_json(self) -> str:
        """Compact JSON form."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, source: str) -> ModelMetadata:
        """Parse metadata JSON; ``source`` names where it came from in the error."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as error:
            raise MetadataError(
                f"{source}: model metadata is not valid ({error.error_count()} errors): {error}; "
                "re-export the model with `kubetrade train`"
            ) from None


def model_type(kind: str) -> ModelType:
    """``kind`` as a metadata model type, or ValueError naming the known ones."""
    for known in MODEL_TYPES:
        if kind == known:
            return known
    raise MetadataError(f"unknown model type {kind!r}; use one of {MODEL_TYPES}")


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of the packages that shape a model's predictions."""
    found = {}
    for name in (*BASE_PACKAGES, *extra):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
