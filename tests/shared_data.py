"""Where the workplace's shared files are: real market data and the TimescaleDB check server.

Tests may use them; the product never does. ``KUBETRADE_SHARED_DIR`` names the folder; else
``../shared`` beside this checkout; else ``/work/shared`` (a clone made elsewhere, as CI does).

A test that needs a shared file calls ``require_shared``: without the file it is skipped (and
the session ends with a banner listing what did not run), or it FAILS when
``KUBETRADE_REQUIRE_SHARED=1`` (CI, where the shared folder is part of the machine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "KUBETRADE_REQUIRE_SHARED"
# Why shared-data tests were skipped this session, for the closing banner (tests/conftest.py).
skip_reasons: list[str] = []


def shared_dir() -> Path:
    """The shared folder (it may not exist: callers skip with the path they looked at)."""
    configured = os.environ.get("KUBETRADE_SHARED_DIR")
    if configured:
        return Path(configured)
    for candidate in (REPO.parent / "shared", Path("/work/shared")):
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared"


BTC_CSV = shared_dir() / "data" / "coinbase_btcusd_1h.csv"
TIMESCALE_WASM_START = shared_dir() / "tools" / "timescaledb-wasm" / "start.sh"


def shared_missing(reason: str) -> NoReturn:
    """Skip the calling test for ``reason``, or fail it when ``KUBETRADE_REQUIRE_SHARED=1``."""
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{REQUIRE_ENV} is set but {reason}", pytrace=False)
    if reason not in skip_reasons:
        skip_reasons.append(reason)
    pytest.skip(f"SKIPPED LOUDLY: {reason}")


def require_shared(path: Path, what: str) -> Path:
    """``path`` when it exists, else ``shared_missing`` naming ``what`` and where it was sought."""
    if not path.exists():
        shared_missing(
            f"{what} not found at {path} (set KUBETRADE_SHARED_DIR to the shared folder)"
        )
    return path
