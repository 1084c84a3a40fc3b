"""Prove the test control plane is real Kubernetes, not a mock's guesses.

Every assertion here checks behaviour that only the real kube-apiserver /
kube-controller-manager produce: the server's own validation messages, CEL
rules, the status subresource, optimistic concurrency, server-side apply field
ownership, garbage collection through owner references, watch bookmarks, and
the fixture's own process hygiene.

Needs the binaries from `make controlplane`; without them these tests are
skipped with a reason naming it (see tests/controlplane/README.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.waiting import wait_for

pytestmark = pytest.mark.controlplane

GROUP, VERSION, PLURAL, KIND = "test.kubetrade.io", "v1", "widgets", "Widget"
API_VERSION = f"{GROUP}/{VERSION}"

# A small CRD of our own (the product's TradingBot CRD is tested elsewhere):
# structural schema with bounds and a pattern, CEL rules (one a transition
# rule using oldSelf) and the status subresource.
WIDGET_CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {PLURAL}.{GROUP}
spec:
  group: {GROUP}
  scope: Namespaced
  names: {{plural: {PLURAL}, singular: widget, kind: {KIND}, listKind: WidgetList}}
  versions:
  - name: {VERSION}
    served: true
    storage: true
    subresources:
      status: {{}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [replicas]
            x-kubernetes-validations:
            - rule: >-
                !has(self.minReplicas) || !has(self.maxReplicas)
                || self.minReplicas <= self.maxReplicas
              message: "minReplicas must not exceed maxReplicas"
            properties:
              replicas: {{type: integer, minimum: 0, maximum: 10}}
              minReplicas: {{type: integer}}
              maxReplicas: {{type: integer}}
              symbol:
                type: string
                pattern: '^[A-Z]+/[A-Z]+$'
                x-kubernetes-validations:
                - rule: "self == oldSelf"
                  message: "symbol is immutable"
              note: {{type: string}}
          status:
            type: object
            properties:
              phase: {{type: string}}
              observedGeneration: {{type: integer}}
"""


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"replicas": 1, **spec},
    }


@pytest.fixture(scope="module")
def widget_crd(controlplane: Any) -> str:
    controlplane.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    controlplane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}"
    )
    return f"{PLURAL}.{GROUP}"


