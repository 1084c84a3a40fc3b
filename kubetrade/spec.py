"""The ``TradingBot`` resource: spec and status as Pydantic models.

This module is the single source of truth for the resource. The CRD in ``crds/`` is generated
from it (``make crds``), manifests are validated by it, and every worker reads its configuration
from a serialized copy of it.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kubetrade.domain import TIMEFRAME_MS, HaltCause
from kubetrade.errors import InvalidInputError
from kubetrade.strategies import Strategy, StrategyError, make_strategy
from kubetrade.strategies.builtin import Threshold, ThresholdParams
from kubetrade.venues import LIVE_VENUES, live_venue_problem
from kubetrade.yaml_documents import DocumentError, read_documents

API_GROUP = "kubetrade.io"
API_VERSION = "v1alpha1"
KIND = "TradingBot"
PLURAL = "tradingbots"

Percent = Annotated[float, Field(ge=0, le=100)]
PositivePercent = Annotated[float, Field(gt=0, le=100)]

DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
SYMBOL = re.compile(r"^[A-Z0-9]{2,12}/[A-Z0-9]{2,12}$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A bot's name also names its Service `<name>-inference`, an RFC 1035 label (a letter first, at
# most 63 characters), so the bot name starts with a letter and has at most 63 - 10 characters.
BOT_NAME_MAX = 63 - len("-inference")
BOT_NAME = re.compile(rf"^[a-z]([-a-z0-9]{{0,{BOT_NAME_MAX - 2}}}[a-z0-9])?$")


def bot_name_problem(name: str) -> str:
    """Why ``name`` cannot name a bot (the same words as the CRD's rule), for error messages."""
    rule = (
        f"must be a DNS label that starts with a letter and has at most {BOT_NAME_MAX} "
        f"characters (lowercase letters, digits and '-'; the bot's Service is "
        f"'<name>-inference', at most 63)"
    )
    if len(name) > BOT_NAME_MAX:
        return f"{rule}; got {len(name)} characters"
    if name[:1].isdigit():
        return f"{rule}; got a leading digit"
    return rule


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``"24h"``, ``"1d12h"`` or ``"90m"``."""
    match = DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30m, 24h, 1d12h")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


class _Model(BaseModel):
    """Base: camelCase on the wire, unknown fields refused (a typo must not pass silently)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        # .inf and .nan are valid YAML floats but no valid setting (JSON, and so the API server,
        # has no such numbers; report.json would end up holding Infinity).
        allow_inf_nan=False,
    )


class Mode(StrEnum):
    """Paper trading simulates fills; live sends real orders."""

    PAPER = "paper"
    LIVE = "live"


URL_NEEDS_SHA256 = (
    "an http(s) exchange.uri needs exchange.sha256 (`sha256sum FILE`), so that the feed "
    "replays exactly the file you meant"
)


def is_url(uri: str | None) -> bool:
    """True when a replay ``uri`` is an http(s) URL to download rather than a path."""
    return uri is not None and uri.lower().startswith(("http://", "https://"))


class ExchangeSpec(_Model):
    """Where candles come from: ``synthetic``, ``replay`` (a file) or a ccxt exchange id."""

    name: str = Field(
        default="synthetic",
        max_length=63,
        pattern=r"^[a-z0-9_]+$",
        description="synthetic | replay | a ccxt exchange id such as binance",
    )
    uri: str | None = Field(
        default=None,
        max_length=4096,
        description="Candle file for replay (CSV or Parquet): a path in the feed's filesystem, or "
        "an http(s) URL the feed downloads (with sha256).",
    )
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the replay file; the feed refuses a file that differs. "
        "Required for an http(s) uri.",
    )
    speed: float = Field(
        default=0,
        ge=0,
        le=1e9,
        description="Replay pacing as a multiple of real time; 0 publishes as fast as possible.",
    )
    seed: int = Field(default=7, ge=0, le=2**32 - 1, description="Seed of the synthetic generator.")
    limit: int | None = Field(
        default=None, ge=1, le=10**9, description="Stop after this many candles per symbol."
    )
    credentials_secret: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret holding apiKey/secret for live trading.",
    )
    sandbox: bool = Field(default=False, description="Use the exchange's testnet, if it has one.")
    websocket: bool = Field(
        default=True,
        description="Live candles over the exchange's WebSocket where ccxt supports it (a gap "
        "after a lost connection is filled by REST); false polls REST.",
    )

    @model_validator(mode="after")
    def _replay_needs_uri(self) -> ExchangeSpec:
        if self.name == "replay" and not self.uri:
            raise ValueError("exchange.name 'replay' needs exchange.uri (a CSV or Parquet file)")
        if is_url(self.uri) and not self.sha256:
            raise ValueError(URL_NEEDS_SHA256)
        return self

    @property
    def is_exchange(self) -> bool:
        """True when candles come from a real exchange through ccxt."""
        return self.name not in ("synthetic", "replay")


