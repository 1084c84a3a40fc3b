#!/usr/bin/env python3
"""Build (or reuse) everything the one-node cluster tier needs, without a Docker engine.

``image``  the project's container image from the root ``Dockerfile`` with buildah: the base
           ``debian:bookworm-slim`` reproduced from Debian's packages with mmdebstrap (so
           nothing is pulled from a registry), a wheelhouse of the runtime dependencies
           prepared on the host (pip inside the build container never contacts an index), and
           an OCI archive that ``ctr images import`` and ``docker load``-style tools take.
``node``   the node binaries (kubelet, kube-scheduler, kube-proxy and a minimal CoreDNS, built
           by tests/controlplane/build.py from the same pinned wrapper module as the control
           plane), the host packages a node needs (containerd, runc, CNI plugins, iptables,
           conntrack) and a pause image for containerd's sandboxes.

Usage (stdlib only)::

    python3 tests/cluster/build.py image [--force]   # prints the OCI archive path
    python3 tests/cluster/build.py node  [--force]   # prints the node directory
    python3 tests/cluster/build.py check             # exit 0 iff node, pause and image are built
    python3 tests/cluster/build.py paths             # JSON: where everything is

Everything lives under ``${XDG_CACHE_HOME:-~/.cache}/kubetrade/`` (``image/`` for buildah's
storage, the base, the wheelhouses and the archive; the node binaries beside the control plane's).
Debian packages are installed with apt-get when a needed command is missing (root only).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

IMAGE_REPO = "ghcr.io/kubetrade/kubetrade"
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"  # the Dockerfile's ARG BASE
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"  # containerd's sandbox_image (built here)
WHEELHOUSE_IN_CONTEXT = "build/wheelhouse"  # relative to the repo (the build context)

# command (or file) that must exist -> Debian package providing it
IMAGE_PACKAGES = {
    "buildah": "buildah",
    "mmdebstrap": "mmdebstrap",
    "newuidmap": "uidmap",
    # The OCI runtime buildah runs a RUN step in: Debian's buildah only recommends one, and
    # without it the image's first RUN fails ("exec: no command") unless the node build, which
    # installs runc too, happened to come first.
    "runc": "runc",
}
NODE_PACKAGES = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "iptables": "iptables",
    "nft": "nftables",  # teardown drops the empty netfilter tables iptables-nft created
    "conntrack": "conntrack",
    "ip": "iproute2",
    "mount": "mount",
}

# What debian:bookworm-slim drops (debuerreotype's --slimify): docs, man pages, locales.
_SLIM_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)

BENIGN_ENV = {"BENTOML_DO_NOT_TRACK": "true", "ORT_DISABLE_TELEMETRY": "1"}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kubetrade"


def image_dir() -> Path:
    return cache_root() / "image"


def _load_controlplane_build() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_kubetrade_controlplane_build", REPO / "tests" / "controlplane" / "build.py"
    )
    assert spec and spec.loader
    mod = sys.modules.get(spec.name)
    if mod is None:
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod


cp_build = _load_controlplane_build()


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def image_ref() -> str:
    return f"{IMAGE_REPO}:{project_version()}"


def archive_path() -> Path:
    return image_dir() / f"kubetrade-{project_version()}.oci.tar"


def pause_archive_path() -> Path:
    return Path(cp_build.node_dir()) / "pause.oci.tar"


def _log(msg: str) -> None:
    print(f"cluster-build: {msg}", flush=True)


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **BENIGN_ENV, **kw.pop("env", {})}
    return subprocess.run(cmd, check=True, text=True, env=env, **kw)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"another build holds {path}; waiting...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _have(what: str) -> bool:
    return Path(what).exists() if what.startswith("/") else shutil.which(what) is not None


def ensure_packages(needed: dict[str, str]) -> None:
    """apt-get install the Debian packages whose command (or file) is missing.

    Under a lock: ``make -j`` builds the node and the image at once, and two apt runs collide.
    """
    if all(_have(what) for what in needed):
        return
    with _lock(cache_root() / "apt.lock"):
        _install_packages(needed)


def _install_packages(needed: dict[str, str]) -> None:
    missing = sorted({pkg for what, pkg in needed.items() if not _have(what)})
    if not missing:
        return  # the other build installed them meanwhile
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(
            f"cluster-build: missing Debian packages {missing}; install them "
            f"(apt-get install {' '.join(missing)}) or run as root on Debian"
        )
    _log(f"apt-get install {' '.join(missing)}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
    _run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        env=env,
        stdout=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------- buildah


def buildah_cmd() -> list[str]:
    """buildah on its own storage in the cache (never the host's default store)."""
    d = image_dir() / "buildah"
    return [
        "buildah",
        "--root",
        str(d / "root"),
        "--runroot",
        str(d / "run"),
        "--storage-driver",
        "overlay",
    ]


def _image_exists(ref: str) -> bool:
    r = subprocess.run(
        [*buildah_cmd(), "inspect", "--type", "image", ref],
        capture_output=True,
        text=True,
        check=False,
    )
    return r.returncode == 0


def build_base(force: bool = False) -> dict[str, Any]:
    """debian:bookworm-slim from Debian's packages: mmdebstrap minbase, slimmed as upstream's."""
    if not force and _image_exists(BASE_IMAGE):
        return {"base": BASE_IMAGE, "base_seconds": 0.0, "base_cached": True}
    t0 = time.monotonic()
    tar = image_dir() / "bookworm-slim.rootfs.tar"
    tar.parent.mkdir(parents=True, exist_ok=True)
    _log(f"mmdebstrap {DEBIAN_SUITE} minbase -> {tar}")
    cmd = [
        "mmdebstrap",
        "--mode=root" if os.geteuid() == 0 else "--mode=unshare",
        "--variant=minbase",
        "--format=tar",
        # merged /usr set up directly (as debootstrap does), not via the usrmerge package,
        # which would pull perl into the image
        "--hook-dir=/usr/share/mmdebstrap/hooks/maybe-merged-usr",
        *[f"--dpkgopt={o}" for o in _SLIM_EXCLUDES],
        DEBIAN_SUITE,
        str(tar),
        f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE} main",
        f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE}-updates main",
        f"deb {DEBIAN_SECURITY} {DEBIAN_SUITE}-security main",
    ]
    _run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b = buildah_cmd()
    ctr = _run([*b, "from", "scratch"], capture_output=True).stdout.strip()
    try:
        _run([*b, "add", ctr, str(tar), "/"], stdout=subprocess.DEVNULL)
        _run(
            [
                *b,
                "config",
                "--cmd",
                "bash",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                ctr,
            ]
        )
        _run([*b, "commit", "-q", "--rm", ctr, BASE_IMAGE], stdout=subprocess.DEVNULL)
    except BaseException:
        subprocess.run([*b, "rm", ctr], capture_output=True, check=False)
        raise
    tar.unlink(missing_ok=True)
    return {
        "base": BASE_IMAGE,
        "base_seconds": round(time.monotonic() - t0, 1),
        "base_cached": False,
    }


