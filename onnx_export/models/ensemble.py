"""Ensembles: members of any kind combined by a weighted average or a stacked logistic model.

The ensemble takes the widest member's window ``[batch, window, features]``; a tabular member
reads the last row, a sequence member the last rows of its own window. Stacking fits the
logistic meta-model on out-of-fold predictions: the training rows are cut in time into
``folds + 1`` blocks and each block from the second on is predicted by members fitted on the
blocks before it (purged of rows whose label reaches into the block), so the meta-model learns
how members do on data they never saw. The members are then refitted on all training rows.

The export is one ONNX graph: every member's graph (names prefixed), the slicing of the shared
input, and the combiner, so the server runs one session whatever the ensemble holds.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression

from kubetrade.errors import InvalidInputError
from kubetrade.onnx_export.dataset import Dataset
from kubetrade.onnx_export.models.base import (
    INPUT_NAME,
    MODEL_FILE,
    NEURAL_OPSET,
    PROBABILITIES_OUTPUT,
    Model,
    ModelConfig,
    NotFittedError,
    check_inputs,
)

log = logging.getLogger(__name__)

METHODS = ("average", "stacked")
# Probabilities are clipped this far from 0 and 1 before taking log-odds (stacking).
EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities clipped to ``[EPS, 1 - EPS]``, float64."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.asarray(np.log(q / (1 - q)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, float64."""
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64))))


