"""Where the workplace's shared files are: real market data and the TimescaleDB check server.

Tests may use them; the product never does. ``KUBETRADE_SHARED_DIR`` names the folder; else
``../shared`` beside this checkout; else ``/work/shared`` (a clone made elsewhere, as CI does).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
