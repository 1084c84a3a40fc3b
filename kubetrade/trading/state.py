"""Engine state as plain JSON data, and back.

``to_plain`` turns the state dataclasses into dicts, lists, strings and numbers; the ``*_from``
functions rebuild them and raise :class:`SnapshotError` naming the part that was malformed.
Floats survive a JSON round trip exactly (``json`` writes the shortest repr that reads back to
the same double), which is what lets a restored engine continue to the cent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

from kubetrade.domain import Order, OrderReason, Side, field_names
from kubetrade.errors import StoreError
from kubetrade.trading.atr import AtrState
from kubetrade.trading.breakers import BreakerState
from kubetrade.trading.orders import PendingOrder
from kubetrade.trading.portfolio import Position
from kubetrade.trading.strategy import PositionSide

SNAPSHOT_VERSION = 1

T = TypeVar("T")


class SnapshotError(StoreError):
    """A snapshot that cannot be restored."""


# Exact types that are already plain (an enum member that subclasses str is not one of them).
_PLAIN = frozenset({float, int, str, bool, type(None)})


def to_plain(value: Any) -> Any:
    """Dataclasses, enums, dicts and lists as JSON-ready plain data."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # The executor takes a snapshot with every batch it commits: field names once a class.
        return {name: to_plain(getattr(value, name)) for name in field_names(kind)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def load(part: str, data: Any, build: Callable[[dict[str, Any]], T]) -> T:
    """Rebuild ``part`` of a snapshot with ``build``; any error names the part."""
    if not isinstance(data, dict):
        raise SnapshotError(f"snapshot {part}: expected an object, got {type(data).__name__}")
    try:
        return build(data)
    except (KeyError, TypeError, ValueError) as error:
        raise SnapshotError(f"snapshot {part}: {type(error).__name__}: {error}") from None


def order_from(data: dict[str, Any]) -> Order:
    """An Order from its plain form."""
    return Order(
        client_order_id=str(data["client_order_id"]),
        symbol=str(data["symbol"]),
        side=Side(data["side"]),
        quantity=float(data["quantity"]),
        reason=OrderReason(data["reason"]),
        created_at=int(data["created_at"]),
        reference_price=float(data["reference_price"]),
    )


def pending_from(data: dict[str, Any]) -> PendingOrder:
    """A PendingOrder from its plain form."""
    distance = data["stop_distance"]
    return PendingOrder(
        order=load("pending order", data["order"], order_from),
        reserved=float(data["reserved"]),
        stop_distance=None if distance is None else float(distance),
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def position_from(data: dict[str, Any]) -> Position:
    """A Position from its plain form."""
    return Position(
        symbol=str(data["symbol"]),
        side=PositionSide(data["side"]),
        quantity=float(data["quantity"]),
        entry_price=float(data["entry_price"]),
        entry_time=int(data["entry_time"]),
        entry_fee=float(data["entry_fee"]),
        entry_order_id=str(data["entry_order_id"]),
        stop_price=_optional_float(data["stop_price"]),
        take_profit_price=_optional_float(data["take_profit_price"]),
        best_price=float(data["best_price"]),
        trailing_armed=bool(data["trailing_armed"]),
    )


def atr_from(data: dict[str, Any]) -> AtrState:
    """An AtrState from its plain form."""
    return AtrState(
        period=int(data["period"]),
        count=int(data["count"]),
        warmup_sum=float(data["warmup_sum"]),
        value=_optional_float(data["value"]),
        previous_close=_optional_float(data["previous_close"]),
    )


def breakers_from(data: dict[str, Any]) -> BreakerState:
    """A BreakerState from its plain form."""
    return BreakerState(
        peak_equity=float(data["peak_equity"]),
        day_start_equity=float(data["day_start_equity"]),
        day=_optional_int(data["day"]),
        loss_streak=int(data["loss_streak"]),
        cooldown_until=_optional_int(data["cooldown_until"]),
        entries_today=int(data["entries_today"]),
        last_entry_time=_optional_int(data["last_entry_time"]),
        tripped={str(k): str(v) for k, v in dict(data["tripped"]).items()},
        # Snapshots from before halt events: a breaker tripped then counts from now on.
        tripped_at={str(k): int(v) for k, v in dict(data.get("tripped_at") or {}).items()},
    )
