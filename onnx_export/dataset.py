"""Training sets: the shared feature code on candles, labelled by the forward return.

Row ``t`` holds the features of the candles up to and including candle ``t`` (closed) and the
label "did the close ``horizon`` candles later end above ``close[t] * (1 + threshold)``". The
features are computed by ``kubetrade.features.compute_features``, the same code the inference
service runs, so training and serving cannot drift apart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kubetrade.features import FeatureSpec, compute_features

log = logging.getLogger(__name__)

FRAME_COLUMNS = ("open_time", "open", "high", "low", "close", "volume")


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """How a row is labelled: up (1) when the forward return beats ``threshold``.

    Rows whose forward return lies within ``dead_zone`` of the threshold are dropped: they
    are coin flips that would only teach the model noise.
    """

    horizon: int = 4
    threshold: float = 0.0
    dead_zone: float = 0.0

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"label horizon must be at least 1 candle, got {self.horizon}")
        if self.dead_zone < 0:
            raise ValueError(f"label dead zone must not be negative, got {self.dead_zone}")

    def to_dict(self) -> dict[str, Any]:
        """The label definition as plain JSON-ready values."""
        return {"horizon": self.horizon, "threshold": self.threshold, "dead_zone": self.dead_zone}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelSpec:
        """Inverse of ``to_dict``."""
        return cls(
            horizon=int(data["horizon"]),
            threshold=float(data["threshold"]),
            dead_zone=float(data.get("dead_zone", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class ClassBalance:
    """How many rows of each class a dataset holds."""

    up: int
    not_up: int

    @property
    def up_rate(self) -> float:
        """Share of rows labelled up (0 for an empty set)."""
        total = self.up + self.not_up
        return self.up / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for metadata and reports."""
        return {"up": self.up, "not_up": self.not_up, "up_rate": round(self.up_rate, 6)}


@dataclass(frozen=True, slots=True)
class Dataset:
    """Feature rows with their labels, in chronological order.

    ``label_time`` is the open time of the candle whose close decides the label: a row may be
    used for training only when that candle lies before the test period starts.
    """

    features: np.ndarray
    labels: np.ndarray
    open_time: np.ndarray
    label_time: np.ndarray
    symbols: np.ndarray
    feature_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def balance(self) -> ClassBalance:
        """Rows per class."""
        up = int(self.labels.sum())
        return ClassBalance(up=up, not_up=len(self) - up)

    def subset(self, mask: np.ndarray) -> Dataset:
        """The rows selected by a boolean mask, order kept."""
        return Dataset(
            features=self.features[mask],
            labels=self.labels[mask],
            open_time=self.open_time[mask],
            label_time=self.label_time[mask],
            symbols=self.symbols[mask],
            feature_names=self.feature_names,
        )


def forward_returns(close: np.ndarray, horizon: int) -> np.ndarray:
    """``close[t + horizon] / close[t] - 1``; NaN for the last ``horizon`` rows (no future)."""
    close = np.asarray(close, dtype=np.float64)
    out = np.full(close.shape, np.nan)
    if close.shape[0] > horizon:
        out[:-horizon] = close[horizon:] / close[:-horizon] - 1.0
    return out


def label_returns(returns: np.ndarray, label: LabelSpec) -> np.ndarray:
    """1.0 (up), 0.0 (not up) or NaN (no future, or inside the dead zone) per row."""
    labels = np.where(returns > label.threshold, 1.0, 0.0)
    unknown = ~np.isfinite(returns)
    if label.dead_zone > 0:
        unknown |= np.abs(returns - label.threshold) < label.dead_zone
    labels[unknown] = np.nan
    return labels


def check_frame(frame: pd.DataFrame, symbol: str) -> None:
    """Refuse a candle frame the feature code cannot use, naming the symbol and the problem."""
    missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"candles of {symbol} lack columns {missing}; "
            f"expected {list(FRAME_COLUMNS)} (open_time in ms UTC)"
        )
    times = frame["open_time"].to_numpy()
    if times.shape[0] > 1 and not bool(np.all(np.diff(times) > 0)):
        raise ValueError(
            f"candles of {symbol} are not strictly increasing in open_time; "
            "sort them and drop duplicates before training"
        )


def symbol_rows(frame: pd.DataFrame, symbol: str, spec: FeatureSpec, label: LabelSpec) -> Dataset:
    """Labelled feature rows of one symbol; rows in warm-up or without a future are dropped."""
    check_frame(frame, symbol)
    features = np.asarray(compute_features(frame, spec), dtype=np.float64)
    times = frame["open_time"].to_numpy(dtype=np.int64)
    labels = label_returns(forward_returns(frame["close"].to_numpy(), label.horizon), label)
    label_time = np.full(times.shape, np.iinfo(np.int64).max, dtype=np.int64)
    if times.shape[0] > label.horizon:
        label_time[: -label.horizon] = times[label.horizon :]
    keep = np.isfinite(features).all(axis=1) & np.isfinite(labels)
    return Dataset(
        features=features[keep],
        labels=labels[keep].astype(np.int8),
        open_time=times[keep],
        label_time=label_time[keep],
        symbols=np.full(int(keep.sum()), symbol, dtype=object),
        feature_names=tuple(spec.names),
    )


def build_dataset(
    frames: Mapping[str, pd.DataFrame], spec: FeatureSpec, label: LabelSpec
) -> Dataset:
    """Labelled rows of every symbol, merged in time order (stable, so ties keep symbol order)."""
    if not frames:
        raise ValueError("no candles to build a dataset from: give at least one symbol")
    parts = [symbol_rows(frame, symbol, spec, label) for symbol, frame in frames.items()]
    open_time = np.concatenate([p.open_time for p in parts])
    order = np.argsort(open_time, kind="stable")
    dataset = Dataset(
        features=np.concatenate([p.features for p in parts])[order],
        labels=np.concatenate([p.labels for p in parts])[order],
        open_time=open_time[order],
        label_time=np.concatenate([p.label_time for p in parts])[order],
        symbols=np.concatenate([p.symbols for p in parts])[order],
        feature_names=tuple(spec.names),
    )
    if len(dataset) == 0:
        raise ValueError(
            f"no usable rows: every row is in the feature warm-up ({spec.warmup} candles) or "
            f"lacks a label {label.horizon} candles ahead; give more candles"
        )
    log.info(
        "dataset built",
        extra={"rows": len(dataset), "symbols": list(frames), **dataset.balance.to_dict()},
    )
    return dataset


def chronological_split(dataset: Dataset, test_fraction: float) -> tuple[Dataset, Dataset]:
    """Split at a point in time: the test set is the latest ``test_fraction`` of rows.

    Training rows whose label candle falls inside the test period are purged, so no training
    label has seen a price the test set is judged on.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction must be between 0 and 1, got {test_fraction}")
    cut = int(len(dataset) * (1 - test_fraction))
    if cut <= 0 or cut >= len(dataset):
        raise ValueError(
            f"{len(dataset)} rows are too few to split {test_fraction:.0%} off for testing"
        )
    cutoff = int(dataset.open_time[cut])
    train = dataset.subset(dataset.label_time < cutoff)
    test = dataset.subset(dataset.open_time >= cutoff)
    if len(train) == 0 or len(test) == 0:
        raise ValueError(
            f"split at {cutoff} leaves {len(train)} training and {len(test)} test rows; "
            "give more candles"
        )
    return train, test
