#!/usr/bin/env python3
"""Build (once) and locate the pinned promtool, which unit-tests the chart's alerting rules.

promtool is built from the Go module proxy (``go install
github.com/prometheus/prometheus/cmd/promtool@<pin>``); nothing is committed. The binary lives
in a cache directory outside the repository and is rebuilt only when the pin changes.

Usage (stdlib only, any python3 >= 3.9 works)::

    python3 tests/promtool/build.py            # build if missing, print the binary's path
    python3 tests/promtool/build.py build      # same
    python3 tests/promtool/build.py build --force
    python3 tests/promtool/build.py path       # print the binary's path (built or not)
    python3 tests/promtool/build.py check      # exit 0 iff a complete build is present
    python3 tests/promtool/build.py version    # print the pin

Where it goes: ``$KUBETRADE_PROMTOOL_DIR`` when set, otherwise
``${XDG_CACHE_HOME:-~/.cache}/kubetrade/promtool/<pin>/``. The directory is complete when it
holds ``promtool`` and BUILD-INFO.json (written last, after an atomic rename of the binary).
A cold build takes about 6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# The one place the version is pinned: the Prometheus Go module (v0.3YY.Z is Prometheus 3.YY.Z).
PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
PROMETHEUS_VERSION = "v0.316.0"
PACKAGE = f"{PROMETHEUS_MODULE}/cmd/promtool"

ENV_DIR = "KUBETRADE_PROMTOOL_DIR"
BINARY = "promtool"
INFO_FILE = "BUILD-INFO.json"
BUILD_TIMEOUT_S = 45 * 60


def build_dir() -> Path:
    """Where the pinned promtool lives."""
    override = os.environ.get(ENV_DIR)
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "kubetrade" / "promtool" / PROMETHEUS_VERSION


def binary_path() -> Path:
    """The promtool binary's path (it may not be built yet)."""
    return build_dir() / BINARY


def is_built() -> bool:
    """True when the pinned promtool is complete in its directory."""
    info = build_dir() / INFO_FILE
    if not (binary_path().is_file() and info.is_file()):
        return False
    try:
        return bool(json.loads(info.read_text()).get("version") == PROMETHEUS_VERSION)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One build at a time per directory (two test sessions may ask at once)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build(force: bool = False) -> Path:
    """Build promtool unless it is already there; return its path."""
    directory = build_dir()
    go = shutil.which("go")
    with _locked(directory):
        if is_built() and not force:
            return binary_path()
        if go is None:
            raise SystemExit("promtool build: `go` is not on PATH; install Go 1.25 or newer")
        with tempfile.TemporaryDirectory(prefix=".build-", dir=directory) as tmp:
            env = {**os.environ, "GOBIN": tmp}
            command = [go, "install", f"{PACKAGE}@{PROMETHEUS_VERSION}"]
            print(f"building promtool {PROMETHEUS_VERSION} into {directory} ...", file=sys.stderr)
            started = time.time()
            try:
                subprocess.run(command, env=env, check=True, timeout=BUILD_TIMEOUT_S)
            except subprocess.CalledProcessError as failed:
                command_line = " ".join(command)
                raise SystemExit(
                    f"promtool build: `{command_line}` exited {failed.returncode}"
                ) from None
            except subprocess.TimeoutExpired:
                raise SystemExit(f"promtool build: no result after {BUILD_TIMEOUT_S} s") from None
            (directory / INFO_FILE).unlink(missing_ok=True)
            os.replace(Path(tmp) / BINARY, binary_path())
        info = {
            "module": PROMETHEUS_MODULE,
            "version": PROMETHEUS_VERSION,
            "go": subprocess.run(
                [go, "version"], capture_output=True, text=True, check=False
            ).stdout.strip(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "build_seconds": round(time.time() - started),
        }
        (directory / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        return binary_path()


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Build or locate the pinned promtool.")
    parser.add_argument("command", nargs="?", default="build",
                        choices=["build", "path", "check", "version"])  # fmt: skip
    parser.add_argument("--force", action="store_true", help="rebuild even when present")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"{PROMETHEUS_MODULE} {PROMETHEUS_VERSION}")
    elif args.command == "path":
        print(binary_path())
    elif args.command == "check":
        return 0 if is_built() else 1
    else:
        print(build(force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
