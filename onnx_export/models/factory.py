"""Model configs and models by kind; the neural kinds import PyTorch only when asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetrade.errors import InvalidInputError, KubetradeError
from kubetrade.onnx_export.models.base import MODEL_FILE, Model, ModelConfig

KINDS = ("xgboost", "lstm", "transformer", "ensemble")


class TorchMissingError(KubetradeError):
    """A neural model was asked for without PyTorch installed."""


def neural_module() -> Any:
    """``models.neural``, or TorchMissingError saying how to install PyTorch."""
    try:
        from kubetrade.onnx_export.models import neural
    except ImportError as error:
        raise TorchMissingError(
            f"LSTM and Transformer models need PyTorch ({error}); install it with "
            "`pip install -e '.[train]'`"
        ) from None
    return neural


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """A model config from its ``to_dict`` form (the ``kind`` key decides which)."""
    kind = data.get("kind")
    if kind == "xgboost":
        from kubetrade.onnx_export.models.boosted import XGBoostParams

        return XGBoostParams.from_dict(data)
    if kind in ("lstm", "transformer"):
        config: ModelConfig = neural_module().NeuralParams.from_dict(data)
        return config
    if kind == "ensemble":
        from kubetrade.onnx_export.models.ensemble import EnsembleParams

        return EnsembleParams.from_dict(data)
    raise InvalidInputError(f"unknown model kind {kind!r}; use one of {KINDS}")


def build_model(config: ModelConfig) -> Model:
    """An unfitted model for ``config``."""
    if config.kind == "xgboost":
        from kubetrade.onnx_export.models.boosted import XGBoostModel, XGBoostParams

        assert isinstance(config, XGBoostParams)
        return XGBoostModel(config)
    if config.kind in ("lstm", "transformer"):
        model: Model = neural_module().NeuralModel(config)
        return model
    if config.kind == "ensemble":
        from kubetrade.onnx_export.models.ensemble import EnsembleModel, EnsembleParams

        assert isinstance(config, EnsembleParams)
        return EnsembleModel(config)
    raise InvalidInputError(f"unknown model kind {config.kind!r}; use one of {KINDS}")


def load_model(directory: Path) -> Model:
    """A fitted model saved with ``Model.save``."""
    file = directory / MODEL_FILE
    if not file.is_file():
        raise InvalidInputError(
            f"{directory} holds no {MODEL_FILE}: it is not a model saved by `kubetrade train "
            "--checkpoint DIR`"
        )
    data = json.loads(file.read_text())
    kind = data.get("kind")
    if kind == "xgboost":
        from kubetrade.onnx_export.models.boosted import XGBoostModel

        return XGBoostModel.load(directory, data)
    if kind in ("lstm", "transformer"):
        model: Model = neural_module().NeuralModel.load(directory, data)
        return model
    if kind == "ensemble":
        from kubetrade.onnx_export.models.ensemble import EnsembleModel

        return EnsembleModel.load(directory, data)
    raise InvalidInputError(f"{file}: unknown model kind {kind!r}; use one of {KINDS}")