def _requirements() -> list[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(meta["project"]["dependencies"]) + list(meta["build-system"]["requires"])


def _python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    for cand in ("python3.11", str(REPO / ".venv" / "bin" / "python")):
        p = shutil.which(cand) or (cand if Path(cand).exists() else None)
        if p:
            return p
    raise SystemExit("cluster-build: need python3.11 on the host to prepare the wheelhouse")


def build_wheelhouse(force: bool = False) -> dict[str, Any]:
    """Wheels of the runtime dependencies (and the build backend), prepared on the host.

    Cached per dependency set; hard-linked into the build context at build/wheelhouse.
    The host is Debian bookworm with a CPython 3.11 like the image, so wheels built here from
    an sdist fit the image too; binary wheels are the same manylinux files pip would pick there.
    """
    reqs = _requirements()
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]
    cached = image_dir() / "wheelhouse" / key
    t0 = time.monotonic()
    was_cached = (cached / ".complete").is_file() and not force
    if not was_cached:
        shutil.rmtree(cached, ignore_errors=True)
        tmp = cached.with_name(key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _log(f"pip wheel {len(reqs)} requirements -> {cached}")
        _run(
            [_python311(), "-m", "pip", "wheel", "-q", "--wheel-dir", str(tmp), *reqs],
            stdout=subprocess.DEVNULL,
        )
        (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
        (tmp / ".complete").write_text("")
        os.replace(tmp, cached)
    dest = REPO / WHEELHOUSE_IN_CONTEXT
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for whl in cached.glob("*.whl"):
        try:
            os.link(whl, dest / whl.name)
        except OSError:
            shutil.copy2(whl, dest / whl.name)
    size = sum(p.stat().st_size for p in cached.glob("*.whl"))
    return {
        "wheelhouse": str(cached),
        "wheelhouse_seconds": round(time.monotonic() - t0, 1),
        "wheelhouse_cached": was_cached,
        "wheelhouse_bytes": size,
    }


def _du(ctr_root: Path, paths: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in paths:
        total = 0
        for root, _dirs, files in os.walk(ctr_root / p.lstrip("/")):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, f)).st_size
        out[p] = total
    return out


def _space_report(ref: str) -> dict[str, Any]:
    """Mount the built image and measure what takes its space (largest site-packages first)."""
    b = buildah_cmd()
    ctr = _run([*b, "from", "--pull-never", ref], capture_output=True).stdout.strip()
    try:
        root = Path(_run([*b, "mount", ctr], capture_output=True).stdout.strip())
        site = root / "opt/kubetrade/lib/python3.11/site-packages"
        pkgs = {}
        for d in site.iterdir():
            if d.is_dir() and not d.name.endswith((".dist-info", "__pycache__")):
                pkgs[d.name] = _du(site, [d.name])[d.name]
        top = dict(sorted(pkgs.items(), key=lambda kv: -kv[1])[:15])
        areas = _du(root, ["/opt/kubetrade", "/usr/lib", "/usr/share", "/var", "/usr/bin"])
        return {"areas_bytes": areas, "site_packages_top_bytes": top}
    finally:
        subprocess.run([*b, "umount", ctr], capture_output=True, check=False)
        subprocess.run([*b, "rm", ctr], capture_output=True, check=False)


def build_image(force: bool = False) -> Path:
    """Build the project's image with buildah and write its OCI archive; returns the archive."""
    ensure_packages(IMAGE_PACKAGES)
    with _lock(image_dir() / ".build.lock"):
        t0 = time.monotonic()
        info: dict[str, Any] = {"image": image_ref()}
        info.update(build_base(force=False))
        info.update(build_wheelhouse(force=force))
        ref = image_ref()
        _log(f"buildah bud {ref}")
        t1 = time.monotonic()
        cmd = [
            *buildah_cmd(),
            "bud",
            "--pull=never",
            # no bridge, no iptables chains on the host; the build's only network use is
            # Debian's apt (plain HTTP); pip installs from the wheelhouse
            "--network=host",
            "--layers",
            "--format=oci",
            "--build-arg",
            f"BASE={BASE_IMAGE}",
            "--build-arg",
            f"WHEELHOUSE={WHEELHOUSE_IN_CONTEXT}",
            "-f",
            str(REPO / "Dockerfile"),
            "-t",
            ref,
            str(REPO),
        ]
        if force:
            cmd.insert(cmd.index("--layers"), "--no-cache")
        _run(cmd, stdout=sys.stderr)
        info["bud_seconds"] = round(time.monotonic() - t1, 1)
        arch = archive_path()
        tmp = arch.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        t2 = time.monotonic()
        _run([*buildah_cmd(), "push", "-q", ref, f"oci-archive:{tmp}:{ref}"])
        os.replace(tmp, arch)
        info["archive_seconds"] = round(time.monotonic() - t2, 1)
        insp = json.loads(
            _run([*buildah_cmd(), "inspect", "--type", "image", ref], capture_output=True).stdout
        )
        info["image_id"] = insp.get("FromImageID", "")
        info["archive"] = str(arch)
        info["archive_bytes"] = arch.stat().st_size
        info.update(_space_report(ref))
        info["uncompressed_bytes"] = _uncompressed_size(ref)
        info["total_seconds"] = round(time.monotonic() - t0, 1)
        info["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (image_dir() / "IMAGE-INFO.json").write_text(json.dumps(info, indent=2) + "\n")
        _log(
            f"{ref}: {info['uncompressed_bytes'] / 1e6:.0f} MB uncompressed, archive "
            f"{info['archive_bytes'] / 1e6:.0f} MB, built in {info['total_seconds']:.0f}s "
            f"(bud {info['bud_seconds']:.0f}s) -> {arch}"
        )
        return arch


def _uncompressed_size(ref: str) -> int:
    """Sum of the image's uncompressed layers (what `docker images` shows as SIZE)."""
    out = _run([*buildah_cmd(), "inspect", "--type", "image", ref], capture_output=True).stdout
    manifest = json.loads(json.loads(out)["Manifest"])
    store = image_dir() / "buildah" / "root" / "overlay-layers" / "layers.json"
    sizes: dict[str, int] = {}
    for layer in json.loads(store.read_text()):
        for key in ("diff-digest", "compressed-diff-digest"):
            if layer.get(key):
                sizes[layer[key]] = int(layer.get("diff-size", 0))
    return int(sum(sizes.get(layer["digest"], 0) for layer in manifest["layers"]))


def image_info() -> dict[str, Any] | None:
    p = image_dir() / "IMAGE-INFO.json"
    if not p.is_file() or not archive_path().is_file():
        return None
    info: dict[str, Any] = json.loads(p.read_text())
    return info if info.get("image") == image_ref() else None


# --------------------------------------------------------------------------- node


def build_pause(force: bool = False) -> Path:
    """A one-file image: the static pause program from tests/cluster/pause."""
    arch = pause_archive_path()
    if arch.is_file() and not force:
        return arch
    ensure_packages(IMAGE_PACKAGES)
    arch.parent.mkdir(parents=True, exist_ok=True)
    binary = arch.with_name("pause")
    _run(
        ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), "."],
        cwd=HERE / "pause",
        env={"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"},
    )
    b = buildah_cmd()
    ctr = _run([*b, "from", "scratch"], capture_output=True).stdout.strip()
    try:
        _run([*b, "copy", ctr, str(binary), "/pause"], stdout=subprocess.DEVNULL)
        _run([*b, "config", "--entrypoint", '["/pause"]', "--user", "65535:65535", ctr])
        _run([*b, "commit", "-q", "--rm", ctr, PAUSE_IMAGE], stdout=subprocess.DEVNULL)
    except BaseException:
        subprocess.run([*b, "rm", ctr], capture_output=True, check=False)
        raise
    tmp = arch.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    _run([*b, "push", "-q", PAUSE_IMAGE, f"oci-archive:{tmp}:{PAUSE_IMAGE}"])
    os.replace(tmp, arch)
    return arch


