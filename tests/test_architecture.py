"""The architecture holds: the import contract is enforced, and packaging needs no symlink.

The contract lives in ``pyproject.toml`` (``[tool.importlinter]``) and ``make lint`` runs it on
the view ``tools/package_view.py`` builds. These tests show that a wrong import actually fails
it, naming the rule, and that a wheel lays out the components under ``kubetrade.``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tools.package_view import ROOT, build_view, package_dirs

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(view: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=view,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _with_extra_import(view: Path, module: str, statement: str) -> None:
    """Add one import to ``module`` in the (copied) view."""
    path = view.joinpath(*module.split(".")).with_suffix(".py")
    assert not path.is_symlink() and ROOT not in path.resolve().parents
    path.write_text(f"{path.read_text()}\n{statement}\n")


@pytest.fixture
def view(tmp_path: Path) -> Path:
    view = tmp_path / "view"
    build_view(view, package_dirs(ROOT / "pyproject.toml"), copy=True)
    return view


def test_contract_is_kept_by_the_code(view: Path) -> None:
    result = _lint(view)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "rule"),
    [
        # The core reaching up into a component.
        ("kubetrade.spec", "import kubetrade.operator.app", "Layers"),
        # One component importing another.
        ("kubetrade.serving.bridge", "import kubetrade.workers.feed", "Layers"),
        # A pod's code importing a training library the image does not have.
        ("kubetrade.workers.executor", "import torch", "training libraries"),
        # A worker importing the embedded servers of the local runner.
        ("kubetrade.store.store", "import pgserver", "embedded servers"),
    ],
)
def test_a_wrong_import_breaks_the_named_contract(
    view: Path, module: str, statement: str, rule: str
) -> None:
    _with_extra_import(view, module, statement)
    result = _lint(view)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(rule in line for line in broken), result.stdout
    assert module in result.stdout


def test_no_symlink_is_tracked() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert [line for line in listing.splitlines() if line.startswith("120000")] == []


def test_every_source_folder_is_a_declared_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    mapping = package_dirs(ROOT / "pyproject.toml")
    found = set()
    for name, folder in mapping.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            found.add(".".join((name, *relative)))
    assert found == declared


def test_the_checkout_does_not_shadow_the_standard_library_operator() -> None:
    # From the repository root, without PYTHONSAFEPATH: the installed kubetrade (editable or
    # not) has the interpreter import the standard library's `operator` before the working
    # directory could shadow it with the `operator/` folder.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    probe = "import operator, collections, kubetrade.operator; print(operator.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).parent == Path(shutil.__file__).parent


@pytest.mark.integration
def test_wheel_holds_the_components_and_leaves_stdlib_operator_alone(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=ROOT,
        check=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (wheel,) = tmp_path.glob("kubetrade-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("operator/app.py", "serving/service.py", "workers/feed.py", "render.py"):
        assert f"kubetrade/{module}" in names
    assert not any(name.startswith(("operator/", "serving/", "tests/")) for name in names)
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    # Import from the wheel alone: drop the editable install's finder and the checkout.
    probe = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]\n"
        f"sys.path.insert(0, {str(unpacked)!r})\n"
        "import operator, kubetrade.operator.app, kubetrade.serving.bridge\n"
        "import kubetrade.workers.feed\n"
        "print(operator.__file__); print(kubetrade.operator.app.__file__)\n"
    )
    empty = tmp_path / "cwd"
    empty.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=empty,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    stdlib_operator, app = out.stdout.split()
    assert Path(stdlib_operator).parent == Path(shutil.__file__).parent
    assert app.startswith(str(unpacked))
