"""The spec: which feature groups with which parameters, its hash, and the check that a model's
spec is what this code computes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

from kubetrade.errors import ModelError
from kubetrade.features.candle import Calendar, CandleShape
from kubetrade.features.indicator import GroupParams, Indicator
from kubetrade.features.mtf import HigherTimeframe
from kubetrade.features.oscillators import CommodityChannel, Rsi, Stochastic, WilliamsR
from kubetrade.features.returns import Efficiency, LogReturns, RateOfChange, RealizedVolatility
from kubetrade.features.smc import SmartMoney
from kubetrade.features.trend import DirectionalMovement, EmaRatio, Macd, SmaRatio
from kubetrade.features.volatility import AverageTrueRange, Bollinger, Channel
from kubetrade.features.volume import VolumeFlow, VolumeStats, VwapDistance

FEATURE_VERSION = "1"


class FeatureMismatchError(ModelError):
    """The features a model expects differ from the features this code computes."""


# The groups of the default spec (every model trained without --features): their order, names
# and parameters are what existing models were trained on.
DEFAULT_GROUPS: tuple[type[Indicator], ...] = (
    LogReturns,
    RealizedVolatility,
    SmaRatio,
    EmaRatio,
    Macd,
    Rsi,
    Bollinger,
    AverageTrueRange,
    Stochastic,
    WilliamsR,
    RateOfChange,
    VolumeFlow,
    VwapDistance,
    CandleShape,
    VolumeStats,
    Channel,
    CommodityChannel,
    DirectionalMovement,
    Efficiency,
    Calendar,
)

# Every group a spec may name; the order of this registry is the order of the feature columns.
# Groups after the defaults are chosen by name (``kubetrade train --features``).
REGISTRY: tuple[type[Indicator], ...] = (*DEFAULT_GROUPS, SmartMoney, HigherTimeframe)


_BY_KEY = {group.key: group for group in REGISTRY}


def _freeze(params: Mapping[str, Mapping[str, Any]]) -> Mapping[str, GroupParams]:
    return MappingProxyType(
        {
            group: MappingProxyType(
                {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in values.items()}
            )
            for group, values in params.items()
        }
    )


def _jsonable(params: Mapping[str, GroupParams]) -> dict[str, dict[str, Any]]:
    return {
        group: {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        for group, values in params.items()
    }


@dataclass(frozen=True)
class FeatureSpec:
    """Which features, in which order, with which parameters: what a model is trained on.

    ``hash`` is a sha256 over names, params and version (canonical JSON), stable across runs
    and machines; it travels in model metadata and in every signal.
    """

    names: tuple[str, ...]
    params: Mapping[str, GroupParams]
    version: str
    warmup: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "params", _freeze(self.params))

    def __hash__(self) -> int:
        return hash(self.hash)

    @cached_property
    def hash(self) -> str:
        """sha256 hex digest of the canonical JSON of names, params and version (computed once:
        every signal carries it)."""
        canonical = json.dumps(
            {"names": list(self.names), "params": _jsonable(self.params), "version": self.version},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (names, params, version, warmup, hash) for model metadata."""
        return {
            "names": list(self.names),
            "params": _jsonable(self.params),
            "version": self.version,
            "warmup": self.warmup,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of ``to_dict``; a stored hash that does not match the content is refused."""
        try:
            names, params = data["names"], data["params"]
            version, warmup = str(data["version"]), int(data["warmup"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"feature spec needs names, params, version and warmup; got {data!r} ({error})"
            ) from None
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"feature spec names must be a list of strings, got {names!r}")
        if not isinstance(params, Mapping) or not all(
            isinstance(v, Mapping) for v in params.values()
        ):
            raise ValueError(f"feature spec params must map group -> parameters, got {params!r}")
        spec = cls(tuple(names), params, version, warmup)
        stored = data.get("hash")
        if stored is not None and stored != spec.hash:
            raise ValueError(
                f"feature spec hash {stored} does not match its content (recomputed "
                f"{spec.hash}); the model metadata was altered or corrupted"
            )
        return spec


def build_indicators(params: Mapping[str, Mapping[str, Any]]) -> list[Indicator]:
    unknown = sorted(set(params) - set(_BY_KEY))
    if unknown:
        raise ValueError(f"unknown feature groups {unknown}; this code knows {sorted(_BY_KEY)}")
    indicators = [group.from_params(params[group.key]) for group in REGISTRY if group.key in params]
    if not indicators:
        raise ValueError("a feature spec needs at least one feature group")
    offset = 0
    for indicator in indicators:
        indicator.offset = offset
        offset += len(indicator.names)
    return indicators


def feature_spec(params: Mapping[str, Mapping[str, Any]] | None = None) -> FeatureSpec:
    """The spec of the given groups' parameters (default: the default groups with their
    defaults).

    Names, order and warm-up follow from the code; raises ValueError for an unknown group or
    a bad parameter, naming it.
    """
    chosen = params if params is not None else {g.key: dict(g.defaults) for g in DEFAULT_GROUPS}
    indicators = build_indicators(chosen)
    return FeatureSpec(
        names=tuple(n for i in indicators for n in i.names),
        params={i.key: i.params() for i in indicators},
        version=FEATURE_VERSION,
        warmup=max(i.warmup for i in indicators),
    )


def default_feature_spec() -> FeatureSpec:
    """The default groups (``DEFAULT_GROUPS``) with their default parameters."""
    return feature_spec()


def check_feature_spec(expected: FeatureSpec, actual: FeatureSpec) -> None:
    """Raise FeatureMismatchError unless ``actual`` computes what ``expected`` describes.

    ``expected`` is what a model was trained with, ``actual`` what this code computes; the
    message names both lists and the first difference.
    """
    advice = "Retrain the model or pin kubetrade to the version it was trained with."
    if expected.names != actual.names:
        index = next(
            (
                i
                for i, (a, b) in enumerate(zip(expected.names, actual.names, strict=False))
                if a != b
            ),
            min(len(expected.names), len(actual.names)),
        )
        left = repr(expected.names[index]) if index < len(expected.names) else "(none)"
        right = repr(actual.names[index]) if index < len(actual.names) else "(none)"
        raise FeatureMismatchError(
            f"model expects {len(expected.names)} features {list(expected.names)}, this code "
            f"computes {len(actual.names)} {list(actual.names)}; first difference at index "
            f"{index}: {left} vs {right}. {advice}"
        )
    if expected.version != actual.version:
        raise FeatureMismatchError(
            f"model expects feature definitions version {expected.version!r}, this code computes "
            f"version {actual.version!r} (same {len(actual.names)} names, changed formulas). "
            f"{advice}"
        )
    if expected.hash != actual.hash:
        groups = sorted(
            g
            for g in set(expected.params) | set(actual.params)
            if dict(expected.params.get(g, {})) != dict(actual.params.get(g, {}))
        )
        detail = "; ".join(
            f"{g}: {dict(expected.params.get(g, {}))} vs {dict(actual.params.get(g, {}))}"
            for g in groups
        )
        raise FeatureMismatchError(
            f"model expects feature parameters that differ from this code's ({detail}; "
            f"hash {expected.hash[:12]} vs {actual.hash[:12]}). {advice}"
        )


def check_computable(spec: FeatureSpec) -> None:
    """Raise FeatureMismatchError unless this code computes ``spec`` (any subset of the
    registry's groups with any valid parameters); the message names both feature lists."""
    indicators_for(spec)


def indicators_for(spec: FeatureSpec) -> list[Indicator]:
    """Indicators computing exactly ``spec``, or FeatureMismatchError."""
    try:
        built = feature_spec(spec.params)
    except ValueError as error:
        raise FeatureMismatchError(
            f"this code cannot compute the feature spec {spec.hash[:12]}: {error}. "
            "Retrain the model or pin kubetrade to the version it was trained with."
        ) from None
    check_feature_spec(spec, built)
    return build_indicators(spec.params)
