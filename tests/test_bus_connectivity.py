"""Our own close of a NATS connection is not an outage: no warning, nothing to ride out."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kubetrade.bus import Connectivity, connect


@pytest.mark.integration
def test_draining_at_shutdown_logs_no_lost_connection(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        link = Connectivity(30)
        nc = await connect(nats_url, "connectivity-test", link)
        await nc.drain()

    with caplog.at_level(logging.INFO, logger="kubetrade.bus"):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if "connection lost" in r.getMessage()]
