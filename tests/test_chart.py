"""The Helm chart, rendered by the real Helm SDK (helm-python-sdk), linted, validated against
the Kubernetes schemas (kubernetes-validate) and applied to the control plane; and the
kustomize base in k8s/ that installs the same things."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from k8s.generate import chart_objects, generated_files
from tests.controlplane.fixtures import ControlPlane

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "kubetrade"
KUBE_VERSION = "1.37.0"
SYSTEM = "kubetrade-system"
# The RBAC test installs into a namespace of its own: the operator end-to-end tests share the
# session's control plane and bind the same release's ServiceAccount in SYSTEM cluster-wide.
RBAC_SYSTEM = "kubetrade-rbac"
OPERATOR_SA = f"system:serviceaccount:{RBAC_SYSTEM}:kubetrade"

NON_DEFAULT: dict[str, Any] = {
    "image": {"repository": "registry.example/kubetrade", "tag": "9.9.9", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry-creds"}],
    "operator": {
        "watchNamespaces": ["bots-a", "bots-b"],
        "logLevel": "DEBUG",
        "statusInterval": 2,
        "finalizerTimeout": 300,
        "nodeSelector": {"kubernetes.io/os": "linux"},
    },
    "nats": {"url": "nats://nats.messaging:4222"},
    "database": {"secretName": "trading-db"},
    "otlp": {"endpoint": "http://otel-collector.observability:4318"},
    "bots": {
        "image": {"repository": "registry.example/kubetrade-worker", "tag": "1.2.3"},
        "modelStore": {"path": "/var/lib/kubetrade/bentoml", "claimName": "models"},
    },
    "metrics": {"port": 9191, "service": {"enabled": False}},
    "dashboards": {"enabled": True, "label": "grafana_dashboard"},
    "serviceAccount": {"create": False, "name": "existing-operator"},
}

CLUSTER_WIDE: dict[str, Any] = {"operator": {"clusterWide": True}}
VALUE_SETS = pytest.mark.parametrize(
    "values", [None, NON_DEFAULT, CLUSTER_WIDE], ids=["default", "non-default", "cluster-wide"]
)

# Every (apiGroup, resource, verb) the operator uses (see operator/handlers.py and kubeapi.py):
# kopf lists, watches and patches TradingBots; the status loop applies their status; the
# reconciler server-side applies (create + patch), watches and deletes the owned kinds; events
# are created. tradingbots/finalizers update is what blockOwnerDeletion needs where the
# OwnerReferencesPermissionEnforcement admission plugin is on.
EXPECTED_RIGHTS = {
    *{("kubetrade.io", "tradingbots", v) for v in ("list", "watch", "patch")},
    ("kubetrade.io", "tradingbots/status", "patch"),
    ("kubetrade.io", "tradingbots/finalizers", "update"),
    *{
        (group, resource, verb)
        for group, resource in (
            ("apps", "deployments"),
            ("", "configmaps"),
            ("", "services"),
            ("", "serviceaccounts"),
        )
        for verb in ("list", "watch", "create", "patch", "delete")
    },
    ("", "events", "create"),
}


def by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        found.setdefault(obj["kind"], []).append(obj)
    return found


def container_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    [deployment] = by_kind(objects)["Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def rights(objects: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """The (apiGroup, resource, verb) the chart's Roles or ClusterRole grant; all the same."""
    kinds = by_kind(objects)
    granted = [
        {
            (group, resource, verb)
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        for role in [*kinds.get("Role", []), *kinds.get("ClusterRole", [])]
    ]
    assert granted and all(g == granted[0] for g in granted), granted
    return granted[0]


# --- render -----------------------------------------------------------------------------


def test_default_values_install_one_operator_for_the_bots_namespace_only() -> None:
    objects = by_kind(chart_objects())

    assert sorted(objects) == ["Deployment", "Role", "RoleBinding", "Service", "ServiceAccount"]
    [deployment] = objects["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "kubetrade"
    [container] = pod["containers"]
    assert (
        container["image"]
        == f"ghcr.io/kubetrade/kubetrade:{helm.Chart.load(CHART).metadata['appVersion']}"
    )
    assert container["command"] == ["kubetrade", "operator"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = container_env(chart_objects())
    assert env["KUBETRADE_NATS_URL"] == "nats://nats.kubetrade-system.svc:4222"
    assert env["KUBETRADE_DATABASE_SECRET"] == "kubetrade-database"
    # The operator watches exactly the namespaces where it holds rights.
    assert env["KUBETRADE_WATCH_NAMESPACES"] == "bots"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    [role] = objects["Role"]
    assert role["metadata"]["namespace"] == "bots"
    [binding] = objects["RoleBinding"]
    assert binding["metadata"]["namespace"] == "bots"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "kubetrade",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubetrade", "namespace": SYSTEM}
    ]


def test_cluster_wide_is_an_explicit_opt_in() -> None:
    objects = chart_objects(CLUSTER_WIDE)
    kinds = by_kind(objects)

    assert "Role" not in kinds and "RoleBinding" not in kinds
    [binding] = kinds["ClusterRoleBinding"]
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubetrade", "namespace": SYSTEM}
    ]
    # No namespace list: the operator watches every namespace, as its rights allow.
    assert "KUBETRADE_WATCH_NAMESPACES" not in container_env(objects)


def test_a_namespaced_install_without_namespaces_is_refused() -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as refused:
        chart.render({"operator": {"watchNamespaces": []}}, name="kubetrade", namespace=SYSTEM)
    assert "operator.watchNamespaces is empty" in str(refused.value)
    assert "operator.clusterWide=true" in str(refused.value)


def test_non_default_values_reach_the_objects() -> None:
    objects = chart_objects(NON_DEFAULT)
    kinds = by_kind(objects)

    assert "ServiceAccount" not in kinds and "Service" not in kinds
    assert "ClusterRoleBinding" not in kinds
    assert sorted(
        (b["metadata"]["namespace"], b["roleRef"]["kind"], b["roleRef"]["name"])
        for b in kinds["RoleBinding"]
    ) == [
        ("bots-a", "Role", "kubetrade"),
        ("bots-b", "Role", "kubetrade"),
    ]
    assert sorted(r["metadata"]["namespace"] for r in kinds["Role"]) == ["bots-a", "bots-b"]
    assert all(b["subjects"][0]["name"] == "existing-operator" for b in kinds["RoleBinding"])
    [deployment] = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "existing-operator"
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["containers"][0]["image"] == "registry.example/kubetrade:9.9.9"
    assert pod["containers"][0]["ports"][0]["containerPort"] == 9191
    env = container_env(objects)
    assert env == {
        **env,
        "KUBETRADE_NATS_URL": "nats://nats.messaging:4222",
        "KUBETRADE_BOT_IMAGE": "registry.example/kubetrade-worker:1.2.3",
        "KUBETRADE_DATABASE_SECRET": "trading-db",
        "KUBETRADE_WATCH_NAMESPACES": "bots-a bots-b",
        "KUBETRADE_BOT_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
        "KUBETRADE_MODEL_STORE": "/var/lib/kubetrade/bentoml",
        "KUBETRADE_MODEL_STORE_CLAIM": "models",
        "KUBETRADE_STATUS_INTERVAL": "2",
        "KUBETRADE_FINALIZER_TIMEOUT": "300",
        "KUBETRADE_LOG_LEVEL": "DEBUG",
        "KUBETRADE_METRICS_PORT": "9191",
    }


def test_the_environment_is_what_kubetrade_operator_reads() -> None:
    from click import Option

    from kubetrade.cli import operator_command

    read = {p.envvar for p in operator_command.params if isinstance(p, Option) and p.envvar}
    for values in (None, NON_DEFAULT):
        names = set(container_env(chart_objects(values)))
        passed = names - {"OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_ENDPOINT"}
        passed -= {"BENTOML_DO_NOT_TRACK", "ORT_DISABLE_TELEMETRY"}
        assert passed <= read, passed - read


def test_the_chart_ships_the_generated_crd() -> None:
    with helm.Chart.load(CHART) as chart:
        [crd] = chart.crds
    assert crd["data"] == (REPO / "crds" / "tradingbot.yaml").read_text(), (
        "charts/kubetrade/crds/tradingbot.yaml is stale: cp crds/tradingbot.yaml "
        "charts/kubetrade/crds/"
    )


def test_rbac_grants_exactly_what_the_operator_uses() -> None:
    assert rights(chart_objects()) == EXPECTED_RIGHTS
    assert rights(chart_objects(NON_DEFAULT)) == EXPECTED_RIGHTS
    assert rights(chart_objects(CLUSTER_WIDE)) == EXPECTED_RIGHTS


# --- lint, schema, Kubernetes validation ------------------------------------------------


@VALUE_SETS
def test_the_chart_lints_clean(values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")

    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"operator": {"statusInterval": 0}}, "statusInterval"),
        ({"operator": {"logLevel": "LOUD"}}, "logLevel"),
        ({"nats": {"url": "http://nats:4222"}}, "url"),
        ({"operator": {"watchNamespaces": ["Bad_Name"]}}, "watchNamespaces"),
        ({"operator": {"clusterWide": "yes"}}, "clusterWide"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"replicas": 2}, "replicas"),
    ],
)
def test_the_values_schema_refuses_bad_values_naming_them(
    values: dict[str, Any], named: str
) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(None)
        with pytest.raises(helm.HelmValuesError) as refused:
            chart.validate_schema(values)
    assert named in str(refused.value)


