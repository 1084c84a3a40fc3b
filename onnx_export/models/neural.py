"""Sequence models in PyTorch: an LSTM with attention pooling and a Transformer encoder.

Both read a window of feature rows ``[batch, window, features]``, oldest first. Their first
layer standardizes the raw features with constants fitted on the training window, so the
exported ONNX graph takes raw features like the tree model does. Training is seeded and
deterministic (one thread, deterministic kernels): the same data and seed give the same
weights.

PyTorch is an optional dependency (``pip install 'kubetrade[train]'``); this module imports it
at the top, so import it only when a neural model is asked for (``factory`` does).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from kubetrade.errors import InvalidInputError
from kubetrade.onnx_export.dataset import Dataset
from kubetrade.onnx_export.models.base import (
    INPUT_NAME,
    MODEL_FILE,
    NEURAL_OPSET,
    PROBABILITIES_OUTPUT,
    NotFittedError,
    check_inputs,
)
from kubetrade.onnx_export.preprocess import CLIP, Standardizer

log = logging.getLogger(__name__)

NEURAL_KINDS = ("lstm", "transformer")
WEIGHTS_FILE = "weights.pt"
# Inference batch of the native predictions: bounds memory on long validation windows.
PREDICT_BATCH = 4096


@dataclass(frozen=True, slots=True)
class NeuralParams:
    """Architecture and training settings of a sequence model; small by default."""

    kind: str = "lstm"
    window: int = 24
    hidden: int = 32
    layers: int = 1
    heads: int = 4
    dropout: float = 0.1
    epochs: int = 6
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 7
    threads: int = 1

    def __post_init__(self) -> None:
        if self.kind not in NEURAL_KINDS:
            raise InvalidInputError(
                f"unknown neural model kind {self.kind!r}; use one of {NEURAL_KINDS}"
            )
        if self.window < 2:
            raise InvalidInputError(
                f"a sequence model needs a window of at least 2, got {self.window}"
            )
        if self.kind == "transformer" and self.hidden % self.heads:
            raise InvalidInputError(
                f"transformer hidden size {self.hidden} must be a multiple of heads {self.heads}"
            )
        if min(self.hidden, self.layers, self.heads, self.epochs, self.batch_size) < 1:
            raise InvalidInputError(f"neural settings must be positive: {asdict(self)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the kind."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NeuralParams:
        """Inverse of ``to_dict``."""
        return cls(**data)

    def with_seed(self, seed: int) -> NeuralParams:
        """The same settings with another seed."""
        return replace(self, seed=seed)


class Standardize(nn.Module):
    """The fitted scaler as a layer: it travels inside the ONNX graph."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("inv_std", torch.ones(n_features))

    def load_scaler(self, scaler: Standardizer) -> None:
        """Load the constants fitted on the training window."""
        self.mean.copy_(torch.as_tensor(scaler.mean, dtype=torch.float32))
        self.inv_std.copy_(torch.as_tensor(1.0 / scaler.std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled and clipped features."""
        return torch.clamp((x - self.mean) * self.inv_std, -CLIP, CLIP)


class SequenceNet(nn.Module):
    """Shared frame of both architectures: scale, encode, read out one logit."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.scale = Standardize(n_features)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """Log-odds of up, [batch] (each architecture defines it)."""
        raise NotImplementedError(f"{type(self).__name__} does not define logit")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities [batch, 2] (not up, up): the exported interface."""
        up = torch.sigmoid(self.logit(x)).unsqueeze(1)
        return torch.cat([1.0 - up, up], dim=1)


class LstmAttention(SequenceNet):
    """LSTM over the window; attention weights pool its hidden states into one summary."""

    def __init__(self, n_features: int, params: NeuralParams) -> None:
        super().__init__(n_features)
        self.lstm = nn.LSTM(
            n_features,
            params.hidden,
            num_layers=params.layers,
            batch_first=True,
            dropout=params.dropout if params.layers > 1 else 0.0,
        )
        self.attention = nn.Linear(params.hidden, 1)
        self.dropout = nn.Dropout(params.dropout)
        self.head = nn.Linear(params.hidden, 1)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """Attention-pooled LSTM states to one logit per window."""
        states, _ = self.lstm(self.scale(x))
        weights = torch.softmax(self.attention(states), dim=1)
        summary = (weights * states).sum(dim=1)
        out: torch.Tensor = self.head(self.dropout(summary)).squeeze(1)
        return out


class TransformerEncoderNet(SequenceNet):
    """Projection, learned positions, a Transformer encoder; the last position reads out."""

    def __init__(self, n_features: int, params: NeuralParams) -> None:
        super().__init__(n_features)
        self.project = nn.Linear(n_features, params.hidden)
        self.position = nn.Parameter(torch.zeros(1, params.window, params.hidden))
        layer = nn.TransformerEncoderLayer(
            params.hidden,
            params.heads,
            dim_feedforward=2 * params.hidden,
            dropout=params.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, params.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(params.hidden)
        self.head = nn.Linear(params.hidden, 1)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded window, read at its latest position, to one logit."""
        encoded = self.encoder(self.project(self.scale(x)) + self.position)
        out: torch.Tensor = self.head(self.norm(encoded[:, -1])).squeeze(1)
        return out


def build_net(params: NeuralParams, n_features: int) -> SequenceNet:
    """An untrained network of ``params.kind`` (weights from the current torch seed)."""
    if params.kind == "lstm":
        return LstmAttention(n_features, params)
    return TransformerEncoderNet(n_features, params)


@contextmanager
def _deterministic(threads: int) -> Iterator[None]:
    """A deterministic, ``threads``-thread torch for the block; restored after.

    The fused Transformer fast path is off too: it runs only in inference, so the native
    predictions would come from other kernels than training and the exported graph (and the
    exporter cannot translate it).
    """
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.backends.mha.set_fastpath_enabled(previous_fastpath)


class NeuralModel:
    """A sequence model with its training loop, native predictions and ONNX export."""

    packages = ("torch",)

    def __init__(self, config: NeuralParams | None = None) -> None:
        self.config = config or NeuralParams()
        self.net: SequenceNet | None = None
        self.scaler: Standardizer | None = None
        self.losses: list[float] = []

    @property
    def kind(self) -> str:
        """``lstm`` or ``transformer``."""
        return self.config.kind

    @property
    def window(self) -> int:
        """Feature rows per prediction."""
        return self.config.window

    def _fitted(self) -> SequenceNet:
        if self.net is None:
            raise NotFittedError(f"the {self.kind} model is not fitted yet: call fit first")
        return self.net

    def fit(self, train: Dataset) -> None:
        """Train a fresh network on ``train``'s windows with AdamW and binary cross-entropy."""
        params = self.config
        if len(np.unique(train.labels)) < 2:
            raise InvalidInputError(
                f"the training set has only one class ({train.balance.to_dict()}); "
                "use more candles or a different label threshold"
            )
        inputs = torch.from_numpy(check_inputs(train.inputs(self.window), self.window, self.kind))
        labels = torch.from_numpy(train.labels.astype(np.float32))
        # Fitted on the training rows only; the scaler then lives in the network's first layer.
        self.scaler = Standardizer.fit(train.features)
        with _deterministic(params.threads):
            torch.manual_seed(params.seed)
            net = build_net(params, inputs.shape[2])
            net.scale.load_scaler(self.scaler)
            optimizer = torch.optim.AdamW(
                net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
            )
            loss_fn = nn.BCEWithLogitsLoss()
            order = torch.Generator().manual_seed(params.seed)
            self.losses = []
            net.train()
            for _ in range(params.epochs):
                total = 0.0
                shuffled = torch.randperm(len(labels), generator=order)
                for start in range(0, len(labels), params.batch_size):
                    batch = shuffled[start : start + params.batch_size]
                    optimizer.zero_grad()
                    loss = loss_fn(net.logit(inputs[batch]), labels[batch])
                    loss.backward()
                    nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    optimizer.step()
                    total += float(loss.detach()) * len(batch)
                self.losses.append(total / len(labels))
            net.eval()
        self.net = net
        log.info(
            "neural model trained",
            extra={"kind": self.kind, "rows": len(labels), "losses": self.losses},
        )

    def predict_proba(self, inputs: np.ndarray) -> np.ndarray:
        """Native PyTorch probability of up per window (float64 [n])."""
        net = self._fitted()
        batch = torch.from_numpy(check_inputs(inputs, self.window, f"the {self.kind} model"))
        with _deterministic(self.config.threads), torch.no_grad():
            parts = [
                net(batch[start : start + PREDICT_BATCH])[:, 1]
                for start in range(0, len(batch), PREDICT_BATCH)
            ]
        if not parts:
            return np.zeros(0)
        return torch.cat(parts).numpy().astype(np.float64)

    def to_onnx(self, n_features: int) -> onnx.ModelProto:
        """Export with the classic TorchScript exporter: dynamic batch, fixed window.

        The classic exporter writes a graph of plain ops in a fraction of a second; the dynamo
        exporter gives the same numbers after several seconds of tracing per model.
        """
        net = self._fitted()
        example = torch.zeros(2, self.window, n_features)
        # The exporter writes to a binary file object too, though its stubs name paths only.
        buffer: Any = io.BytesIO()
        with _deterministic(self.config.threads), torch.no_grad(), warnings.catch_warnings():
            # The tracer warns that shape checks become constants: they are, on purpose (the
            # window and width are fixed per model; only the batch is dynamic). The classic
            # exporter also announces its deprecation on every call.
            warnings.filterwarnings("ignore", module=r"torch(\.|$)")
            torch.onnx.export(
                net,
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=[PROBABILITIES_OUTPUT],
                dynamic_axes={INPUT_NAME: {0: "batch"}, PROBABILITIES_OUTPUT: {0: "batch"}},
                opset_version=NEURAL_OPSET,
                dynamo=False,
            )
        return onnx.load_model_from_string(buffer.getvalue())

    def describe(self) -> dict[str, Any]:
        """Parameters, the fitted scaler and the training losses."""
        if self.scaler is None:
            raise NotFittedError(f"the {self.kind} model is not fitted yet: call fit first")
        return {
            "params": self.config.to_dict(),
            "preprocessing": self.scaler.to_dict(),
            "training_loss": [round(v, 6) for v in self.losses],
            "exporter": "torch.onnx (TorchScript), dynamic batch",
        }

    def save(self, directory: Path) -> None:
        """``model.json`` (params, scaler) and the network's weights."""
        net = self._fitted()
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), directory / WEIGHTS_FILE)
        (directory / MODEL_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))

    @classmethod
    def load(cls, directory: Path, data: dict[str, Any]) -> NeuralModel:
        """Read back what ``save`` wrote; ``data`` is the parsed ``model.json``."""
        model = cls(NeuralParams.from_dict(data))
        state = torch.load(directory / WEIGHTS_FILE, weights_only=True)
        n_features = int(state["scale.mean"].shape[0])
        net = build_net(model.config, n_features)
        net.load_state_dict(state)
        net.eval()
        model.net = net
        inv_std = state["scale.inv_std"].numpy().astype(np.float64)
        model.scaler = Standardizer(
            mean=state["scale.mean"].numpy().astype(np.float64), std=1.0 / inv_std
        )
        return model
