"""render(): a bot becomes the Kubernetes objects the operator creates, and the same objects
become the local processes ``kubetrade run`` starts."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kubetrade.natsauth import NatsSecurity
from kubetrade.processes import EnvResolutionError, LocalProcess, local_processes
from kubetrade.render import (
    CONFIG_HASH_ANNOTATION,
    DEFAULT_RESOURCES,
    NatsAuth,
    Platform,
    RenderError,
    render,
)
from kubetrade.settings import COMPONENTS, QUIET_ENV, WorkerSettings
from kubetrade.spec import ManifestError, Metadata, TradingBot, parse_bot

UID = "4f9c2d6e-8a1b-4c3d-9e5f-0a1b2c3d4e5f"
DATABASE_URL = "postgresql://kubetrade:db-password-123@db:5432/kubetrade"
SECRETS = {
    "kubetrade-database": {"uri": DATABASE_URL},
    "binance-keys": {"apiKey": "api-key-456", "secret": "api-secret-789"},
}
LIVE: dict[str, Any] = {
    "mode": "live",
    "liveConfirmed": True,
    "exchange": {"name": "binance", "credentialsSecret": "binance-keys"},
}


def make_bot(uid: str | None = UID, name: str = "btc-trend", **spec: Any) -> TradingBot:
    metadata: dict[str, Any] = {"name": name, "namespace": "bots"}
    if uid is not None:
        metadata["uid"] = uid
    return parse_bot(
        {
            "apiVersion": "kubetrade.io/v1alpha1",
            "kind": "TradingBot",
            "metadata": metadata,
            "spec": {"symbols": ["BTC/USDT", "ETH/USDT"], "model": {"name": "btc-xgb"}, **spec},
        }
    )


def by_name(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o
        for o in objects
        if o["kind"] == "Deployment"
    }


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    only: dict[str, Any]
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_entries(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(deployment)["env"]}


def pod_env(objects: list[dict[str, Any]], component: str) -> dict[str, str]:
    """The environment a pod of ``component`` sees, resolved as the kubelet resolves it."""
    config_maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    env = {}
    for entry in container(deployments(objects)[component])["env"]:
        source = entry.get("valueFrom", {})
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[entry["name"]] = config_maps[ref["name"]][ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[entry["name"]] = SECRETS[ref["name"]][ref["key"]]
        else:
            env[entry["name"]] = entry["value"]
    return env


def config_hashes(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {
        component: d["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        for component, d in deployments(objects).items()
    }


# --- objects ----------------------------------------------------------------------------


def test_kinds_names_and_namespace() -> None:
    objects = render(make_bot(), Platform())

    assert [f"{o['kind']}/{o['metadata']['name']}" for o in objects] == [
        "ConfigMap/btc-trend-config",
        "ServiceAccount/btc-trend",
        "Deployment/btc-trend-feed",
        "Deployment/btc-trend-inference",
        "Deployment/btc-trend-executor",
        "Service/btc-trend-inference",
    ]
    assert {o["metadata"]["namespace"] for o in objects} == {"bots"}
    assert {o["apiVersion"] for o in objects if o["kind"] == "Deployment"} == {"apps/v1"}


def test_the_config_map_holds_the_spec_the_workers_read() -> None:
    bot = make_bot(risk={"maxHolding": "24h"})

    config = by_name(render(bot, Platform()))["ConfigMap/btc-trend-config"]

    parsed = TradingBot.model_validate_json(config["data"]["bot.json"])
    assert parsed.spec == bot.spec
    assert parsed.key == bot.key


def test_owner_references_only_when_the_bot_has_a_uid() -> None:
    owned = render(make_bot(uid=UID), Platform())
    unowned = render(make_bot(uid=None), Platform())

    for obj in owned:
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "kubetrade.io/v1alpha1",
                "kind": "TradingBot",
                "name": "btc-trend",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    assert all("ownerReferences" not in o["metadata"] for o in unowned)


def test_labels_and_selectors_match() -> None:
    objects = render(make_bot(), Platform())
    common = {
        "app.kubernetes.io/name": "kubetrade",
        "app.kubernetes.io/instance": "btc-trend",
        "app.kubernetes.io/part-of": "kubetrade",
        "app.kubernetes.io/managed-by": "kubetrade-operator",
        "kubetrade.io/bot": "btc-trend",
    }

    for obj in objects:
        assert obj["metadata"]["labels"].items() >= common.items()
    for component, deployment in deployments(objects).items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector == {
            "app.kubernetes.io/instance": "btc-trend",
            "app.kubernetes.io/component": component,
        }
        assert pod_labels.items() >= selector.items()
        assert pod_labels == deployment["metadata"]["labels"]
    service = by_name(objects)["Service/btc-trend-inference"]
    selected = [
        c
        for c, d in deployments(objects).items()
        if d["spec"]["template"]["metadata"]["labels"].items()
        >= service["spec"]["selector"].items()
    ]
    assert selected == ["inference"]


def test_one_replica_and_no_overlap_for_feed_and_executor() -> None:
    found = deployments(render(make_bot(), Platform()))

    assert {c: d["spec"]["replicas"] for c, d in found.items()} == dict.fromkeys(COMPONENTS, 1)
    assert found["feed"]["spec"]["strategy"] == {"type": "Recreate"}
    assert found["executor"]["spec"]["strategy"] == {"type": "Recreate"}
    assert found["inference"]["spec"]["strategy"]["type"] == "RollingUpdate"


def test_commands_ports_and_probes() -> None:
    objects = render(make_bot(), Platform())
    found = deployments(objects)
    expected = {
        "feed": (8080, "/healthz", "/readyz"),
        "inference": (3000, "/livez", "/readyz"),
        "executor": (8080, "/healthz", "/readyz"),
    }

    for component, (port, live, ready) in expected.items():
        spec = container(found[component])
        assert spec["command"] == ["kubetrade", "worker", component]
        assert spec["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert spec["livenessProbe"]["httpGet"] == {"path": live, "port": "http"}
        assert spec["readinessProbe"]["httpGet"] == {"path": ready, "port": "http"}
        assert spec["startupProbe"]["httpGet"] == {"path": live, "port": "http"}
    service = by_name(objects)["Service/btc-trend-inference"]
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 3000, "targetPort": "http", "protocol": "TCP"}
    ]


def test_pods_run_locked_down_with_a_writable_tmp() -> None:
    objects = render(make_bot(), Platform())
    account = by_name(objects)["ServiceAccount/btc-trend"]

    assert account["automountServiceAccountToken"] is False
    for deployment in deployments(objects).values():
        pod = deployment["spec"]["template"]["spec"]
        spec = container(deployment)
        assert pod["serviceAccountName"] == "btc-trend"
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert {"name": "tmp", "mountPath": "/tmp"} in spec["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]


def test_resources_default_and_override_key_by_key() -> None:
    plain = deployments(render(make_bot(), Platform()))
    tuned = deployments(
        render(
            make_bot(resources={"inference": {"limits": {"memory": "1Gi"}, "requests": {}}}),
            Platform(),
        )
    )

    for component in COMPONENTS:
        assert container(plain[component])["resources"] == DEFAULT_RESOURCES[component]
    assert container(plain["inference"])["resources"] == {
        "requests": {"cpu": "250m", "memory": "384Mi"},
        "limits": {"memory": "512Mi"},
    }
    assert container(tuned["inference"])["resources"] == {
        "requests": {"cpu": "250m", "memory": "384Mi"},
        "limits": {"memory": "1Gi"},
    }
    assert container(tuned["feed"])["resources"] == DEFAULT_RESOURCES["feed"]


def test_platform_settings_reach_the_containers() -> None:
    platform = Platform(
        image="registry.local/kubetrade:dev",
        image_pull_policy="Always",
        nats_url="nats://nats.other:4222",
        otlp_endpoint="http://otel-collector:4318",
        model_store="/models",
        model_store_claim="kubetrade-models",
        extra_env={"KUBETRADE_LOG_LEVEL": "DEBUG"},
    )
    found = deployments(render(make_bot(), platform))

    for component, deployment in found.items():
        spec = container(deployment)
        env = env_entries(deployment)
        assert (spec["image"], spec["imagePullPolicy"]) == (platform.image, "Always")
        assert env["KUBETRADE_NATS_URL"]["value"] == "nats://nats.other:4222"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector:4318"
        assert env["OTEL_SERVICE_NAME"]["value"] == f"kubetrade-{component}"
        assert env["OTEL_RESOURCE_ATTRIBUTES"]["value"] == (
            "kubetrade.bot=btc-trend,k8s.namespace.name=bots"
        )
        assert env["KUBETRADE_LOG_LEVEL"]["value"] == "DEBUG"
        assert env["KUBETRADE_COMPONENT"]["value"] == component
        for key, value in QUIET_ENV.items():
            assert env[key]["value"] == value
        assert ("BENTOML_HOME" in env) == (component == "inference")
    inference = found["inference"]
    assert env_entries(inference)["BENTOML_HOME"]["value"] == "/models"
    assert {"name": "model-store", "mountPath": "/models", "readOnly": True} in container(
        inference
    )["volumeMounts"]
    assert {
        "name": "model-store",
        "persistentVolumeClaim": {"claimName": "kubetrade-models", "readOnly": True},
    } in inference["spec"]["template"]["spec"]["volumes"]


def test_default_platform() -> None:
    found = deployments(render(make_bot(), Platform()))
    env = env_entries(found["feed"])

    assert container(found["feed"])["image"].startswith("ghcr.io/kubetrade/kubetrade:")
    assert env["KUBETRADE_NATS_URL"]["value"] == "nats://nats.kubetrade-system.svc:4222"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert env["KUBETRADE_HTTP_HOST"]["value"] == "0.0.0.0"
    assert len(found["inference"]["spec"]["template"]["spec"]["volumes"]) == 1
    assert "BENTOML_HOME" not in env_entries(found["inference"])


def test_a_rule_bot_renders_the_same_three_workloads_without_a_model() -> None:
    document = make_bot().model_dump(by_alias=True, exclude_none=True, exclude={"status"})
    del document["spec"]["model"]
    document["spec"]["strategy"] = {"type": "sma-crossover", "params": {"fast": 5, "slow": 20}}
    rule = parse_bot(document)
    platform = Platform(model_store="/models", model_store_claim="kubetrade-models")

    found = deployments(render(rule, platform))

    assert set(found) == {"feed", "inference", "executor"}
    inference = found["inference"]["spec"]["template"]["spec"]
    assert "initContainers" not in inference  # no model image to copy
    assert all(v["name"] != "model-store" for v in inference["volumes"])  # no model store


def test_a_model_store_claim_needs_a_mount_path() -> None:
    with pytest.raises(ValueError, match=r"needs Platform\.model_store"):
        Platform(model_store_claim="kubetrade-models")


# --- secrets ----------------------------------------------------------------------------


def test_the_database_url_is_a_secret_reference_or_a_plain_local_value() -> None:
    in_cluster = env_entries(deployments(render(make_bot(), Platform()))["executor"])
    local = env_entries(
        deployments(render(make_bot(), Platform(database_url="postgresql://localhost/kt")))[
            "executor"
        ]
    )

    assert in_cluster["KUBETRADE_DATABASE_URL"] == {
        "name": "KUBETRADE_DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "kubetrade-database", "key": "uri"}},
    }
    assert local["KUBETRADE_DATABASE_URL"]["value"] == "postgresql://localhost/kt"


def test_the_database_secret_key_is_configurable_and_checked() -> None:
    # CloudNativePG's <cluster>-app Secret holds `uri` (the default); other layouts name theirs.
    platform = Platform(database_secret="pg-app", database_secret_key="url")
    env = env_entries(deployments(render(make_bot(), platform))["feed"])
    assert env["KUBETRADE_DATABASE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "pg-app", "key": "url"}
    }
    with pytest.raises(RenderError, match="is not a Secret key"):
        Platform(database_secret_key="a key")


def test_live_credentials_reach_only_the_executor_and_only_as_references() -> None:
    objects = render(make_bot(**LIVE), Platform())
    found = deployments(objects)

    executor = env_entries(found["executor"])
    assert executor["KUBETRADE_EXCHANGE_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "binance-keys", "key": "apiKey"}
    }
    assert executor["KUBETRADE_EXCHANGE_SECRET"]["valueFrom"] == {
        "secretKeyRef": {"name": "binance-keys", "key": "secret"}
    }
    for component in ("feed", "inference"):
        assert not any("EXCHANGE" in name for name in env_entries(found[component]))
    paper = env_entries(deployments(render(make_bot(), Platform()))["executor"])
    assert not any("EXCHANGE" in name for name in paper)


def test_no_secret_value_appears_in_any_rendered_object() -> None:
    text = json.dumps(render(make_bot(**LIVE), Platform()))

    for data in SECRETS.values():
        for value in data.values():
            assert value not in text


# --- config hash ------------------------------------------------------------------------


def test_the_config_hash_changes_with_the_spec() -> None:
    before = config_hashes(render(make_bot(), Platform()))
    after = config_hashes(render(make_bot(strategy={"longAbove": 0.7}), Platform()))

    assert len(set(before.values())) == 3
    assert all(before[c] != after[c] for c in COMPONENTS)


def test_the_config_hash_follows_each_component_s_own_environment() -> None:
    paper = config_hashes(render(make_bot(**{**LIVE, "mode": "paper"}), Platform()))
    live = config_hashes(render(make_bot(**LIVE), Platform()))
    traced = config_hashes(render(make_bot(), Platform(otlp_endpoint="http://otel:4318")))
    plain = config_hashes(render(make_bot(), Platform()))

    assert paper["executor"] != live["executor"]
    assert all(traced[c] != plain[c] for c in COMPONENTS)


def test_api_server_bookkeeping_changes_neither_the_config_nor_the_hash() -> None:
    bot = make_bot()
    touched = parse_bot(
        {
            **json.loads(bot.model_dump_json(by_alias=True, exclude_none=True)),
            "metadata": {
                "name": "btc-trend",
                "namespace": "bots",
                "uid": UID,
                "generation": 7,
                "resourceVersion": "48213",
                "annotations": {"kopf.zalando.org/last-handled-configuration": "{}"},
                "labels": {"team": "quant"},
            },
        }
    )
    same, other = render(bot, Platform()), render(touched, Platform())

    assert config_hashes(same) == config_hashes(other)
    assert same[0]["data"] == other[0]["data"]


# --- purity -----------------------------------------------------------------------------


def test_render_is_pure() -> None:
    bot = make_bot(**LIVE)
    platform = Platform(extra_env={"A": "1"})
    snapshot = (bot.model_dump(), dict(platform.extra_env))

    first = render(bot, platform)
    second = render(bot, platform)
    assert first == second
    first[2]["spec"]["strategy"]["type"] = "RollingUpdate"
    first[2]["metadata"]["labels"]["x"] = "y"
    container(first[3])["resources"]["limits"]["memory"] = "1Ti"

    assert render(bot, platform) == second
    assert (bot.model_dump(), dict(platform.extra_env)) == snapshot


@pytest.mark.parametrize("name", ["1inch-bot", "a" * 54])
def test_a_name_that_cannot_name_a_service_is_refused_clearly(name: str) -> None:
    # The manifest is refused first, as `kubetrade check` and the CRD refuse it; render still
    # refuses a bot that bypassed validation.
    with pytest.raises(ManifestError, match="starts with a letter"):
        make_bot(name=name)
    unchecked = make_bot().model_copy(
        update={"metadata": Metadata.model_construct(name=name, namespace="default")}
    )
    with pytest.raises(RenderError, match="rename the bot"):
        render(unchecked, Platform())


def test_the_longest_usable_name_renders() -> None:
    objects = render(make_bot(name="a" * 53), Platform())

    assert max(len(o["metadata"]["name"]) for o in objects) == 63


# --- local processes --------------------------------------------------------------------


def test_local_processes_get_exactly_the_pod_environment() -> None:
    objects = render(make_bot(**LIVE), Platform())

    processes = local_processes(objects, secrets=SECRETS)

    assert [p.component for p in processes] == list(COMPONENTS)
    for process in processes:
        assert process.env == pod_env(objects, process.component)
        assert process.command == ["kubetrade", "worker", process.component]


def test_workers_read_their_settings_from_the_rendered_environment() -> None:
    bot = make_bot()
    objects = render(bot, Platform())

    for process in local_processes(objects, secrets=SECRETS):
        settings = WorkerSettings.from_env(process.component, process.env)
        assert settings.component == process.component
        assert settings.bot.spec == bot.spec
        assert settings.bot.key == "bots/btc-trend"
        assert settings.nats_url == "nats://nats.kubetrade-system.svc:4222"
        assert settings.database_url == DATABASE_URL
        assert (settings.http_host, settings.http_port) == ("0.0.0.0", process.http_port)


def test_overrides_replace_and_add_per_component() -> None:
    objects = render(make_bot(), Platform(database_url="postgresql://127.0.0.1:5432/kt"))
    overrides = {
        "feed": {"KUBETRADE_HTTP_PORT": "18080", "KUBETRADE_HTTP_HOST": "127.0.0.1"},
        "executor": {"KUBETRADE_DATA_FILE": "/data/btc.csv"},
    }

    processes = {p.component: p for p in local_processes(objects, overrides=overrides)}

    feed = processes["feed"]
    assert (feed.http_port, feed.env["KUBETRADE_HTTP_HOST"]) == (18080, "127.0.0.1")
    assert processes["inference"].http_port == 3000
    assert processes["executor"].env["KUBETRADE_DATA_FILE"] == "/data/btc.csv"
    assert "KUBETRADE_DATA_FILE" not in feed.env
    settings = WorkerSettings.from_env("feed", feed.env)
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 18080)


def test_local_processes_carry_the_probe_paths() -> None:
    processes = local_processes(render(make_bot(), Platform()), secrets=SECRETS)

    assert {p.component: p.probes for p in processes} == {
        "feed": {"startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz"},
        "inference": {"startup": "/livez", "liveness": "/livez", "readiness": "/readyz"},
        "executor": {"startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz"},
    }
    assert all(isinstance(p, LocalProcess) for p in processes)


def test_a_missing_secret_is_named() -> None:
    objects = render(make_bot(**LIVE), Platform(database_url="postgresql://127.0.0.1/kt"))

    with pytest.raises(EnvResolutionError) as caught:
        local_processes(objects, secrets={"binance-keys": {"apiKey": "k"}})

    message = str(caught.value)
    assert "Deployment btc-trend-executor" in message
    assert "KUBETRADE_EXCHANGE_SECRET" in message
    assert "key 'secret' of Secret 'binance-keys'" in message


def test_a_missing_config_map_is_named() -> None:
    objects = [o for o in render(make_bot(), Platform()) if o["kind"] != "ConfigMap"]

    with pytest.raises(
        EnvResolutionError, match=r"key 'bot\.json' of ConfigMap 'btc-trend-config'"
    ):
        local_processes(objects, secrets=SECRETS)


def test_an_override_for_a_component_that_was_not_rendered_is_refused() -> None:
    objects = render(make_bot(), Platform())

    with pytest.raises(EnvResolutionError, match=r"\['executer'\].*feed, inference, executor"):
        local_processes(objects, secrets=SECRETS, overrides={"executer": {"X": "1"}})


def test_local_processes_do_not_change_the_objects() -> None:
    objects = render(make_bot(), Platform())
    snapshot = copy.deepcopy(objects)

    local_processes(objects, secrets=SECRETS, overrides={"feed": {"KUBETRADE_HTTP_PORT": "1"}})

    assert objects == snapshot


# --- NATS authentication and TLS ------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["nats://kubetrade:nats-password-1@nats:4222", "nats://a:4222,nats://tok3n@b:4222"],
)
def test_a_nats_url_with_credentials_is_refused_clearly(url: str) -> None:
    with pytest.raises(RenderError, match="carries credentials") as caught:
        Platform(nats_url=url)
    assert "nats-password-1" not in str(caught.value) and "tok3n" not in str(caught.value)


def test_nats_passwords_reach_every_pod_only_as_references_to_the_bots_secret() -> None:
    platform = Platform(nats_auth=NatsAuth())
    objects = render(make_bot(), platform)
    nats_secrets = {"btc-trend-nats": {"user": "bots-btc-trend", "password": "nats-pw-321"}}
    for component, deployment in deployments(objects).items():
        env = env_entries(deployment)
        for name, key in (("KUBETRADE_NATS_USER", "user"), ("KUBETRADE_NATS_PASSWORD", "password")):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "btc-trend-nats", "key": key}, component
        assert env["KUBETRADE_NATS_INBOX"]["value"] == "_INBOX.bots.btc-trend"
    assert "nats-pw-321" not in json.dumps(objects)
    [local] = [
        p
        for p in local_processes(objects, secrets={**SECRETS, **nats_secrets})
        if p.component == "executor"
    ]
    security = NatsSecurity.from_env(local.env)
    assert (security.user, security.password) == ("bots-btc-trend", "nats-pw-321")
    assert config_hashes(objects) != config_hashes(render(make_bot(), Platform()))


@pytest.mark.parametrize(("kind", "variable"), [("nkey", "NKEY"), ("creds", "CREDS")])
def test_nkeys_and_creds_files_are_mounted_read_only_from_the_secret(
    kind: str, variable: str
) -> None:
    platform = Platform(nats_auth=NatsAuth(kind=kind, secret="nats-{bot}"))  # type: ignore[arg-type]
    for deployment in deployments(render(make_bot(), platform)).values():
        pod = deployment["spec"]["template"]["spec"]
        [volume] = [v for v in pod["volumes"] if v["name"] == "nats-auth"]
        assert volume["secret"]["secretName"] == "nats-btc-trend"
        [mount] = [m for m in container(deployment)["volumeMounts"] if m["name"] == "nats-auth"]
        assert mount["readOnly"] is True
        path = env_entries(deployment)[f"KUBETRADE_NATS_{variable}"]["value"]
        assert path == f"{mount['mountPath']}/{kind}"
        assert "KUBETRADE_NATS_PASSWORD" not in env_entries(deployment)


def test_nats_tls_certificates_are_mounted_from_their_secret() -> None:
    platform = Platform(nats_url="tls://nats:4222", nats_tls_secret="nats-client-tls")
    for deployment in deployments(render(make_bot(), platform)).values():
        pod = deployment["spec"]["template"]["spec"]
        [volume] = [v for v in pod["volumes"] if v["name"] == "nats-tls"]
        assert volume["secret"]["secretName"] == "nats-client-tls"
        env = env_entries(deployment)
        assert env["KUBETRADE_NATS_TLS_CA"]["value"].endswith("/ca.crt")
        assert env["KUBETRADE_NATS_TLS_CERT"]["value"].endswith("/tls.crt")
        assert env["KUBETRADE_NATS_TLS_KEY"]["value"].endswith("/tls.key")


def test_without_nats_auth_the_rendered_pods_are_unchanged() -> None:
    for deployment in deployments(render(make_bot(), Platform())).values():
        names = set(env_entries(deployment))
        assert not {
            n for n in names if n.startswith("KUBETRADE_NATS_") and n != "KUBETRADE_NATS_URL"
        }
        pod = deployment["spec"]["template"]["spec"]
        assert [v["name"] for v in pod["volumes"]] == ["tmp"]


def test_the_operator_s_nats_options_reach_the_platform() -> None:
    from kubetrade.operator.main import OperatorOptions

    options = OperatorOptions(
        bot_nats_auth="creds", bot_nats_secret="{bot}-creds", bot_nats_tls_secret="nats-ca"
    )
    platform = options.config().platform
    assert platform.nats_auth == NatsAuth(kind="creds", secret="{bot}-creds")
    assert platform.nats_tls_secret == "nats-ca"
    assert OperatorOptions().config().platform.nats_auth is None
    with pytest.raises(RenderError, match="not one of password, nkey, creds"):
        NatsAuth(kind="token")  # type: ignore[arg-type]