@pytest.fixture
def custom(kube_api: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(kube_api)


def api_error(exc_info: Any) -> tuple[int, dict[str, Any]]:
    e = exc_info.value
    return e.status, json.loads(e.body)


# --------------------------------------------------------------------------- #


def test_binaries_are_the_pinned_release(controlplane: Any) -> None:
    out = json.loads(controlplane.kubectl("version", "-o", "json").stdout)
    pinned = controlplane.versions["kubernetes"]
    assert out["clientVersion"]["gitVersion"] == pinned
    assert out["serverVersion"]["gitVersion"] == pinned
    etcd = subprocess.run(
        [str(controlplane.bin_dir / "etcd"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"etcd Version: {controlplane.versions['etcd'].lstrip('v')}" in etcd


def test_crd_schema_rejects_invalid_object_with_server_message(
    widget_crd: str, kubectl: Callable[..., Any], custom: Any, controlplane_namespace: str
) -> None:
    from kubernetes.client.exceptions import ApiException

    # As a user would: kubectl apply of a manifest with a string where the
    # schema says integer. The error text is the apiserver's.
    bad = yaml.safe_dump(widget("bad", replicas="three"))
    r = kubectl("apply", "-f", "-", input=bad, check=False)
    assert r.returncode != 0
    assert (
        'spec.replicas: Invalid value: "string": '
        'spec.replicas in body must be of type integer: "string"' in r.stderr
    ), r.stderr

    # Through the API: 422 Invalid with a structured cause per field.
    with pytest.raises(ApiException) as ei:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            controlplane_namespace,
            PLURAL,
            widget("too-many", replicas=11, symbol="btc-usdt"),
        )
    status, body = api_error(ei)
    assert status == 422 and body["reason"] == "Invalid"
    causes = {c["field"]: c["message"] for c in body["details"]["causes"]}
    assert "should be less than or equal to 10" in causes["spec.replicas"]
    assert "should match '^[A-Z]+/[A-Z]+$'" in causes["spec.symbol"]

    # Missing required field.
    with pytest.raises(ApiException) as ei:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            controlplane_namespace,
            PLURAL,
            {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "empty"}, "spec": {}},
        )
    assert "spec.replicas: Required value" in str(ei.value.body)

    assert kubectl("get", "widgets", "-o", "name").stdout.strip() == ""


def test_structural_schema_prunes_and_strict_validation_rejects_unknown_fields(
    widget_crd: str, kubectl: Callable[..., Any], custom: Any, controlplane_namespace: str
) -> None:
    obj = widget("pruned")
    obj["spec"]["bogus"] = "dropped by the server"
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, controlplane_namespace, PLURAL, obj
    )
    assert "bogus" not in created["spec"]  # pruned, not stored
    stored = custom.get_namespaced_custom_object(
        GROUP, VERSION, controlplane_namespace, PLURAL, "pruned"
    )
    assert stored["spec"] == {"replicas": 1}

    strict = widget("strict")
    strict["spec"]["bogus"] = 1
    r = kubectl("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(strict), check=False)
    assert r.returncode != 0
    assert 'unknown field "spec.bogus"' in r.stderr, r.stderr


def test_cel_validation_rules_are_enforced(
    widget_crd: str, custom: Any, controlplane_namespace: str
) -> None:
    from kubernetes.client.exceptions import ApiException

    ns = controlplane_namespace
    with pytest.raises(ApiException) as ei:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, widget("w", minReplicas=5, maxReplicas=2)
        )
    status, body = api_error(ei)
    assert status == 422
    assert "minReplicas must not exceed maxReplicas" in body["message"], body["message"]

    # Transition rule (oldSelf): allowed on create, enforced on update.
    custom.create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, widget("w", minReplicas=1, maxReplicas=2, symbol="BTC/USDT")
    )
    with pytest.raises(ApiException) as ei:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "w", {"spec": {"symbol": "ETH/USDT"}}
        )
    status, body = api_error(ei)
    assert status == 422 and "symbol is immutable" in body["message"], body["message"]
    # A valid change still goes through.
    ok = custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "w", {"spec": {"maxReplicas": 3}}
    )
    assert ok["spec"]["maxReplicas"] == 3


def test_status_subresource_and_generation(
    widget_crd: str, custom: Any, controlplane_namespace: str
) -> None:
    ns = controlplane_namespace
    obj = widget("s")
    obj["status"] = {"phase": "Ignored"}
    created = custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, obj)
    assert "status" not in created  # status is reset on create when the subresource is on
    assert created["metadata"]["generation"] == 1

    # Writing status through the main resource is ignored ...
    created["status"] = {"phase": "Sneaky"}
    after = custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "s", created)
    assert "status" not in after
    # ... through /status it sticks, without bumping generation ...
    st = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, "s", {"status": {"phase": "Running", "observedGeneration": 1}}
    )
    assert st["status"] == {"phase": "Running", "observedGeneration": 1}
    assert st["metadata"]["generation"] == 1
    # ... and /status does not change spec; a spec change bumps generation.
    st2 = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, "s", {"spec": {"replicas": 7}}
    )
    assert st2["spec"]["replicas"] == 1
    bumped = custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "s", {"spec": {"replicas": 2}}
    )
    assert bumped["metadata"]["generation"] == 2
    assert bumped["status"]["phase"] == "Running"


