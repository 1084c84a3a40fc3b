"""The kopf handlers: which events reach the reconciler, and how kopf itself is set up.

Handlers are registered on a registry passed in (not kopf's global one), so a test can run an
operator in-process next to another and nothing leaks between them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import kopf

from kubetrade.operator.config import FINALIZER
from kubetrade.operator.reconciler import InvalidBotError, RetryableError
from kubetrade.render import INSTANCE_LABEL
from kubetrade.spec import API_GROUP, API_VERSION, PLURAL

if TYPE_CHECKING:
    from kubetrade.operator.app import Operator

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "kubetrade-operator"
BOTS = (API_GROUP, API_VERSION, PLURAL)
# The owned kinds, watched only where they carry the operator's label (filtered server-side).
OWNED = (("", "v1", "configmaps"), ("", "v1", "serviceaccounts"), ("", "v1", "services"),
         ("apps", "v1", "deployments"))  # fmt: skip
KOPF_PREFIX = f"operator.{API_GROUP}"
RETRY_DELAY_S = 5.0
# A finalizer that keeps failing gives up after this many tries (kopf then lets the object go).
FINALIZER_RETRIES = 5


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings: one replica without peering, state in our annotations, our own Events."""
    settings.peering.standalone = True
    # The resources are fixed (the chart installs the CRD first) and namespaces are named, not
    # patterns: no need to watch CRDs and namespaces, nor for the rights to.
    settings.scanning.disabled = True
    settings.persistence.finalizer = FINALIZER
    # Not API_GROUP itself: kopf leaves every annotation under its storage prefix out of the
    # diff, and kubetrade.io/kill-switch must trigger a reconcile.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX)
    # Events are posted by the operator itself (explicit reasons, never kopf's log lines).
    settings.posting.enabled = False
    for group, version, plural in OWNED:
        settings.watching.label_selectors[group, version, plural] = f"{MANAGED_BY}={MANAGER}"


def register(registry: kopf.OperatorRegistry, operator: Operator) -> None:
    """Register every handler of ``operator`` on ``registry``."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)
        await operator.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await operator.stop()

    async def reconcile(body: kopf.Body, reason: str, **_: Any) -> None:
        try:
            await operator.reconciler.reconcile(dict(body), reason)
        except InvalidBotError as error:
            raise kopf.PermanentError(str(error)) from None
        except RetryableError as error:
            raise kopf.TemporaryError(str(error), delay=RETRY_DELAY_S) from None

    for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
        on(*BOTS, registry=registry, id="reconcile")(reconcile)

    @kopf.on.delete(
        *BOTS,
        registry=registry,
        id="finalize",
        retries=FINALIZER_RETRIES,
        timeout=operator.config.finalizer_timeout_s + 120,
    )
    async def finalize(body: kopf.Body, **_: Any) -> None:
        try:
            await operator.finalize(dict(body))
        except Exception as error:
            logging.getLogger(__name__).warning(
                "finalizer failed; kopf retries it",
                extra={
                    "bot": f"{body.metadata.namespace}/{body.metadata.name}",
                    "error": str(error),
                },
            )
            raise kopf.TemporaryError(str(error), delay=RETRY_DELAY_S) from error

    async def restore(event: kopf.RawEvent, **_: Any) -> None:
        await operator.reconciler.restore(event["type"], event["object"])

    for group, version, plural in OWNED:
        kopf.on.event(
            group,
            version,
            plural,
            registry=registry,
            id=f"restore-{plural}",
            labels={MANAGED_BY: MANAGER, INSTANCE_LABEL: kopf.PRESENT},
        )(restore)
