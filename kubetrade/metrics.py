"""Prometheus metrics of the workers. One registry per process; each worker uses its own."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

CANDLES_PUBLISHED = Counter(
    "kubetrade_candles_published_total", "Closed candles the feed published", ["bot", "symbol"]
)
CANDLES_RECEIVED = Counter(
    "kubetrade_candles_received_total", "Candles the inference bridge received", ["bot"]
)
SIGNALS_PUBLISHED = Counter(
    "kubetrade_signals_published_total", "Signals published (with a prediction)", ["bot"]
)
SIGNALS_PROCESSED = Counter(
    "kubetrade_signals_processed_total", "Signals the executor processed", ["bot"]
)
ORDERS = Counter("kubetrade_orders_total", "Orders decided", ["bot", "side", "reason"])
FILLS = Counter("kubetrade_fills_total", "Fills", ["bot", "side", "reason"])
ORDERS_REFUSED = Counter(
    "kubetrade_orders_refused_total",
    "Orders refused before or by the exchange (its market rules, funds, never received)",
    ["bot", "reason"],
)
DEAD_LETTERS = Counter(
    "kubetrade_dead_letters_total",
    "Messages that could not be decoded and went to the dead-letter subject",
    ["bot", "component"],
)
ERRORS = Counter(
    "kubetrade_errors_total", "Errors by component and kind", ["bot", "component", "kind"]
)
PREDICT_SECONDS = Histogram(
    "kubetrade_predict_seconds",
    "Features plus ONNX prediction per micro-batch",
    ["bot"],
    buckets=_LATENCY_BUCKETS,
)
DECISION_SECONDS = Histogram(
    "kubetrade_decision_latency_seconds",
    "Candle published by the feed -> order decision in the executor",
    ["bot"],
    buckets=_LATENCY_BUCKETS,
)
DB_WRITE_SECONDS = Histogram(
    "kubetrade_db_write_seconds",
    "One database batch write",
    ["bot", "component"],
    buckets=_LATENCY_BUCKETS,
)
EQUITY = Gauge("kubetrade_equity", "Account equity in the quote currency", ["bot"])
DRAWDOWN = Gauge(
    "kubetrade_drawdown_ratio",
    "Equity below its peak, as a fraction of the peak (what the drawdown breaker compares)",
    ["bot"],
)
DRAWDOWN_BREAKER = Gauge(
    "kubetrade_drawdown_breaker_ratio",
    "The bot's maxDrawdownPct breaker as a fraction (absent when it has none)",
    ["bot"],
)
OPEN_POSITIONS = Gauge("kubetrade_open_positions", "Open positions", ["bot"])
HALTED = Gauge(
    "kubetrade_halted", "1 when new entries are halted by a breaker or kill switch", ["bot"]
)

# Progress and lag, per component (feed, inference, executor). Alert rules use these names.
LAST_PROGRESS = Gauge(
    "kubetrade_last_progress_timestamp_seconds",
    "Unix time of the component's last progress: a candle published, a signal produced or a "
    "decision taken",
    ["bot", "component"],
)
LAST_PROGRESS_AGE = Gauge(
    "kubetrade_last_progress_age_seconds",
    "Seconds since the component's last progress (since start-up before the first one)",
    ["bot", "component"],
)
CANDLE_LAG = Gauge(
    "kubetrade_candle_lag_seconds",
    "Now minus the close time of the newest candle the component handled (a replay lags by "
    "the age of its history)",
    ["bot", "component"],
)
CONSUMER_PENDING = Gauge(
    "kubetrade_consumer_pending_messages",
    "Messages waiting for the component's durable consumer: not yet delivered plus delivered "
    "but not acknowledged",
    ["bot", "component"],
)
STALLED = Gauge(
    "kubetrade_stalled",
    "1 while the component has work waiting but made no progress within its expected "
    "interval (liveness fails)",
    ["bot", "component"],
)
ADMISSION_REFUSED = Counter(
    "kubetrade_admission_refused_total",
    "Well-formed messages refused by admission (wrong bot, symbol, time or price) and "
    "dead-lettered",
    ["bot", "component", "reason"],
)
