"""Database work written once for both the sync and the async driver.

A store operation is a generator (an :data:`Op`) that yields :data:`Step` values and receives
each step's result back; :mod:`kubetrade.store.driver` executes the steps on a
``psycopg.Connection`` or a ``psycopg.AsyncConnection``. So every query, COPY and transaction
boundary exists once, whichever kind of connection a component uses.

Results sent back: :class:`Query` -> ``list[tuple]`` of rows, :class:`Execute` -> rowcount,
:class:`Copy` -> ``None``, :class:`Atomic` -> the inner op's return value. A failing step's
exception is thrown into the op at its ``yield``; an op may catch it only around an
:class:`Atomic` step (the driver has rolled that back to its savepoint), because after any other
failure the transaction is aborted.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

T = TypeVar("T")
Params: TypeAlias = Sequence[object] | Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Query:
    """Run a statement that returns rows."""

    sql: str
    params: Params | None = None


@dataclass(frozen=True, slots=True)
class Execute:
    """Run a statement (or, without params, several separated by ``;``) for its effect."""

    sql: str
    params: Params | None = None


@dataclass(frozen=True, slots=True)
class Copy:
    """Bulk-load rows into ``table`` with binary COPY (or single-row INSERTs as a fallback).

    ``types`` are the PostgreSQL type names of ``columns``, needed by binary COPY.
    """

    table: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: Sequence[tuple[object, ...]]


@dataclass(frozen=True, slots=True)
class Atomic:
    """Run an op in a transaction (a savepoint when one is already open)."""

    op: Op[Any]


Step: TypeAlias = Query | Execute | Copy | Atomic
Op: TypeAlias = Generator[Step, Any, T]
