"""Bring a database to the current schema: detect TimescaleDB, apply migrations, set policies.

Everything happens in one transaction under a transaction-level advisory lock, so two
processes starting at once serialise (the second finds the work done) and a failure leaves
the database as it was.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import psycopg

from kubetrade.errors import StoreError
from kubetrade.store.records import RETAINABLE_TABLES, Policies, SchemaInfo
from kubetrade.store.schema import BOOTSTRAP, MIGRATIONS
from kubetrade.store.steps import Atomic, Execute, Op, Query

log = logging.getLogger(__name__)

# Arbitrary but fixed: "kubetrad" in ASCII, so it is recognisable in pg_locks.
MIGRATION_LOCK_KEY = 0x6B75_6265_7472_6164


def migrate_op(policies: Policies) -> Op[SchemaInfo]:
    """The migration as one transaction; :meth:`Store.migrate` runs it."""
    info: SchemaInfo = yield Atomic(_migrate(policies))
    return info


def _migrate(policies: Policies) -> Op[SchemaInfo]:
    yield Execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
    yield Execute(BOOTSTRAP)
    rows = yield Query("SELECT version, flavour FROM schema_migrations ORDER BY version")
    applied = {int(version) for version, _ in rows}
    known = MIGRATIONS[-1].version
    if applied and max(applied) > known:
        raise StoreError(
            f"database schema is at version {max(applied)} but this kubetrade only knows "
            f"migrations up to {known}; run a kubetrade release at least as new as the one "
            "that migrated this database"
        )
    # The flavour is fixed by the first migration: switching later would leave plain tables
    # under Timescale policies (or the reverse).
    timescale = rows[0][1] == "timescale" if rows else (yield from _enable_timescale())
    flavour = "timescale" if timescale else "plain"
    newly: list[int] = []
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        for statement in migration.statements(timescale):
            yield Execute(statement)
        yield Execute(
            "INSERT INTO schema_migrations (version, name, flavour) VALUES (%s, %s, %s)",
            (migration.version, migration.name, flavour),
        )
        newly.append(migration.version)
        log.info(
            "schema migration applied",
            extra={"version": migration.version, "migration": migration.name, "flavour": flavour},
        )
    if timescale:
        yield from _apply_policies(policies)
    return SchemaInfo(timescale=timescale, version=known, applied=tuple(newly))


def _enable_timescale() -> Op[bool]:
    rows = yield Query(
        "SELECT installed_version IS NOT NULL FROM pg_available_extensions"
        " WHERE name = 'timescaledb'"
    )
    if not rows:
        log.info(
            "timescaledb extension not available; using plain PostgreSQL tables and views",
            extra={"flavour": "plain"},
        )
        return False
    if rows[0][0]:
        return True
    try:
        yield Atomic(_create_extension())
    except psycopg.Error as exc:
        # Typically the library is not in shared_preload_libraries or the role may not
        # create extensions; plain tables still work, so degrade loudly rather than fail.
        log.warning(
            "timescaledb is available but CREATE EXTENSION failed; using plain PostgreSQL. "
            "Add timescaledb to shared_preload_libraries or create the extension as a superuser "
            "before the first start to get hypertables",
            extra={"flavour": "plain", "error": str(exc).strip()},
        )
        return False
    return True


def _create_extension() -> Op[None]:
    yield Execute("CREATE EXTENSION IF NOT EXISTS timescaledb")


def _apply_policies(policies: Policies) -> Op[None]:
    for table in RETAINABLE_TABLES:
        yield from _ensure_policy("compression", table, policies.compress_after)
        yield from _ensure_policy("retention", table, policies.retention.get(table))


# kind -> (job proc_name, config key and argument name, add function, remove function)
_POLICY_SQL = {
    "compression": (
        "policy_compression",
        "compress_after",
        "add_compression_policy",
        "remove_compression_policy",
    ),
    "retention": (
        "policy_retention",
        "drop_after",
        "add_retention_policy",
        "remove_retention_policy",
    ),
}


def _ensure_policy(kind: str, table: str, after: timedelta | None) -> Op[None]:
    """Make ``table``'s ``kind`` policy match ``after`` (None: no policy), touching it only
    when it differs so job ids and statistics survive restarts."""
    proc, key, add, remove = _POLICY_SQL[kind]
    rows = yield Query(
        "SELECT (config ->> %s)::interval = %s::interval FROM timescaledb_information.jobs"
        " WHERE proc_name = %s AND hypertable_schema = current_schema()"
        " AND hypertable_name = %s",
        (key, after, proc, table),
    )
    if rows and after is not None and all(same for (same,) in rows):
        return
    if rows:
        yield Execute(f"SELECT {remove}(%s, if_exists => true)", (table,))
    if after is not None:
        yield Execute(f"SELECT {add}(%s, {key} => %s::interval)", (table, after))
    log.info(
        "timescale policy set",
        extra={"policy": kind, "table": table, "after": str(after) if after else "none"},
    )
