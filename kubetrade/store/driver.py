"""Execute store ops (see :mod:`kubetrade.store.steps`) on a sync or an async connection."""

from __future__ import annotations

from typing import Any, cast

import psycopg
from psycopg import sql

from kubetrade.store.steps import Atomic, Copy, Execute, Op, Query, Step, T


def _copy_sql(step: Copy) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(step.table), sql.SQL(", ").join(map(sql.Identifier, step.columns))
    )


def _insert_sql(step: Copy) -> sql.Composed:
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(step.table),
        sql.SQL(", ").join(map(sql.Identifier, step.columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(step.columns)),
    )


def run(conn: psycopg.Connection[Any], op: Op[T], *, copy: bool = True) -> T:
    """Drive ``op`` to completion on a sync connection and return its result.

    ``copy=False`` loads :class:`Copy` steps with one INSERT per row instead, for servers that
    cannot do COPY FROM STDIN.
    """
    reply: object = None
    error: Exception | None = None
    while True:
        try:
            step = op.send(reply) if error is None else op.throw(error)
        except StopIteration as stop:
            return cast(T, stop.value)
        reply, error = None, None
        try:
            reply = _step(conn, step, copy)
        except Exception as exc:
            # The op decides: it recovers only around an Atomic step, otherwise re-raises.
            error = exc


def _step(conn: psycopg.Connection[Any], step: Step, copy: bool) -> object:
    if isinstance(step, Atomic):
        with conn.transaction():
            return run(conn, step.op, copy=copy)
    with conn.cursor() as cur:
        if isinstance(step, Query):
            cur.execute(step.sql, step.params)
            return cur.fetchall()
        if isinstance(step, Execute):
            cur.execute(step.sql, step.params)
            return cur.rowcount
        if copy:
            with cur.copy(_copy_sql(step)) as cp:
                cp.set_types(list(step.types))
                for row in step.rows:
                    cp.write_row(row)
        else:
            # One statement per row on purpose: executemany would use pipeline mode.
            insert = _insert_sql(step)
            for row in step.rows:
                cur.execute(insert, row)
        return None


async def arun(conn: psycopg.AsyncConnection[Any], op: Op[T], *, copy: bool = True) -> T:
    """Drive ``op`` to completion on an async connection; see :func:`run`."""
    reply: object = None
    error: Exception | None = None
    while True:
        try:
            step = op.send(reply) if error is None else op.throw(error)
        except StopIteration as stop:
            return cast(T, stop.value)
        reply, error = None, None
        try:
            reply = await _astep(conn, step, copy)
        except Exception as exc:
            error = exc


async def _astep(conn: psycopg.AsyncConnection[Any], step: Step, copy: bool) -> object:
    if isinstance(step, Atomic):
        async with conn.transaction():
            return await arun(conn, step.op, copy=copy)
    async with conn.cursor() as cur:
        if isinstance(step, Query):
            await cur.execute(step.sql, step.params)
            return await cur.fetchall()
        if isinstance(step, Execute):
            await cur.execute(step.sql, step.params)
            return cur.rowcount
        if copy:
            async with cur.copy(_copy_sql(step)) as cp:
                cp.set_types(list(step.types))
                for row in step.rows:
                    await cp.write_row(row)
        else:
            insert = _insert_sql(step)
            for row in step.rows:
                await cur.execute(insert, row)
        return None