@VALUE_SETS
def test_every_object_is_valid_kubernetes(values: dict[str, Any] | None) -> None:
    with helm.Chart.load(CHART) as chart:
        crds = [yaml.safe_load(c["data"]) for c in chart.crds]
    for obj in [*chart_objects(values), *crds]:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


# --- the kustomize base -----------------------------------------------------------------


def test_the_kustomize_base_is_the_chart_s_default_render() -> None:
    files = generated_files()
    stale = [n for n, text in files.items() if (REPO / "k8s" / n).read_text() != text]
    assert not stale, f"k8s/ is stale ({stale}): run .venv/bin/python k8s/generate.py"
    objects = [d for d in yaml.safe_load_all(files["base/operator.yaml"]) if d]
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        (o["kind"], o["metadata"]["name"]) for o in chart_objects()
    ]
    assert all("helm.sh/chart" not in o["metadata"]["labels"] for o in objects)


# --- on the control plane ---------------------------------------------------------------


@pytest.mark.controlplane
def test_kubectl_kustomize_builds_the_base(controlplane: ControlPlane) -> None:
    built = controlplane.kubectl("kustomize", str(REPO / "k8s")).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(built) if d)

    # Namespaces: the operator's and each watched one (its Roles live there).
    assert kinds == sorted(
        [
            "Namespace",
            "Namespace",
            "CustomResourceDefinition",
            *(o["kind"] for o in chart_objects()),
        ]
    )


