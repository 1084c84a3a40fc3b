"""What every model kind offers the training, export, validation and serving code."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from kubetrade.errors import InvalidInputError, ModelError
from kubetrade.onnx_export.dataset import Dataset

# The ONNX interface every exported model shares, so one predictor serves them all: input
# ``features`` float32 [batch, features] (window 1) or [batch, window, features]; output
# ``probabilities`` float32 [batch, 2] (not up, up).
INPUT_NAME = "features"
PROBABILITIES_OUTPUT = "probabilities"
# ai.onnx opset of the PyTorch exports and the ensemble graphs; every onnxruntime >= 1.14 runs it.
NEURAL_OPSET = 17
MODEL_FILE = "model.json"


class ModelConfig(Protocol):
    """Hyperparameters of one model kind (frozen dataclasses)."""

    @property
    def kind(self) -> str:
        """``xgboost``, ``lstm``, ``transformer`` or ``ensemble``."""
        ...

    @property
    def window(self) -> int:
        """Feature rows per prediction (1 for tabular models)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for metadata, reports and checkpoints."""
        ...


class Model(Protocol):
    """A trainable classifier of 'price goes up' with a native and an ONNX form."""

    @property
    def config(self) -> ModelConfig:
        """The hyperparameters it was built with."""
        ...

    @property
    def kind(self) -> str:
        """The config's kind."""
        ...

    @property
    def window(self) -> int:
        """Feature rows per prediction."""
        ...

    @property
    def packages(self) -> tuple[str, ...]:
        """Libraries whose versions shape this model's predictions."""
        ...

    def fit(self, train: Dataset) -> None:
        """Fit on ``train`` (anything fitted from data, scaling included, comes from it only)."""
        ...

    def predict_proba(self, inputs: np.ndarray) -> np.ndarray:
        """Native probability of up (float64 [n]) for ``Dataset.inputs(self.window)``."""
        ...

    def to_onnx(self, n_features: int) -> onnx.ModelProto:
        """The fitted model as ONNX with the shared interface (INPUT_NAME, PROBABILITIES_OUTPUT)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Parameters and fitted preprocessing, for the metadata."""
        ...

    def save(self, directory: Path) -> None:
        """Write the native model to ``directory`` (``factory.load_model`` reads it back)."""
        ...


class NotFittedError(ModelError):
    """A model was used before ``fit``."""


def check_inputs(inputs: np.ndarray, window: int, where: str) -> np.ndarray:
    """``inputs`` as float32 with the shape a model of ``window`` takes, else ValueError."""
    batch = np.asarray(inputs, dtype=np.float32)
    expected = 2 if window == 1 else 3
    if batch.ndim != expected or (window > 1 and batch.shape[1] != window):
        shape = "[n, features]" if window == 1 else f"[n, {window}, features]"
        raise InvalidInputError(f"{where} takes inputs shaped {shape}; got {batch.shape}")
    return batch


def up_column(probabilities: np.ndarray) -> np.ndarray:
    """Column 1 (up) of a [n, 2] probability array, as float64."""
    return np.asarray(probabilities, dtype=np.float64)[:, 1]
