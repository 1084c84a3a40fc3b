"""Turn rendered Kubernetes objects into the local processes ``kubetrade run`` starts.

The local runner starts each rendered container command with the environment its pod would
get, resolved here the way the kubelet would: ``configMapKeyRef`` from the rendered ConfigMaps,
``secretKeyRef`` from the secrets the runner holds, plain values as they are. Only then are the
runner's per-component overrides applied (local ports, 127.0.0.1, embedded NATS and database).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubetrade.errors import InvalidInputError
from kubetrade.render import COMPONENT_LABEL
from kubetrade.settings import ENV_HTTP_PORT

PROBE_FIELDS = {
    "startup": "startupProbe",
    "liveness": "livenessProbe",
    "readiness": "readinessProbe",
}


class EnvResolutionError(InvalidInputError):
    """A container's environment refers to something the local run does not have."""


@dataclass(frozen=True, slots=True)
class LocalProcess:
    """One rendered component as a local process: what to run and how to check on it.

    ``probes`` maps ``startup``/``liveness``/``readiness`` to the HTTP path the pod's probe
    would request on ``http_port``.
    """

    component: str
    command: list[str]
    env: dict[str, str]
    http_port: int
    probes: dict[str, str]


def _config_maps(objects: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, str]]:
    return {
        obj["metadata"]["name"]: obj.get("data") or {}
        for obj in objects
        if obj.get("kind") == "ConfigMap"
    }


def _resolve(
    entry: Mapping[str, Any],
    where: str,
    config_maps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
) -> str | None:
    """The value of one env entry, or None when an optional reference is missing."""
    name = entry["name"]
    if "valueFrom" not in entry:
        return str(entry.get("value", ""))
    source = entry["valueFrom"]
    for kind, store, what in (
        ("configMapKeyRef", config_maps, "ConfigMap"),
        ("secretKeyRef", secrets, "Secret"),
    ):
        if kind in source:
            ref = source[kind]
            value = store.get(ref["name"], {}).get(ref["key"])
            if value is None and not ref.get("optional", False):
                hint = (
                    "pass it as secrets={name: {key: value}}"
                    if what == "Secret"
                    else "pass the ConfigMap along with the Deployments"
                )
                raise EnvResolutionError(
                    f"{where}: env {name} needs key {ref['key']!r} of {what} {ref['name']!r}, "
                    f"which the local run does not have; {hint}"
                )
            return value
    raise EnvResolutionError(
        f"{where}: env {name} uses valueFrom {sorted(source)}, which a local run cannot "
        "resolve: only configMapKeyRef and secretKeyRef are supported"
    )


def _probes(container: Mapping[str, Any]) -> dict[str, str]:
    return {
        kind: container[field]["httpGet"]["path"]
        for kind, field in PROBE_FIELDS.items()
        if "httpGet" in container.get(field, {})
    }


def local_processes(
    objects: Iterable[Mapping[str, Any]],
    *,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    overrides: Mapping[str, Mapping[str, str]] | None = None,
) -> list[LocalProcess]:
    """The rendered Deployments as local processes, in render order.

    ``secrets`` maps Secret name to its data (plain strings); ``overrides`` maps a component
    to env variables that replace or add to its resolved environment.
    """
    objects = list(objects)
    config_maps = _config_maps(objects)
    overrides = overrides or {}
    processes = []
    for obj in objects:
        if obj.get("kind") != "Deployment":
            continue
        where = f"Deployment {obj['metadata']['name']}"
        pod = obj["spec"]["template"]["spec"]
        if len(pod["containers"]) != 1:
            raise EnvResolutionError(f"{where}: a local run starts exactly one container per pod")
        container = pod["containers"][0]
        component = obj["metadata"]["labels"][COMPONENT_LABEL]
        env: dict[str, str] = {}
        for entry in container.get("env", []):
            value = _resolve(entry, where, config_maps, secrets or {})
            if value is not None:
                env[entry["name"]] = value
        env.update(overrides.get(component, {}))
        port = env.get(ENV_HTTP_PORT, str(container["ports"][0]["containerPort"]))
        if not port.isdigit():
            raise EnvResolutionError(f"{where}: {ENV_HTTP_PORT}={port!r} is not a port number")
        processes.append(
            LocalProcess(
                component=component,
                command=list(container["command"]),
                env=env,
                http_port=int(port),
                probes=_probes(container),
            )
        )
    unknown = sorted(set(overrides) - {p.component for p in processes})
    if unknown:
        known = ", ".join(p.component for p in processes)
        raise EnvResolutionError(
            f"overrides name components {unknown} that were not rendered; use one of: {known}"
        )
    return processes