@pytest.mark.controlplane
def test_the_chart_applies_and_its_service_account_has_only_its_rights(
    controlplane: ControlPlane,
) -> None:
    with helm.Chart.load(CHART) as chart:
        crds = [c["data"] for c in chart.crds]
    for crd in crds:
        controlplane.kubectl("apply", "--server-side", "-f", "-", input=crd)
    for namespace in (RBAC_SYSTEM, "bots", "unlisted"):
        controlplane.kubectl("create", "namespace", namespace, check=False)
    objects = chart_objects(namespace=RBAC_SYSTEM)
    applied = controlplane.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )
    assert applied.returncode == 0
    deployment = json.loads(
        controlplane.kubectl(
            "get", "deployment", "kubetrade", "-o", "json", namespace=RBAC_SYSTEM
        ).stdout
    )
    assert deployment["spec"]["strategy"]["type"] == "Recreate"

    def can(verb: str, resource: str, subresource: str = "", namespace: str = "bots") -> bool:
        extra = [f"--subresource={subresource}"] if subresource else []
        where = ["--all-namespaces"] if namespace == "*" else ["-n", namespace]
        result = controlplane.kubectl(
            "auth", "can-i", verb, resource, *extra, f"--as={OPERATOR_SA}", *where, check=False,
        )  # fmt: skip
        return result.stdout.strip() == "yes"

    for group, resource, verb in sorted(EXPECTED_RIGHTS):
        plural, _, subresource = resource.partition("/")
        qualified = f"{plural}.{group}" if group else plural
        assert can(verb, qualified, subresource), f"the operator cannot {verb} {resource}"
        # The default install holds no right outside the namespaces it lists, its own and
        # kube-system included, and none cluster-wide.
        for elsewhere in ("kube-system", "default", RBAC_SYSTEM, "unlisted", "*"):
            assert not can(verb, qualified, subresource, elsewhere), (
                f"the default install can {verb} {resource} in {elsewhere}"
            )
    for verb, resource in [
        ("get", "secrets"),
        ("list", "secrets"),
        ("get", "pods"),
        ("delete", "tradingbots.kubetrade.io"),
        ("create", "tradingbots.kubetrade.io"),
        ("update", "deployments.apps"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("delete", "namespaces"),
    ]:
        assert not can(verb, resource), f"the operator can {verb} {resource}, which it never does"


def test_kubernetes_validate_would_catch_a_broken_object() -> None:
    [deployment] = by_kind(chart_objects())["Deployment"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


def test_helm_refuses_a_missing_service_account_name() -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as refused:
        chart.render({"serviceAccount": {"create": False}}, name="kubetrade", namespace=SYSTEM)
    assert "serviceAccount.name is required" in str(refused.value)


def test_the_chart_packages(tmp_path: Path) -> None:
    archive = helm.package(CHART, destination=tmp_path)
    listing = subprocess.run(["tar", "tzf", archive], capture_output=True, text=True, check=True)
    assert "kubetrade/crds/tradingbot.yaml" in listing.stdout.split()
    assert "kubetrade/values.schema.json" in listing.stdout.split()


def test_the_dashboard_charts_only_metrics_that_exist() -> None:
    import re

    from prometheus_client import REGISTRY as WORKERS

    import kubetrade.metrics  # noqa: F401  (registers the workers' metrics)
    from kubetrade.operator.metrics import REGISTRY as OPERATOR

    [config_map] = by_kind(chart_objects(NON_DEFAULT))["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["kubetrade-dashboard.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(kubetrade_[a-z_]+)", e)}
    known = {
        sample.name
        for registry in (WORKERS, OPERATOR)
        for family in registry.collect()
        for sample in family.samples
    } | {
        family.name + suffix
        for registry in (WORKERS, OPERATOR)
        for family in registry.collect()
        for suffix in ("", "_total", "_bucket")
    }
    assert used and used <= known, used - known


# --- the database Secret's key and the development servers -------------------------------

DEV: dict[str, Any] = {
    "operator": {"watchNamespaces": ["bots-a", "bots-b"]},
    "nats": {"dev": {"enabled": True}},
    "database": {"dev": {"enabled": True}},
}
DEV_EPHEMERAL: dict[str, Any] = {
    "nats": {"dev": {"enabled": True, "persistence": {"enabled": False}}},
    "database": {"dev": {"enabled": True, "persistence": {"enabled": False}}},
}


def _bot_database_ref(values: dict[str, Any] | None) -> dict[str, str]:
    """The secretKeyRef of a bot pod's database URL when the operator runs with the chart's
    environment: chart values -> operator options -> Platform -> render."""
    from kubetrade.operator.main import OperatorOptions
    from kubetrade.render import render
    from kubetrade.spec import parse_bot

    env = container_env(chart_objects(values))
    options = OperatorOptions(
        nats_url=env["KUBETRADE_NATS_URL"],
        database_secret=env["KUBETRADE_DATABASE_SECRET"],
        database_secret_key=env["KUBETRADE_DATABASE_SECRET_KEY"],
    )
    bot = parse_bot(
        {
            "apiVersion": "kubetrade.io/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": "btc", "namespace": "bots-a"},
            "spec": {"symbols": ["BTC/USDT"], "model": {"name": "m"}},
        }
    )
    objects = render(bot, options.config().platform)
    [executor] = [o for o in objects if o["metadata"]["name"] == "btc-executor"]
    [container] = executor["spec"]["template"]["spec"]["containers"]
    [url] = [e for e in container["env"] if e["name"] == "KUBETRADE_DATABASE_URL"]
    assert "value" not in url, "a bot's database URL must be a Secret reference"
    ref: dict[str, str] = url["valueFrom"]["secretKeyRef"]
    return ref


def test_bots_read_the_database_url_from_the_configured_secret_key() -> None:
    # CloudNativePG's <cluster>-app Secret holds the URL under `uri`: the default.
    assert _bot_database_ref(None) == {"name": "kubetrade-database", "key": "uri"}
    custom = {"database": {"secretName": "pg-app", "secretKey": "url"}}
    assert _bot_database_ref(custom) == {"name": "pg-app", "key": "url"}


def test_no_development_server_by_default() -> None:
    kinds = by_kind(chart_objects())
    assert "StatefulSet" not in kinds and "Secret" not in kinds
    assert container_env(chart_objects())["KUBETRADE_NATS_URL"] == (
        "nats://nats.kubetrade-system.svc:4222"
    )


def test_development_nats_runs_jetstream_on_a_volume_and_everything_uses_it() -> None:
    objects = chart_objects(DEV)
    [nats] = [o for o in by_kind(objects)["StatefulSet"] if o["metadata"]["name"].endswith("nats")]
    pod = nats["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "docker.io/library/nats:2.15-alpine"
    args = container["args"]
    assert "-js" in args and args[args.index("-sd") + 1] == "/data"
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    [claim] = nats["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and "volumes" not in pod
    service = next(
        o for o in by_kind(objects)["Service"] if o["metadata"]["name"] == "kubetrade-nats"
    )
    assert service["spec"]["ports"][0]["port"] == 4222
    # The operator, and through it every bot (the bots' NATS URL defaults to the operator's).
    assert container_env(objects)["KUBETRADE_NATS_URL"] == (
        "nats://kubetrade-nats.kubetrade-system.svc:4222"
    )


def test_development_postgresql_and_the_bots_secret_in_every_watched_namespace() -> None:
    import base64

    objects = chart_objects(DEV)
    [postgres] = [
        o for o in by_kind(objects)["StatefulSet"] if o["metadata"]["name"].endswith("postgresql")
    ]
    [container] = postgres["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "docker.io/library/postgres:16"
    assert postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    secrets = {
        (s["metadata"]["namespace"], s["metadata"]["name"]): s for s in by_kind(objects)["Secret"]
    }
    password = base64.b64decode(secrets[(SYSTEM, "kubetrade-postgresql")]["data"]["password"])
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kubetrade-postgresql",
        "key": "password",
    }
    ref = _bot_database_ref(DEV)
    for namespace in ("bots-a", "bots-b"):
        data = secrets[(namespace, ref["name"])]["data"]
        uri = base64.b64decode(data[ref["key"]]).decode()
        assert uri == (
            f"postgresql://kubetrade:{password.decode()}"
            "@kubetrade-postgresql.kubetrade-system.svc:5432/kubetrade"
        )


def test_development_servers_without_persistence_use_empty_dirs() -> None:
    for server in by_kind(chart_objects(DEV_EPHEMERAL))["StatefulSet"]:
        assert "volumeClaimTemplates" not in server["spec"]
        volumes = {v["name"]: v for v in server["spec"]["template"]["spec"]["volumes"]}
        assert volumes["data"] == {"name": "data", "emptyDir": {}}


@pytest.mark.parametrize("values", [DEV, DEV_EPHEMERAL], ids=["dev", "dev-ephemeral"])
def test_development_servers_lint_clean_and_are_valid_kubernetes(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report
    for obj in chart_objects(values):
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"database": {"secretKey": "a key"}}, "secretKey"),
        ({"nats": {"dev": {"enabled": "yes"}}}, "enabled"),
        ({"database": {"dev": {"persistence": {"size": "lots"}}}}, "size"),
    ],
)
def test_the_values_schema_refuses_bad_dev_and_secret_values(
    values: dict[str, Any], named: str
) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert named in str(refused.value)
