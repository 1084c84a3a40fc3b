"""Fast checks of the control-plane builder and plugin that need no binaries.

They always run (no `controlplane` marker): the pin is parsed from go.mod and
kept consistent, the cache path follows the pin, and a missing build makes the
control-plane tests skip loudly (or fail when CI requires them).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def _load_build() -> Any:
    spec = importlib.util.spec_from_file_location("_kt_cp_build_for_tests", HERE / "build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


build = _load_build()


def test_pin_is_read_from_go_mod_and_replaces_agree() -> None:
    v = build.versions()
    assert v["kubernetes"].startswith("v1.")
    minor, patch = v["kubernetes"].split(".")[1:]
    assert v["staging"] == f"v0.{minor}.{patch}"
    assert v["etcd"].startswith("v3.")
    build.check_replaces()  # the committed go.mod is consistent
    text = build.GO_MOD.read_text()
    for staging in (
        "k8s.io/api",
        "k8s.io/apiserver",
        "k8s.io/client-go",
        "k8s.io/kubectl",
        "k8s.io/kube-controller-manager",
        "k8s.io/apiextensions-apiserver",
    ):
        assert f"{staging} => {staging} {v['staging']}" in text
    for pkg in build.PACKAGES:
        assert f"\t{pkg}\n" in text, f"go.mod lacks the tool directive for {pkg}"


def test_replace_that_disagrees_with_the_pin_is_refused(tmp_path: Path) -> None:
    text = build.GO_MOD.read_text()
    v = build.versions()
    bad = tmp_path / "go.mod"
    bad.write_text(
        text.replace(
            f"k8s.io/apiserver => k8s.io/apiserver {v['staging']}",
            "k8s.io/apiserver => k8s.io/apiserver v0.1.0",
        )
    )
    with pytest.raises(
        build.PinError, match=re.escape("k8s.io/apiserver => k8s.io/apiserver v0.1.0")
    ):
        build.check_replaces(bad)


def test_cache_dir_follows_the_pin_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(build.ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    v = build.versions()
    d = build.bin_dir()
    assert (
        d
        == tmp_path
        / "xdg"
        / "kubetrade"
        / "controlplane"
        / f"k8s-{v['kubernetes']}-etcd-{v['etcd']}"
    )
    assert set(build.missing(d)) == {*build.BINARIES, build.INFO_FILE}
    d.mkdir(parents=True)
    for b in build.BINARIES:
        (d / b).write_text("#!/bin/sh\n")
        (d / b).chmod(0o755)
    assert build.missing(d) == [build.INFO_FILE]  # an interrupted build is not a build
    (d / build.INFO_FILE).write_text("{}")
    assert build.missing(d) == []

    own = tmp_path / "assets"
    own.mkdir()
    monkeypatch.setenv(build.ENV_DIR, str(own))
    assert build.bin_dir() == own
    assert set(build.missing()) == set(build.BINARIES)  # no stamp needed for a given dir


def test_cli_check_and_path(tmp_path: Path) -> None:
    env = {**os.environ, build.ENV_DIR: str(tmp_path)}
    r = subprocess.run(
        [sys.executable, str(HERE / "build.py"), "check"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1 and "make controlplane" in r.stderr
    r = subprocess.run(
        [sys.executable, str(HERE / "build.py"), "path"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.strip() == str(tmp_path)


INNER_CONFTEST = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("kt_cp_fixtures", {path!r})
mod = importlib.util.module_from_spec(spec)
sys.modules["kt_cp_fixtures"] = mod
spec.loader.exec_module(mod)
pytest_plugins = ["kt_cp_fixtures"]
"""


@pytest.mark.parametrize("require", [False, True])
def test_missing_binaries_skip_loudly_or_fail_when_required(tmp_path: Path, require: bool) -> None:
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST.format(path=str(HERE / "fixtures.py")))
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent("""
        def test_a(controlplane): pass
        def test_b(kubectl): pass
    """)
    )
    env = {**os.environ, build.ENV_DIR: str(tmp_path / "empty")}
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("KUBETRADE_REQUIRE_CONTROLPLANE", None)
    if require:
        env["KUBETRADE_REQUIRE_CONTROLPLANE"] = "1"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_inner.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = r.stdout + r.stderr
    if require:
        assert r.returncode == 1, out
        assert "2 errors" in out and "KUBETRADE_REQUIRE_CONTROLPLANE is set" in out, out
    else:
        assert r.returncode == 0, out
        assert "2 skipped" in out, out
        assert "CONTROL PLANE TESTS SKIPPED" in out and "make controlplane" in out, out
