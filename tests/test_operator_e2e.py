"""The operator end to end on the real control plane, with a real NATS server.

The operator runs as ``kubetrade operator`` (a subprocess) under the ServiceAccount and RBAC the
Helm chart installs, so every test also proves those rights are enough. No pod ever runs on the
test control plane, so :class:`Workers` stands in for a bot's three workers on NATS: it sends
the status messages they send and answers control commands the way the executor's engine does
(see ``kubetrade/trading/control.py``). Everything else is real: the API server's validation,
server-side apply, the garbage collector, kopf, NATS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from k8s.generate import chart_objects
from kubetrade.domain import HaltCause
from kubetrade.messages import ControlMessage, StatusMessage, decode, encode
from kubetrade.render import CONFIG_HASH_ANNOTATION
from kubetrade.subjects import Subjects
from tests.controlplane.fixtures import ControlPlane
from tests.waiting import wait_for

pytestmark = pytest.mark.controlplane

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "k8s" / "examples" / "synthetic-paper.yaml"
CRD = REPO / "crds" / "tradingbot.yaml"
SYSTEM_NAMESPACE = "kubetrade-system"
GROUP, VERSION, PLURAL = "kubetrade.io", "v1alpha1", "tradingbots"
MODEL = "kubetrade-baseline"
HEARTBEAT_TIMEOUT = 3.0
FINALIZER_TIMEOUT = 6.0
RESYNC_INTERVAL = 2.0


# --- helpers ----------------------------------------------------------------------------


def bot_manifest(name: str, **spec: Any) -> dict[str, Any]:
    """The synthetic example bot, renamed, with ``spec`` fields replaced."""
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"] = {"name": name}
    document["spec"]["model"] = {"name": MODEL, "version": "1"}
    document["spec"].update(spec)
    return document


class Workers:
    """Stands in for one bot's feed, inference and executor on NATS (no pod runs here).

    Publishes each component's status message every 0.3 s, as the workers do every second,
    and applies the control commands it receives as the executor's engine does: ``pause`` and
    ``resume`` toggle ``paused``; ``kill`` closes every position and halts with the reason
    ``kill switch: <reason>`` and the kill's cause in the typed ``halt_causes`` field (the
    first kill stands); ``reset`` clears that halt.
    """

    def __init__(self, nats_url: str, namespace: str, bot: str) -> None:
        self.url = nats_url
        self.subjects = Subjects(namespace, bot)
        self.key = f"{namespace}/{bot}"
        self.states: dict[str, tuple[str, str, str | None]] = {}
        self.trading: dict[str, Any] = {
            "equity": 10412.5,
            "realizedPnl": 380.1,
            "unrealizedPnl": 32.4,
            "openPositions": 2,
            "trades": 27,
            "lastSignalAt": "2024-01-01T00:15:00Z",
            "cash": 7000.0,
            "halted": False,
            "paused": False,
        }
        self.controls: list[ControlMessage] = []
        self.halt_causes: list[HaltCause] = []
        # Seconds a kill leaves an order working on the exchange (a live entry being cancelled),
        # and when the executor last reported it.
        self.working_after_kill = 0.0
        self.working_until = 0.0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"workers-{bot}", daemon=True)
        self._ready = threading.Event()

    def __enter__(self) -> Workers:
        self._thread.start()
        assert self._ready.wait(10), "fake workers did not connect to NATS"
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def report(
        self, component: str, state: str, message: str = "", model: str | None = None
    ) -> None:
        """From now on, ``component`` reports ``state`` with ``message`` (and, for inference,
        the ``model`` it serves)."""
        with self._lock:
            self.states[component] = (state, message, model)

    def silence(self, component: str) -> None:
        """``component`` stops reporting (as if its pod were gone)."""
        with self._lock:
            self.states.pop(component, None)

    def actions(self) -> list[str]:
        """Control actions received so far."""
        with self._lock:
            return [c.action for c in self.controls]

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        client = await nats.connect(self.url)
        await client.subscribe(self.subjects.control, cb=self._on_control)
        self._ready.set()
        while not self._stop.is_set():
            with self._lock:
                messages = [
                    StatusMessage(
                        component=component,
                        bot=self.key,
                        state=state,
                        message=message,
                        time=int(time.time() * 1000),
                        trading=dict(self.trading) if component == "executor" else None,
                        halt_causes=list(self.halt_causes) if component == "executor" else [],
                        model=model,
                        counters=(
                            {"orders_working": int(time.time() < self.working_until)}
                            if component == "executor"
                            else {}
                        ),
                    )
                    for component, (state, message, model) in self.states.items()
                ]
            for status in messages:
                await client.publish(self.subjects.status, encode(status))
            await asyncio.sleep(0.3)
        await client.drain()

    async def _on_control(self, msg: Any) -> None:
        command = decode(ControlMessage, msg.data)
        with self._lock:
            self.controls.append(command)
            if command.action in ("pause", "resume"):
                self.trading["paused"] = command.action == "pause"
            elif command.action == "kill":
                if not self.working_until:
                    self.working_until = time.time() + self.working_after_kill
                self.trading.update(
                    openPositions=0,
                    unrealizedPnl=0.0,
                    halted=True,
                    haltReason=f"kill switch: {command.reason}",
                )
                self.halt_causes = self.halt_causes or [command.cause]
            else:
                self.trading.update(halted=False)
                self.trading.pop("haltReason", None)
                self.halt_causes = []


class Cluster:
    """Typed access to one test namespace through the kubernetes client."""

    def __init__(self, api_client: Any, namespace: str, kubectl: Callable[..., Any]) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.kubectl = kubectl
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def bot(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        assert isinstance(found, dict)
        return found

    def patch_bot(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, patch
        )

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        bot = self.bot(name) or {}
        conditions = (bot.get("status") or {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == type_), None)

    def phase(self, name: str) -> str | None:
        return ((self.bot(name) or {}).get("status") or {}).get("phase")

    def deployment(self, name: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.apps.read_namespaced_deployment(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def config_hash(self, deployment: str) -> str:
        found = self.deployment(deployment)
        assert found is not None, f"Deployment {deployment} is missing"
        return str(found.spec.template.metadata.annotations[CONFIG_HASH_ANNOTATION])

    def config_data(self, name: str) -> dict[str, str]:
        return self.core.read_namespaced_config_map(name, self.namespace).data or {}

    def events(self, reason: str | None = None) -> list[Any]:
        items = self.core.list_namespaced_event(self.namespace).items
        return [e for e in items if reason is None or e.reason == reason]

    def event_reasons(self, bot: str) -> list[str]:
        return [
            e.reason
            for e in self.core.list_namespaced_event(self.namespace).items
            if e.reason and e.involved_object.kind == "TradingBot" and e.involved_object.name == bot
        ]


# --- fixtures ---------------------------------------------------------------------------


class OperatorProcess:
    """``kubetrade operator`` as a process: started, stopped and restarted like a pod."""

    def __init__(self, command: list[str], env: dict[str, str], work: Path, ports: tuple[int, int]):
        self.command = command
        self.env = env
        self.metrics = f"http://127.0.0.1:{ports[0]}/metrics"
        self.health = f"http://127.0.0.1:{ports[1]}/healthz"
        self.spans = work / "spans.jsonl"
        self.log = work / "operator.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
            )
        wait_for(self._healthy, "the operator's liveness endpoint", timeout=60)

    def _healthy(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, f"operator exited:\n{self.log.read_text()[-3000:]}"
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(self.health, timeout=1) as response,
        ):
            return bool(response.status == 200)
        return False

    def read_metrics(self) -> str:
        """The operator's Prometheus exposition text."""
        with urllib.request.urlopen(self.metrics, timeout=5) as response:
            return str(response.read().decode())

    def metric(self, sample: str) -> float:
        """The value of one sample (``name{labels}``), 0 when it was never set."""
        for line in self.read_metrics().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _token_kubeconfig(cp: ControlPlane, token: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (bearer token)."""
    admin = json.loads(cp.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "kubetrade-operator", "user": {"token": token}}],
        "contexts": [
            {
                "name": "operator",
                "context": {"cluster": cluster["name"], "user": "kubetrade-operator"},
            }
        ],
        "current-context": "operator",
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def install_crd_and_rbac(cp: ControlPlane) -> None:
    """The CRD, the system namespace and the chart's ServiceAccount and RBAC."""
    cp.kubectl("apply", "--server-side", "-f", str(CRD))
    cp.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")
    cp.kubectl("create", "namespace", SYSTEM_NAMESPACE, check=False)
    # Cluster-wide (the chart's opt-in): each test runs its bots in a namespace of its own.
    rbac = [
        o
        for o in chart_objects({"operator": {"clusterWide": True}})
        if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
    ]
    cp.kubectl("apply", "--server-side", "-f", "-", input=json.dumps({"apiVersion": "v1",
               "kind": "List", "items": rbac}))  # fmt: skip


@pytest.fixture(scope="module")
def operator_process(
    controlplane: ControlPlane, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """``kubetrade operator`` running under the chart's ServiceAccount, with its endpoints."""
    from tests.controlplane.fixtures import _free_port

    install_crd_and_rbac(controlplane)
    token = controlplane.kubectl(
        "create", "token", "kubetrade", "--duration=2h", namespace=SYSTEM_NAMESPACE
    ).stdout.strip()
    work = tmp_path_factory.mktemp("operator")
    kubeconfig = _token_kubeconfig(controlplane, token, work / "kubeconfig")
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUBETRADE_TRACE_FILE": str(work / "spans.jsonl"),
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    ports = (_free_port(), _free_port())
    command = [
        sys.executable, "-m", "kubetrade", "operator",
        "--nats-url", nats_url,
        "--metrics-host", "127.0.0.1", "--metrics-port", str(ports[0]),
        "--liveness", f"http://127.0.0.1:{ports[1]}/healthz",
        "--status-interval", "1",
        "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT),
        "--finalizer-timeout", str(FINALIZER_TIMEOUT),
        "--resync-interval", str(RESYNC_INTERVAL),
        "--image", "registry.example/kubetrade:test",
    ]  # fmt: skip
    operator = OperatorProcess(command, env, work, ports)
    try:
        operator.start()
        yield operator
    finally:
        operator.stop()


@pytest.fixture
def cluster(
    operator_process: OperatorProcess,
    kube_api: Any,
    controlplane_namespace: str,
    kubectl: Callable[..., Any],
) -> Cluster:
    return Cluster(kube_api, controlplane_namespace, kubectl)


@pytest.fixture
def workers_for(nats_url: str, cluster: Cluster) -> Iterator[Callable[[str], Workers]]:
    started: list[Workers] = []

    def start(bot: str) -> Workers:
        workers = Workers(nats_url, cluster.namespace, bot).__enter__()
        started.append(workers)
        return workers

    yield start
    for workers in started:
        workers.__exit__()


def all_running(workers: Workers, model: str = f"{MODEL}:1") -> None:
    workers.report("feed", "running")
    workers.report("inference", "running", f"serving {model}", model=model)
    workers.report("executor", "running")


# --- tests ------------------------------------------------------------------------------


def test_a_bot_becomes_its_objects_and_its_status_follows_the_workers(
    cluster: Cluster, workers_for: Callable[[str], Workers]
) -> None:
    cluster.apply(bot_manifest("alpha"))
    bot = wait_for(lambda: cluster.bot("alpha"), "the bot")
    uid = bot["metadata"]["uid"]

    def owned() -> list[Any]:
        found: list[Any] = [
            *cluster.apps.list_namespaced_deployment(cluster.namespace).items,
            *cluster.core.list_namespaced_service(cluster.namespace).items,
            *cluster.core.list_namespaced_config_map(cluster.namespace).items,
            *cluster.core.list_namespaced_service_account(cluster.namespace).items,
        ]
        return [o for o in found if (o.metadata.labels or {}).get("kubetrade.io/bot") == "alpha"]

    objects = wait_for(lambda: owned() if len(owned()) == 6 else None, "six owned objects")
    assert sorted(f"{o.kind or type(o).__name__}/{o.metadata.name}" for o in objects) == sorted(
        [
            "V1ConfigMap/alpha-config",
            "V1ServiceAccount/alpha",
            "V1Deployment/alpha-feed",
            "V1Deployment/alpha-inference",
            "V1Deployment/alpha-executor",
            "V1Service/alpha-inference",
        ]
    )
    for obj in objects:
        [owner] = obj.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid, owner.controller) == (
            "TradingBot",
            "alpha",
            uid,
            True,
        )
        assert {f.manager for f in obj.metadata.managed_fields} >= {"kubetrade-operator"}
    executor = cluster.deployment("alpha-executor")
    assert executor.spec.strategy.type == "Recreate"
    assert executor.spec.template.spec.containers[0].image == "registry.example/kubetrade:test"

    pending = wait_for(lambda: cluster.phase("alpha"), "a first status")
    assert pending == "Pending"
    feed = cluster.condition("alpha", "FeedReady")
    assert feed is not None
    assert (feed["status"], feed["reason"]) == ("False", "AwaitingHeartbeat")

    workers = workers_for("alpha")
    all_running(workers)
    wait_for(lambda: cluster.phase("alpha") == "Running", "phase Running")
    status = cluster.bot("alpha")["status"]  # type: ignore[index]
    by_type = {c["type"]: c for c in status["conditions"]}
    assert {t: c["status"] for t, c in by_type.items()} == {
        "Ready": "True",
        "FeedReady": "True",
        "ModelReady": "True",
        "ExecutorReady": "True",
        "Halted": "False",
    }
    generation = cluster.bot("alpha")["metadata"]["generation"]  # type: ignore[index]
    assert status["observedGeneration"] == generation
    assert all(c["observedGeneration"] == generation for c in status["conditions"])
    assert all(c["lastTransitionTime"] for c in status["conditions"])
    assert status["model"] == {
        "target": f"{MODEL}:1",
        "active": f"{MODEL}:1",
        "state": "Loaded",
        "transition": "UpToDate",
    }
    assert status["trading"] == {
        "equity": 10412.5,
        "realizedPnl": 380.1,
        "unrealizedPnl": 32.4,
        "openPositions": 2,
        "trades": 27,
        "lastSignalAt": "2024-01-01T00:15:00Z",
    }
    table = cluster.kubectl("get", "tradingbots").stdout
    assert "Running" in table and "10412.5" in table and "380.1" in table, table
    wait_for(lambda: "Running" in cluster.event_reasons("alpha"), "a Running event")

    workers.silence("executor")
    lost = wait_for(
        lambda: (c := cluster.condition("alpha", "ExecutorReady")) and c["status"] == "False" and c,
        "the executor's heartbeat to count as lost",
    )
    assert lost["reason"] == "HeartbeatLost"
    assert cluster.phase("alpha") == "Degraded"


def test_a_spec_edit_rolls_the_deployments_with_a_new_config_hash(cluster: Cluster) -> None:
    cluster.apply(bot_manifest("beta"))
    before = wait_for(lambda: cluster.deployment("beta-executor"), "the executor Deployment")
    old_hash = before.spec.template.metadata.annotations[CONFIG_HASH_ANNOTATION]

    cluster.patch_bot("beta", {"spec": {"strategy": {"longAbove": 0.7}}})

    new_hash = wait_for(
        lambda: (h := cluster.config_hash("beta-executor")) != old_hash and h, "a new config hash"
    )
    assert new_hash != old_hash
    config = cluster.config_data("beta-config")
    assert json.loads(config["bot.json"])["spec"]["strategy"]["longAbove"] == 0.7
    wait_for(
        lambda: (cluster.bot("beta") or {}).get("status", {}).get("observedGeneration") == 2,
        "observedGeneration 2",
    )
    wait_for(lambda: "ConfigChanged" in cluster.event_reasons("beta"), "a ConfigChanged event")


def test_owned_objects_deleted_or_edited_by_hand_are_restored(cluster: Cluster) -> None:
    cluster.apply(bot_manifest("gamma"))
    first = wait_for(lambda: cluster.deployment("gamma-executor"), "the executor Deployment")
    wait_for(lambda: cluster.phase("gamma"), "a first status")

    cluster.kubectl("delete", "deployment", "gamma-executor", "--wait=false")
    restored = wait_for(
        lambda: (
            (d := cluster.deployment("gamma-executor"))
            and d.metadata.uid != first.metadata.uid
            and d
        ),
        "the deleted Deployment to come back",
    )
    assert restored.spec.replicas == 1

    cluster.kubectl("scale", "deployment", "gamma-feed", "--replicas=0")
    wait_for(lambda: cluster.deployment("gamma-feed").spec.replicas == 1, "replicas back to 1")

    cluster.kubectl(
        "patch", "configmap", "gamma-config", "--type=merge", "-p", '{"data":{"bot.json":"{}"}}'
    )
    wait_for(
        lambda: cluster.config_data("gamma-config")["bot.json"] != "{}",
        "the ConfigMap restored",
    )
    wait_for(
        lambda: cluster.event_reasons("gamma").count("ObjectRestored") >= 3,
        "three ObjectRestored events",
    )


def test_pause_and_the_kill_switch_reach_the_executor_and_show_in_status(
    cluster: Cluster, workers_for: Callable[[str], Workers]
) -> None:
    cluster.apply(bot_manifest("delta"))
    workers = workers_for("delta")
    all_running(workers)
    wait_for(lambda: cluster.phase("delta") == "Running", "phase Running")

    cluster.patch_bot("delta", {"spec": {"paused": True}})
    wait_for(lambda: "pause" in workers.actions(), "a pause command")
    wait_for(lambda: cluster.phase("delta") == "Paused", "phase Paused")
    cluster.patch_bot("delta", {"spec": {"paused": False}})
    wait_for(lambda: "resume" in workers.actions(), "a resume command")
    wait_for(lambda: cluster.phase("delta") == "Running", "phase Running again")

    cluster.kubectl("annotate", "tradingbot", "delta", "kubetrade.io/kill-switch=flatten")
    wait_for(lambda: "kill" in workers.actions(), "a kill command")
    halted = wait_for(
        lambda: (c := cluster.condition("delta", "Halted")) and c["status"] == "True" and c,
        "Halted",
    )
    assert halted["reason"] == "KillSwitch"
    wait_for(lambda: cluster.phase("delta") == "Halted", "phase Halted")
    wait_for(
        lambda: (cluster.bot("delta") or {})["status"]["trading"]["openPositions"] == 0,
        "no open position",
    )
    assert "KillSwitch" in cluster.event_reasons("delta")
    # Two later rounds of commands (pause, resume): a reset sent before them would have reached
    # the executor first (one NATS connection keeps the operator's order).
    cluster.patch_bot("delta", {"spec": {"paused": True}})
    wait_for(lambda: workers.actions().count("pause") >= 2, "a second pause command")
    cluster.patch_bot("delta", {"spec": {"paused": False}})
    wait_for(lambda: workers.actions().count("resume") >= 2, "a second resume command")
    assert workers.actions().count("reset") == 0, "the kill switch cleared itself"

    cluster.kubectl("annotate", "tradingbot", "delta", "kubetrade.io/kill-switch-")
    wait_for(lambda: "reset" in workers.actions(), "a reset command")
    wait_for(lambda: cluster.phase("delta") == "Running", "phase Running after the reset")
    wait_for(lambda: "HaltCleared" in cluster.event_reasons("delta"), "a HaltCleared event")


def test_a_model_rollout_keeps_trading_on_the_old_model_until_the_new_one_serves(
    cluster: Cluster, workers_for: Callable[[str], Workers]
) -> None:
    cluster.apply(bot_manifest("epsilon"))
    cluster.apply(bot_manifest("zeta"))
    epsilon, zeta = workers_for("epsilon"), workers_for("zeta")
    all_running(epsilon)
    all_running(zeta)
    wait_for(lambda: cluster.phase("epsilon") == "Running", "epsilon Running")
    old_hash = cluster.config_hash("epsilon-inference")
    untouched = {c: cluster.config_hash(f"epsilon-{c}") for c in ("feed", "executor")}

    cluster.patch_bot("epsilon", {"spec": {"model": {"version": "2"}}})
    wait_for(lambda: cluster.config_hash("epsilon-inference") != old_hash, "inference rolled")
    assert {c: cluster.config_hash(f"epsilon-{c}") for c in untouched} == untouched
    rolling = wait_for(
        lambda: (
            (c := cluster.condition("epsilon", "ModelReady"))
            and c["reason"] == "RolloutInProgress"
            and c
        ),
        "ModelReady RolloutInProgress",
    )
    assert f"{MODEL}:1" in rolling["message"]
    assert cluster.phase("epsilon") == "Running"

    # The new pod loads a model whose features do not match; the old one keeps serving.
    epsilon.report("inference", "degraded", "feature mismatch: model wants [a, b], code has [a]")
    blocked = wait_for(
        lambda: (
            (c := cluster.condition("epsilon", "ModelReady"))
            and c["reason"] == "FeatureMismatch"
            and c
        ),
        "ModelReady FeatureMismatch",
    )
    assert "feature mismatch" in blocked["message"]
    status = cluster.bot("epsilon")["status"]  # type: ignore[index]
    assert status["model"]["active"] == f"{MODEL}:1"
    assert status["model"]["transition"] == "BlockedByFailedLoad"
    assert status["model"]["lastFailure"]["reason"] == "FeatureMismatch"
    assert status["phase"] == "Degraded"
    assert "FeatureMismatch" in cluster.event_reasons("epsilon")

    # The old model goes away too: only this bot halts.
    halted = wait_for(
        lambda: (c := cluster.condition("epsilon", "Halted")) and c["status"] == "True" and c,
        "epsilon halted",
        timeout=HEARTBEAT_TIMEOUT + 20,
    )
    assert halted["reason"] == "FeatureMismatch"
    assert cluster.phase("epsilon") == "Halted"
    assert cluster.phase("zeta") == "Running"

    epsilon.report("inference", "running", f"serving {MODEL}:2", model=f"{MODEL}:2")
    wait_for(lambda: cluster.phase("epsilon") == "Running", "epsilon Running on model 2")
    status = cluster.bot("epsilon")["status"]  # type: ignore[index]
    assert status["model"]["active"] == f"{MODEL}:2"
    assert status["model"]["transition"] == "UpToDate"


def test_deletion_flattens_positions_then_removes_everything(
    cluster: Cluster, workers_for: Callable[[str], Workers]
) -> None:
    cluster.apply(bot_manifest("eta", onDelete="flatten"))
    workers = workers_for("eta")
    workers.working_after_kill = 3.0  # a live entry still being cancelled after the kill
    all_running(workers)
    wait_for(lambda: cluster.phase("eta") == "Running", "phase Running")
    bot = cluster.bot("eta")
    assert bot is not None
    assert "kubetrade.io/finalizer" in bot["metadata"]["finalizers"]

    cluster.kubectl("delete", "tradingbot", "eta", "--wait=false")
    wait_for(lambda: cluster.bot("eta") is None, "the bot to be gone", timeout=FINALIZER_TIMEOUT)
    assert "kill" in workers.actions()
    assert time.time() >= workers.working_until, "deleted while an order was still working"
    assert cluster.deployment("eta-executor") is None
    assert not cluster.core.list_namespaced_config_map(
        cluster.namespace, label_selector="kubetrade.io/bot=eta"
    ).items
    reasons = cluster.event_reasons("eta")
    assert "Flattened" in reasons and "Deleted" in reasons


def test_a_stuck_finalizer_gives_up_after_its_timeout(cluster: Cluster) -> None:
    cluster.apply(bot_manifest("theta", onDelete="flatten"))
    wait_for(lambda: cluster.phase("theta"), "a first status")

    cluster.kubectl("delete", "tradingbot", "theta", "--wait=false")
    deleted_at = wait_for(
        lambda: (cluster.bot("theta") or {}).get("metadata", {}).get("deletionTimestamp"),
        "the deletion to be marked",
    )
    wait_for(lambda: cluster.bot("theta") is None, "the bot to be gone", timeout=30)
    [timeout] = cluster.events("FinalizerTimeout")
    # Times the API server and the operator recorded, none measured by the test.
    gave_up_after = timeout.last_timestamp - datetime.datetime.fromisoformat(deleted_at)
    assert gave_up_after.total_seconds() >= FINALIZER_TIMEOUT - 1
    assert timeout.type == "Warning"
    assert "no status from the executor" in timeout.message


def test_a_name_render_could_not_use_is_refused_at_apply_time(cluster: Cluster) -> None:
    # "<name>-inference" names the bot's Service (at most 63 characters), so the CRD refuses a
    # name longer than 53 before the operator ever sees it, with the same rule as kubetrade check.
    name = "a" * 60
    refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(bot_manifest(name)), check=False)
    assert refused.returncode != 0
    assert "at most 53 characters" in refused.stderr
    assert cluster.kubectl("get", "tradingbot", name, check=False).returncode != 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mode": "live", "exchange": {"name": "binance"}}, "spec.exchange.credentialsSecret"),
        (
            {
                "mode": "live",
                "exchange": {"name": "binance", "credentialsSecret": "keys"},
            },
            "spec.liveConfirmed",
        ),
        ({"risk": {"sizing": {"method": "martingale"}}}, "spec.risk.sizing.method"),
        ({"risk": {"sizing": {"maxPositionPct": 150}}}, "spec.risk.sizing.maxPositionPct"),
        ({"symbols": []}, "spec.symbols"),
    ],
)
def test_invalid_manifests_are_refused_at_apply_time_naming_the_field(
    cluster: Cluster, change: dict[str, Any], field: str
) -> None:
    manifest = bot_manifest("iota")
    manifest["spec"].update(copy.deepcopy(change))
    refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert refused.returncode != 0
    assert "is invalid" in refused.stderr and field in refused.stderr, refused.stderr
    assert cluster.bot("iota") is None


