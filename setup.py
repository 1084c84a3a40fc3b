"""Build kubetrade (metadata and packages are in pyproject.toml).

With ``KUBETRADE_COMPILE=1`` (``make install`` sets it), the trading core's hot modules
(``kubetrade.trading.compiled.COMPILED``) are compiled with mypyc and their sources' digests
recorded for the stale-build guard. Without it, kubetrade is pure Python (the container image).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from setuptools import setup

ROOT = Path(__file__).resolve().parent
TRADING = ROOT / "kubetrade" / "trading"


def compiled_extensions() -> list[Any]:
    """The mypyc extension modules of the trading core, after recording its sources' digests."""
    spec = importlib.util.spec_from_file_location("_kubetrade_compiled", TRADING / "compiled.py")
    assert spec is not None and spec.loader is not None
    compiled = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compiled)
    (TRADING / compiled.MANIFEST).write_text(json.dumps(compiled.digests(TRADING), indent=1))
    from mypyc.build import mypycify

    # The build environment has mypy but not kubetrade's dependencies, nor the pydantic plugin
    # pyproject.toml's [tool.mypy] names: their types are Any here (`make lint` checks them).
    options = ["--config-file", os.devnull, "--ignore-missing-imports", "--python-version", "3.11"]
    return list(
        mypycify(
            [*options, *(f"kubetrade/trading/{name}.py" for name in compiled.COMPILED)],
            group_name=compiled.GROUP,
            opt_level="3",
        )
    )


setup(ext_modules=compiled_extensions() if os.environ.get("KUBETRADE_COMPILE") == "1" else [])