# An OCI image reference: [registry[:port]/]path[:tag][@sha256:digest], lowercase path.
IMAGE_REFERENCE = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
)


class ModelRef(_Model):
    """A registered ONNX model: name and version in the model store, and where pods get it."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    version: str = Field(
        default="latest", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        pattern=IMAGE_REFERENCE.pattern,
        description="Model image built by `kubetrade model image` (a modelcar): an init "
        "container copies its /models into the inference pod, which imports them at start.",
    )
    in_sample: bool = Field(
        default=False,
        description="Trade replayed candles inside the model's training period too (research "
        "only: the model has seen them, so the results flatter it). Without it a replay is out "
        "of sample: inference makes no prediction on those candles, and `kubetrade run` and "
        "`backtest` do not replay them; reports say which.",
    )


class BadFieldsError(ValueError):
    """Several bad fields found by one validator: ``(path relative to the validated object,
    message)`` each; ``format_errors`` names each field on its own line."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))


STRATEGY_TYPE = r"^[a-z][a-z0-9-]{0,62}$"
THRESHOLD_FIELDS = set(ThresholdParams.model_fields)


class StrategySpec(ThresholdParams):
    """The trading rule: ``type`` picks a strategy (``kubetrade strategies``), ``params`` sets it.

    The threshold strategy, the default, takes its parameters as fields of ``strategy`` itself
    (longAbove, exitBelow, ...); every other type takes them under ``params``.
    """

    type: str = Field(
        default="threshold",
        max_length=63,
        pattern=STRATEGY_TYPE,
        description="threshold | sma-crossover | ema-crossover | momentum | bollinger-reversion "
        "| rsi-reversion | hybrid | a strategy an installed package registers",
    )
    params: dict[str, Any] | None = Field(
        default=None,
        description="Parameters of a strategy other than threshold (whose parameters are the "
        "fields beside type).",
    )
    _strategy: Strategy[Any] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _builds(self) -> StrategySpec:
        self._strategy = self._resolve()
        return self

    def _resolve(self) -> Strategy[Any]:
        """The strategy, or BadFieldsError naming every bad field."""
        problems: list[tuple[str, str]] = []
        if self.type != "threshold":
            # Only a changed value is refused: the API server fills in every default, so a
            # stored sma-crossover bot carries longAbove: 0.6 and the rest.
            problems += [
                (
                    to_camel(name),
                    f"applies to type threshold only; set the parameters of "
                    f"{self.type} under params",
                )
                for name in sorted(THRESHOLD_FIELDS & self.model_fields_set)
                if getattr(self, name) != ThresholdParams.model_fields[name].default
            ]
        elif self.params is not None:
            problems.append(
                (
                    "params",
                    "the threshold strategy takes its parameters as fields of strategy "
                    "(longAbove, exitBelow, ...), not params",
                )
            )
        strategy: Strategy[Any] | None = None
        try:
            strategy = (
                Threshold(ThresholdParams.model_validate(self.model_dump(include=THRESHOLD_FIELDS)))
                if self.type == "threshold"
                else make_strategy(self.type, self.params or {})
            )
        except StrategyError as error:
            problems += error.problems
        if problems or strategy is None:
            raise BadFieldsError(problems)
        return strategy

    def build(self) -> Strategy[Any]:
        """The strategy this spec chooses, its parameters validated."""
        if self._strategy is None:
            # A copy made without validation (model_construct) resolves on first use.
            self._strategy = self._resolve()
        return self._strategy


class SizingSpec(_Model):
    """Position sizing: Kelly, fixed fraction of equity, or volatility targeting."""

    method: Literal["kelly", "fixed-fraction", "volatility"] = "fixed-fraction"
    kelly_fraction: float = Field(
        default=0.5, gt=0, le=1, description="Fraction of the full Kelly bet (half-Kelly = 0.5)."
    )
    payoff_ratio: float = Field(
        default=1.0, gt=0, le=100, description="Expected win/loss size ratio used by Kelly."
    )
    fraction_pct: PositivePercent = Field(
        default=10, description="Share of equity per position for fixed-fraction."
    )
    risk_per_trade_pct: PositivePercent = Field(
        default=1, description="Equity risked to the stop per trade for volatility sizing."
    )
    max_position_pct: PositivePercent = Field(
        default=25, description="Cap on any one position as a share of equity."
    )


