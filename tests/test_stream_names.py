"""Two bots whose names fold to one JetStream stream name are told apart, loudly."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from kubetrade.bus import connect, ensure_stream
from kubetrade.errors import BusError
from kubetrade.subjects import Subjects


@pytest.mark.integration
def test_a_bot_whose_name_maps_to_another_bots_stream_is_refused(nats_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    first, second = Subjects(f"a-{tag}", "c"), Subjects("a", f"{tag}-c")
    assert first.stream == second.stream  # the folding this test is about

    async def scenario() -> None:
        nc = await connect(nats_url, "stream-names")
        try:
            js = nc.jetstream()
            await ensure_stream(js, first, limit_s=10)
            await ensure_stream(js, first, limit_s=10)  # its own stream again: fine
            with pytest.raises(BusError, match="another bot's name maps to the same stream"):
                await ensure_stream(js, second, limit_s=10)
            await js.delete_stream(first.stream)
        finally:
            await nc.drain()

    asyncio.run(scenario())
