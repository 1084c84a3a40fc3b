"""What a model artifact says about itself: features, label, training window, scores, versions.

The same document is written into the ONNX file's ``metadata_props`` (see ``export``) and into
the registry's ``metadata.json``, so a model file that travels alone still names its features.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubetrade.features import FeatureSpec

VERSIONED_PACKAGES = ("kubetrade", "xgboost", "onnx", "onnxruntime", "onnxmltools")


class MetadataError(ValueError):
    """A model's metadata is missing or does not describe a kubetrade model."""


class LabelInfo(BaseModel):
    """The label the model was trained to predict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    horizon: int = Field(ge=1, description="Candles ahead the forward return looks.")
    threshold: float = Field(description="Forward return above which a row is labelled up.")
    dead_zone: float = Field(default=0.0, ge=0)


class TrainingWindow(BaseModel):
    """Which candles the model learned from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbols: list[str]
    timeframe: str
    first_open_time: int = Field(description="First candle of the data, ms UTC.")
    last_open_time: int = Field(description="Last candle of the data, ms UTC.")
    test_start_time: int = Field(description="First candle of the held-out tail, ms UTC.")
    train_rows: int
    test_rows: int
    class_balance: dict[str, float]
    source: str = Field(description="Data file or generator the candles came from.")


class ModelMetadata(BaseModel):
    """Everything needed to serve, audit and reproduce a registered model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: str = "xgboost"
    feature_spec: dict[str, Any] = Field(description="FeatureSpec.to_dict(): names, params, hash.")
    feature_names: list[str]
    feature_hash: str
    warmup: int = Field(ge=0, description="Candles the features need before the first row.")
    label: LabelInfo
    training: TrainingWindow
    params: dict[str, Any]
    metrics: dict[str, float | int | None]
    parity_max_abs_diff: float = Field(description="Max |XGBoost - ONNX Runtime| probability.")
    input_name: str
    output_name: str
    versions: dict[str, str]
    created_at: int = Field(description="Export time, ms UTC.")

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


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a model's predictions."""
    found = {}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
