"""ONNX artifacts: the parity check that refuses a conversion which changes predictions, and
the metadata written into the file."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx

from kubetrade.errors import InvalidInputError, ModelError
from kubetrade.modelstore.metadata import MetadataError, ModelMetadata
from kubetrade.onnx_export.models.base import INPUT_NAME, PROBABILITIES_OUTPUT, Model
from kubetrade.settings import quiet_environment

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5
# The whole metadata document lives under one key; the others are copies for people reading
# the file with generic ONNX tools.
METADATA_KEY = "kubetrade.metadata"


class ParityError(ModelError):
    """ONNX Runtime's probabilities differ from the native model's beyond the tolerance."""


def onnx_up_probabilities(onnx_model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    """ONNX Runtime's probability of up per input row or window, on float32-cast inputs."""
    quiet_environment()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (proba,) = session.run(
        [PROBABILITIES_OUTPUT], {INPUT_NAME: np.ascontiguousarray(inputs, dtype=np.float32)}
    )
    return np.asarray(proba, dtype=np.float64)[:, 1]


def check_parity(
    model: Model,
    onnx_model: onnx.ModelProto,
    inputs: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Max abs difference of native and ONNX Runtime probabilities on held-out ``inputs``.

    Both run on the same float32-cast inputs. Raises ParityError when the difference exceeds
    ``tolerance``: such a model must not be served.
    """
    if inputs.shape[0] == 0:
        raise InvalidInputError("parity check needs at least one held-out row")
    native = model.predict_proba(inputs)
    exported = onnx_up_probabilities(onnx_model, inputs)
    diff = np.abs(native - exported)
    worst = float(diff.max())
    if not worst <= tolerance:
        row = int(np.nanargmax(diff)) if np.isfinite(diff).any() else 0
        raise ParityError(
            f"ONNX export of the {model.kind} model refused: ONNX Runtime and the native model "
            f"differ by up to {worst:.3g} (row {row}: native {native[row]:.6f}, ONNX "
            f"{exported[row]:.6f}); the limit is {tolerance:g}. Check the versions of "
            f"{', '.join(model.packages)} and onnx."
        )
    log.info(
        "parity checked",
        extra={"kind": model.kind, "rows": int(inputs.shape[0]), "max_abs_diff": worst},
    )
    return worst


def write_onnx_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Store ``metadata`` in the ONNX model's ``metadata_props`` (replacing earlier values)."""
    props = {
        METADATA_KEY: metadata.to_json(),
        "model_type": metadata.model_type,
        "window": str(metadata.window),
        "feature_names": json.dumps(metadata.feature_names),
        "feature_hash": metadata.feature_hash,
        "warmup": str(metadata.warmup),
        "label": json.dumps(metadata.label.model_dump(mode="json")),
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
            "unknown; export it with `kubetrade train` or `kubetrade export`"
        )
    return ModelMetadata.from_json(props[METADATA_KEY], source)
