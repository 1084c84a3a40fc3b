"""Replay files by URL: downloaded once, checked against ``exchange.sha256``, cached in /tmp.

In a cluster the feed pod has no copy of the user's candle file. An http(s) ``exchange.uri``
is downloaded by the feed (bounded in time and size, retried on transient failures) into a
cache under the temporary directory (the pod's writable ``/tmp`` emptyDir, which survives a
container restart), keyed by the file's SHA-256: a restarted feed replays the cached copy
without downloading again. A file whose SHA-256 differs from ``exchange.sha256`` is refused in
one line and never replayed, whether downloaded or a local path.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from kubetrade import __version__
from kubetrade.errors import ExchangeError, InvalidInputError
from kubetrade.spec import ExchangeSpec, is_url

log = logging.getLogger(__name__)

ENV_MAX_BYTES = "KUBETRADE_REPLAY_MAX_BYTES"
ENV_TIMEOUT_S = "KUBETRADE_REPLAY_TIMEOUT_S"
ENV_CACHE_DIR = "KUBETRADE_REPLAY_CACHE"
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: years of 1-minute candles for a few symbols
DEFAULT_TIMEOUT_S = 300.0
CHUNK = 1 << 20
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class ChecksumError(InvalidInputError):
    """The replay file is not the one ``exchange.sha256`` names, or is too large."""


class DownloadError(ExchangeError):
    """The replay file could not be downloaded (unreachable, refused, or too slow)."""


class _TransientError(Exception):
    """A failure worth another attempt: a connection error, a timeout, a 5xx or a 429."""


@dataclass(frozen=True, slots=True)
class DownloadLimits:
    """How long a download may take in all (retries included) and how large the file may be."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    max_bytes: int = DEFAULT_MAX_BYTES
    cache_dir: Path | None = None

    @classmethod
    def from_env(cls) -> DownloadLimits:
        """Limits from ``KUBETRADE_REPLAY_TIMEOUT_S``, ``_MAX_BYTES`` and ``_CACHE``."""
        try:
            timeout_s = float(os.environ.get(ENV_TIMEOUT_S) or DEFAULT_TIMEOUT_S)
            max_bytes = int(os.environ.get(ENV_MAX_BYTES) or DEFAULT_MAX_BYTES)
        except ValueError:
            raise InvalidInputError(
                f"{ENV_TIMEOUT_S} and {ENV_MAX_BYTES} must be numbers (seconds, bytes)"
            ) from None
        cache = os.environ.get(ENV_CACHE_DIR)
        return cls(timeout_s, max_bytes, Path(cache) if cache else None)

    @property
    def cache(self) -> Path:
        """The cache directory: the configured one, else ``$TMPDIR/kubetrade-replay``."""
        return self.cache_dir or Path(tempfile.gettempdir()) / "kubetrade-replay"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, where: str) -> None:
    """Refuse ``path`` unless its SHA-256 is ``expected``."""
    actual = file_sha256(path)
    if actual != expected:
        raise ChecksumError(
            f"{where}: sha256 is {actual}, exchange.sha256 says {expected}: the file changed "
            "or the manifest names another one; fix exchange.sha256 or the file"
        )


def cached_name(url: str) -> str:
    """The file name to cache a download under: the URL's last path segment, made safe (the
    suffix tells CSV from Parquet and a Binance file name carries its timeframe)."""
    name = _SAFE_NAME.sub("_", PurePosixPath(urlsplit(url).path).name)
    return name if name.strip("._") else "candles.csv"