def test_credentials_stay_in_their_secret(
    cluster: Cluster, operator_process: OperatorProcess
) -> None:
    api_key, secret = "live-key-4242-do-not-leak", "live-secret-9191-do-not-leak"
    from kubernetes import client

    cluster.core.create_namespaced_secret(
        cluster.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="exchange-keys"),
            data={
                "apiKey": base64.b64encode(api_key.encode()).decode(),
                "secret": base64.b64encode(secret.encode()).decode(),
            },
        ),
    )
    manifest = bot_manifest(
        "kappa",
        mode="live",
        liveConfirmed=True,
        exchange={"name": "binance", "credentialsSecret": "exchange-keys"},
    )
    cluster.apply(manifest)
    wait_for(lambda: cluster.phase("kappa"), "a first status")
    executor = wait_for(lambda: cluster.deployment("kappa-executor"), "the executor")
    refs = {
        e.name: e.value_from.secret_key_ref.name
        for e in executor.spec.template.spec.containers[0].env
        if e.value_from and e.value_from.secret_key_ref
    }
    assert refs["KUBETRADE_EXCHANGE_API_KEY"] == "exchange-keys"
    visible = (
        json.dumps(
            [
                cluster.bot("kappa"),
                cluster.config_data("kappa-config"),
                [e.message for e in cluster.events()],
            ]
        )
        + operator_process.log.read_text()
    )
    assert api_key not in visible and secret not in visible