class StopLossSpec(_Model):
    """Stop-loss at a multiple of the Average True Range below (long) or above (short) entry."""

    atr_multiplier: float = Field(default=2.0, gt=0, le=100)
    atr_period: int = Field(default=14, ge=2, le=500)


class TakeProfitSpec(_Model):
    """Take-profit at ``riskReward`` times the stop distance."""

    risk_reward: float = Field(default=2.0, gt=0, le=100)


class TrailingStopSpec(_Model):
    """Trailing stop: armed at ``activationPct`` profit, then trails the best price."""

    activation_pct: PositivePercent = 2.0
    trail_pct: PositivePercent = 1.0


class BreakerSpec(_Model):
    """Circuit breakers: each halts new entries when tripped; exits keep running."""

    max_daily_loss_pct: PositivePercent | None = 5
    max_drawdown_pct: PositivePercent | None = 15
    max_consecutive_losses: int | None = Field(default=5, ge=1, le=10_000)
    consecutive_loss_cooldown: str = Field(
        default="12h",
        max_length=32,
        description="How long entries stay halted after the loss streak.",
    )
    drawdown_cooldown: str | None = Field(
        default=None,
        max_length=32,
        description="After the drawdown breaker trips, entries stay halted this long; then the "
        "peak re-bases to current equity (a new high-water mark) and the drawdown is measured "
        "from there. Unset: only a reset clears it.",
    )
    min_seconds_between_trades: int | None = Field(default=0, ge=0, le=366 * 86400)
    max_trades_per_day: int | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("consecutive_loss_cooldown", "drawdown_cooldown")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class RiskSpec(_Model):
    """Risk management: sizing, exits and circuit breakers."""

    sizing: SizingSpec = SizingSpec()
    stop_loss: StopLossSpec | None = StopLossSpec()
    take_profit: TakeProfitSpec | None = TakeProfitSpec()
    trailing_stop: TrailingStopSpec | None = None
    max_holding: str | None = Field(default=None, max_length=32, description="Time exit, e.g. 24h.")
    breakers: BreakerSpec = BreakerSpec()

    @field_validator("max_holding")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def max_holding_seconds(self) -> int | None:
        """``maxHolding`` in seconds, or None when there is no time exit."""
        return None if self.max_holding is None else parse_duration(self.max_holding)


class MarginSpec(_Model):
    """How a short is financed (paper trading). Its initial margin is its full notional: the
    cash a short holds back from buying power, so no position is levered."""

    maintenance_pct: float = Field(
        default=50,
        gt=0,
        lt=100,
        description="Maintenance margin in percent of the short's notional at the mark: when "
        "the initial margin plus the short's PnL falls to it, the short is liquidated.",
    )
    borrow_pct_per_day: float = Field(
        default=0,
        ge=0,
        le=10,
        description="Borrow or funding cost of a short per day, in percent of its notional at "
        "each candle's close, charged per candle.",
    )
    liquidation_fee_rate: float = Field(
        default=0.005,
        ge=0,
        le=0.1,
        description="Fee per notional charged on a liquidation, on top of the trading fee.",
    )


class ExecutionSpec(_Model):
    """Account and trading costs (paper fills use them; live fills report their own)."""

    initial_capital: float = Field(default=10_000, gt=0, le=1e12)
    quote: str = Field(default="USDT", pattern=r"^[A-Z0-9]{2,12}$")
    fee_rate: float = Field(
        default=0.001, ge=0, le=0.1, description="Fee per notional, 0.001=0.1%."
    )
    slippage_bps: float = Field(default=5, ge=0, le=1000)
    max_volume_pct: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="The largest share of a candle's volume one market order may fill, in "
        "percent; the rest waits for the next candle. Unset: no cap.",
    )
    margin: MarginSpec = Field(
        default_factory=MarginSpec,
        description="Margin of shorts: maintenance, borrow cost, liquidation fee.",
    )


class ResourceSpec(_Model):
    """Kubernetes resources of one component, e.g. ``{memory: 256Mi, cpu: 250m}``."""

    requests: dict[str, str] | None = None
    limits: dict[str, str] | None = None


