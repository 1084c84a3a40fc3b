"""A registered ONNX model ready to predict: one ONNX Runtime session, reused for every call."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from kubetrade.errors import ModelError
from kubetrade.features import FeatureSpec, check_computable, check_feature_spec
from kubetrade.modelstore.metadata import ModelMetadata
from kubetrade.modelstore.registry import LATEST, resolve
from kubetrade.settings import quiet_environment

log = logging.getLogger(__name__)


class OnnxPredictor:
    """Probability of up for feature rows (or windows of them), from one registered model.

    Any model kind loads the same way: every export takes ``features`` and returns
    ``probabilities`` [batch, 2]. A tabular model (``window == 1``) takes rows
    ``[n, features]``; a sequence model or an ensemble holding one takes windows
    ``[n, window, features]``, oldest row first. Rows must be in the model's feature order
    (``feature_names``); ``check`` compares the caller's FeatureSpec with the model's before any
    prediction is trusted.
    """

    def __init__(
        self, model_bytes: bytes, metadata: ModelMetadata, model_name: str, model_version: str
    ) -> None:
        quiet_environment()
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread: single rows and micro-batches are far too small to gain from more, and
        # extra threads would spin against the other processes on the node.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        if inputs != [metadata.input_name] or metadata.output_name not in outputs:
            raise ModelError(
                f"model {model_name}:{model_version} has inputs {inputs} and outputs {outputs}; "
                f"its metadata names input {metadata.input_name!r} and output "
                f"{metadata.output_name!r}: the file and metadata do not belong together"
            )
        self._input = metadata.input_name
        self._outputs = [metadata.output_name]
        self.metadata = metadata
        self.model_name = model_name
        self.model_version = model_version
        self.feature_spec = metadata.spec()
        self.training_period: tuple[int, int] | None = metadata.training_period()
        self.feature_names: tuple[str, ...] = tuple(metadata.feature_names)
        self.feature_hash = metadata.feature_hash
        self.warmup = metadata.warmup
        self.window = metadata.window
        self.n_features = len(self.feature_names)
        self.model_type = metadata.model_type

    @classmethod
    def load(cls, name: str, version: str = LATEST) -> OnnxPredictor:
        """Load ``name`` at ``version`` from the model registry."""
        record = resolve(name, version)
        predictor = cls(record.onnx_path.read_bytes(), record.metadata, record.name, record.version)
        log.info(
            "model loaded",
            extra={
                "model": record.name,
                "version": record.version,
                "type": predictor.model_type,
                "window": predictor.window,
                "features": predictor.n_features,
                "feature_hash": predictor.feature_hash,
            },
        )
        return predictor

    def check_computable(self) -> None:
        """Raise FeatureMismatchError unless this code computes the model's features."""
        check_computable(self.feature_spec)

    def check(self, spec: FeatureSpec) -> None:
        """Raise FeatureMismatchError unless ``spec`` computes the features the model expects."""
        check_feature_spec(self.feature_spec, spec)

    def input_shape(self) -> str:
        """The accepted input shape, for messages."""
        if self.window == 1:
            return f"[n, {self.n_features}]"
        return f"[n, {self.window}, {self.n_features}]"

    def predict_proba(self, rows: npt.ArrayLike) -> np.ndarray:
        """Probability of up per row or window (float64, shape [n]); inputs are cast to
        float32."""
        batch = np.asarray(rows, dtype=np.float32)
        expected = (self.n_features,) if self.window == 1 else (self.window, self.n_features)
        if batch.ndim != len(expected) + 1 or batch.shape[1:] != expected:
            unit = "rows" if self.window == 1 else f"windows of {self.window} rows"
            raise ModelError(
                f"model {self.model_name}:{self.model_version} takes {unit} of "
                f"{self.n_features} features {list(self.feature_names)} (shape "
                f"{self.input_shape()}); got shape {batch.shape}"
            )
        (proba,) = self._session.run(self._outputs, {self._input: batch})
        return np.asarray(proba[:, 1], dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        """Name, version and metadata as JSON-ready values (for ``/model`` and status)."""
        return {
            "name": self.model_name,
            "version": self.model_version,
            **self.metadata.model_dump(mode="json"),
        }