def test_metrics_liveness_and_spans(cluster: Cluster, operator_process: OperatorProcess) -> None:
    cluster.apply(bot_manifest("lambda"))
    wait_for(lambda: cluster.phase("lambda"), "a first status")
    metrics = operator_process.read_metrics()
    for name in (
        "kubetrade_operator_reconciles_total",
        "kubetrade_operator_reconcile_errors_total",
        "kubetrade_operator_reconcile_duration_seconds_bucket",
        'kubetrade_operator_bots{phase="Pending"}',
        "kubetrade_operator_status_writes_total",
    ):
        assert name in metrics, name
    applied = [
        line
        for line in metrics.splitlines()
        if line.startswith("kubetrade_operator_reconciles_total") and 'outcome="applied"' in line
    ]
    assert applied and sum(float(line.split()[-1]) for line in applied) >= 1
    spans = wait_for(
        lambda: [
            s
            for s in map(json.loads, operator_process.spans.read_text().splitlines())
            if s["name"] == "operator.reconcile"
            and s["attributes"].get("kubetrade.bot") == f"{cluster.namespace}/lambda"
        ],
        "a reconcile span of the bot",
    )
    assert spans[0]["attributes"]["kubetrade.outcome"] == "applied"
    assert spans[0]["service"] == "kubetrade-operator"


