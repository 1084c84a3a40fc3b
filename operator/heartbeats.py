"""The operator's NATS side: every bot's status messages in, control commands out.

One connection and one wildcard subscription serve all bots. NATS being down never stops
reconciling: the connection is retried in the background, heartbeats simply stop arriving
(and conditions say so), and control commands wait for the next status tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from kubetrade.admission import StatusAdmission, status_subject_key
from kubetrade.messages import ControlMessage, MessageError, StatusMessage, decode, encode
from kubetrade.natsauth import OPERATOR_INBOX, NatsSecurity
from kubetrade.operator.metrics import HEARTBEATS, STATUS_REFUSED
from kubetrade.operator.observations import Observations
from kubetrade.subjects import Subjects

log = logging.getLogger(__name__)

# kubetrade.<namespace>.<bot>.status of every bot.
STATUS_WILDCARD = "kubetrade.*.*.status"
RETRY_SECONDS = 2.0


class Heartbeats:
    """Receives every bot's status messages into ``observations``; sends control commands."""

    def __init__(
        self,
        url: str | None,
        observations: Observations,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.observations = observations
        self._clock = clock
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._admission = StatusAdmission()

    @property
    def connected(self) -> bool:
        """True while the NATS connection is up."""
        return self._client is not None and self._client.is_connected

    async def start(self) -> None:
        """Connect and subscribe in the background (retrying until NATS answers)."""
        if self.url is None:
            log.warning("no NATS URL: bot status will show no heartbeats and controls are off")
            return
        self._task = asyncio.create_task(self._connect_forever(self.url), name="nats-connect")

    async def _connect_forever(self, url: str) -> None:
        # The operator's own NATS user (KUBETRADE_NATS_USER/PASSWORD or an NKey/creds file):
        # the only one allowed to publish control commands, reading every bot's status.
        security = NatsSecurity.from_env()
        options = security.connect_options()
        if options and "inbox_prefix" not in options:
            options["inbox_prefix"] = OPERATOR_INBOX
        while True:
            try:
                client = await nats.connect(
                    url,
                    name="kubetrade-operator",
                    connect_timeout=5,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    **options,
                )
            except Exception as error:
                log.warning(
                    "cannot connect to NATS; retrying",
                    extra={"nats_url": url, "error": str(error), "retry_s": RETRY_SECONDS},
                )
                await asyncio.sleep(RETRY_SECONDS)
                continue
            await client.subscribe(STATUS_WILDCARD, cb=self._on_status)
            self._client = client
            log.info("listening for bot status", extra={"nats_url": url})
            return

    async def _on_status(self, msg: Msg) -> None:
        try:
            message = decode(StatusMessage, msg.data)
        except MessageError as error:
            log.warning(
                "ignoring a malformed status message",
                extra={"subject": msg.subject, "error": str(error)},
            )
            return
        # Keyed by the subject, never by the message's own ``bot`` field: a bot's pods may
        # publish only on their own subjects (NATS permissions), so the subject is the sender.
        key = status_subject_key(msg.subject)
        refusal = self._admission.admit(msg.subject, message, time.time_ns() // 1_000_000)
        if refusal is not None or key is None:
            STATUS_REFUSED.labels(refusal.reason if refusal else "wrong_subject").inc()
            log.warning(
                "refused a status message", extra={"subject": msg.subject, "refusal": str(refusal)}
            )
            return
        HEARTBEATS.inc()
        self.observations.record(message, self._clock(), key)

    async def send(self, namespace: str, bot: str, command: ControlMessage) -> bool:
        """Publish a control command to one bot's executor; False while NATS is down."""
        if self._client is None or not self._client.is_connected:
            return False
        await self._client.publish(Subjects(namespace, bot).control, encode(command))
        return True

    async def stop(self) -> None:
        """Close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.drain()