class ComponentResources(_Model):
    """Per-component resource overrides; render fills in measured defaults."""

    feed: ResourceSpec | None = None
    inference: ResourceSpec | None = None
    executor: ResourceSpec | None = None


class TradingBotSpec(_Model):
    """What the user asks for."""

    mode: Mode = Mode.PAPER
    live_confirmed: bool = Field(
        default=False, description="Must be true, with a credentials secret, for live mode."
    )
    exchange: ExchangeSpec = ExchangeSpec()
    symbols: list[str] = Field(min_length=1, max_length=100)
    timeframe: str = "1h"
    model: ModelRef | None = Field(
        default=None, description="The model; required by a strategy that needs one."
    )
    strategy: StrategySpec = StrategySpec()
    risk: RiskSpec = RiskSpec()
    execution: ExecutionSpec = ExecutionSpec()
    paused: bool = False
    on_delete: Literal["flatten", "leave"] = Field(
        default="leave", description="What the finalizer does with open positions."
    )
    resources: ComponentResources | None = None

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, symbols: list[str]) -> list[str]:
        bad = [s for s in symbols if not SYMBOL.match(s)]
        if bad:
            raise ValueError(f"symbols must look like BTC/USDT; got {', '.join(bad)}")
        if len(set(symbols)) != len(symbols):
            raise ValueError("symbols must be unique")
        return symbols

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, value: str) -> str:
        if value not in TIMEFRAME_MS:
            raise ValueError(f"must be one of {', '.join(TIMEFRAME_MS)}")
        return value

    @model_validator(mode="after")
    def _model_fits_strategy(self) -> TradingBotSpec:
        strategy = self.strategy.build()
        kind = self.strategy.type
        problems: list[tuple[str, str]] = []
        if strategy.needs_model and self.model is None:
            problems.append(("model", f"required field is missing: strategy {kind} needs a model"))
        if not strategy.needs_model:
            if self.model is not None:
                problems.append(
                    ("model", f"strategy {kind} uses no model; remove spec.model (or use hybrid)")
                )
            if self.risk.sizing.method == "kelly":
                problems.append(
                    (
                        "risk.sizing.method",
                        f"kelly sizes by the model's probability; strategy {kind} uses no model",
                    )
                )
        if problems:
            raise BadFieldsError(problems)
        return self

    @model_validator(mode="after")
    def _live_is_deliberate(self) -> TradingBotSpec:
        if self.mode is Mode.LIVE:
            if not self.exchange.is_exchange:
                raise ValueError("live mode needs a real exchange, not synthetic or replay")
            if not self.exchange.credentials_secret:
                raise ValueError("live mode needs exchange.credentialsSecret")
            if not self.live_confirmed:
                raise ValueError("live mode needs liveConfirmed: true (it sends real orders)")
            problem = live_venue_problem(self.exchange.name, self.exchange.sandbox)
            if problem is not None:
                raise ValueError(problem)
        elif self.exchange.sandbox and self.exchange.name in LIVE_VENUES:
            # The feed reads candles from the testnet too: refuse one that does not exist.
            problem = live_venue_problem(self.exchange.name, sandbox=True)
            if problem is not None:
                raise ValueError(problem)
        return self


class Metadata(_Model):
    """The parts of Kubernetes object metadata a bot uses."""

    model_config = ConfigDict(extra="allow", frozen=True, alias_generator=to_camel)

    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None

    @field_validator("name")
    @classmethod
    def _bot_name(cls, value: str) -> str:
        if not BOT_NAME.match(value):
            raise ValueError(bot_name_problem(value))
        return value

    @field_validator("namespace")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not DNS_LABEL.match(value):
            raise ValueError(
                "must be a DNS label: lowercase letters, digits and '-', at most 63 characters"
            )
        return value


