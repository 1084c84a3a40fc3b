"""Structured logs, OpenTelemetry traces and the W3C trace context carried in NATS headers.

Exporters are chosen by the environment: ``OTEL_EXPORTER_OTLP_ENDPOINT`` sends spans over
OTLP/HTTP; ``KUBETRADE_TRACE_FILE`` appends them as JSON lines (tests read that file); with
neither, spans are still created so the context joins across processes, and then dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Tracer

from kubetrade.settings import ENV_TRACE_FILE

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the ``extra=`` fields of each call kept as keys."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup_logging(component: str, level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Send this process's logs as JSON lines to stderr (or ``stream``)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("nats", "asyncio", "aiohttp.access", "bentoml", "httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


LIBRARY_LOGGERS = ("bentoml", "uvicorn", "uvicorn.error", "uvicorn.access", "circus")


def adopt_library_loggers(names: Sequence[str] = LIBRARY_LOGGERS) -> None:
    """Send loggers that a server library gave handlers of its own through the root's handler.

    ``bentoml serve`` configures bentoml, uvicorn and circus with a text format before it
    imports the service; after this their lines are JSON like every other line of the pod.
    """
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file as JSON lines; safe across processes (O_APPEND)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the spans."""
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            if ctx is None:
                continue
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": f"{ctx.trace_id:032x}",
                        "span_id": f"{ctx.span_id:016x}",
                        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                        "service": span.resource.attributes.get("service.name"),
                        "start": span.start_time,
                        "end": span.end_time,
                        "attributes": dict(span.attributes or {}),
                    }
                )
            )
        with self._lock, open(self._path, "a", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS


def setup_tracing(
    service: str, bot: str, env: Mapping[str, str] | None = None, *, install: bool = True
) -> TracerProvider:
    """A tracer provider with exporters chosen by the environment, installed globally unless
    ``install`` is false (inside BentoML, whose process may own the global provider)."""
    env = os.environ if env is None else env
    resource = Resource.create(
        {"service.name": env.get("OTEL_SERVICE_NAME", service), "kubetrade.bot": bot}
    )
    global _RECORDING
    _RECORDING = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(ENV_TRACE_FILE))
    # Nobody collects spans here: record nothing (context still propagates, see
    # ``span_or_passthrough``), which keeps span bookkeeping off the per-candle path.
    sampler = None if _RECORDING else ParentBased(ALWAYS_OFF)
    provider = TracerProvider(resource=resource, sampler=sampler)
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace_file = env.get(ENV_TRACE_FILE)
    if trace_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
    if install:
        trace.set_tracer_provider(provider)
    return provider


_RECORDING = False


def recording() -> bool:
    """True when this process exports spans (set by :func:`setup_tracing`)."""
    return _RECORDING


@contextlib.contextmanager
def hop(
    tracer: Tracer,
    name: str,
    incoming: Mapping[str, str] | None,
    attributes: Mapping[str, Any],
    headers: dict[str, str],
) -> Iterator[dict[str, str]]:
    """One hop of a candle's journey: yields ``headers`` with the trace context to send on.

    When this process records spans, the hop runs in a span (a child of the trace in
    ``incoming``, if any) whose context goes into the headers. When it does not, there is no
    span and the incoming context passes through unchanged, so the trace still joins across
    the processes that do record.
    """
    if not _RECORDING:
        for key in ("traceparent", "tracestate"):
            if incoming and key in incoming:
                headers[key] = incoming[key]
        yield headers
        return
    with tracer.start_as_current_span(
        name, context=context_from_headers(incoming), attributes=dict(attributes)
    ):
        inject(headers)
        yield headers


def context_from_headers(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context a message carried, to parent the spans that handle it."""
    return extract(dict(headers or {}))
