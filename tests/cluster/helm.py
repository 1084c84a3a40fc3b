#!/usr/bin/env python3
"""Build (once) and locate the pinned Helm that installs the chart on the one-node cluster.

``go install helm.sh/helm/v4/cmd/helm@<pin>`` from the Go module proxy into
``${XDG_CACHE_HOME:-~/.cache}/kubetrade/helm/<pin>/`` (``$KUBETRADE_HELM_DIR`` overrides), rebuilt
only when the pin changes; complete when BUILD-INFO.json is there (written after the binary).
A cold build takes a few minutes on 2 cores. Usage::

    python3 tests/cluster/helm.py          # build if missing, print the binary's path
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HELM_MODULE = "helm.sh/helm/v4"
HELM_VERSION = "v4.3.1"  # the one place the version is pinned
INFO_FILE = "BUILD-INFO.json"
BUILD_TIMEOUT_S = 30 * 60


def build_dir() -> Path:
    """Where the pinned helm lives."""
    override = os.environ.get("KUBETRADE_HELM_DIR")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "kubetrade" / "helm" / HELM_VERSION


def binary_path() -> Path:
    """The helm binary's path (it may not be built yet)."""
    return build_dir() / "helm"


def is_built() -> bool:
    """True when the pinned helm is complete in its directory."""
    info = build_dir() / INFO_FILE
    if not (binary_path().is_file() and info.is_file()):
        return False
    try:
        return bool(json.loads(info.read_text()).get("version") == HELM_VERSION)
    except (OSError, ValueError):
        return False


def build() -> Path:
    """Build the pinned helm unless it is there; returns the binary."""
    d = build_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (two sessions may ask at once)
        if is_built():
            return binary_path()
        t0 = time.monotonic()
        subprocess.run(
            ["go", "install", f"{HELM_MODULE}/cmd/helm@{HELM_VERSION}"],
            env={**os.environ, "GOBIN": str(d), "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"},
            check=True,
            timeout=BUILD_TIMEOUT_S,
        )
        (d / INFO_FILE).write_text(
            json.dumps(
                {
                    "module": HELM_MODULE,
                    "version": HELM_VERSION,
                    "build_seconds": round(time.monotonic() - t0, 1),
                },
                indent=2,
            )
            + "\n"
        )
    return binary_path()


if __name__ == "__main__":
    print(build())
    sys.exit(0)