class Phase(StrEnum):
    """The bot's lifecycle phase, shown by ``kubectl get tradingbots``."""

    PENDING = "Pending"
    RUNNING = "Running"
    PAUSED = "Paused"
    HALTED = "Halted"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class Condition(_Model):
    """A Kubernetes-style status condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class TradingSummary(_Model):
    """Trading figures reflected into status from the executor."""

    equity: float | None = None
    realized_pnl: float | None = None
    unrealized_pnl: float | None = None
    open_positions: int | None = None
    trades: int | None = None
    last_signal_at: str | None = None
    halt_reason: str | None = None
    halt_causes: list[HaltCause] | None = Field(
        default=None, description="Why entries are halted: the kill first, then each breaker."
    )
    halted_since: str | None = Field(
        default=None, description="When the oldest halt still in force began (ISO 8601 UTC)."
    )
    unconverted_fees: dict[str, float] | None = Field(
        default=None,
        description="Live fees charged in a currency the executor could find no price for, per "
        "currency: they are not in equity, which is that much too high.",
    )


class ModelFailure(_Model):
    """Why the last model the bot asked for could not serve."""

    reason: str
    message: str = ""
    time: str | None = None


class ModelStatus(_Model):
    """Which model serves the bot's signals and where a rollout stands (after KServe's)."""

    target: str = Field(description="name:version the spec asks for.")
    active: str | None = Field(
        default=None, description="name:version serving signals now, if any."
    )
    state: Literal["Pending", "Loading", "Loaded", "FailedToLoad"] = Field(
        default="Pending", description="State of the target model."
    )
    transition: Literal["UpToDate", "InProgress", "BlockedByFailedLoad"] = Field(
        default="InProgress", description="UpToDate once the target serves."
    )
    last_failure: ModelFailure | None = None


class TradingBotStatus(_Model):
    """What the operator observed."""

    phase: Phase = Phase.PENDING
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    trading: TradingSummary | None = None
    model: ModelStatus | None = None


class TradingBot(_Model):
    """A whole ``TradingBot`` object as it appears in a manifest or the API."""

    api_version: Literal["kubetrade.io/v1alpha1"] = "kubetrade.io/v1alpha1"
    kind: Literal["TradingBot"] = "TradingBot"
    metadata: Metadata
    spec: TradingBotSpec
    status: TradingBotStatus | None = None

    @property
    def key(self) -> str:
        """``namespace/name``: how the bot is named in the database and in logs."""
        return f"{self.metadata.namespace}/{self.metadata.name}"


class ManifestError(InvalidInputError):
    """A manifest that does not describe a valid TradingBot; ``errors`` names every bad field."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        listing = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{source}: invalid TradingBot manifest:\n{listing}")