def test_stale_resource_version_update_gets_409(
    widget_crd: str, custom: Any, kube_api: Any, controlplane_namespace: str
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ns = controlplane_namespace
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, widget("c"))
    first = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "c")
    second = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "c")
    first["spec"]["replicas"] = 2
    updated = custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "c", first)
    assert updated["metadata"]["resourceVersion"] != second["metadata"]["resourceVersion"]

    second["spec"]["replicas"] = 3  # based on the now-stale resourceVersion
    with pytest.raises(ApiException) as ei:
        custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "c", second)
    status, body = api_error(ei)
    assert status == 409 and body["reason"] == "Conflict"
    assert (
        "the object has been modified; please apply your changes to the latest version"
        in body["message"]
    )

    # Same for a built-in type, through a precondition on a ConfigMap.
    core: Any = client.CoreV1Api(kube_api)
    cm = core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm"), data={"a": "1"})
    )
    stale_rv = cm.metadata.resource_version
    cm.data = {"a": "2"}
    core.replace_namespaced_config_map("cm", ns, cm)
    cm.data = {"a": "3"}
    cm.metadata.resource_version = stale_rv
    with pytest.raises(ApiException) as ei:
        core.replace_namespaced_config_map("cm", ns, cm)
    assert ei.value.status == 409


def test_server_side_apply_records_field_managers(
    widget_crd: str, kubectl: Callable[..., Any], custom: Any, controlplane_namespace: str
) -> None:
    def apply(manager: str, spec: dict[str, Any], *extra: str) -> Any:
        doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "ssa"}, "spec": spec}
        return kubectl(
            "apply",
            "--server-side",
            f"--field-manager={manager}",
            *extra,
            "-f",
            "-",
            input=yaml.safe_dump(doc),
            check=False,
        )

    def managers() -> dict[str, dict[str, Any]]:
        obj = custom.get_namespaced_custom_object(
            GROUP, VERSION, controlplane_namespace, PLURAL, "ssa"
        )
        return {m["manager"]: m for m in obj["metadata"]["managedFields"]}

    r = apply("kubetrade-alice", {"replicas": 1, "symbol": "BTC/USDT"})
    assert r.returncode == 0, r.stderr
    alice = managers()["kubetrade-alice"]
    assert alice["operation"] == "Apply"
    assert set(alice["fieldsV1"]["f:spec"]) == {"f:replicas", "f:symbol"}

    # A second applier touching alice's field conflicts, naming the owner.
    r = apply("kubetrade-bob", {"replicas": 3})
    assert r.returncode != 0
    assert 'conflict with "kubetrade-alice"' in r.stderr and ".spec.replicas" in r.stderr, r.stderr

    # Disjoint fields: both managers co-own the object.
    r = apply("kubetrade-bob", {"replicas": 1, "note": "bob's"})
    assert r.returncode == 0, r.stderr
    m = managers()
    assert set(m["kubetrade-bob"]["fieldsV1"]["f:spec"]) == {"f:replicas", "f:note"}
    assert "f:replicas" in m["kubetrade-alice"]["fieldsV1"]["f:spec"]  # shared: same value

    # Forcing takes ownership away from alice.
    r = apply("kubetrade-bob", {"replicas": 4, "note": "bob's"}, "--force-conflicts")
    assert r.returncode == 0, r.stderr
    m = managers()
    assert set(m["kubetrade-alice"]["fieldsV1"]["f:spec"]) == {"f:symbol"}
    assert (
        custom.get_namespaced_custom_object(GROUP, VERSION, controlplane_namespace, PLURAL, "ssa")[
            "spec"
        ]["replicas"]
        == 4
    )


