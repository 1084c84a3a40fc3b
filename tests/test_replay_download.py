"""Replay files by URL (kubetrade/market/download.py): a real HTTP server on 127.0.0.1 serves a
real candle file; the feed's source downloads it once, checks its SHA-256, caches it, and
replays exactly the candles of the local file. Mismatches, oversize files, refusals and
transient server errors are each handled the one way the module promises."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kubetrade.domain import Candle
from kubetrade.errors import ExchangeError, InvalidInputError
from kubetrade.market.download import (
    ChecksumError,
    DownloadError,
    DownloadLimits,
    cached_name,
    replay_file,
)
from kubetrade.market.sources import candle_source, load_source_candles
from kubetrade.market.synthetic import iter_candles
from kubetrade.runner import expected_candles
from kubetrade.spec import ManifestError, TradingBot, parse_bot

CANDLES = 400


@dataclass
class Served:
    """What the test server holds: path -> body, statuses to answer first, requests seen."""

    files: dict[str, bytes] = field(default_factory=dict)
    fail_first: dict[str, list[int]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    base: str = ""


@pytest.fixture
def server() -> Iterator[Served]:
    served = Served()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            served.requests.append(path)
            pending = served.fail_first.get(path)
            if pending:
                self.send_error(pending.pop(0))
                return
            body = served.files.get(path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def candle_file(tmp_path: Path) -> Path:
    """A ccxt-layout CSV of 400 hourly BTC/USDT candles from the synthetic market."""
    rows = ["timestamp,symbol,open,high,low,close,volume"]
    for candle in iter_candles(["BTC/USDT"], "1h", 11, n=CANDLES):
        rows.append(
            f"{candle.open_time},BTC/USDT,{candle.open},{candle.high},{candle.low},"
            f"{candle.close},{candle.volume}"
        )
    path = tmp_path / "btcusdt-1h.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def limits(tmp_path: Path) -> DownloadLimits:
    return DownloadLimits(timeout_s=30, max_bytes=10 << 20, cache_dir=tmp_path / "cache")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bot(uri: str, sha256: str | None = None) -> TradingBot:
    exchange: dict[str, Any] = {"name": "replay", "uri": uri}
    if sha256 is not None:
        exchange["sha256"] = sha256
    return parse_bot(
        {
            "apiVersion": "kubetrade.io/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": "replay-url"},
            "spec": {"exchange": exchange, "symbols": ["BTC/USDT"], "model": {"name": "m"}},
        }
    )


def publish(server: Served, candle_file: Path, path: str = "/data/btcusdt-1h.csv") -> str:
    server.files[path] = candle_file.read_bytes()
    return server.base + path


def test_a_url_replays_exactly_the_candles_of_the_file(
    server: Served, candle_file: Path, limits: DownloadLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = publish(server, candle_file)
    monkeypatch.setenv("KUBETRADE_REPLAY_CACHE", str(limits.cache))

    downloaded = load_source_candles(bot(url, sha(candle_file)))
    local = load_source_candles(bot(str(candle_file)))

    assert len(downloaded) == CANDLES
    assert downloaded == local
    [cached] = list(limits.cache.rglob("*.csv"))
    assert cached.read_bytes() == candle_file.read_bytes()
    assert cached.name == "btcusdt-1h.csv"  # the suffix decides CSV or Parquet


def test_the_feed_source_downloads_off_the_event_loop_and_then_uses_the_cache(
    server: Served, candle_file: Path, limits: DownloadLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = publish(server, candle_file)
    monkeypatch.setenv("KUBETRADE_REPLAY_CACHE", str(limits.cache))
    replay = bot(url, sha(candle_file))

    async def stream() -> list[Candle]:
        return [c async for c in candle_source(replay)]

    first = asyncio.run(stream())
    # A restarted feed (the pod's /tmp emptyDir survives a container restart) reads the cache.
    second = asyncio.run(stream())

    assert len(first) == CANDLES and first == second
    assert server.requests == ["/data/btcusdt-1h.csv"]


def test_kubetrade_run_counts_a_downloaded_file_before_starting_anything(
    server: Served, candle_file: Path, limits: DownloadLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = publish(server, candle_file)
    monkeypatch.setenv("KUBETRADE_REPLAY_CACHE", str(limits.cache))

    assert expected_candles(bot(url, sha(candle_file)), None) == CANDLES


def test_a_sha256_mismatch_is_refused_in_one_line_and_nothing_is_cached(
    server: Served, candle_file: Path, limits: DownloadLimits
) -> None:
    url = publish(server, candle_file)
    wrong = "0" * 64

    with pytest.raises(ChecksumError) as refused:
        replay_file(bot(url, wrong).spec.exchange, limits=limits)

    message = str(refused.value)
    assert "\n" not in message
    assert f"sha256 is {sha(candle_file)}, exchange.sha256 says {wrong}" in message
    assert isinstance(refused.value, InvalidInputError) and refused.value.exit_code == 2
    assert not [p for p in limits.cache.rglob("*") if p.is_file()]


def test_a_local_file_is_checked_against_sha256_too(candle_file: Path) -> None:
    assert replay_file(bot(str(candle_file), sha(candle_file)).spec.exchange) == str(candle_file)
    with pytest.raises(ChecksumError, match=r"exchange\.sha256 says"):
        replay_file(bot(str(candle_file), "f" * 64).spec.exchange)


def test_data_overrides_the_uri_without_a_download(
    server: Served, candle_file: Path, limits: DownloadLimits
) -> None:
    spec = bot(server.base + "/never.csv", "0" * 64).spec.exchange
    assert replay_file(spec, str(candle_file), limits) == str(candle_file)
    assert server.requests == []


def test_a_file_above_the_size_cap_is_refused(
    server: Served, candle_file: Path, tmp_path: Path
) -> None:
    url = publish(server, candle_file)
    small = DownloadLimits(timeout_s=30, max_bytes=1000, cache_dir=tmp_path / "cache")

    with pytest.raises(ChecksumError, match="above the 1,000-byte cap"):
        replay_file(bot(url, sha(candle_file)).spec.exchange, limits=small)
    assert not [p for p in small.cache.rglob("*") if p.is_file()]


def test_a_missing_file_fails_at_once_without_retries(
    server: Served, limits: DownloadLimits
) -> None:
    with pytest.raises(DownloadError, match="HTTP 404") as refused:
        replay_file(bot(server.base + "/absent.csv", "0" * 64).spec.exchange, limits=limits)
    assert server.requests == ["/absent.csv"]
    assert isinstance(refused.value, ExchangeError) and "\n" not in str(refused.value)


def test_transient_server_errors_are_retried(
    server: Served, candle_file: Path, limits: DownloadLimits
) -> None:
    url = publish(server, candle_file)
    server.fail_first["/data/btcusdt-1h.csv"] = [503, 500]

    path = replay_file(bot(url, sha(candle_file)).spec.exchange, limits=limits)

    assert path is not None and Path(path).read_bytes() == candle_file.read_bytes()
    assert server.requests == ["/data/btcusdt-1h.csv"] * 3


def test_an_unreachable_server_gives_up_within_the_time_limit(tmp_path: Path) -> None:
    # A port nothing listens on: connection refused on every attempt.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limits = DownloadLimits(timeout_s=3, cache_dir=tmp_path / "cache")
    url = f"http://user:secret-pw@127.0.0.1:{port}/c.csv?X-Signature=s3cr3t"

    with pytest.raises(DownloadError, match="gave up after retries") as refused:
        replay_file(bot(url, "0" * 64).spec.exchange, limits=limits)
    # Credentials and a presigned URL's query never reach the message (nor the logs).
    assert "secret-pw" not in str(refused.value) and "s3cr3t" not in str(refused.value)


def test_a_url_without_sha256_is_refused_by_the_spec() -> None:
    with pytest.raises(ManifestError, match=r"spec\.exchange: an http\(s\) exchange\.uri needs"):
        bot("https://data.example/candles.csv")


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://h/a/BTCUSDT-1h-2024-01.csv?sig=x", "BTCUSDT-1h-2024-01.csv"),
        ("https://h/candles.parquet", "candles.parquet"),
        ("https://h/", "candles.csv"),
        ("https://h/a%20b/../we ird$.csv", "we_ird_.csv"),
    ],
)
def test_the_cached_name_keeps_the_file_name_and_nothing_unsafe(url: str, name: str) -> None:
    assert cached_name(url) == name


def test_the_replay_example_replays_the_real_btc_file_served_over_http(
    server: Served, limits: DownloadLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetrade.spec import load_bot
    from tests.shared_data import require_shared, shared_dir

    real = require_shared(shared_dir() / "data" / "coinbase_btcusd_1h.csv", "real BTC/USD file")
    example = load_bot(Path(__file__).resolve().parents[1] / "k8s/examples/replay-paper.yaml")
    # Served where the example's uri points (its host stands for the user's server).
    served = example.model_copy(
        update={
            "spec": example.spec.model_copy(
                update={
                    "exchange": example.spec.exchange.model_copy(
                        update={"uri": publish(server, real, "/coinbase_btcusd_1h.csv")}
                    )
                }
            )
        }
    )
    monkeypatch.setenv("KUBETRADE_REPLAY_CACHE", str(limits.cache))
    monkeypatch.setenv("KUBETRADE_REPLAY_MAX_BYTES", str(200 << 20))

    downloaded = load_source_candles(served)

    assert example.spec.exchange.sha256 == sha(real)
    assert len(downloaded) == 20_111
    assert downloaded == load_source_candles(example, str(real))
