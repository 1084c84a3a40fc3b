"""What every feature group is: the ``Indicator`` base class and the checks of its parameters."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

from kubetrade.features.inputs import Array, Bars, Tick

ParamValue = int | float | tuple[int, ...]
GroupParams = Mapping[str, ParamValue]


class Indicator(ABC):
    """One group of features: names, warm-up, and its batch and incremental computations."""

    key: ClassVar[str]
    defaults: ClassVar[Mapping[str, ParamValue]]

    def __init__(self, names: Sequence[str], warmup: int) -> None:
        self.names = tuple(names)
        self.warmup = warmup
        self.offset = 0

    @classmethod
    @abstractmethod
    def from_params(cls, params: GroupParams) -> Indicator:
        """Build from validated-or-not parameters; raise ValueError naming a bad one."""

    @abstractmethod
    def params(self) -> dict[str, ParamValue]:
        """The normalized parameters (what the spec stores and hashes)."""

    @abstractmethod
    def batch(self, bars: Bars) -> list[Array]:
        """One array per name over the whole series (NaN where undefined)."""

    @abstractmethod
    def start(self, tick: Tick) -> None:
        """Reset the incremental state on the first candle (buffers are filled with it)."""

    @abstractmethod
    def step(self, tick: Tick, out: list[float]) -> None:
        """Consume one candle; write this group's values at ``out[offset:]``."""


def push_max(window: deque[float], value: float, top: float) -> float:
    """Append ``value`` to the full ``window`` (a deque at its ``maxlen``) and return the
    window's maximum, given ``top``, its maximum before: the value ``max(window)`` gives, but
    scanned again only when the maximum leaves the window (``max`` of a 50-candle deque costs
    more than a whole indicator's step)."""
    dropped = window[0]
    window.append(value)
    if value >= top:
        return value
    return max(window) if dropped == top else top


def push_min(window: deque[float], value: float, bottom: float) -> float:
    """``push_max`` for the minimum."""
    dropped = window[0]
    window.append(value)
    if value <= bottom:
        return value
    return min(window) if dropped == bottom else bottom


def param_windows(params: GroupParams, name: str, group: str, minimum: int = 1) -> tuple[int, ...]:
    """Parameter ``name`` as distinct integers >= minimum, or ValueError naming it."""
    value = params.get(name)
    items = value if isinstance(value, list | tuple) else None
    if (
        not items
        or not all(isinstance(w, int) and not isinstance(w, bool) for w in items)
        or min(items) < minimum
        or len(set(items)) != len(items)
    ):
        raise ValueError(
            f"feature group {group!r}: {name!r} must be a list of distinct integers >= {minimum}, "
            f"got {value!r}"
        )
    return tuple(int(w) for w in items)


def param_int(params: GroupParams, name: str, group: str, minimum: int = 1) -> int:
    """Parameter ``name`` as an integer >= minimum, or ValueError naming it."""
    value = params.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"feature group {group!r}: {name!r} must be an integer >= {minimum}, got {value!r}"
        )
    return value


def param_float(params: GroupParams, name: str, group: str) -> float:
    """Parameter ``name`` as a positive number, or ValueError naming it."""
    value = params.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(
            f"feature group {group!r}: {name!r} must be a positive number, got {value!r}"
        )
    return float(value)


def check_keys(params: GroupParams, allowed: Iterable[str], group: str) -> None:
    """ValueError naming any parameter the group does not know."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"feature group {group!r}: unknown parameters {unknown}; known: {sorted(allowed)}"
        )