@dataclass(frozen=True, slots=True)
class EnsembleParams:
    """Members and how to combine them."""

    members: tuple[ModelConfig, ...]
    method: str = "stacked"
    weights: tuple[float, ...] | None = None
    folds: int = 3

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise InvalidInputError(
                f"an ensemble needs at least two members, got {len(self.members)}"
            )
        if any(m.kind == "ensemble" for m in self.members):
            raise InvalidInputError("ensemble members must be single models, not ensembles")
        if self.method not in METHODS:
            raise InvalidInputError(
                f"unknown ensemble method {self.method!r}; use one of {METHODS}"
            )
        if self.weights is not None and (
            len(self.weights) != len(self.members) or min(self.weights) < 0 or not sum(self.weights)
        ):
            raise InvalidInputError(
                f"ensemble weights {self.weights} must be one non-negative weight per member "
                f"({len(self.members)}), not all zero"
            )
        if self.folds < 2:
            raise InvalidInputError(
                f"stacking needs at least 2 out-of-fold blocks, got {self.folds}"
            )

    @property
    def kind(self) -> str:
        """``ensemble``."""
        return "ensemble"

    @property
    def window(self) -> int:
        """The widest member's window."""
        return max(m.window for m in self.members)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, members included."""
        return {
            "kind": self.kind,
            "method": self.method,
            "weights": None if self.weights is None else list(self.weights),
            "folds": self.folds,
            "members": [m.to_dict() for m in self.members],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnsembleParams:
        """Inverse of ``to_dict``."""
        from kubetrade.onnx_export.models.factory import config_from_dict

        weights = data.get("weights")
        return cls(
            members=tuple(config_from_dict(m) for m in data["members"]),
            method=str(data.get("method", "stacked")),
            weights=None if weights is None else tuple(float(w) for w in weights),
            folds=int(data.get("folds", 3)),
        )


def _member_inputs(inputs: np.ndarray, window: int, member_window: int) -> np.ndarray:
    if window == 1:
        return inputs
    if member_window == 1:
        return inputs[:, -1, :]
    return inputs[:, -member_window:, :]


class EnsembleModel:
    """Fitted members and a fitted combiner."""

    def __init__(self, config: EnsembleParams) -> None:
        self.config = config
        self.members: list[Model] = []
        # Average: member weights. Stacked: logistic coefficients on member log-odds.
        self.coefficients: np.ndarray | None = None
        self.intercept = 0.0
        self.out_of_fold_rows = 0

    @property
    def kind(self) -> str:
        """``ensemble``."""
        return "ensemble"

    @property
    def window(self) -> int:
        """The widest member's window."""
        return self.config.window

    @property
    def packages(self) -> tuple[str, ...]:
        """Every member's libraries, plus scikit-learn for the meta-model."""
        found: list[str] = ["scikit-learn"]
        for member in self.members or [self._new(c) for c in self.config.members]:
            found.extend(p for p in member.packages if p not in found)
        return tuple(found)

    def _new(self, config: ModelConfig) -> Model:
        from kubetrade.onnx_export.models.factory import build_model

        return build_model(config)

    def _fresh_members(self) -> list[Model]:
        return [self._new(c) for c in self.config.members]

    def _member_probabilities(self, members: list[Model], data: Dataset) -> np.ndarray:
        return np.column_stack([m.predict_proba(data.inputs(m.window)) for m in members])

    def _out_of_fold(self, train: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """Member predictions on the training blocks they were not fitted on, with labels."""
        edges = np.quantile(train.open_time, np.linspace(0, 1, self.config.folds + 2))
        predictions: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        for start, end in itertools.pairwise(edges):
            last = end == edges[-1]
            block = train.subset(
                (train.open_time >= start)
                & ((train.open_time <= end) if last else (train.open_time < end))
            )
            before = train.subset(train.label_time < start)
            if len(block) == 0 or len(np.unique(before.labels)) < 2:
                continue
            members = self._fresh_members()
            for member in members:
                member.fit(before)
            predictions.append(self._member_probabilities(members, block))
            labels.append(block.labels)
        if not predictions:
            raise InvalidInputError(
                f"stacking found no out-of-fold block with two classes in {len(train)} training "
                "rows; use more candles, fewer folds, or method 'average'"
            )
        return np.vstack(predictions), np.concatenate(labels)

    def fit(self, train: Dataset) -> None:
        """Fit the combiner (stacked: on out-of-fold predictions), then every member on all
        of ``train``."""
        if self.config.method == "stacked":
            oof, labels = self._out_of_fold(train)
            if len(np.unique(labels)) < 2:
                raise InvalidInputError(
                    "the out-of-fold labels hold one class only; use more candles or method "
                    "'average'"
                )
            meta = LogisticRegression(C=1.0, max_iter=1000)
            meta.fit(logit(oof), labels)
            self.coefficients = np.asarray(meta.coef_[0], dtype=np.float64)
            self.intercept = float(meta.intercept_[0])
            self.out_of_fold_rows = int(labels.shape[0])
        else:
            weights = np.asarray(
                self.config.weights or [1.0] * len(self.config.members), dtype=np.float64
            )
            self.coefficients = weights / weights.sum()
        self.members = self._fresh_members()
        for member in self.members:
            member.fit(train)
        log.info(
            "ensemble fitted",
            extra={
                "method": self.config.method,
                "members": [m.kind for m in self.members],
                "coefficients": self.coefficients.tolist(),
            },
        )

    def _fitted(self) -> np.ndarray:
        if self.coefficients is None or not self.members:
            raise NotFittedError("the ensemble is not fitted yet: call fit first")
        return self.coefficients

    def combine(self, member_probabilities: np.ndarray) -> np.ndarray:
        """The ensemble's probability of up from its members' ([n, members])."""
        coefficients = self._fitted()
        if self.config.method == "stacked":
            return sigmoid(logit(member_probabilities) @ coefficients + self.intercept)
        return np.asarray(member_probabilities @ coefficients)

    def predict_proba(self, inputs: np.ndarray) -> np.ndarray:
        """Native probability of up: members' native predictions, combined in float64."""
        self._fitted()
        batch = check_inputs(inputs, self.window, "the ensemble")
        columns = [
            m.predict_proba(_member_inputs(batch, self.window, m.window)) for m in self.members
        ]
        return self.combine(np.column_stack(columns))

    def to_onnx(self, n_features: int) -> onnx.ModelProto:
        """One graph: shared input, member graphs, combiner (see the module docs)."""
        coefficients = self._fitted()
        graphs = [m.to_onnx(n_features) for m in self.members]
        return _merge(
            graphs,
            [m.window for m in self.members],
            self.window,
            n_features,
            self.config.method,
            coefficients,
            self.intercept,
        )

    def describe(self) -> dict[str, Any]:
        """Members' own descriptions and the combiner."""
        coefficients = self._fitted()
        combiner: dict[str, Any] = {"method": self.config.method}
        if self.config.method == "stacked":
            combiner |= {
                "coefficients": coefficients.tolist(),
                "intercept": self.intercept,
                "out_of_fold_rows": self.out_of_fold_rows,
                "folds": self.config.folds,
            }
        else:
            combiner["weights"] = coefficients.tolist()
        return {
            "params": self.config.to_dict(),
            "combiner": combiner,
            "members": [{"kind": m.kind, "window": m.window, **m.describe()} for m in self.members],
            "preprocessing": {"kind": "per member", "members": [m.kind for m in self.members]},
        }

    def save(self, directory: Path) -> None:
        """``model.json`` (params and combiner) and one subdirectory per member."""
        coefficients = self._fitted()
        directory.mkdir(parents=True, exist_ok=True)
        for index, member in enumerate(self.members):
            member.save(directory / f"member-{index}")
        data = {
            **self.config.to_dict(),
            "coefficients": coefficients.tolist(),
            "intercept": self.intercept,
            "out_of_fold_rows": self.out_of_fold_rows,
        }
        (directory / MODEL_FILE).write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, directory: Path, data: dict[str, Any]) -> EnsembleModel:
        """Read back what ``save`` wrote; ``data`` is the parsed ``model.json``."""
        from kubetrade.onnx_export.models.factory import load_model

        fitted = {"coefficients", "intercept", "out_of_fold_rows"}
        model = cls(EnsembleParams.from_dict({k: v for k, v in data.items() if k not in fitted}))
        model.members = [
            load_model(directory / f"member-{i}") for i in range(len(model.config.members))
        ]
        model.coefficients = np.asarray(data["coefficients"], dtype=np.float64)
        model.intercept = float(data["intercept"])
        model.out_of_fold_rows = int(data["out_of_fold_rows"])
        return model