def test_owner_reference_garbage_collects_deployment(
    widget_crd: str,
    kubectl: Callable[..., Any],
    custom: Any,
    kube_api: Any,
    controlplane_namespace: str,
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ns = controlplane_namespace
    owner = custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, widget("owner"))
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "owned",
            "labels": {"app": "owned"},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "owned"}},
            "template": {
                "metadata": {"labels": {"app": "owned"}},
                "spec": {"containers": [{"name": "c", "image": "example.invalid/never-pulled:1"}]},
            },
        },
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment))

    apps: Any = client.AppsV1Api(kube_api)
    core: Any = client.CoreV1Api(kube_api)
    # The deployment controller makes a ReplicaSet, the replicaset controller
    # makes Pods (which never run: no kubelet, no scheduler).
    rs = wait_for(lambda: apps.list_namespaced_replica_set(ns).items, "a ReplicaSet", 60)
    assert rs[0].metadata.owner_references[0].kind == "Deployment"
    pods = wait_for(
        lambda: len(core.list_namespaced_pod(ns).items) == 2 and core.list_namespaced_pod(ns).items,
        "2 Pods",
        60,
    )
    assert all(p.status.phase == "Pending" and not p.spec.node_name for p in pods)
    out = kubectl("get", "deployment", "owned", "-o", "jsonpath={.spec.replicas}").stdout
    assert out == "2"

    # Delete the owner: the garbage collector removes the whole chain. Real
    # kube-controller-manager behaviour worth knowing for operator tests: the
    # GC rediscovers resource types every 30 s (hard-coded), so for a CRD
    # installed seconds ago this can take up to ~45 s; builtin owners are fast.
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "owner")

    def gone() -> bool:
        try:
            apps.read_namespaced_deployment("owned", ns)
            return False
        except ApiException as e:
            return bool(e.status == 404)

    wait_for(gone, "the garbage collector to delete the Deployment", 120)
    wait_for(lambda: not apps.list_namespaced_replica_set(ns).items, "ReplicaSets to go", 60)
    wait_for(lambda: not core.list_namespaced_pod(ns).items, "Pods to go", 60)


def test_foreground_deletion_waits_for_dependents(
    kube_api: Any, controlplane_namespace: str
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ns = controlplane_namespace
    core: Any = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1",
        kind="ConfigMap",
        name="owner",
        uid=owner.metadata.uid,
        block_owner_deletion=True,
    )
    # The dependent carries a finalizer: foreground deletion of the owner must
    # wait for it, with the owner visible and marked meanwhile.
    core.create_namespaced_config_map(
        ns,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name="dependent", owner_references=[ref], finalizers=["kubetrade.io/hold"]
            )
        ),
    )
    core.delete_namespaced_config_map("owner", ns, propagation_policy="Foreground")
    held = core.read_namespaced_config_map("owner", ns)
    assert held.metadata.deletion_timestamp is not None
    assert "foregroundDeletion" in held.metadata.finalizers
    wait_for(
        lambda: core.read_namespaced_config_map("dependent", ns).metadata.deletion_timestamp,
        "the GC to start deleting the dependent",
        60,
    )
    # The GC has acted on the foreground deletion: the owner waits for its held dependent.
    assert core.read_namespaced_config_map("owner", ns).metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("dependent", ns, {"metadata": {"finalizers": None}})

    def owner_gone() -> bool:
        try:
            core.read_namespaced_config_map("owner", ns)
            return False
        except ApiException as e:
            return bool(e.status == 404)

    wait_for(owner_gone, "the owner to be deleted after its dependent", 60)