def _redacted(url: str) -> str:
    """The URL without credentials or query string (a presigned URL's query is a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, _TransientError)


def _fetch(url: str, sha256: str, target: Path, limits: DownloadLimits, deadline: float) -> None:
    """One attempt: stream ``url`` into ``target`` (hashing and counting), then check it."""
    shown = _redacted(url)
    request = urllib.request.Request(url, headers={"User-Agent": f"kubetrade/{__version__}"})
    digest = hashlib.sha256()
    size = 0
    remaining = max(deadline - time.monotonic(), 0.1)
    try:
        with (
            urllib.request.urlopen(request, timeout=min(remaining, 30.0)) as response,
            target.open("wb") as out,
        ):
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limits.max_bytes:
                raise ChecksumError(
                    f"{shown}: {int(length):,} bytes, above the {limits.max_bytes:,}-byte cap "
                    f"({ENV_MAX_BYTES})"
                )
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise ChecksumError(
                        f"{shown}: more than the {limits.max_bytes:,}-byte cap ({ENV_MAX_BYTES})"
                    )
                if time.monotonic() > deadline:
                    raise DownloadError(
                        f"{shown}: not downloaded within {limits.timeout_s:.0f}s "
                        f"({size:,} bytes so far; {ENV_TIMEOUT_S})"
                    )
                digest.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as error:
        if error.code >= 500 or error.code == 429:
            raise _TransientError(f"{shown}: HTTP {error.code} {error.reason}") from None
        raise DownloadError(
            f"{shown}: HTTP {error.code} {error.reason}; check exchange.uri"
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", None) or error
        raise _TransientError(f"{shown}: {reason}") from None
    if digest.hexdigest() != sha256:
        raise ChecksumError(
            f"{shown}: sha256 is {digest.hexdigest()}, exchange.sha256 says {sha256}: the file "
            "changed or the manifest names another one; fix exchange.sha256 or exchange.uri"
        )


def download(url: str, sha256: str, limits: DownloadLimits | None = None) -> Path:
    """The local copy of ``url``, whose SHA-256 is ``sha256``: the cached one when present,
    else downloaded (retried with backoff on transient failures, within ``limits``)."""
    limits = limits or DownloadLimits.from_env()
    directory = limits.cache / sha256
    target = directory / cached_name(url)
    if target.is_file():
        with contextlib.suppress(ChecksumError):
            check_sha256(target, sha256, str(target))
            log.info("replay file cached", extra={"path": str(target)})
            return target
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{target.name}.{os.getpid()}.part"
    started = time.monotonic()
    deadline = started + limits.timeout_s

    @retry(
        retry=retry_if_exception(_is_transient),
        stop=stop_after_attempt(5) | stop_after_delay(limits.timeout_s),
        wait=wait_exponential(multiplier=0.5, max=10),
        reraise=True,
    )
    def attempt() -> None:
        _fetch(url, sha256, partial, limits, deadline)

    try:
        attempt()
    except _TransientError as error:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{error} (gave up after retries); check exchange.uri") from None
    except BaseException:
        # A refused file (checksum, size) is never left where a later read could find it.
        partial.unlink(missing_ok=True)
        raise
    # A rename is atomic: a concurrent reader sees no file or the whole, checked one.
    partial.replace(target)
    log.info(
        "replay file downloaded",
        extra={
            "url": _redacted(url),
            "path": str(target),
            "bytes": target.stat().st_size,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    return target


def replay_file(
    exchange: ExchangeSpec, data_file: str | None = None, limits: DownloadLimits | None = None
) -> str | None:
    """The local path of the bot's replay file, or None when it replays nothing.

    ``data_file`` (``--data``) replaces ``exchange.uri`` as it is. An http(s) uri is downloaded
    (see :func:`download`); a path is checked against ``exchange.sha256`` when one is given.
    """
    if data_file is not None:
        return data_file
    if exchange.name != "replay" or not exchange.uri:
        return None
    if is_url(exchange.uri):
        if exchange.sha256 is None:  # the spec refuses this; a hand-built spec may not
            raise ChecksumError(f"exchange.uri {_redacted(exchange.uri)} needs exchange.sha256")
        return str(download(exchange.uri, exchange.sha256, limits))
    if exchange.sha256 is not None and Path(exchange.uri).is_file():
        check_sha256(Path(exchange.uri), exchange.sha256, exchange.uri)
    return exchange.uri
