"""Adaptive micro-batching of validated requests into ONNX Runtime calls."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from prometheus_client import Histogram

if TYPE_CHECKING:
    import numpy as np

    from kubetrade.modelstore.predictor import OnnxPredictor

# Adaptive batching sends at most this many rows (or windows) to ONNX Runtime at once.
BATCH_MAX_ROWS = 1024

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


class Batcher:
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
