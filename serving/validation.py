"""Validation of inference requests: each request is checked on its own, before batching.

A request the model cannot answer raises :class:`BatchError` naming the problem (the service
answers it with 422); a valid one becomes the float32 array the model takes. numpy is imported
inside the functions: the BentoML arbiter imports this module too and never predicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

from kubetrade.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np


class BatchError(InvalidInputError):
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


# Bounds that no real candle reaches: a larger value is a unit error or a forgery, and would
# overflow the int64/float arithmetic of the features (a 500 instead of a 4xx).
MAX_OPEN_TIME_MS = 32_503_680_000_000  # 3000-01-01
MAX_PRICE = 1e9
MAX_VOLUME = 1e18
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Request bodies above this are refused (413) before anything reads or parses them."""

Price = Annotated[float, Field(gt=0, le=MAX_PRICE, allow_inf_nan=False)]


class CandleIn(BaseModel):
    """One closed candle of the symbol, as the feed publishes it."""

    open_time: int = Field(ge=0, le=MAX_OPEN_TIME_MS, description="Open time, ms UTC.")
    open: Price
    high: Price
    low: Price
    close: Price
    volume: float = Field(ge=0, le=MAX_VOLUME, allow_inf_nan=False)


class BodyLimit:
    """ASGI middleware: a request body above ``max_bytes`` is answered 413 at once, by its
    Content-Length when it has one, else as soon as the streamed bytes pass the limit."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            await self._refuse(send, length.decode("latin-1"))
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLargeError(f"request body above {self.max_bytes} bytes")
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLargeError:
            await self._refuse(send, f"more than {seen}")

    async def _refuse(self, send: Any, length: str) -> None:
        body = (
            f'{{"error": "request body of {length} bytes is above the {self.max_bytes}-byte '
            'limit: send fewer rows or candles per request"}'
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyTooLargeError(InvalidInputError):
    """A streamed request body passed the limit."""


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