def test_a_restarted_operator_resumes_every_bot_and_keeps_its_status(
    cluster: Cluster, workers_for: Callable[[str], Workers], operator_process: OperatorProcess
) -> None:
    cluster.apply(bot_manifest("mu"))
    workers = workers_for("mu")
    all_running(workers)
    wait_for(lambda: cluster.phase("mu") == "Running", "phase Running")
    before = cluster.condition("mu", "Ready")
    phase_events = cluster.event_reasons("mu").count("Running")

    operator_process.stop()
    operator_process.start()

    first = cluster.deployment("mu-executor")
    cluster.kubectl("delete", "deployment", "mu-executor", "--wait=false")
    wait_for(
        lambda: (d := cluster.deployment("mu-executor")) and d.metadata.uid != first.metadata.uid,
        "the resumed operator to restore a deleted Deployment",
    )
    # Two status writes of the resumed operator, at least a status tick apart: the first
    # tick's status and Events are all written before the second write is visible.
    for equity in (20_000.0, 20_001.0):
        workers.trading["equity"] = equity

        def written(equity: float = equity) -> bool:
            status = (cluster.bot("mu") or {}).get("status") or {}
            return bool(status.get("trading", {}).get("equity") == equity)

        wait_for(written, f"the resumed operator to write equity {equity}")
    assert cluster.condition("mu", "Ready") == before
    assert cluster.event_reasons("mu").count("Running") == phase_events
    metrics = operator_process.read_metrics()
    assert 'kubetrade_operator_reconciles_total{outcome="applied",trigger="resume"}' in metrics
    # Two whole resyncs of the resumed operator find nothing else to restore: the deleted
    # Deployment was put back once (by the watch, the resume or a resync), nothing of the
    # untouched bot differs from what it rendered.
    passes = operator_process.metric('kubetrade_operator_resyncs_total{outcome="ok"}')
    wait_for(
        lambda: (
            operator_process.metric('kubetrade_operator_resyncs_total{outcome="ok"}') >= passes + 2
        ),
        "two more resync passes",
        timeout=RESYNC_INTERVAL * 4,
    )
    assert cluster.event_reasons("mu").count("ObjectRestored") <= 1
