"""pytest plugin: a real one-node Kubernetes cluster that runs the project's image.

Fixtures
--------
``cluster``             session: the running :class:`~tests.cluster.cluster.Cluster`
                        (``.kubeconfig``, ``.env``, ``.kubectl(...)``, ``.api_client()``,
                        ``.image``, ``.node_ip``, ``.timings``).
``cluster_namespace``   function: a fresh namespace, deleted afterwards.
``cluster_kubectl``     function: ``kubectl(*args, input=None, check=True)`` bound to the
                        cluster and the test's namespace.

Mark such tests ``@pytest.mark.cluster``. The binaries and images come from ``make cluster`` and
``make image``; when they are missing every such test is skipped loudly (the reason names the make
target) and the run ends with a banner; with ``KUBETRADE_REQUIRE_CLUSTER=1`` it is an error. The
cluster needs root and a host lock (one cluster per machine); it is torn down by a reaper process
when the session ends, fails, is interrupted or is killed (see cluster.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REQUIRE_ENV = "KUBETRADE_REQUIRE_CLUSTER"
START_TIMEOUT = float(os.environ.get("KUBETRADE_CLUSTER_START_TIMEOUT", "240"))
LOCK_TIMEOUT = float(os.environ.get("KUBETRADE_CLUSTER_LOCK_TIMEOUT", "900"))


def _load(name: str, file: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, HERE / file)
    assert spec and spec.loader
    mod = sys.modules.get(name)
    if mod is None:
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


_build = _load("_kubetrade_cluster_build", "build.py")
_cluster = _load("_kubetrade_cluster", "cluster.py")
_images = _load("_kubetrade_cluster_images", "images.py")

_skip_reasons: list[str] = []
_timings: dict[str, Any] = {}


def _missing_reason() -> str | None:
    if os.geteuid() != 0:
        return "the one-node cluster needs root (containerd, iptables, cgroups)"
    try:
        miss = _build.cp_build.missing() + _build.missing()
    except Exception as e:
        return f"cluster build unreadable ({e}); run `make cluster image`"
    if not miss:
        return None
    return (
        f"one-node cluster not built: {'; '.join(miss)}. Run `make controlplane cluster image` "
        f"(timings in tests/cluster/README.md)."
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: needs the one-node cluster (make cluster) and the image (make image)"
    )


@contextlib.contextmanager
def session_cluster(workdir: Path) -> Iterator[Any]:
    """The tier's cluster on the persistent containerd store, with the project image's facts.

    The ``cluster`` fixture is this; bench/cluster.py uses it outside pytest.
    """
    info = _build.image_info() or {}
    with _cluster.one_node_cluster(
        _build.cp_build.bin_dir(),
        _build.cp_build.node_dir(),
        workdir,
        # the dev NATS/PostgreSQL test images (images.py) stay imported too, once built
        [_build.pause_archive_path(), _build.archive_path(), *_images.existing_archives()],
        # images stay imported between runs: a warm start imports nothing
        containerd_root=_build.cache_root() / "cluster" / "containerd",
        lock_timeout=LOCK_TIMEOUT,
        start_timeout=START_TIMEOUT,
        say=lambda m: print(m, file=sys.stderr, flush=True),
    ) as c:
        c.image = info.get("image", _build.image_ref())
        c.image_info = info
        c.versions = _build.cp_build.versions()
        yield c


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = _missing_reason()
    if reason:
        if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
            pytest.fail(f"{REQUIRE_ENV} is set but {reason}", pytrace=False)
        _skip_reasons.append(reason)
        pytest.skip(f"SKIPPED LOUDLY: {reason}")
    workdir = tmp_path_factory.mktemp("cluster", numbered=True)
    t0 = time.monotonic()
    with session_cluster(workdir) as c:
        _timings.update({"workdir": str(workdir), "start": c.timings})
        try:
            yield c
        finally:
            _timings["session_seconds"] = round(time.monotonic() - t0, 1)
    _timings["teardown_seconds"] = c.timings.get("teardown")
    with contextlib.suppress(OSError):
        (workdir / "timings.json").write_text(json.dumps(_timings, indent=1))


_NS_BAD = re.compile(r"[^a-z0-9-]+")


@pytest.fixture
def cluster_namespace(cluster: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = _NS_BAD.sub("-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl(
        "wait", f"--namespace={name}", "--for=create", "serviceaccount/default", "--timeout=60s"
    )
    try:
        yield name
    finally:
        # The namespace controller finishes the deletion in the background.
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def cluster_kubectl(
    cluster: Any, cluster_namespace: str
) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        r: subprocess.CompletedProcess[str] = cluster.kubectl(
            *args, input=input, check=check, namespace=cluster_namespace, timeout=timeout
        )
        return r

    return run


def pytest_terminal_summary(terminalreporter: Any) -> None:
    tr = terminalreporter
    if _timings.get("start"):
        start = _timings["start"]
        tr.write_line(
            f"one-node cluster: started in {start.get('start', 0):.1f}s "
            f"(images imported in "
            f"{sum(v for k, v in start.items() if k.startswith('import ')):.1f}s), "
            f"torn down in {_timings.get('teardown_seconds') or 0:.1f}s; "
            f"timings in {_timings['workdir']}/timings.json"
        )
    if _skip_reasons:
        tr.section("ONE-NODE CLUSTER TESTS SKIPPED", sep="!", red=True, bold=True)
        tr.write_line(_skip_reasons[0], red=True, bold=True)
        tr.write_line(
            "The tests that run the project's image on a real node did NOT run.",
            red=True,
            bold=True,
        )