def test_watch_list_ends_initial_events_with_a_bookmark(
    widget_crd: str, kubectl: Callable[..., Any], custom: Any, controlplane_namespace: str
) -> None:
    ns = controlplane_namespace
    for name in ("a", "b"):
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, widget(name))
    path = (
        f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}?watch=1&allowWatchBookmarks=true"
        "&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=3"
    )
    out = kubectl("get", "--raw", path).stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    types = [e["type"] for e in events]
    assert types[:2] == ["ADDED", "ADDED"], types
    assert {e["object"]["metadata"]["name"] for e in events[:2]} == {"a", "b"}
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks, types
    bm = bookmarks[0]["object"]
    assert bm["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"
    assert int(bm["metadata"]["resourceVersion"]) >= max(
        int(e["object"]["metadata"]["resourceVersion"]) for e in events[:2]
    )


def test_namespace_fixture_isolates_tests(
    controlplane: Any, kubectl: Callable[..., Any], controlplane_namespace: str
) -> None:
    kubectl("create", "configmap", "mine", "--from-literal=k=v")
    got = kubectl("get", "configmap", "mine", "-o", "json").stdout
    assert json.loads(got)["metadata"]["namespace"] == controlplane_namespace

    # The serviceaccount controller populates every new namespace.
    def default_account() -> str:
        found = kubectl("get", "serviceaccount", "default", "-o", "name", check=False)
        return str(found.stdout).strip()

    assert wait_for(default_account, "the default ServiceAccount", 30) == "serviceaccount/default"


# --------------------------------------------------------------------------- #
# The fixture's process hygiene, checked from outside: an inner pytest session
# uses the plugin; afterwards none of the processes it started may be alive.

INNER_CONFTEST = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("kt_cp_fixtures", {path!r})
mod = importlib.util.module_from_spec(spec)
sys.modules["kt_cp_fixtures"] = mod
spec.loader.exec_module(mod)
pytest_plugins = ["kt_cp_fixtures"]
"""

INNER_TEST = """
import json, os, time

def test_inner(controlplane):
    path = os.environ["KT_PIDFILE"]
    with open(path + ".tmp", "w") as fh:
        json.dump(list(controlplane.pids.values()), fh)
    os.replace(path + ".tmp", path)
    deadline = time.monotonic() + 120
    while not os.path.exists(path + ".go") and time.monotonic() < deadline:
        time.sleep(0.1)  # until the outer test has seen the processes alive
    if os.environ["KT_MODE"] == "fail":
        assert False, "deliberate failure"
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("mode", ["fail", "sigint", "sigkill"])
def test_fixture_stops_every_process(mode: str, tmp_path: Path) -> None:
    fixtures_py = Path(__file__).parent / "controlplane" / "fixtures.py"
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_kt_cp_build_check", fixtures_py.parent / "build.py"
    )
    assert spec and spec.loader
    b = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(b)
    if b.missing(b.bin_dir()):
        if os.environ.get("KUBETRADE_REQUIRE_CONTROLPLANE", "") not in ("", "0"):
            pytest.fail(f"control-plane binaries missing in {b.bin_dir()}")
        pytest.skip(
            f"SKIPPED LOUDLY: control-plane binaries not built in {b.bin_dir()}; "
            "run `make controlplane`"
        )

    (tmp_path / "conftest.py").write_text(INNER_CONFTEST.format(path=str(fixtures_py)))
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    pidfile = tmp_path / "pids.json"
    env = {**os.environ, "KT_PIDFILE": str(pidfile), "KT_MODE": mode}
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "timeout=0",
            f"--basetemp={tmp_path / 'base'}",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_inner.py"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(
            lambda: pidfile.exists() or proc.poll() is not None, "the inner control plane", 240
        )
        assert pidfile.exists(), proc.communicate()[0]
        pids = json.loads(pidfile.read_text())
        assert len(pids) == 3 and all(_alive(p) for p in pids)
        if mode == "fail":
            Path(str(pidfile) + ".go").touch()
        elif mode == "sigint":
            proc.send_signal(signal.SIGINT)  # like Ctrl-C
        elif mode == "sigkill":
            proc.kill()  # no teardown at all: PR_SET_PDEATHSIG must do it
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if mode == "fail":
        assert proc.returncode == 1 and "deliberate failure" in out, out
    elif mode == "sigint":
        assert proc.returncode == 2 and "KeyboardInterrupt" in out, out
    else:
        assert proc.returncode == -signal.SIGKILL
    wait_for(
        lambda: not any(_alive(p) for p in pids), f"processes {pids} to be gone after {mode}", 30
    )
