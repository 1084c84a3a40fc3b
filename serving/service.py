"""The inference service: one ONNX model behind BentoML's HTTP API and the NATS bridge.

Run it with ``bentoml serve kubetrade.serving.service:InferenceService --host H --port P``
(``serve_command()`` builds that command; ``kubetrade worker inference`` execs it). BentoML
starts an arbiter process and one worker process; the worker loads the model once, and when
``KUBETRADE_NATS_URL`` is set it also runs the NATS bridge on a thread of its own, so HTTP
and NATS share the one model in memory. SIGTERM or SIGINT to the arbiter stops both cleanly.

The model is named by ``KUBETRADE_MODEL_NAME``/``KUBETRADE_MODEL_VERSION`` or, without them,
by ``spec.model`` of the bot in ``KUBETRADE_SPEC``. A model that cannot be loaded, or whose
FeatureSpec differs from this code's, leaves the service up (``/livez`` ok) but not ready:
``/readyz`` answers 503 with the reason, naming both feature lists on a mismatch.

This module is imported by the arbiter too: heavy imports (numpy, onnxruntime, the feature
code) happen inside the worker only, in ``InferenceService.__init__``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from kubetrade.settings import (
    ENV_HTTP_HOST,
    ENV_HTTP_PORT,
    ENV_NATS_URL,
    ENV_SPEC,
    quiet_environment,
)

quiet_environment()

import bentoml  # noqa: E402  (after quiet_environment: BentoML reads it at import)
from prometheus_client import Counter, Gauge, Histogram  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

if TYPE_CHECKING:
    from kubetrade.serving.bridge import BridgeHandle
    from kubetrade.serving.model import OnnxPredictor

log = logging.getLogger(__name__)

ENV_MODEL_NAME = "KUBETRADE_MODEL_NAME"
ENV_MODEL_VERSION = "KUBETRADE_MODEL_VERSION"
SERVICE_TARGET = "kubetrade.serving.service:InferenceService"
DEFAULT_PORT = 3000
MAX_BATCH_ROWS = 10_000

REQUESTS = Counter(
    "kubetrade_inference_requests_total",
    "HTTP /predict requests by outcome (ok, bad_request, not_ready)",
    ["outcome"],
)
ROWS = Counter("kubetrade_inference_rows_total", "Feature rows predicted over HTTP")
PREDICT_LATENCY = Histogram(
    "kubetrade_inference_onnx_seconds",
    "ONNX Runtime time per HTTP /predict batch",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
)
MODEL_READY = Gauge(
    "kubetrade_inference_model_ready",
    "1 when the model is loaded and its FeatureSpec matches the code",
    multiprocess_mode="livemax",
)


class ModelChoiceError(RuntimeError):
    """The environment does not say which model to serve."""


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """Which registered model to serve."""

    name: str
    version: str


def model_choice(env: Mapping[str, str]) -> ModelChoice:
    """The model named by KUBETRADE_MODEL_NAME/VERSION, else by the bot spec's ``spec.model``."""
    name = env.get(ENV_MODEL_NAME)
    if name:
        return ModelChoice(name, env.get(ENV_MODEL_VERSION) or "latest")
    raw = env.get(ENV_SPEC)
    if not raw:
        raise ModelChoiceError(
            f"no model to serve: set {ENV_MODEL_NAME} (and optionally {ENV_MODEL_VERSION}) "
            f"or {ENV_SPEC} (a TradingBot as JSON, whose spec.model names the model)"
        )
    from kubetrade.spec import TradingBot

    model = TradingBot.model_validate_json(raw).spec.model
    return ModelChoice(model.name, model.version)


def serve_command(env: Mapping[str, str] | None = None) -> list[str]:
    """The ``bentoml serve`` command of the inference worker, bound to KUBETRADE_HTTP_HOST/PORT."""
    env = os.environ if env is None else env
    host = env.get(ENV_HTTP_HOST) or "127.0.0.1"
    port = env.get(ENV_HTTP_PORT) or str(DEFAULT_PORT)
    if not port.isdigit():
        raise ValueError(f"{ENV_HTTP_PORT}={port!r} is not a port number")
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        SERVICE_TARGET,
        "--host",
        host,
        "--port",
        port,
    ]


class BatchError(ValueError):
    """A /predict request the model cannot answer; the message says what to fix."""


def check_batch(
    rows: Sequence[Sequence[float]], names: Sequence[str], expected: Sequence[str]
) -> None:
    """Refuse a batch whose feature names, row widths or values the model cannot take."""
    if not rows:
        raise BatchError("empty batch: send at least one row of features")
    if list(names) != list(expected):
        raise BatchError(
            f"feature names do not match the model: expected {list(expected)}, "
            f"got {list(names)}; send the features in the model's order (GET /model)"
        )
    width = len(expected)
    for index, row in enumerate(rows):
        if len(row) != width:
            raise BatchError(
                f"row {index} has {len(row)} values; the model takes {width} features "
                f"{list(expected)}"
            )
        for column, value in enumerate(row):
            if not math.isfinite(value):
                raise BatchError(
                    f"row {index} feature {expected[column]!r} is {value}: features must be "
                    "finite numbers (rows still in the feature warm-up cannot be predicted)"
                )


