"""Render a ``TradingBot`` into the Kubernetes objects the operator creates for it.

``render`` is pure: the same bot and platform give the same objects, with no I/O and no clock,
so the operator can diff, the tests can assert, and ``kubetrade run`` can start exactly what a
cluster would run (see ``kubetrade/processes.py``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetrade import __version__
from kubetrade.errors import InvalidInputError
from kubetrade.natsauth import (
    ENV_NATS_CREDS,
    ENV_NATS_INBOX,
    ENV_NATS_NKEY,
    ENV_NATS_PASSWORD,
    ENV_NATS_TLS_CA,
    ENV_NATS_TLS_CERT,
    ENV_NATS_TLS_KEY,
    ENV_NATS_USER,
    NatsConfigError,
    bot_inbox,
    check_url,
)
from kubetrade.settings import (
    COMPONENTS,
    DEFAULT_HTTP_PORTS,
    ENV_COMPONENT,
    ENV_DATABASE_URL,
    ENV_HTTP_HOST,
    ENV_HTTP_PORT,
    ENV_MODEL_IMPORT_DIR,
    ENV_NATS_URL,
    ENV_SPEC,
    MODEL_IMAGE_DIR,
    POD_MODELS_DIR,
    QUIET_ENV,
)
from kubetrade.spec import API_GROUP, API_VERSION, KIND, Metadata, Mode, TradingBot, dump_spec
from kubetrade.subjects import Subjects

Object = dict[str, Any]

# Read by the executor in live mode; the values come from the bot's credentials Secret.
ENV_EXCHANGE_API_KEY = "KUBETRADE_EXCHANGE_API_KEY"
ENV_EXCHANGE_SECRET = "KUBETRADE_EXCHANGE_SECRET"
CREDENTIAL_KEYS = {ENV_EXCHANGE_API_KEY: "apiKey", ENV_EXCHANGE_SECRET: "secret"}

CONFIG_KEY = "bot.json"
CONFIG_HASH_ANNOTATION = f"{API_GROUP}/config-hash"
BOT_LABEL = f"{API_GROUP}/bot"
COMPONENT_LABEL = "app.kubernetes.io/component"
INSTANCE_LABEL = "app.kubernetes.io/instance"
RUN_AS_USER = 10001
TMP_VOLUME = "tmp"
MODEL_STORE_VOLUME = "model-store"
MODELS_VOLUME = "models"
MODEL_INIT_CONTAINER = "model"
NATS_AUTH_VOLUME = "nats-auth"
NATS_TLS_VOLUME = "nats-tls"
NATS_AUTH_DIR = "/var/run/secrets/kubetrade/nats"
NATS_TLS_DIR = "/var/run/secrets/kubetrade/nats-tls"

# Requests and memory limits per component. The bench figures decide them: change them with
# the measurement that justifies it. No CPU limit, because throttling delays trading decisions.
DEFAULT_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    # bench/pipeline.py peak RSS, 10 symbols at ~4,700 candles/s: feed 155-187 MiB,
    # executor 160-185 MiB, inference 290-345 MiB (bentoml arbiter + worker, XGBoost model).
    # Requests sit at the peak, limits leave ~35% for bigger models and longer histories.
    "feed": {"requests": {"cpu": "100m", "memory": "192Mi"}, "limits": {"memory": "256Mi"}},
    "inference": {"requests": {"cpu": "250m", "memory": "384Mi"}, "limits": {"memory": "512Mi"}},
    "executor": {"requests": {"cpu": "100m", "memory": "192Mi"}, "limits": {"memory": "256Mi"}},
}

# The feed and executor serve the worker's own health endpoints; inference serves BentoML's.
PROBE_PATHS: dict[str, dict[str, str]] = {
    "feed": {"liveness": "/healthz", "readiness": "/readyz"},
    "inference": {"liveness": "/livez", "readiness": "/readyz"},
    "executor": {"liveness": "/healthz", "readiness": "/readyz"},
}

# Two feeds would publish every candle twice and two executors would trade twice: the old pod
# must be gone before the new one starts. Inference is stateless, so it rolls without a gap.
ROLLOUT: dict[str, Object] = {
    "feed": {"type": "Recreate"},
    "inference": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    "executor": {"type": "Recreate"},
}


@dataclass(frozen=True)
class NatsAuth:
    """Each bot's pods authenticate to NATS as the bot's own user, from a Secret per bot.

    ``secret`` names the Secret in the bot's namespace (``{bot}`` becomes the bot's name).
    ``password``: keys ``user`` and ``password``, passed as secret references in the
    environment. ``nkey``: key ``nkey`` (an NKey seed); ``creds``: key ``creds`` (a JWT
    ``.creds`` file); both mounted read-only as files. The NATS server's user of the bot has
    the permissions of ``kubetrade.natsauth.bot_permissions``.
    """

    kind: Literal["password", "nkey", "creds"] = "password"
    secret: str = "{bot}-nats"

    def __post_init__(self) -> None:
        if self.kind not in ("password", "nkey", "creds"):
            raise RenderError(
                f"NATS auth kind {self.kind!r} is not one of password, nkey, creds "
                "(--bot-nats-auth / KUBETRADE_BOT_NATS_AUTH)"
            )

    def secret_name(self, bot: TradingBot) -> str:
        """The Secret of ``bot``."""
        return self.secret.replace("{bot}", bot.metadata.name)


# Names a Service may have (DNS-1035 label); the inference Service is named after the bot.
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# A key of a Secret's data (what `kubectl create secret --from-literal=KEY=` accepts).
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


@dataclass(frozen=True)
class Platform:
    """Where the bots run: image, shared services and how pods reach them.

    ``database_url`` is a plain value (local runs); otherwise the URL is read from the Secret
    ``database_secret``, key ``database_secret_key`` (``uri``: what CloudNativePG writes into
    its ``<cluster>-app`` Secret). ``nats_url`` never carries credentials: ``nats_auth``
    names each bot's credentials Secret, ``nats_tls_secret`` a Secret with ``ca.crt`` (and
    ``tls.crt``/``tls.key`` for a client certificate: the cert-manager layout) mounted into
    every pod. ``model_store`` becomes inference's ``BENTOML_HOME``;
    left unset, inference inherits it (a local run uses the caller's store). In a cluster the
    store is the PersistentVolumeClaim ``model_store_claim``, mounted read-only there, or a
    path inside the image.
    """

    image: str = f"ghcr.io/kubetrade/kubetrade:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    nats_url: str = "nats://nats.kubetrade-system.svc:4222"
    database_url: str | None = None
    database_secret: str = "kubetrade-database"
    database_secret_key: str = "uri"
    otlp_endpoint: str | None = None
    model_store: str | None = None
    model_store_claim: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    nats_auth: NatsAuth | None = None
    nats_tls_secret: str | None = None

    def __post_init__(self) -> None:
        try:
            check_url(self.nats_url, "Platform.nats_url")
        except NatsConfigError as error:
            raise RenderError(str(error)) from None
        if not _SECRET_KEY.match(self.database_secret_key):
            raise RenderError(
                f"Platform.database_secret_key={self.database_secret_key!r} is not a Secret key: "
                "use letters, digits, '-', '_' or '.' (e.g. uri, CloudNativePG's key)"
            )
        if self.model_store_claim and not self.model_store:
            raise ValueError(
                f"Platform.model_store_claim={self.model_store_claim!r} needs "
                "Platform.model_store, the path to mount the model store at "
                "(e.g. /var/lib/kubetrade/bentoml)"
            )


class RenderError(InvalidInputError):
    """The bot cannot be turned into valid Kubernetes objects."""


def labels(bot: TradingBot, component: str | None = None) -> dict[str, str]:
    """The recommended Kubernetes labels of an object that belongs to ``bot``."""
    found = {
        "app.kubernetes.io/name": "kubetrade",
        INSTANCE_LABEL: bot.metadata.name,
        "app.kubernetes.io/part-of": "kubetrade",
        "app.kubernetes.io/managed-by": "kubetrade-operator",
        BOT_LABEL: bot.metadata.name,
    }
    if component is not None:
        found[COMPONENT_LABEL] = component
    return found


def selector(bot: TradingBot, component: str) -> dict[str, str]:
    """The labels that select one component's pods."""
    return {INSTANCE_LABEL: bot.metadata.name, COMPONENT_LABEL: component}


def _metadata(bot: TradingBot, name: str, component: str | None = None) -> Object:
    meta: Object = {
        "name": name,
        "namespace": bot.metadata.namespace,
        "labels": labels(bot, component),
    }
    if bot.metadata.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": bot.metadata.name,
                "uid": bot.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def worker_spec(bot: TradingBot) -> str:
    """The bot as the workers read it: name, namespace and spec only.

    The API server's bookkeeping (resourceVersion, managedFields, the operator's annotations)
    changes on every status write; passing it on would change the ConfigMap and the config hash
    and restart the pods for nothing.
    """
    stable = Metadata(name=bot.metadata.name, namespace=bot.metadata.namespace)
    return dump_spec(bot.model_copy(update={"metadata": stable}))


def _value(name: str, value: str) -> Object:
    return {"name": name, "value": value}


def _secret_ref(name: str, secret: str, key: str) -> Object:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _env(bot: TradingBot, platform: Platform, component: str) -> list[Object]:
    """The container environment of one component, secrets as references only."""
    name, namespace = bot.metadata.name, bot.metadata.namespace
    config_ref = {"configMapKeyRef": {"name": f"{name}-config", "key": CONFIG_KEY}}
    env: dict[str, Object] = {
        ENV_COMPONENT: _value(ENV_COMPONENT, component),
        ENV_SPEC: {"name": ENV_SPEC, "valueFrom": config_ref},
        ENV_NATS_URL: _value(ENV_NATS_URL, platform.nats_url),
        ENV_DATABASE_URL: (
            _value(ENV_DATABASE_URL, platform.database_url)
            if platform.database_url
            else _secret_ref(
                ENV_DATABASE_URL, platform.database_secret, platform.database_secret_key
            )
        ),
        ENV_HTTP_HOST: _value(ENV_HTTP_HOST, "0.0.0.0"),
        ENV_HTTP_PORT: _value(ENV_HTTP_PORT, str(DEFAULT_HTTP_PORTS[component])),
        "OTEL_SERVICE_NAME": _value("OTEL_SERVICE_NAME", f"kubetrade-{component}"),
        "OTEL_RESOURCE_ATTRIBUTES": _value(
            "OTEL_RESOURCE_ATTRIBUTES", f"kubetrade.bot={name},k8s.namespace.name={namespace}"
        ),
    }
    if platform.otlp_endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = _value(
            "OTEL_EXPORTER_OTLP_ENDPOINT", platform.otlp_endpoint
        )
    model = bot.spec.model
    if component == "inference" and model is not None and model.image:
        # The model comes from its image into inference's own (writable) store on /tmp.
        env[ENV_MODEL_IMPORT_DIR] = _value(ENV_MODEL_IMPORT_DIR, POD_MODELS_DIR)
    elif component == "inference" and platform.model_store:
        env["BENTOML_HOME"] = _value("BENTOML_HOME", platform.model_store)
    for key, value in QUIET_ENV.items():
        env[key] = _value(key, value)
    credentials = bot.spec.exchange.credentials_secret
    if component == "executor" and bot.spec.mode is Mode.LIVE and credentials:
        for env_name, key in CREDENTIAL_KEYS.items():
            env[env_name] = _secret_ref(env_name, credentials, key)
    env.update(_nats_env(bot, platform))
    for key, value in sorted(platform.extra_env.items()):
        env[key] = _value(key, value)
    return list(env.values())


def _nats_env(bot: TradingBot, platform: Platform) -> dict[str, Object]:
    """How a pod authenticates to NATS and checks its certificate: references and paths."""
    env: dict[str, Object] = {}
    auth = platform.nats_auth
    if auth is not None:
        secret = auth.secret_name(bot)
        if auth.kind == "password":
            env[ENV_NATS_USER] = _secret_ref(ENV_NATS_USER, secret, "user")
            env[ENV_NATS_PASSWORD] = _secret_ref(ENV_NATS_PASSWORD, secret, "password")
        elif auth.kind == "nkey":
            env[ENV_NATS_NKEY] = _value(ENV_NATS_NKEY, f"{NATS_AUTH_DIR}/nkey")
        else:
            env[ENV_NATS_CREDS] = _value(ENV_NATS_CREDS, f"{NATS_AUTH_DIR}/creds")
        inbox = bot_inbox(Subjects(bot.metadata.namespace, bot.metadata.name))
        env[ENV_NATS_INBOX] = _value(ENV_NATS_INBOX, inbox)
    if platform.nats_tls_secret:
        env[ENV_NATS_TLS_CA] = _value(ENV_NATS_TLS_CA, f"{NATS_TLS_DIR}/ca.crt")
        env[ENV_NATS_TLS_CERT] = _value(ENV_NATS_TLS_CERT, f"{NATS_TLS_DIR}/tls.crt")
        env[ENV_NATS_TLS_KEY] = _value(ENV_NATS_TLS_KEY, f"{NATS_TLS_DIR}/tls.key")
    return env


def _nats_volumes(bot: TradingBot, platform: Platform) -> tuple[list[Object], list[Object]]:
    """The Secret volumes (and their mounts) of NKey/creds files and TLS certificates."""
    volumes: list[Object] = []
    mounts: list[Object] = []
    auth = platform.nats_auth
    if auth is not None and auth.kind != "password":
        secret = {"secretName": auth.secret_name(bot), "defaultMode": 0o440}
        volumes.append({"name": NATS_AUTH_VOLUME, "secret": secret})
        mounts.append({"name": NATS_AUTH_VOLUME, "mountPath": NATS_AUTH_DIR, "readOnly": True})
    if platform.nats_tls_secret:
        secret = {"secretName": platform.nats_tls_secret, "defaultMode": 0o440}
        volumes.append({"name": NATS_TLS_VOLUME, "secret": secret})
        mounts.append({"name": NATS_TLS_VOLUME, "mountPath": NATS_TLS_DIR, "readOnly": True})
    return volumes, mounts


def _resources(bot: TradingBot, component: str) -> Object:
    """The component's defaults, overridden key by key by ``spec.resources``."""
    default = DEFAULT_RESOURCES[component]
    chosen = getattr(bot.spec.resources, component) if bot.spec.resources else None
    requests = {**default["requests"], **((chosen.requests or {}) if chosen else {})}
    limits = {**default["limits"], **((chosen.limits or {}) if chosen else {})}
    return {"requests": requests, "limits": limits}


def _probe(path: str, period: int, failures: int) -> Object:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


# Spec fields a component never reads, so changing them must not restart its pods: `paused`
# reaches a running executor as a control command (a restarted one keeps it in its
# checkpoint), `onDelete` is read by the operator's finalizer only, and only inference loads
# the model, so a model rollout leaves the feed and the executor (and trading) running.
UNREAD_FIELDS: dict[str, tuple[str, ...]] = {
    "feed": ("model", "paused", "onDelete"),
    "inference": ("paused", "onDelete"),
    "executor": ("model", "paused", "onDelete"),
}


def restart_spec(bot: TradingBot, component: str) -> str:
    """The worker spec as far as ``component`` reads it: what its config hash covers."""
    document = json.loads(worker_spec(bot))
    for key in UNREAD_FIELDS[component]:
        document["spec"].pop(key, None)
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def config_hash(spec_json: str, env: list[Object]) -> str:
    """sha256 of what a component's pods read at start-up: the spec and their environment."""
    payload = json.dumps({"spec": spec_json, "env": env}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _model_init_container(image: str, platform: Platform) -> Object:
    """The init container that copies a model image's ``/models`` into the pod's emptyDir."""
    return {
        "name": MODEL_INIT_CONTAINER,
        "image": image,
        "imagePullPolicy": platform.image_pull_policy,
        "command": ["cp", "-R", f"{MODEL_IMAGE_DIR}/.", f"{POD_MODELS_DIR}/"],
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": MODELS_VOLUME, "mountPath": POD_MODELS_DIR}],
    }


def _deployment(bot: TradingBot, platform: Platform, component: str, hashed_spec: str) -> Object:
    name = bot.metadata.name
    port = DEFAULT_HTTP_PORTS[component]
    env = _env(bot, platform, component)
    probes = PROBE_PATHS[component]
    mounts: list[Object] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    volumes: list[Object] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    if (
        component == "inference"
        and platform.model_store
        and platform.model_store_claim
        and bot.spec.model is not None
        and not bot.spec.model.image
    ):
        mounts.append(
            {"name": MODEL_STORE_VOLUME, "mountPath": platform.model_store, "readOnly": True}
        )
        volumes.append(
            {
                "name": MODEL_STORE_VOLUME,
                "persistentVolumeClaim": {
                    "claimName": platform.model_store_claim,
                    "readOnly": True,
                },
            }
        )
    init_containers: list[Object] = []
    # A rule-only bot has no model (inference computes its strategy's features alone).
    model_image = None if bot.spec.model is None else bot.spec.model.image
    if component == "inference" and model_image:
        # The modelcar pattern: the model image's init container copies /models into an
        # emptyDir that inference imports into its own store at start (modelstore/modelcar.py).
        volumes.append({"name": MODELS_VOLUME, "emptyDir": {}})
        mounts.append({"name": MODELS_VOLUME, "mountPath": POD_MODELS_DIR, "readOnly": True})
        init_containers.append(_model_init_container(model_image, platform))
    nats_volumes, nats_mounts = _nats_volumes(bot, platform)
    volumes.extend(nats_volumes)
    mounts.extend(nats_mounts)
    container: Object = {
        "name": component,
        "image": platform.image,
        "imagePullPolicy": platform.image_pull_policy,
        "command": ["kubetrade", "worker", component],
        "env": env,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        # Loading a model can take a while: the startup probe holds the liveness probe back.
        "startupProbe": _probe(probes["liveness"], period=2, failures=60),
        "livenessProbe": _probe(probes["liveness"], period=10, failures=3),
        "readinessProbe": _probe(probes["readiness"], period=5, failures=2),
        "resources": _resources(bot, component),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(bot, f"{name}-{component}", component),
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 3,
            "strategy": copy.deepcopy(ROLLOUT[component]),
            "selector": {"matchLabels": selector(bot, component)},
            "template": {
                "metadata": {
                    "labels": labels(bot, component),
                    "annotations": {CONFIG_HASH_ANNOTATION: config_hash(hashed_spec, env)},
                },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    # Service links would add a variable per Service in the namespace.
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS_USER,
                        "runAsGroup": RUN_AS_USER,
                        "fsGroup": RUN_AS_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    **({"initContainers": init_containers} if init_containers else {}),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def render(bot: TradingBot, platform: Platform) -> list[Object]:
    """The Kubernetes objects of ``bot``: ConfigMap, ServiceAccount, Deployments, Service."""
    name = bot.metadata.name
    service = f"{name}-inference"
    if not _SERVICE_NAME.match(service):
        raise RenderError(
            f"TradingBot {bot.key}: the inference Service would be named {service!r}, which is "
            "not a valid Service name (it must start with a letter and have at most 63 "
            "characters): rename the bot to start with a letter and have at most 53 characters"
        )
    spec_json = worker_spec(bot)
    config_map: Object = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(bot, f"{name}-config"),
        "data": {CONFIG_KEY: spec_json},
    }
    service_account: Object = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(bot, name),
        # The workers never call the Kubernetes API: no token, no rights.
        "automountServiceAccountToken": False,
    }
    inference_service: Object = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(bot, service, "inference"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(bot, "inference"),
            "ports": [
                {
                    "name": "http",
                    "port": DEFAULT_HTTP_PORTS["inference"],
                    "targetPort": "http",
                    "protocol": "TCP",
                }
            ],
        },
    }
    deployments = [_deployment(bot, platform, c, restart_spec(bot, c)) for c in COMPONENTS]
    return [config_map, service_account, *deployments, inference_service]
