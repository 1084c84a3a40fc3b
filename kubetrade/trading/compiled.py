"""Which trading modules are compiled with mypyc, and a guard against a stale compiled build.

``setup.py`` compiles the modules named in :data:`COMPILED` to C extension modules when
``KUBETRADE_COMPILE=1`` (``make install`` sets it): the same source, type-checked by mypy
strict, runs about twice as fast in a backtest, with the same results (the parity tests run on
the compiled build). It records each source's digest in :data:`MANIFEST` beside them.

``KUBETRADE_PURE=1`` runs the sources even when a fresh compiled build is there (to debug or
profile them line by line, or to compare the two builds, as the tests do).

An editable install keeps the extension modules next to the sources, and Python imports an
extension module before a ``.py`` of the same name: after a source is edited, the old
compiled code would run. :func:`prefer_sources_if_stale` (called by ``kubetrade.trading``
before it imports anything) then makes every compiled module load from its source instead, and
warns. A stale build is never run, and nothing fails for it; ``make install`` compiles
again.

Only the standard library here: ``setup.py`` loads this file on its own, before kubetrade's
dependencies are installed.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = "kubetrade.trading"
# The hot path of every backtest (the engine and what it calls per candle) and the live engine,
# which subclasses it: a compiled class can only be subclassed by a compiled class.
COMPILED = (
    "atr",
    "breakers",
    "broker",
    "engine",
    "exits",
    "live_engine",
    "orders",
    "outputs",
    "portfolio",
    "quantity",
    "sizing",
)
# The shared library of the compiled group (mypyc's ``group_name``), beside the modules.
GROUP = f"{PACKAGE}._core"
MANIFEST = "compiled.json"


def digests(package_dir: Path) -> dict[str, str]:
    """The SHA-256 of each compiled module's source in ``package_dir``, by module name."""
    return {
        name: hashlib.sha256((package_dir / f"{name}.py").read_bytes()).hexdigest()
        for name in COMPILED
    }


def compiled_modules(package_dir: Path) -> list[str]:
    """The modules of :data:`COMPILED` that have an extension module in ``package_dir``."""
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return [
        name
        for name in COMPILED
        if any((package_dir / f"{name}{suffix}").is_file() for suffix in suffixes)
    ]


def stale_modules(package_dir: Path) -> list[str]:
    """The compiled modules whose source changed since they were compiled (all of them when
    the manifest is missing or unreadable); empty for a pure-Python install."""
    built = compiled_modules(package_dir)
    if not built:
        return []
    try:
        recorded = json.loads((package_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return built
    current = digests(package_dir)
    return [name for name in built if recorded.get(name) != current[name]]


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' ``.py`` sources ahead of their extension modules."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self._sources = sources

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self._sources.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(fullname, source)


def _prefer_sources(package_dir: Path) -> None:
    """Load every compiled module from its source (all or none: the compiled modules call each
    other directly)."""
    sources = {f"{PACKAGE}.{name}": package_dir / f"{name}.py" for name in COMPILED}
    sys.meta_path.insert(0, _SourceFinder(sources))


def prefer_sources_if_stale(package_dir: Path) -> None:
    """Run the sources instead of the compiled modules when ``KUBETRADE_PURE=1``, or when any
    compiled module is stale, then with a warning saying how to recompile."""
    if os.environ.get("KUBETRADE_PURE") == "1":
        _prefer_sources(package_dir)
        return
    stale = stale_modules(package_dir)
    if not stale:
        return
    _prefer_sources(package_dir)
    warnings.warn(
        f"kubetrade's compiled trading core is older than its sources ({', '.join(stale)} "
        f"changed in {package_dir}): running the Python sources instead, about half as fast "
        "in backtests; `make install` compiles them again",
        RuntimeWarning,
        stacklevel=2,
    )