class PredictResponse(BaseModel):
    """Probabilities that the price goes up, one per row, and the model that gave them."""

    probabilities: list[float]
    model_name: str
    model_version: str
    feature_hash: str


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _model_info(_: Request) -> JSONResponse:
    service: InferenceService = bentoml.get_current_service()
    return JSONResponse(service.model_info(), status_code=200)


# GET routes: BentoML APIs answer POST only; this app is consulted after BentoML's own routes.
info_app = Starlette(routes=[Route("/model", _model_info, methods=["GET"])])


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(name="kubetrade-inference", workers=1, traffic={"timeout": 30})
class InferenceService:
    """Serves ``/predict``, ``/model``, ``/livez``, ``/readyz`` and ``/metrics``."""

    def __init__(self) -> None:
        self.predictor: OnnxPredictor | None = None
        self.not_ready_reason: str | None = None
        self.bridge: BridgeHandle | None = None
        self._load(os.environ)
        if self.predictor is not None and os.environ.get(ENV_NATS_URL):
            from kubetrade.serving.bridge import start_bridge

            self.bridge = start_bridge(self.predictor)
            log.info("nats bridge started", extra={"nats_url": os.environ[ENV_NATS_URL]})

    def _load(self, env: Mapping[str, str]) -> None:
        from kubetrade.features import FeatureMismatchError, default_feature_spec
        from kubetrade.onnx_export.registry import ModelNotFoundError, RegistryError
        from kubetrade.serving.model import OnnxPredictor

        started = time.perf_counter()
        try:
            choice = model_choice(env)
            self.predictor = OnnxPredictor.load(choice.name, choice.version)
            self.predictor.check(default_feature_spec())
        except FeatureMismatchError as error:
            self.not_ready_reason = f"model feature mismatch: {error}"
        except (ModelChoiceError, ModelNotFoundError, RegistryError, ValueError) as error:
            self.not_ready_reason = f"model not loaded: {error}"
        MODEL_READY.set(0 if self.not_ready_reason else 1)
        if self.not_ready_reason:
            log.error("inference not ready", extra={"reason": self.not_ready_reason})
        else:
            log.info(
                "inference ready",
                extra={"load_seconds": round(time.perf_counter() - started, 3)},
            )

    def readiness(self) -> tuple[bool, str]:
        """Whether the service may get traffic, and why not."""
        if self.not_ready_reason:
            return False, self.not_ready_reason
        if self.bridge is not None and not self.bridge.ready:
            status = self.bridge.status()
            return False, f"nats bridge {status['state']}: {status['message']}"
        return True, "ready"

    def __is_ready__(self) -> bool:
        ready, reason = self.readiness()
        if not ready:
            # BentoML answers a plain False with a generic text; raising puts the reason on
            # the wire, where kubectl describe and the operator show it.
            raise HTTPException(status_code=503, detail=reason)
        return True

    def model_info(self) -> dict[str, Any]:
        """The served model's metadata, with readiness (the body of GET /model)."""
        ready, reason = self.readiness()
        info: dict[str, Any] = {"ready": ready, "reason": reason}
        if self.predictor is not None:
            info["model"] = self.predictor.describe()
        if self.bridge is not None:
            info["bridge"] = self.bridge.status()
        return info

    # _bentoml_sdk ships no py.typed, so mypy sees its decorators as untyped.
    @bentoml.api(output_spec=PredictResponse)  # type: ignore[untyped-decorator]
    def predict(
        self,
        rows: Annotated[list[list[float]], Field(max_length=MAX_BATCH_ROWS)],
        feature_names: list[str],
    ) -> PredictResponse | JSONResponse:
        """Probability of up for each row of features, given in the model's feature order."""
        # Only the model decides: a reconnecting NATS bridge does not stop HTTP predictions.
        if self.not_ready_reason or self.predictor is None:
            REQUESTS.labels("not_ready").inc()
            return _error(503, self.not_ready_reason or "model not loaded")
        try:
            check_batch(rows, feature_names, self.predictor.feature_names)
        except BatchError as error:
            REQUESTS.labels("bad_request").inc()
            return _error(422, str(error))
        started = time.perf_counter()
        probabilities = self.predictor.predict_proba(rows)
        PREDICT_LATENCY.observe(time.perf_counter() - started)
        REQUESTS.labels("ok").inc()
        ROWS.inc(len(rows))
        return PredictResponse(
            probabilities=probabilities.tolist(),
            model_name=self.predictor.model_name,
            model_version=self.predictor.model_version,
            feature_hash=self.predictor.feature_hash,
        )

    @bentoml.on_shutdown  # type: ignore[untyped-decorator]
    def stop_bridge(self) -> None:
        """Stop the NATS bridge before the worker exits (it finishes its current batch)."""
        if self.bridge is not None:
            self.bridge.stop()
            log.info("nats bridge stopped")
