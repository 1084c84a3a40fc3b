"""The stream sequence read from a JetStream reply subject equals nats-py's own metadata."""

from __future__ import annotations

import nats.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg

from kubetrade.bus import stream_sequence

token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1)
number = st.integers(min_value=0, max_value=2**63 - 1)


@given(stream=token, consumer=token, delivered=number, sseq=number, cseq=number, pending=number)
def test_v1_reply(
    stream: str, consumer: str, delivered: int, sseq: int, cseq: int, pending: int
) -> None:
    reply = f"$JS.ACK.{stream}.{consumer}.{delivered}.{sseq}.{cseq}.1700000000000000000.{pending}"
    msg = Msg(None, subject="s", reply=reply, data=b"")  # type: ignore[arg-type]
    assert stream_sequence(msg) == msg.metadata.sequence.stream == sseq


@given(domain=token, account=token, stream=token, sseq=number, pending=number, tail=token)
def test_v2_reply(
    domain: str, account: str, stream: str, sseq: int, pending: int, tail: str
) -> None:
    reply = f"$JS.ACK.{domain}.{account}.{stream}.c.1.{sseq}.3.1700000000000000000.{pending}.{tail}"
    msg = Msg(None, subject="s", reply=reply, data=b"")  # type: ignore[arg-type]
    assert stream_sequence(msg) == msg.metadata.sequence.stream == sseq


@pytest.mark.parametrize("reply", ["", "_INBOX.abc", "$JS.ACK.a.b"])
def test_not_a_jetstream_delivery_is_nats_own_error(reply: str) -> None:
    with pytest.raises(nats.errors.Error):
        stream_sequence(Msg(None, subject="s", reply=reply, data=b""))  # type: ignore[arg-type]
