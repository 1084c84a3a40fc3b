"""The cluster fixture leaves the host as it found it when the test run is interrupted or killed.

Each case runs an inner pytest session that starts its own cluster, then interrupts it (SIGINT, as
Ctrl-C does) or kills it (SIGKILL: no finalizer runs; only the reaper process is left to tear
down). The host must then hold nothing of that cluster: no process, mount, netns, bridge,
KUBE-/CNI- chain, kubepods cgroup, file or changed sysctl. (The normal end of a session is checked
by the fixture itself on every run: leftovers fail the session.)

This file's name sorts first so it runs before the session cluster of the other tests starts (one
cluster per host at a time).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.fixtures import _cluster, _missing_reason

pytestmark = pytest.mark.cluster

HERE = Path(__file__).resolve().parent

INNER_CONFTEST = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("kt_cluster_fixtures", {path!r})
mod = importlib.util.module_from_spec(spec)
sys.modules["kt_cluster_fixtures"] = mod
spec.loader.exec_module(mod)
pytest_plugins = ["kt_cluster_fixtures"]
"""

INNER_TEST = """
import json, time

def test_hold(cluster):
    out = {{"state": cluster.state, "timings": cluster.timings}}
    with open({marker!r}, "w") as fh:
        json.dump(out, fh)
    time.sleep(600)
"""


@pytest.fixture
def no_session_cluster() -> None:
    reason = _missing_reason()
    if reason:
        if os.environ.get("KUBETRADE_REQUIRE_CLUSTER", "") not in ("", "0"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(f"SKIPPED LOUDLY: {reason}")


@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_interrupted_or_killed_run_leaves_the_host_clean(
    tmp_path: Path, how: str, no_session_cluster: None
) -> None:
    marker = tmp_path / "cluster.json"
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST.format(path=str(HERE / "fixtures.py")))
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TEST.format(marker=str(marker))))
    # the plugin is loaded by path: nothing of the checkout goes on sys.path (its top-level
    # `operator` folder would shadow the standard library's)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    log = tmp_path / "inner.log"
    with open(log, "wb") as fh:
        inner = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-s",
                "-p",
                "no:cacheprovider",
                "--rootdir",
                str(tmp_path),
                "--basetemp",
                str(tmp_path / "basetemp"),
                str(tmp_path / "test_inner.py"),
            ],
            cwd=tmp_path,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < deadline:
            assert inner.poll() is None, log.read_text()
            time.sleep(0.5)
        time.sleep(0.2)
        got: dict[str, Any] = json.loads(marker.read_text())
        state = got["state"]
        pids = [p["pid"] for p in state["processes"]]
        assert len(pids) == 8, state["processes"]
        assert _cluster.leftovers(state), "a running cluster shows up as leftovers"

        inner.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
        inner.wait(120)
        # the reaper holds the host lock until it has torn everything down
        fd = _cluster.acquire_lock(180, say=lambda m: None)
        os.close(fd)
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait(30)
    assert _cluster.leftovers(state) == [], log.read_text()
    assert not _cluster.STATE_FILE.exists()
    report = json.loads((Path(state["workdir"]) / "teardown.json").read_text())
    assert report["leftovers"] == []
    assert report["seconds"] < 60, report
