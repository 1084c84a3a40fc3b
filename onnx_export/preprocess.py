"""Feature scaling fitted on the training window only, stored with the model.

Neural models standardize their inputs; the fitted means and scales become constants of the
model's first layer, so the ONNX graph applies them itself (the server feeds raw features) and
the metadata records them for audit. Tree models need no scaling: their splits do not care.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kubetrade.errors import InvalidInputError

# Standardized values beyond this many deviations are clipped: a crash candle must not push a
# neural network into a region it never saw in training.
CLIP = 10.0
# A feature that never varies in the training window gets scale 1 instead of a division by 0.
_MIN_STD = 1e-12


@dataclass(frozen=True, slots=True)
class Standardizer:
    """``clip((x - mean) / std, -CLIP, CLIP)`` per feature."""

    mean: np.ndarray
    std: np.ndarray
    clip: float = CLIP

    @classmethod
    def fit(cls, rows: np.ndarray) -> Standardizer:
        """Means and deviations of the training rows ``[n, features]`` (float64)."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] < 2:
            raise InvalidInputError(
                f"fitting a scaler needs at least two rows of features; got shape {rows.shape}"
            )
        std = rows.std(axis=0)
        return cls(mean=rows.mean(axis=0), std=np.where(std > _MIN_STD, std, 1.0))

    def apply(self, inputs: np.ndarray) -> np.ndarray:
        """Scaled float32 copy of rows or windows (features on the last axis)."""
        scaled = (np.asarray(inputs, dtype=np.float32) - self.mean.astype(np.float32)) / (
            self.std.astype(np.float32)
        )
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the model's metadata."""
        return {
            "kind": "standardize",
            "applied_in": "onnx graph",
            "fitted_on": "training window",
            "clip": self.clip,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Standardizer:
        """Inverse of ``to_dict``."""
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            std=np.asarray(data["std"], dtype=np.float64),
            clip=float(data.get("clip", CLIP)),
        )
