"""Build the installed layout of the ``kubetrade`` package as a tree of symlinks, for static tools.

``pyproject.toml`` maps the component folders (``operator/``, ``serving/`` …) under ``kubetrade.``
with setuptools' ``package-dir``. Python finds them through the editable install's import hook,
but mypy and import-linter read files, not hooks: they analyse this view instead, in which
``kubetrade/operator`` links to ``operator/`` exactly as a wheel would lay it out. The view is
rebuilt on every run from the mapping in ``pyproject.toml`` (the only place it is declared) and
is never committed. The development folders (tests, benchmarks, tools) are linked beside it so
that mypy checks them against the same layout.

Usage: ``python tools/package_view.py [VIEW_DIR]`` (default ``build/package-view``).
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV_FOLDERS = ("tests", "bench", "k8s", "tools")


def package_dirs(pyproject: Path) -> dict[str, Path]:
    """The ``package-dir`` mapping of ``pyproject``: dotted package name → source folder."""
    config = tomllib.loads(pyproject.read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: (pyproject.parent / folder).resolve() for name, folder in mapping.items()}


def build_view(view: Path, mapping: dict[str, Path], *, copy: bool = False) -> None:
    """Lay out every mapped package under ``view`` as symlinks to its source (copies if ``copy``).

    A copied view can be edited without touching the sources (the architecture tests do).
    """
    if view.exists():
        shutil.rmtree(view)

    def place(target: Path, source: Path) -> None:
        if not copy:
            target.symlink_to(source, target_is_directory=source.is_dir())
        elif source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)

    for name in sorted(mapping, key=lambda n: n.count(".")):
        target = view.joinpath(*name.split("."))
        if name.count(".") == 0:
            # The root package is a real folder of links, so that mapped children can sit in it.
            target.mkdir(parents=True)
            for entry in mapping[name].iterdir():
                if entry.name != "__pycache__":
                    place(target / entry.name, entry)
        else:
            if target.exists() or target.is_symlink():
                sys.exit(f"package_view: {name} is a folder of its parent and also mapped")
            place(target, mapping[name])
    for folder in DEV_FOLDERS:
        (view / folder).symlink_to(ROOT / folder, target_is_directory=True)


def main() -> None:
    """Entry point: build the view into the folder given (or the default)."""
    view = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "package-view"
    build_view(view.resolve(), package_dirs(ROOT / "pyproject.toml"))
    print(view)


if __name__ == "__main__":
    main()
