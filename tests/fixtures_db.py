"""Pytest fixtures for real databases: embedded PostgreSQL and a TimescaleDB check server.

Register with ``pytest_plugins = ["tests.fixtures_db"]`` (or the module's import name).

- ``pg_url`` (session): URL of a PostgreSQL server; ``KUBETRADE_TEST_DATABASE_URL`` when set,
  else an embedded pgserver (Unix socket only) in a temp dir, stopped and deleted at the end.
- ``db_url`` (function): URL of a fresh, empty database on that server, dropped afterwards.
- ``timescale_url`` (session): URL of a TimescaleDB server; ``KUBETRADE_TEST_TIMESCALE_URL``
  when set, else the WASM build started from ``../shared/tools/timescaledb-wasm/start.sh``
  (override with ``KUBETRADE_TIMESCALE_WASM``), killed at the end. Skips when neither is usable
  (fails instead with ``KUBETRADE_REQUIRE_SHARED=1``).
  That server takes ONE connection at a time, cannot COPY and shares session state (prepared
  statements) between connections: close connections promptly, connect with
  ``prepare_threshold=None`` and use ``Store(conn, copy=False)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from kubetrade.embedded import start_postgres
from tests.shared_data import TIMESCALE_WASM_START, shared_missing

log = logging.getLogger(__name__)

_WASM_START = TIMESCALE_WASM_START


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` instead (URL or key=value conninfo)."""
    if "://" in url:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path=f"/{dbname}"))
    return make_conninfo(url, dbname=dbname)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL server URL for the whole session."""
    external = os.environ.get("KUBETRADE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    # Not under pytest's basetemp: a concurrent pytest session of the same user prunes old
    # basetemp directories, which would delete the data directory under a running server.
    parent = Path(tempfile.mkdtemp(prefix="kubetrade-pgserver-"))
    server = start_postgres(parent / "data")
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def db_url(pg_url: str) -> Iterator[str]:
    """A fresh empty database on ``pg_url``, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(pg_url, name)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def timescale_url() -> Iterator[str]:
    """A TimescaleDB server URL for the whole session (see the module docstring)."""
    external = os.environ.get("KUBETRADE_TEST_TIMESCALE_URL")
    if external:
        yield external
        return
    script = Path(os.environ.get("KUBETRADE_TIMESCALE_WASM", _WASM_START))
    if not script.is_file():
        shared_missing(
            f"no TimescaleDB: set KUBETRADE_TEST_TIMESCALE_URL, or provide {script} "
            "(or point KUBETRADE_TIMESCALE_WASM at a start.sh)"
        )
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        shared_missing(f"no TimescaleDB: {script} needs {' and '.join(missing)} on PATH")
    started = time.perf_counter()
    # The first start runs npm install (about a minute); later ones take seconds. Output goes
    # to files, not pipes: the server it leaves behind inherits them and would keep a pipe
    # open. Its own session makes the script, its subshell and node one process group, which
    # is what we stop: the PID the script reports is a wrapper shell, not node.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            ["bash", str(script), str(_free_port())],
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            raise
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail(f"{script} failed (exit {code}):\n{stderr}")
    url = stdout.strip().splitlines()[-1]
    log.info(
        "timescaledb wasm started",
        extra={"url": url, "pgid": proc.pid, "seconds": round(time.perf_counter() - started, 2)},
    )
    try:
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