def build_node(force: bool = False) -> Path:
    ensure_packages(NODE_PACKAGES)
    d: Path = cp_build.build_node(force=force)
    build_pause(force=force)
    return d


def missing() -> list[str]:
    out = [f"node: {m}" for m in cp_build.missing_node()]
    if not pause_archive_path().is_file():
        out.append(f"pause image {pause_archive_path()}")
    if image_info() is None:
        out.append(f"image archive {archive_path()} (make image)")
    out += [f"command {w} ({p})" for w, p in NODE_PACKAGES.items() if not _have(w)]
    return out


def paths() -> dict[str, str]:
    return {
        "controlplane": str(cp_build.bin_dir()),
        "node": str(cp_build.node_dir()),
        "pause_archive": str(pause_archive_path()),
        "image": image_ref(),
        "image_archive": str(archive_path()),
        "buildah_root": str(image_dir() / "buildah"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("image", "node"):
        p = sub.add_parser(name)
        p.add_argument("--force", action="store_true", help="rebuild even if cached")
    sub.add_parser("check")
    sub.add_parser("paths")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "image":
            print(build_image(force=args.force))
        elif args.cmd == "node":
            print(build_node(force=args.force))
        elif args.cmd == "check":
            miss = missing()
            if miss:
                print("cluster: not built: " + "; ".join(miss), file=sys.stderr)
                return 1
        elif args.cmd == "paths":
            print(json.dumps(paths(), indent=2))
    except subprocess.CalledProcessError as e:
        print(
            f"cluster-build: command failed ({e.returncode}): {' '.join(map(str, e.cmd))}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
