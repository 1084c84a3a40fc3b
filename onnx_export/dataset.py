"""Training sets: the shared feature code on candles, labelled by what happens next.

Row ``t`` holds the features of the candles up to and including candle ``t`` (closed) and a
label decided by the candles after ``t`` only (forward return or triple barrier, see
``LabelSpec``). The features are computed by ``kubetrade.features.compute_features``, the same
code the inference service runs, so training and serving cannot drift apart; labels are never
features.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from kubetrade.errors import InvalidInputError
from kubetrade.features import FeatureSpec, compute_features

log = logging.getLogger(__name__)

FRAME_COLUMNS = ("open_time", "open", "high", "low", "close", "volume")


FORWARD_RETURN = "forward_return"
TRIPLE_BARRIER = "triple_barrier"
LABEL_KINDS = (FORWARD_RETURN, TRIPLE_BARRIER)


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """How a row is labelled up (1) or not (0).

    ``forward_return``: up when the close ``horizon`` candles ahead beats
    ``close * (1 + threshold)``; rows whose forward return lies within ``dead_zone`` of the
    threshold are dropped (coin flips that would only teach the model noise).

    ``triple_barrier``: barriers at ``close * exp(±k * sigma * sqrt(horizon))``, where sigma is
    the standard deviation of the last ``vol_window`` log returns (known at t) and k is
    ``take_profit`` above and ``stop_loss`` below. Up when the high touches the upper barrier
    before the low touches the lower one within ``horizon`` candles; not up when the lower one
    comes first, or both in the same candle (the cautious reading). Rows that touch neither
    are labelled by their forward return, as above, dead zone included.
    """

    horizon: int = 4
    threshold: float = 0.0
    dead_zone: float = 0.0
    kind: str = FORWARD_RETURN
    take_profit: float = 1.0
    stop_loss: float = 1.0
    vol_window: int = 24

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise InvalidInputError(f"label horizon must be at least 1 candle, got {self.horizon}")
        if self.dead_zone < 0:
            raise InvalidInputError(f"label dead zone must not be negative, got {self.dead_zone}")
        if self.kind not in LABEL_KINDS:
            raise InvalidInputError(f"unknown label kind {self.kind!r}; use one of {LABEL_KINDS}")
        if self.take_profit <= 0 or self.stop_loss <= 0:
            raise InvalidInputError(
                f"triple-barrier multiples must be positive, got take_profit={self.take_profit} "
                f"and stop_loss={self.stop_loss}"
            )
        if self.vol_window < 2:
            raise InvalidInputError(f"vol_window must be at least 2 candles, got {self.vol_window}")

    def to_dict(self) -> dict[str, Any]:
        """The label definition as plain JSON-ready values."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "horizon": self.horizon,
            "threshold": self.threshold,
            "dead_zone": self.dead_zone,
        }
        if self.kind == TRIPLE_BARRIER:
            data |= {
                "take_profit": self.take_profit,
                "stop_loss": self.stop_loss,
                "vol_window": self.vol_window,
            }
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelSpec:
        """Inverse of ``to_dict``."""
        return cls(
            horizon=int(data["horizon"]),
            threshold=float(data["threshold"]),
            dead_zone=float(data.get("dead_zone", 0.0)),
            kind=str(data.get("kind", FORWARD_RETURN)),
            take_profit=float(data.get("take_profit") or 1.0),
            stop_loss=float(data.get("stop_loss") or 1.0),
            vol_window=int(data.get("vol_window") or 24),
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

    ``label_time`` is the open time of the last candle that can decide the label: a row may be
    used for training only when that candle lies before the test period starts.

    ``windows`` (sequence models) holds, per row, that row and the ``window - 1`` rows before
    it of the same symbol, oldest first: shape ``[rows, window, features]``, float32.
    """

    features: np.ndarray
    labels: np.ndarray
    open_time: np.ndarray
    label_time: np.ndarray
    symbols: np.ndarray
    feature_names: tuple[str, ...]
    windows: np.ndarray | None = None

    @property
    def window(self) -> int:
        """Rows per window this dataset can hand out (1 without windows)."""
        return 1 if self.windows is None else int(self.windows.shape[1])

    def inputs(self, window: int) -> np.ndarray:
        """Model inputs: rows ``[n, features]`` for window 1, else ``[n, window, features]``."""
        if window == 1:
            return self.features
        if self.windows is None or window > self.window:
            raise InvalidInputError(
                f"a model over windows of {window} rows needs a dataset built with window >= "
                f"{window}; this one has {self.window}"
            )
        return self.windows[:, -window:, :]

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
            windows=None if self.windows is None else self.windows[mask],
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


def triple_barrier_labels(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, label: LabelSpec
) -> np.ndarray:
    """1.0, 0.0 or NaN per row by the triple-barrier rule of ``label`` (see LabelSpec)."""
    high, low, close = (np.asarray(a, dtype=np.float64) for a in (high, low, close))
    n = close.shape[0]
    log_returns = np.diff(np.log(close), prepend=np.nan)
    sigma = pd.Series(log_returns).rolling(label.vol_window).std(ddof=1).to_numpy()
    reach = sigma * math.sqrt(label.horizon)
    upper = close * np.exp(label.take_profit * reach)
    lower = close * np.exp(-label.stop_loss * reach)
    returns = forward_returns(close, label.horizon)
    labels = label_returns(returns, label)
    decided = np.zeros(n, dtype=bool)
    for step in range(1, label.horizon + 1):
        ahead = np.arange(n) + step
        inside = ahead < n
        rows = np.flatnonzero(inside & ~decided & np.isfinite(reach))
        up = high[ahead[rows]] >= upper[rows]
        down = low[ahead[rows]] <= lower[rows]
        labels[rows[down]] = 0.0
        labels[rows[up & ~down]] = 1.0
        decided[rows[up | down]] = True
    # Rows without sigma, or without the whole horizon ahead, stay unknown: a touch seen in a
    # shortened horizon would label them by a different rule than the others.
    labels[~np.isfinite(reach) | ~np.isfinite(returns)] = np.nan
    return labels


def label_rows(frame: pd.DataFrame, label: LabelSpec) -> np.ndarray:
    """The labels of ``label.kind`` for every candle of one symbol (NaN where unknown)."""
    close = frame["close"].to_numpy(dtype=np.float64)
    if label.kind == TRIPLE_BARRIER:
        return triple_barrier_labels(
            frame["high"].to_numpy(dtype=np.float64),
            frame["low"].to_numpy(dtype=np.float64),
            close,
            label,
        )
    return label_returns(forward_returns(close, label.horizon), label)


def check_frame(frame: pd.DataFrame, symbol: str) -> None:
    """Refuse a candle frame the feature code cannot use, naming the symbol and the problem."""
    missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidInputError(
            f"candles of {symbol} lack columns {missing}; "
            f"expected {list(FRAME_COLUMNS)} (open_time in ms UTC)"
        )
    times = frame["open_time"].to_numpy()
    if times.shape[0] > 1 and not bool(np.all(np.diff(times) > 0)):
        raise InvalidInputError(
            f"candles of {symbol} are not strictly increasing in open_time; "
            "sort them and drop duplicates before training"
        )


def symbol_rows(
    frame: pd.DataFrame, symbol: str, spec: FeatureSpec, label: LabelSpec, window: int = 1
) -> Dataset:
    """Labelled feature rows of one symbol; rows in warm-up, without a future, or without
    ``window - 1`` complete rows before them are dropped."""
    if window < 1:
        raise InvalidInputError(f"window must be at least 1 row, got {window}")
    check_frame(frame, symbol)
    features = np.asarray(compute_features(frame, spec), dtype=np.float64)
    times = frame["open_time"].to_numpy(dtype=np.int64)
    labels = label_rows(frame, label)
    label_time = np.full(times.shape, np.iinfo(np.int64).max, dtype=np.int64)
    if times.shape[0] > label.horizon:
        label_time[: -label.horizon] = times[label.horizon :]
    finite = np.isfinite(features).all(axis=1)
    windows = None
    if window > 1:
        # A row is usable when it and the window - 1 rows before it are all finite.
        complete = np.zeros(finite.shape, dtype=bool)
        if finite.shape[0] >= window:
            complete[window - 1 :] = sliding_window_view(finite, window).all(axis=1)
        finite = complete
    keep = finite & np.isfinite(labels)
    if window > 1:
        ends = np.flatnonzero(keep)
        offsets = np.arange(-window + 1, 1)
        windows = features.astype(np.float32)[ends[:, None] + offsets[None, :]]
    return Dataset(
        features=features[keep],
        labels=labels[keep].astype(np.int8),
        open_time=times[keep],
        label_time=label_time[keep],
        symbols=np.full(int(keep.sum()), symbol, dtype=object),
        feature_names=tuple(spec.names),
        windows=windows,
    )


def build_dataset(
    frames: Mapping[str, pd.DataFrame], spec: FeatureSpec, label: LabelSpec, window: int = 1
) -> Dataset:
    """Labelled rows of every symbol, merged in time order (stable, so ties keep symbol order)."""
    if not frames:
        raise InvalidInputError("no candles to build a dataset from: give at least one symbol")
    parts = [symbol_rows(frame, symbol, spec, label, window) for symbol, frame in frames.items()]
    open_time = np.concatenate([p.open_time for p in parts])
    order = np.argsort(open_time, kind="stable")
    windows = None
    if window > 1:
        windows = np.concatenate([p.windows for p in parts if p.windows is not None])[order]
    dataset = Dataset(
        features=np.concatenate([p.features for p in parts])[order],
        labels=np.concatenate([p.labels for p in parts])[order],
        open_time=open_time[order],
        label_time=np.concatenate([p.label_time for p in parts])[order],
        symbols=np.concatenate([p.symbols for p in parts])[order],
        feature_names=tuple(spec.names),
        windows=windows,
    )
    if len(dataset) == 0:
        raise InvalidInputError(
            f"no usable rows: every row is in the feature warm-up ({spec.warmup} candles, plus "
            f"{window - 1} rows of window) or lacks a label {label.horizon} candles ahead; "
            "give more candles"
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
        raise InvalidInputError(f"test fraction must be between 0 and 1, got {test_fraction}")
    cut = int(len(dataset) * (1 - test_fraction))
    if cut <= 0 or cut >= len(dataset):
        raise InvalidInputError(
            f"{len(dataset)} rows are too few to split {test_fraction:.0%} off for testing"
        )
    cutoff = int(dataset.open_time[cut])
    train = dataset.subset(dataset.label_time < cutoff)
    test = dataset.subset(dataset.open_time >= cutoff)
    if len(train) == 0 or len(test) == 0:
        raise InvalidInputError(
            f"split at {cutoff} leaves {len(train)} training and {len(test)} test rows; "
            "give more candles"
        )
    return train, test
