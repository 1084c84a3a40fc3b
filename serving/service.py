"""The inference service: one ONNX model behind BentoML's HTTP API and the NATS bridge.

Any registered model serves: XGBoost (rows of features), LSTM/Transformer (windows of rows) or
an ensemble, all one ONNX Runtime session. ``POST /predict`` takes a batch of feature rows (or
windows of rows, for a windowed model) with their feature names; ``POST /signal`` takes recent
candles of one symbol and answers the signal the NATS bridge would publish for the last one.
Bad requests get 4xx with a message naming the problem. Predictions are batched adaptively
after each request is validated on its own (``_Batcher``): BentoML's ``batchable=True`` takes a
single argument, so one bad request would fail every request batched with it, and its
dispatcher, driven directly, shed requests with 503 under 16 clients on two cores while it
trained its latency model.

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

import asyncio
import logging
import os
import sys
import time
from collections import deque
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
    import numpy as np

    from kubetrade.modelstore.predictor import OnnxPredictor
    from kubetrade.serving.bridge import BridgeHandle

log = logging.getLogger(__name__)

ENV_MODEL_NAME = "KUBETRADE_MODEL_NAME"
ENV_MODEL_VERSION = "KUBETRADE_MODEL_VERSION"
SERVICE_TARGET = "kubetrade.serving.service:InferenceService"
DEFAULT_PORT = 3000
MAX_BATCH_ROWS = 10_000
MAX_SIGNAL_CANDLES = 5_000
# Adaptive batching sends at most this many rows (or windows) to ONNX Runtime at once.
BATCH_MAX_ROWS = 1024

REQUESTS = Counter(
    "kubetrade_inference_requests_total",
    "HTTP /predict and /signal requests by endpoint and outcome (ok, bad_request, not_ready)",
    ["endpoint", "outcome"],
)
ROWS = Counter("kubetrade_inference_rows_total", "Feature rows or windows predicted over HTTP")
PREDICT_LATENCY = Histogram(
    "kubetrade_inference_onnx_seconds",
    "ONNX Runtime time per batch the adaptive batcher sends",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
)
BATCH_ROWS = Histogram(
    "kubetrade_inference_batch_rows",
    "Rows (or windows) per ONNX Runtime call after adaptive batching",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_REQUESTS = Histogram(
    "kubetrade_inference_batch_requests",
    "HTTP requests merged into one ONNX Runtime call by adaptive batching",
    buckets=(1, 2, 4, 8, 16, 32, 64),
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
    """A request the model cannot answer; the message says what to fix."""


def _shape(window: int, width: int) -> str:
    return f"[n, {width}]" if window == 1 else f"[n, {window}, {width}]"


def _check_finite(batch: np.ndarray, expected: Sequence[str], window: int) -> None:
    import numpy as np

    bad = np.argwhere(~np.isfinite(batch))
    if bad.shape[0]:
        first = [int(i) for i in bad[0]]
        where = f"row {first[0]}" if window == 1 else f"window {first[0]} row {first[1]}"
        raise BatchError(
            f"{where} feature {expected[first[-1]]!r} is {batch[tuple(first)]}: features must "
            "be finite numbers (rows still in the feature warm-up cannot be predicted)"
        )


def check_batch(
    rows: Sequence[Sequence[Any]] | None,
    names: Sequence[str],
    expected: Sequence[str],
    window: int = 1,
    windows: Sequence[Sequence[Sequence[Any]]] | None = None,
) -> np.ndarray:
    """The request's inputs as float32 ``[n, features]`` (``window == 1``) or
    ``[n, window, features]``; BatchError naming the problem when the model cannot take them."""
    import numpy as np

    width = len(expected)
    if window == 1 and windows is not None:
        raise BatchError(
            f"this model takes single rows of features, shape {_shape(1, width)}: send them as "
            "`rows`, not `windows`"
        )
    if window > 1 and windows is None:
        raise BatchError(
            f"this model takes windows of {window} consecutive feature rows, oldest first "
            f"(shape {_shape(window, width)}): send them as `windows`"
        )
    inputs: Sequence[Any] = (rows if window == 1 else windows) or []
    if not inputs:
        raise BatchError("empty batch: send at least one row of features")
    if list(names) != list(expected):
        raise BatchError(
            f"feature names do not match the model: expected {list(expected)}, "
            f"got {list(names)}; send the features in the model's order (GET /model)"
        )
    matrices = [inputs] if window == 1 else inputs
    for w, matrix in enumerate(matrices):
        if window > 1 and len(matrix) != window:
            raise BatchError(
                f"window {w} has {len(matrix)} rows; the model takes windows of exactly "
                f"{window} rows (shape {_shape(window, width)})"
            )
        for index, row in enumerate(matrix):
            if len(row) != width:
                where = f"row {index}" if window == 1 else f"window {w} row {index}"
                raise BatchError(
                    f"{where} has {len(row)} values; the model takes {width} features "
                    f"{list(expected)}"
                )
    batch = np.asarray(inputs, dtype=np.float32)
    _check_finite(batch, expected, window)
    return batch


class CandleIn(BaseModel):
    """One closed candle of the symbol, as the feed publishes it."""

    open_time: int = Field(description="Open time, ms UTC.")
    open: float
    high: float
    low: float
    close: float
    volume: float


def check_candles(candles: Sequence[CandleIn], step_ms: int, needed: int) -> dict[str, np.ndarray]:
    """The candles as feature-code columns; BatchError unless they are enough, in order and
    gap-free on the timeframe grid, with sane prices."""
    import numpy as np

    if len(candles) < needed:
        raise BatchError(
            f"{len(candles)} candles are too few: the model needs the last {needed} (feature "
            "warm-up plus its window) to compute the signal of the last one"
        )
    for index, candle in enumerate(candles):
        prices = (candle.open, candle.high, candle.low, candle.close)
        if not (
            all(np.isfinite(p) and p > 0 for p in prices)
            and np.isfinite(candle.volume)
            and candle.volume >= 0
            and candle.high >= max(candle.open, candle.close, candle.low)
            and candle.low <= min(candle.open, candle.close)
        ):
            raise BatchError(
                f"candle {index} ({candle.open_time}) has impossible prices: they must be "
                "positive with low <= open, close <= high, volume finite and non-negative"
            )
        if index and candle.open_time - candles[index - 1].open_time != step_ms:
            raise BatchError(
                f"candle {index} opens at {candle.open_time}, not {step_ms} ms after candle "
                f"{index - 1} ({candles[index - 1].open_time}): send consecutive candles, oldest "
                "first, without gaps"
            )
    return {
        "open_time": np.array([c.open_time for c in candles], dtype=np.int64),
        **{
            column: np.array([getattr(c, column) for c in candles], dtype=np.float64)
            for column in ("open", "high", "low", "close", "volume")
        },
    }


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
        self._batcher: _Batcher | None = None
        self._load(os.environ)
        if self.predictor is not None and os.environ.get(ENV_NATS_URL):
            from kubetrade.serving.bridge import start_bridge

            self.bridge = start_bridge(self.predictor)
            log.info("nats bridge started", extra={"nats_url": os.environ[ENV_NATS_URL]})

    def _load(self, env: Mapping[str, str]) -> None:
        from kubetrade.features import FeatureMismatchError, default_feature_spec
        from kubetrade.modelstore.predictor import OnnxPredictor
        from kubetrade.modelstore.registry import ModelNotFoundError, RegistryError

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
        if self.predictor is not None:
            self._batcher = _Batcher(self.predictor)
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

    def _serving(self, endpoint: str) -> tuple[OnnxPredictor, _Batcher] | JSONResponse:
        # Only the model decides: a reconnecting NATS bridge does not stop HTTP predictions.
        if self.not_ready_reason or self.predictor is None or self._batcher is None:
            REQUESTS.labels(endpoint, "not_ready").inc()
            return _error(503, self.not_ready_reason or "model not loaded")
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


class _Batcher:
    """Adaptive micro-batching: requests that arrive while the model runs go in its next call.

    An idle model takes a request at once (no batching window, so no added latency); under
    load, everything queued meanwhile (up to BATCH_MAX_ROWS rows) becomes one ONNX Runtime
    call, so the batch size follows the load. The model runs on a worker thread: the event
    loop keeps accepting requests while it does.
    """

    def __init__(self, predictor: OnnxPredictor) -> None:
        self.predictor = predictor
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._draining = False

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append((batch, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        jobs = [self._queue.popleft()]
        rows = len(jobs[0][0])
        while self._queue and rows + len(self._queue[0][0]) <= BATCH_MAX_ROWS:
            jobs.append(self._queue.popleft())
            rows += len(jobs[-1][0])
        return jobs

    async def _drain(self) -> None:
        import anyio
        import numpy as np

        try:
            while self._queue:
                jobs = self._take()
                inputs = [batch for batch, _ in jobs]
                merged = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
                BATCH_REQUESTS.observe(len(jobs))
                BATCH_ROWS.observe(len(merged))
                started = time.perf_counter()
                try:
                    probabilities = await anyio.to_thread.run_sync(
                        self.predictor.predict_proba, merged
                    )
                except Exception as error:
                    for _, future in jobs:
                        if not future.done():
                            future.set_exception(error)
                    continue
                PREDICT_LATENCY.observe(time.perf_counter() - started)
                edges = np.cumsum([len(batch) for batch in inputs])[:-1]
                for (_, future), part in zip(jobs, np.split(probabilities, edges), strict=True):
                    if not future.done():
                        future.set_result(part)
        finally:
            self._draining = False
