"""A bot that trades in real pods: the chart installed with Helm on the one-node cluster.

The chart (real Helm, pinned in tests/cluster/helm.py) installs the operator as a pod under its
ServiceAccount, with the development NATS and PostgreSQL from test images built here
(tests/cluster/images.py; no registry is reachable, so the chart's image values point at them).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RELEASE = "kubetrade"
SYSTEM_NS = "kt-system"
BOTS_NS = "kt-bots"
OPERATOR_READY_S = 240
BENCH_OUT_ENV = "KUBETRADE_CLUSTER_BENCH_OUT"  # bench/cluster.py reads the figures from there
DEV_SELECTOR = "app.kubernetes.io/component in (dev-nats,dev-postgresql)"
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"


def _load(name: str, file: str) -> Any:
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, HERE / file)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


_images = _load("_kubetrade_cluster_images", "images.py")
_helm = _load("_kubetrade_cluster_helm", "helm.py")
_cluster_mod = _load("_kubetrade_cluster", "cluster.py")


@dataclass
class Release:
    """The chart as installed: where, with which images, and how long it took."""

    cluster: Any
    helm: Path
    images: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)

    def helm_run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [str(self.helm), *args],
            capture_output=True,
            text=True,
            env={**self.cluster.env, "HELM_CACHE_HOME": str(self.cluster.workdir / "helm")},
            timeout=timeout,
            check=False,
        )
        if r.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{r.stderr}{r.stdout}")
        return r

    def kubectl(
        self, *args: str, ns: str = SYSTEM_NS, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        r: subprocess.CompletedProcess[str] = self.cluster.kubectl(*args, namespace=ns, **kw)
        return r

    def pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        out = self.kubectl("get", "pods", "-l", selector, "-o", "json", ns=ns).stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items


def import_image(cluster: Any, archive: Path) -> float:
    """Import an OCI archive into the node's containerd unless the same digest is there."""
    ref, digest = _cluster_mod.archive_ref(archive)
    have = cluster.ctr("images", "ls", timeout=30).stdout.splitlines()[1:]
    if any(line.split()[:1] == [ref] and digest in line for line in have):
        return 0.0
    t0 = time.monotonic()
    r = cluster.ctr("images", "import", str(archive), timeout=300)
    assert r.returncode == 0, f"ctr images import {archive}: {r.stderr}{r.stdout}"
    return time.monotonic() - t0


def _describe_failure(rel: Release, ns: str) -> str:
    pods = rel.kubectl("get", "pods", "-o", "wide", ns=ns, check=False).stdout
    events = rel.kubectl("get", "events", "--sort-by=.lastTimestamp", ns=ns, check=False).stdout
    return f"pods in {ns}:\n{pods}\nevents:\n{events[-4000:]}"


@pytest.fixture(scope="module")
def release(cluster: Any) -> Iterator[Release]:
    """`helm install` of the chart with dev NATS and PostgreSQL; the operator Ready."""
    helm = _helm.build()
    built = _images.build_all()
    rel = Release(cluster, helm, built)
    for img in built.values():
        rel.timings[f"import {img.name}"] = round(import_image(cluster, img.archive), 2)
    cluster.kubectl("create", "namespace", BOTS_NS)
    values = {
        "image.pullPolicy": "Never",  # imported into the node, never pulled
        "bots.image.pullPolicy": "Never",
        "operator.watchNamespaces": "{" + BOTS_NS + "}",
        "operator.logLevel": "INFO",
        "nats.dev.enabled": "true",
        "nats.dev.persistence.enabled": "false",  # no storage provisioner on this node
        "nats.dev.image.repository": built["nats"].repository,
        "nats.dev.image.tag": built["nats"].tag,
        "nats.dev.image.pullPolicy": "Never",
        "database.dev.enabled": "true",
        "database.dev.persistence.enabled": "false",
        "database.dev.image.repository": built["postgresql"].repository,
        "database.dev.image.tag": built["postgresql"].tag,
        "database.dev.image.pullPolicy": "Never",
    }
    args = [f"--set={k}={v}" for k, v in values.items()]
    t0 = time.monotonic()
    try:
        rel.helm_run(
            "install", RELEASE, str(REPO / "charts" / "kubetrade"), "-n", SYSTEM_NS,
            "--create-namespace", "--wait", f"--timeout={OPERATOR_READY_S}s", *args,
        )  # fmt: skip
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_describe_failure(rel, SYSTEM_NS)}") from None
    rel.timings["helm install -> operator ready"] = round(time.monotonic() - t0, 2)
    try:
        yield rel
    finally:
        record_peak_memory(rel, SYSTEM_NS, "app.kubernetes.io/instance=" + RELEASE, "")
        figures = {"timings": rel.timings, "peak_memory": rel.memory}
        cluster.timings["bot-in-pods"] = figures
        out = os.environ.get(BENCH_OUT_ENV)
        if out:
            Path(out).write_text(json.dumps(figures, indent=1) + "\n")
        rel.helm_run("uninstall", RELEASE, "-n", SYSTEM_NS, "--wait", "--timeout=120s")


