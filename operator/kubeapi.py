"""A small asyncio client for the few Kubernetes API calls the operator makes.

The operator applies rendered objects with server-side apply, writes status, deletes what a bot
owns and posts Events. kopf watches; this client writes. It shares nothing with kopf's own
connection so a slow status write never stalls the watch streams, and it keeps one pooled
aiohttp session so 500 bots cost connections, not threads.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from kubetrade.errors import KubetradeError

Object = dict[str, Any]

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_CONTENT_TYPE = "application/merge-patch+json"


@dataclass(frozen=True, slots=True)
class Kind:
    """Where a kind lives in the API: ``apiVersion``, ``kind`` and its plural resource name."""

    api_version: str
    kind: str
    plural: str

    def collection(self, namespace: str) -> str:
        """The namespaced collection path, e.g. ``/apis/apps/v1/namespaces/bots/deployments``."""
        root = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{root}/namespaces/{namespace}/{self.plural}"

    def path(self, namespace: str, name: str) -> str:
        """The path of one object."""
        return f"{self.collection(namespace)}/{name}"


KINDS: dict[tuple[str, str], Kind] = {
    (k.api_version, k.kind): k
    for k in (
        Kind("v1", "ConfigMap", "configmaps"),
        Kind("v1", "ServiceAccount", "serviceaccounts"),
        Kind("v1", "Service", "services"),
        Kind("v1", "Event", "events"),
        Kind("apps/v1", "Deployment", "deployments"),
        Kind("kubetrade.io/v1alpha1", "TradingBot", "tradingbots"),
    )
}


def kind_of(obj: Mapping[str, Any]) -> Kind:
    """The Kind of an object, from its ``apiVersion`` and ``kind``."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    try:
        return KINDS[key]
    except KeyError:
        raise ValueError(
            f"the operator does not manage {key[1]!r} objects of {key[0]!r}; "
            f"known kinds: {', '.join(k for _, k in KINDS)}"
        ) from None


class ApiError(KubetradeError):
    """The API server refused a request; ``status`` is the HTTP code, ``reason`` its Status."""

    def __init__(self, status: int, reason: str, message: str, where: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{where}: HTTP {status} {reason}: {message}")

    @property
    def retryable(self) -> bool:
        """Unreachable, conflicts, throttling and server errors pass; a refused object does not."""
        return self.status in (0, 409, 429) or self.status >= 500


@dataclass(frozen=True)
class Connection:
    """How to reach the API server: URL, TLS settings and a source of bearer tokens."""

    server: str
    ssl_context: ssl.SSLContext | bool
    token: Callable[[], str | None]

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> Connection:
        """In a pod, the ServiceAccount; else ``kubeconfig``, ``$KUBECONFIG`` or ~/.kube/config."""
        from kubernetes import client, config

        configuration = client.Configuration()
        # The loaders are untyped upstream.
        load_incluster: Any = config.load_incluster_config
        load_kubeconfig: Any = config.load_kube_config
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            load_incluster(client_configuration=configuration)
        else:
            load_kubeconfig(
                config_file=kubeconfig, client_configuration=configuration, persist_config=False
            )
        context: ssl.SSLContext | bool = False
        if configuration.verify_ssl:
            context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
            if configuration.cert_file:
                context.load_cert_chain(configuration.cert_file, configuration.key_file)

        def token() -> str | None:
            # Calls the in-cluster refresh hook: projected ServiceAccount tokens rotate. Newer
            # kubernetes clients keep the token under BearerToken, older under authorization.
            value: str | None = configuration.get_api_key_with_prefix(
                "BearerToken"
            ) or configuration.get_api_key_with_prefix("authorization")
            if value and " " not in value:
                value = f"Bearer {value}"
            return value

        return cls(configuration.host.rstrip("/"), context, token)


class KubeApi:
    """Server-side apply, get, delete, status apply and Events over one pooled session."""

    def __init__(self, connection: Connection, max_connections: int = 32) -> None:
        self._connection = connection
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the operator's event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, ssl=self._connection.ssl_context
            )
            # No total timeout: time spent waiting for a pooled connection is not the server's.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Object | None = None,
        content_type: str = "application/json",
    ) -> Object | None:
        """Send one request; None for 404, the decoded object otherwise, ApiError on refusal."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        token = self._connection.token()
        if token:
            headers["Authorization"] = token
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        url = self._connection.server + path
        try:
            async with self._client().request(
                method, url, params=params, data=data, headers=headers
            ) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise ApiError(0, "Unreachable", str(error) or type(error).__name__, url) from error
        if status == 404:
            return None
        if status >= 400:
            try:
                refusal = json.loads(text)
                reason, message = refusal.get("reason", ""), refusal.get("message", text)
            except ValueError:
                reason, message = "", text
            raise ApiError(status, reason, message, f"{method} {path}")
        decoded: Object = json.loads(text) if text else {}
        return decoded

    async def apply(self, obj: Object, field_manager: str) -> Object:
        """Server-side apply ``obj`` (create or update) as ``field_manager``, taking conflicts."""
        meta = obj["metadata"]
        path = kind_of(obj).path(meta["namespace"], meta["name"])
        params = {"fieldManager": field_manager, "force": "true"}
        applied = await self._request(
            "PATCH", path, params=params, body=obj, content_type=APPLY_CONTENT_TYPE
        )
        if applied is None:
            raise ApiError(404, "NotFound", "the namespace does not exist", f"apply {path}")
        return applied

    async def apply_status(self, obj: Object, field_manager: str) -> Object | None:
        """Server-side apply the ``status`` of ``obj``; None when the object is gone."""
        meta = obj["metadata"]
        path = kind_of(obj).path(meta["namespace"], meta["name"]) + "/status"
        params = {"fieldManager": field_manager, "force": "true"}
        return await self._request(
            "PATCH", path, params=params, body=obj, content_type=APPLY_CONTENT_TYPE
        )

    async def get(self, kind: Kind, namespace: str, name: str) -> Object | None:
        """One object, or None when it does not exist."""
        return await self._request("GET", kind.path(namespace, name))

    async def list(self, kind: Kind, namespace: str, label_selector: str) -> list[Object]:
        """Objects of ``kind`` in ``namespace`` that match ``label_selector``."""
        found = await self._request(
            "GET", kind.collection(namespace), params={"labelSelector": label_selector}
        )
        return list((found or {}).get("items", []))

    async def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """Delete one object (dependents in the background); False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        return await self._request("DELETE", kind.path(namespace, name), body=body) is not None

    async def create(self, obj: Object) -> Object:
        """Create an object (used for Events)."""
        created = await self._request(
            "POST", kind_of(obj).collection(obj["metadata"]["namespace"]), body=obj
        )
        if created is None:
            raise ApiError(404, "NotFound", "the namespace does not exist", "create")
        return created