def _const(name: str, values: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(values, name=name)


def _merge(
    graphs: list[onnx.ModelProto],
    windows: list[int],
    window: int,
    n_features: int,
    method: str,
    coefficients: np.ndarray,
    intercept: float,
) -> onnx.ModelProto:
    """Member graphs under one input and one ``probabilities`` output."""
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = [
        _const("ens_last", np.asarray(-1, dtype=np.int64)),
        _const("ens_up", np.asarray(1, dtype=np.int64)),
        _const("ens_one", np.asarray(1.0, dtype=np.float32)),
        _const("ens_axis1", np.asarray([1], dtype=np.int64)),
    ]
    if method == "stacked":
        initializers += [
            _const("ens_eps", np.asarray(EPS, dtype=np.float32)),
            _const("ens_one_minus_eps", np.asarray(1 - EPS, dtype=np.float32)),
        ]
    opsets: dict[str, int] = {"": NEURAL_OPSET}
    ir_version = 3
    terms: list[str] = []
    for index, (graph, member_window) in enumerate(zip(graphs, windows, strict=True)):
        prefix = f"m{index}_"
        member = onnx.compose.add_prefix(graph, prefix=prefix)
        ir_version = max(ir_version, int(graph.ir_version))
        for opset in graph.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
        member_input = prefix + INPUT_NAME
        if window in (1, member_window):
            nodes.append(helper.make_node("Identity", [INPUT_NAME], [member_input]))
        elif member_window == 1:
            nodes.append(
                helper.make_node("Gather", [INPUT_NAME, "ens_last"], [member_input], axis=1)
            )
        else:
            start = f"ens_start_{index}"
            end = f"ens_end_{index}"
            initializers += [
                _const(start, np.asarray([window - member_window], dtype=np.int64)),
                _const(end, np.asarray([window], dtype=np.int64)),
            ]
            nodes.append(
                helper.make_node("Slice", [INPUT_NAME, start, end, "ens_axis1"], [member_input])
            )
        nodes.extend(member.graph.node)
        initializers.extend(member.graph.initializer)
        up = f"ens_p{index}"
        nodes.append(
            helper.make_node("Gather", [prefix + PROBABILITIES_OUTPUT, "ens_up"], [up], axis=1)
        )
        weight = f"ens_w{index}"
        initializers.append(_const(weight, np.asarray(coefficients[index], dtype=np.float32)))
        if method == "stacked":
            clipped, odds, log_odds = f"ens_c{index}", f"ens_o{index}", f"ens_l{index}"
            rest = f"ens_r{index}"
            nodes += [
                helper.make_node("Clip", [up, "ens_eps", "ens_one_minus_eps"], [clipped]),
                helper.make_node("Sub", ["ens_one", clipped], [rest]),
                helper.make_node("Div", [clipped, rest], [odds]),
                helper.make_node("Log", [odds], [log_odds]),
            ]
            up = log_odds
        term = f"ens_t{index}"
        nodes.append(helper.make_node("Mul", [up, weight], [term]))
        terms.append(term)
    nodes.append(helper.make_node("Sum", terms, ["ens_sum"]))
    combined = "ens_sum"
    if method == "stacked":
        initializers.append(_const("ens_b", np.asarray(intercept, dtype=np.float32)))
        nodes += [
            helper.make_node("Add", ["ens_sum", "ens_b"], ["ens_z"]),
            helper.make_node("Sigmoid", ["ens_z"], ["ens_up_prob"]),
        ]
        combined = "ens_up_prob"
    nodes += [
        helper.make_node("Unsqueeze", [combined, "ens_axis1"], ["ens_up_col"]),
        helper.make_node("Sub", ["ens_one", "ens_up_col"], ["ens_down_col"]),
        helper.make_node("Concat", ["ens_down_col", "ens_up_col"], [PROBABILITIES_OUTPUT], axis=1),
    ]
    shape: list[int | str] = ["batch", n_features] if window == 1 else ["batch", window, n_features]
    graph = helper.make_graph(
        nodes,
        "kubetrade_ensemble",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["batch", 2])],
        initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets.items()],
        producer_name="kubetrade",
    )
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model