def peak_memory(pod: dict[str, Any]) -> dict[str, int]:
    """Peak memory (bytes) of each container of a running pod, from its cgroup (v1 or v2)."""
    uid = pod["metadata"]["uid"]
    out: dict[str, int] = {}
    for status in pod.get("status", {}).get("containerStatuses", []):
        cid = status.get("containerID", "").split("://")[-1]
        if not cid:
            continue
        for pattern in (
            f"/sys/fs/cgroup/memory/kubepods*/**/pod{uid}/{cid}/memory.max_usage_in_bytes",
            f"/sys/fs/cgroup/kubepods*/**/pod{uid}/{cid}/memory.peak",
        ):
            found = sorted(Path("/").glob(pattern.lstrip("/")))
            if found:
                out[status["name"]] = int(found[0].read_text())
                break
    return out


def record_peak_memory(release: Release, ns: str, selector: str, prefix: str) -> None:
    """Each container's peak memory next to the memory it requests, into the release's figures."""
    for pod in release.pods(ns, selector):
        requests = {
            c["name"]: c.get("resources", {}).get("requests", {}).get("memory")
            for c in pod["spec"]["containers"]
        }
        for container, peak in peak_memory(pod).items():
            release.memory[f"{prefix}{container}"] = {
                "peak_MiB": round(peak / 2**20, 1),
                "request": requests.get(container),
            }


def test_the_chart_runs_the_operator_and_dev_servers_as_pods(release: Release) -> None:
    rel = release
    (op,) = rel.pods(SYSTEM_NS, OPERATOR_SELECTOR)
    sa = rel.kubectl("get", "serviceaccounts", "-o", "jsonpath={.items[*].metadata.name}").stdout
    assert op["spec"]["serviceAccountName"] in sa.split()
    assert op["spec"]["serviceAccountName"] != "default"
    assert op["spec"]["containers"][0]["image"] == rel.cluster.image
    dev = rel.pods(SYSTEM_NS, DEV_SELECTOR)
    assert len(dev) == 2
    for pod in (op, *dev):
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready.get("Ready") == "True", pod["metadata"]["name"]
    images = {p["spec"]["containers"][0]["image"] for p in dev}
    assert images == {rel.images["nats"].ref, rel.images["postgresql"].ref}
    # the bots' database Secret the dev PostgreSQL created in the watched namespace
    uri = rel.kubectl(
        "get", "secret", "kubetrade-database", "-o", "jsonpath={.data.uri}", ns=BOTS_NS
    ).stdout
    assert base64.b64decode(uri).decode().startswith("postgresql://kubetrade:")
    # the operator's RBAC is the chart's: it may not read Secrets
    can = rel.kubectl(
        "auth", "can-i", "get", "secrets", "-n", BOTS_NS,
        f"--as=system:serviceaccount:{SYSTEM_NS}:{op['spec']['serviceAccountName']}",
        check=False,
    ).stdout.strip()  # fmt: skip
    assert can == "no"
