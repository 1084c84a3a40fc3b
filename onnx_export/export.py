"""XGBoost to ONNX, with a parity check that refuses a conversion that changes predictions."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import xgboost as xgb
from onnxmltools import convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType

from kubetrade.onnx_export.metadata import MetadataError, ModelMetadata
from kubetrade.onnx_export.train import up_probabilities
from kubetrade.settings import quiet_environment

log = logging.getLogger(__name__)

INPUT_NAME = "features"
PROBABILITIES_OUTPUT = "probabilities"
PARITY_TOLERANCE = 1e-5
# The whole metadata document lives under one key; the others are copies for people reading
# the file with generic ONNX tools.
METADATA_KEY = "kubetrade.metadata"
# Pinned so a newer onnx package cannot raise the opset past what deployed runtimes know; the
# tree ensemble itself lands in ai.onnx.ml opset 1, which every onnxruntime runs.
TARGET_OPSET = 15


class ParityError(RuntimeError):
    """ONNX Runtime's probabilities differ from XGBoost's beyond the tolerance."""


def to_onnx(model: xgb.XGBClassifier, n_features: int) -> onnx.ModelProto:
    """Convert a fitted classifier to ONNX: input ``features`` float32 [batch, n_features]."""
    onnx_model: onnx.ModelProto = convert_xgboost(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        target_opset=TARGET_OPSET,
    )
    outputs = [o.name for o in onnx_model.graph.output]
    if PROBABILITIES_OUTPUT not in outputs:
        raise RuntimeError(
            f"the converted model has outputs {outputs}, not {PROBABILITIES_OUTPUT!r}; "
            "the onnxmltools version changed its naming"
        )
    return onnx_model


def onnx_up_probabilities(onnx_model: onnx.ModelProto, rows: np.ndarray) -> np.ndarray:
    """ONNX Runtime's probability of up per row, on float32-cast inputs."""
    quiet_environment()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (proba,) = session.run(
        [PROBABILITIES_OUTPUT], {INPUT_NAME: np.ascontiguousarray(rows, dtype=np.float32)}
    )
    return np.asarray(proba, dtype=np.float64)[:, 1]


def check_parity(
    model: xgb.XGBClassifier,
    onnx_model: onnx.ModelProto,
    rows: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Max abs difference of XGBoost and ONNX Runtime probabilities on ``rows``.

    Both run on the same float32-cast rows (ONNX tree ensembles compare in float32). Raises
    ParityError when the difference exceeds ``tolerance``: such a model must not be served.
    """
    if rows.shape[0] == 0:
        raise ValueError("parity check needs at least one row")
    native = up_probabilities(model, rows)
    exported = onnx_up_probabilities(onnx_model, rows)
    diff = np.abs(native - exported)
    worst = float(diff.max())
    if not worst <= tolerance:
        row = int(np.nanargmax(diff)) if np.isfinite(diff).any() else 0
        raise ParityError(
            f"ONNX export refused: ONNX Runtime and XGBoost probabilities differ by up to "
            f"{worst:.3g} (row {row}: XGBoost {native[row]:.6f}, ONNX {exported[row]:.6f}); "
            f"the limit is {tolerance:g}. Check the xgboost/onnxmltools versions."
        )
    log.info("parity checked", extra={"rows": int(rows.shape[0]), "max_abs_diff": worst})
    return worst


def write_onnx_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Store ``metadata`` in the ONNX model's ``metadata_props`` (replacing earlier values)."""
    props = {
        METADATA_KEY: metadata.to_json(),
        "feature_names": json.dumps(metadata.feature_names),
        "feature_hash": metadata.feature_hash,
        "warmup": str(metadata.warmup),
        "label_horizon": str(metadata.label.horizon),
        "label_threshold": str(metadata.label.threshold),
    }
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def read_onnx_metadata(model: onnx.ModelProto, source: str) -> ModelMetadata:
    """The metadata written by ``write_onnx_metadata``; ``source`` names the file in errors."""
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise MetadataError(
            f"{source}: the ONNX model has no {METADATA_KEY!r} metadata, so its features are "
            "unknown; export it with `kubetrade train`"
        )
    return ModelMetadata.from_json(props[METADATA_KEY], source)
