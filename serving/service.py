"""The inference service: one ONNX model behind BentoML's HTTP API and the NATS bridge.

Any registered model serves: XGBoost (rows of features), LSTM/Transformer (windows of rows) or
an ensemble, all one ONNX Runtime session. ``POST /predict`` takes a batch of feature rows (or
windows of rows, for a windowed model) with their feature names; ``POST /signal`` takes recent
candles of one symbol and answers the signal the NATS bridge would publish for the last one.
Bad requests get 4xx with a message naming the problem. Predictions are batched adaptively
(``batching.Batcher``) after each request is validated on its own (``validation``): BentoML's
``batchable=True`` takes a single argument, so one bad request would fail every request batched
with it, and its dispatcher, driven directly, shed requests with 503 under 16 clients on two
cores while it trained its latency model.

Run it with ``bentoml serve kubetrade.serving.service:InferenceService --host H --port P``
(``serve_command()`` builds that command; ``kubetrade worker inference`` execs it). BentoML
starts an arbiter process and one worker process; the worker loads the model once, and when
``KUBETRADE_NATS_URL`` is set it also runs the NATS bridge on a thread of its own, so HTTP
and NATS share the one model in memory. SIGTERM or SIGINT to the arbiter stops both cleanly.

The model is named by ``KUBETRADE_MODEL_NAME``/``KUBETRADE_MODEL_VERSION`` or, without them,
by ``spec.model`` of the bot in ``KUBETRADE_SPEC``. A model that cannot be loaded, or whose
FeatureSpec this code does not compute, leaves the service up (``/livez`` ok) but not ready:
``/readyz`` answers 503 with the reason, naming both feature lists on a mismatch. A bot whose
strategy uses no model (a rule) loads none: the bridge computes the strategy's features, and
``/predict`` and ``/signal`` answer 503.

This module is imported by the arbiter too: heavy imports (numpy, onnxruntime, the feature
code) happen inside the worker only, in ``InferenceService.__init__``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from kubetrade.settings import (
    ENV_HTTP_HOST,
    ENV_HTTP_PORT,
    ENV_LOG_LEVEL,
    ENV_NATS_URL,
    ENV_SPEC,
    quiet_environment,
)
from kubetrade.telemetry import adopt_library_loggers, setup_logging

quiet_environment()
# BentoML imports this module in its arbiter and in its worker, each time after configuring
# its own text log format: from here on every line of both processes is JSON.
setup_logging("inference", os.environ.get(ENV_LOG_LEVEL, "INFO"))
adopt_library_loggers()

import bentoml  # noqa: E402  (after quiet_environment: BentoML reads it at import)
from prometheus_client import Counter, Gauge  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from kubetrade.errors import InvalidInputError, KubetradeError  # noqa: E402
from kubetrade.serving.batching import Batcher  # noqa: E402
from kubetrade.serving.validation import (  # noqa: E402
    MAX_BODY_BYTES,
    BatchError,
    BodyLimit,
    CandleIn,
    check_batch,
    check_candles,
)

if TYPE_CHECKING:
    from kubetrade.modelstore.predictor import OnnxPredictor
    from kubetrade.serving.bridge import BridgeHandle

log = logging.getLogger(__name__)

ENV_MODEL_NAME = "KUBETRADE_MODEL_NAME"
ENV_MODEL_VERSION = "KUBETRADE_MODEL_VERSION"
SERVICE_TARGET = "kubetrade.serving.service:InferenceService"
DEFAULT_PORT = 3000
MAX_BATCH_ROWS = 10_000
MAX_SIGNAL_CANDLES = 5_000

REQUESTS = Counter(
    "kubetrade_inference_requests_total",
    "HTTP /predict and /signal requests by endpoint and outcome (ok, bad_request, not_ready)",
    ["endpoint", "outcome"],
)
ROWS = Counter("kubetrade_inference_rows_total", "Feature rows or windows predicted over HTTP")
MODEL_READY = Gauge(
    "kubetrade_inference_model_ready",
    "1 when the model is loaded and its FeatureSpec matches the code",
    multiprocess_mode="livemax",
)


class ModelChoiceError(InvalidInputError):
    """The environment does not say which model to serve."""


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """Which registered model to serve."""

    name: str
    version: str


def model_choice(env: Mapping[str, str]) -> ModelChoice | None:
    """The model named by KUBETRADE_MODEL_NAME/VERSION, else by the bot spec's ``spec.model``;
    None for a bot whose strategy uses no model."""
    name = env.get(ENV_MODEL_NAME)
    if name:
        return ModelChoice(name, env.get(ENV_MODEL_VERSION) or "latest")
    raw = env.get(ENV_SPEC)
    if not raw:
        raise ModelChoiceError(
            f"no model to serve: set {ENV_MODEL_NAME} (and optionally {ENV_MODEL_VERSION}) "
            f"or {ENV_SPEC} (a TradingBot as JSON, whose spec.model names the model)"
        )
    from pydantic import ValidationError

    from kubetrade.spec import TradingBot

    try:
        model = TradingBot.model_validate_json(raw).spec.model
    except ValidationError as error:
        raise ModelChoiceError(
            f"{ENV_SPEC} is not a valid TradingBot ({error.error_count()} problems, first: "
            f"{error.errors()[0]['msg']}); set it from the rendered ConfigMap"
        ) from None
    return None if model is None else ModelChoice(model.name, model.version)


def serve_command(env: Mapping[str, str] | None = None) -> list[str]:
    """The ``bentoml serve`` command of the inference worker, bound to KUBETRADE_HTTP_HOST/PORT."""
    env = os.environ if env is None else env
    host = env.get(ENV_HTTP_HOST) or "127.0.0.1"
    port = env.get(ENV_HTTP_PORT) or str(DEFAULT_PORT)
    if not port.isdigit():
        raise InvalidInputError(f"{ENV_HTTP_PORT}={port!r} is not a port number")
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


class PredictResponse(BaseModel):
    """Probabilities that the price goes up, one per row, and the model that gave them."""

    probabilities: list[float]
    model_name: str
    model_version: str
    feature_hash: str


class SignalResponse(BaseModel):
    """The signal of the last candle sent: what the NATS bridge publishes for it."""

    symbol: str
    open_time: int
    prob_up: float
    direction: str
    confidence: float
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
        self._batcher: Batcher | None = None
        self.uses_model = True
        self._load(os.environ)
        serves = self.predictor is not None or not self.uses_model
        if serves and os.environ.get(ENV_NATS_URL):
            from kubetrade.serving.bridge import start_bridge

            self.bridge = start_bridge(self.predictor)
            log.info("nats bridge started", extra={"nats_url": os.environ[ENV_NATS_URL]})

    def _load(self, env: Mapping[str, str]) -> None:
        from kubetrade.features import FeatureMismatchError
        from kubetrade.modelstore.modelcar import ENV_MODEL_IMPORT_DIR, import_models
        from kubetrade.modelstore.predictor import OnnxPredictor

        started = time.perf_counter()
        try:
            choice = model_choice(env)
            if choice is None:
                # A rule-only bot: the bridge computes the strategy's features, no model loads.
                self.uses_model = False
                MODEL_READY.set(0)
                log.info("inference ready without a model: the bot's strategy uses none")
                return
            if env.get(ENV_MODEL_IMPORT_DIR):
                # A model image's files, copied here by the init container (modelcar).
                import_models(Path(env[ENV_MODEL_IMPORT_DIR]))
            self.predictor = OnnxPredictor.load(choice.name, choice.version)
            self.predictor.check_computable()
        except FeatureMismatchError as error:
            self.not_ready_reason = f"model feature mismatch: {error}"
        except KubetradeError as error:
            self.not_ready_reason = f"model not loaded: {error}"
        MODEL_READY.set(0 if self.not_ready_reason else 1)
        if self.predictor is not None:
            self._batcher = Batcher(self.predictor)
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

    def __is_alive__(self) -> bool:
        # /livez: a bridge stalled with candles waiting fails it, so the pod is restarted.
        if self.bridge is not None:
            live, reason = self.bridge.liveness()
            if not live:
                raise HTTPException(status_code=503, detail=f"nats bridge {reason}")
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

    def _serving(self, endpoint: str) -> tuple[OnnxPredictor, Batcher] | JSONResponse:
        # Only the model decides: a reconnecting NATS bridge does not stop HTTP predictions.
        if self.not_ready_reason or self.predictor is None or self._batcher is None:
            REQUESTS.labels(endpoint, "not_ready").inc()
            reason = self.not_ready_reason or (
                "model not loaded" if self.uses_model else "this bot's strategy uses no model"
            )
            return _error(503, reason)
        return self.predictor, self._batcher

    # _bentoml_sdk ships no py.typed, so mypy sees its decorators as untyped.
    @bentoml.api(output_spec=PredictResponse)  # type: ignore[untyped-decorator]
    async def predict(
        self,
        feature_names: list[str],
        rows: Annotated[list[list[float]] | None, Field(max_length=MAX_BATCH_ROWS)] = None,
        windows: Annotated[list[list[list[float]]] | None, Field(max_length=MAX_BATCH_ROWS)] = None,
    ) -> PredictResponse | JSONResponse:
        """Probability of up per row of features (``rows``, tabular models) or per window of
        consecutive rows, oldest first (``windows``, LSTM/Transformer/ensemble models), given
        in the model's feature order."""
        serving = self._serving("predict")
        if isinstance(serving, JSONResponse):
            return serving
        predictor, batcher = serving
        try:
            batch = check_batch(
                rows, feature_names, predictor.feature_names, predictor.window, windows
            )
        except BatchError as error:
            REQUESTS.labels("predict", "bad_request").inc()
            return _error(422, str(error))
        probabilities = await batcher(batch)
        REQUESTS.labels("predict", "ok").inc()
        ROWS.inc(len(batch))
        return PredictResponse(
            probabilities=probabilities.tolist(),
            model_name=predictor.model_name,
            model_version=predictor.model_version,
            feature_hash=predictor.feature_hash,
        )

    @bentoml.api(output_spec=SignalResponse)  # type: ignore[untyped-decorator]
    async def signal(
        self,
        candles: Annotated[list[CandleIn], Field(max_length=MAX_SIGNAL_CANDLES)],
        symbol: str = "UNKNOWN",
        timeframe: str | None = None,
    ) -> SignalResponse | JSONResponse:
        """The signal of the last of ``candles`` (consecutive closed candles of one symbol,
        oldest first, at least the model's warm-up plus window - 1): features by the shared
        feature code, then the model."""
        serving = self._serving("signal")
        if isinstance(serving, JSONResponse):
            return serving
        predictor, batcher = serving
        from kubetrade.domain import TIMEFRAME_MS
        from kubetrade.features import compute_features
        from kubetrade.signals import to_prediction

        chosen = timeframe or predictor.metadata.training.timeframe
        if chosen not in TIMEFRAME_MS:
            REQUESTS.labels("signal", "bad_request").inc()
            return _error(422, f"unknown timeframe {chosen!r}; use one of {list(TIMEFRAME_MS)}")
        needed = predictor.warmup + predictor.window - 1
        try:
            columns = check_candles(candles, TIMEFRAME_MS[chosen], needed)
        except BatchError as error:
            REQUESTS.labels("signal", "bad_request").inc()
            return _error(422, str(error))
        # Only the candles the last prediction depends on: features are settled after the
        # warm-up, so older candles change nothing but the cost.
        recent = {name: values[-needed:] for name, values in columns.items()}
        features = compute_features(recent, predictor.feature_spec)[-predictor.window :]
        model_input = features if predictor.window == 1 else features[None, :, :]
        (prob_up,) = (await batcher(model_input.astype("float32"))).tolist()
        prediction = to_prediction(float(prob_up), predictor)
        REQUESTS.labels("signal", "ok").inc()
        return SignalResponse(
            symbol=symbol,
            open_time=int(columns["open_time"][-1]),
            prob_up=prediction.prob_up,
            direction=prediction.direction.value,
            confidence=prediction.confidence,
            model_name=prediction.model_name,
            model_version=prediction.model_version,
            feature_hash=prediction.feature_hash,
        )

    @bentoml.on_shutdown  # type: ignore[untyped-decorator]
    def stop_bridge(self) -> None:
        """Stop the NATS bridge before the worker exits (it finishes its current batch)."""
        if self.bridge is not None:
            self.bridge.stop()
            log.info("nats bridge stopped")


# Outermost: an oversized body is refused before BentoML reads or parses any of it.
# (The decorator makes InferenceService a bentoml Service; mypy sees the class.)
InferenceService.add_asgi_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)  # type: ignore[attr-defined]