def _field_bounds(
    model: type[BaseModel], loc: tuple[str | int, ...]
) -> tuple[tuple[Any, bool], tuple[Any, bool]] | None:
    """The (lower, upper) bounds declared on the field at ``loc``, when it has both."""
    current: Any = model
    field = None
    for part in loc:
        if isinstance(part, int) or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            continue
        field = next((f for n, f in current.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return None
        current = _model_in(field.annotation)
    if field is None:
        return None
    low: tuple[Any, bool] | None = None
    high: tuple[Any, bool] | None = None
    for meta in _constraints(field.metadata, field.annotation):
        if getattr(meta, "ge", None) is not None:
            low = (meta.ge, False)
        if getattr(meta, "gt", None) is not None:
            low = (meta.gt, True)
        if getattr(meta, "le", None) is not None:
            high = (meta.le, False)
        if getattr(meta, "lt", None) is not None:
            high = (meta.lt, True)
    return (low, high) if low is not None and high is not None else None


def _constraints(metadata: list[Any], annotation: Any) -> list[Any]:
    """Constraint objects on a field, including those inside ``Annotated[...] | None``."""
    found = list(metadata)
    for arg in getattr(annotation, "__args__", ()):
        for meta in getattr(arg, "__metadata__", ()):
            found.extend(getattr(meta, "metadata", [meta]))
    return found


def _model_in(annotation: Any) -> Any:
    """The BaseModel class inside ``X | None`` or ``list[X]``, else the annotation itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def _format_number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_errors(error: ValidationError, root: type[BaseModel] = TradingBot) -> list[str]:
    """Turn a Pydantic error into ``path: message`` lines with camelCase paths."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        path = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc)
        path = path.replace(".[", "[") or "(manifest)"
        kind = item["type"]
        if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
            bounds = _field_bounds(root, loc)
            if bounds is not None:
                (low, _), (high, _) = bounds
                message = f"must be between {_format_number(low)} and {_format_number(high)}"
                excluded = [_format_number(b) for b, is_open in bounds if is_open]
                if excluded:
                    message += f" (excluding {' and '.join(excluded)})"
            else:
                message = item["msg"].replace("Input should be", "must be")
        elif kind == "extra_forbidden":
            message = "unknown field (check the spelling; fields are camelCase)"
        elif kind == "too_short":
            message = f"must have at least {item['ctx']['min_length']} item(s)"
        elif kind == "too_long":
            message = f"must have at most {item['ctx']['max_length']} item(s)"
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "string_pattern_mismatch":
            message = f"must match the pattern {item['ctx']['pattern']}"
        elif kind == "finite_number":
            message = "must be a finite number (not .inf or .nan)"
        elif kind == "string_too_long":
            message = f"must have at most {item['ctx']['max_length']} characters"
        elif kind == "value_error" and isinstance(item.get("ctx", {}).get("error"), BadFieldsError):
            for where, problem in item["ctx"]["error"].problems:
                lines.append(f"{path}.{where}" if path != "(manifest)" else where)
                lines[-1] += f": {problem}"
            continue
        elif kind == "value_error":
            message = str(item["ctx"]["error"]) if "ctx" in item else item["msg"]
        else:
            message = item["msg"].replace("Input should be", "must be")
        lines.append(f"{path}: {message}")
    return lines


def parse_bot(document: dict[str, Any], source: str = "<manifest>") -> TradingBot:
    """Validate one manifest document; raise ManifestError naming every bad field."""
    if not isinstance(document, dict):
        raise ManifestError(source, ["(manifest): must be a mapping with apiVersion, kind, spec"])
    try:
        # camelCase only: the API server prunes a snake_case field, so accepting one here would
        # make a local run differ from the same manifest in a cluster.
        return TradingBot.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as error:
        raise ManifestError(source, format_errors(error)) from None


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def _bot_documents(path: Path) -> list[tuple[str, Any]]:
    """(source, document) of every TradingBot in a file, ``kind: List`` items included."""
    try:
        documents = read_documents(path)
    except DocumentError as error:
        raise ManifestError(str(path), [str(error)]) from None
    found: list[tuple[str, Any]] = []
    for index, document in enumerate(documents, start=1):
        where = str(path) if len(documents) == 1 else f"{path} (document {index})"
        if isinstance(document, dict) and document.get("kind") == "List":
            items = document.get("items")
            if not isinstance(items, list):
                raise ManifestError(where, ["items: a List needs a list of items"])
            found += [
                (f"{where} items[{i}]", item)
                for i, item in enumerate(items)
                if isinstance(item, dict) and item.get("kind") == KIND
            ]
        elif isinstance(document, dict) and document.get("kind") == KIND:
            found.append((where, document))
    return found


def load_bot(path: str | Path) -> TradingBot:
    """Read and validate a file that holds exactly one TradingBot (other kinds may sit beside it).

    Several bots in one file are refused rather than silently reading the first: ``run`` and
    ``backtest`` run one bot; :func:`load_bots` reads them all.
    """
    path = Path(path)
    bots = _bot_documents(path)
    if not bots:
        raise ManifestError(str(path), [f"no document with kind: {KIND}"])
    if len(bots) > 1:
        names = ", ".join(
            str(d.get("metadata", {}).get("name", "?"))
            if isinstance(d.get("metadata"), dict)
            else "?"
            for _, d in bots
        )
        raise ManifestError(
            str(path),
            [
                f"holds {len(bots)} TradingBot documents ({names}); this command runs one bot: "
                "give each bot its own file (`kubetrade check` validates them all)"
            ],
        )
    source, document = bots[0]
    return parse_bot(document, source)


def load_bots(path: str | Path) -> list[TradingBot]:
    """Every TradingBot in a file (several documents or a ``kind: List``) or in a directory's
    manifest files (``*.yaml``, ``*.yml``, ``*.json``, not recursive). Every bad document is
    named in one ManifestError."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
    else:
        files = [path]
    bots: list[TradingBot] = []
    errors: list[str] = []
    for file in files:
        try:
            documents = _bot_documents(file)
        except ManifestError as error:
            errors += [f"{error.source}: {e}" for e in error.errors]
            continue
        for source, document in documents:
            try:
                bots.append(parse_bot(document, source))
            except ManifestError as error:
                errors += [f"{error.source}: {e}" for e in error.errors]
    if errors:
        raise ManifestError(str(path), errors)
    if not bots:
        raise ManifestError(str(path), [f"no document with kind: {KIND}"])
    return bots


def dump_spec(bot: TradingBot) -> str:
    """The bot as compact JSON (camelCase), the form handed to workers.

    Nulls are kept: a breaker switched off with ``null`` must stay off in the workers, not
    come back with its default when they parse the spec again.
    """
    return bot.model_dump_json(by_alias=True, exclude={"status"})
