#!/usr/bin/env python3
"""Build (once) and locate the pinned Kubernetes control-plane binaries.

The binaries are built from the Go module proxy by the small wrapper Go module
in this directory (go.mod / go.sum): kube-apiserver, kube-controller-manager
and kubectl from ``k8s.io/kubernetes`` and etcd from
``go.etcd.io/etcd/server/v3`` at the version that Kubernetes release requires.
Nothing is committed: the binaries live in a cache directory outside the
repository and are rebuilt only when the pin changes.

Usage (stdlib only, any python3 >= 3.9 works)::

    python3 tests/controlplane/build.py            # build if missing, print dir
    python3 tests/controlplane/build.py build      # same
    python3 tests/controlplane/build.py build --force
    python3 tests/controlplane/build.py path       # print the binary dir
    python3 tests/controlplane/build.py check      # exit 0 iff complete build present
    python3 tests/controlplane/build.py versions   # print the pins
    python3 tests/controlplane/build.py pin v1.38.0  # move the pin (rewrites go.mod/go.sum)
    python3 tests/controlplane/build.py build-node   # + kubelet, scheduler, proxy, coredns
    python3 tests/controlplane/build.py check-node   # exit 0 iff those are built too

Where the binaries go: ``$KUBETRADE_CONTROLPLANE_DIR`` when set, otherwise
``${XDG_CACHE_HOME:-~/.cache}/kubetrade/controlplane/k8s-<v>-etcd-<v>/``.
The directory is complete when it holds the four binaries and BUILD-INFO.json
(written last, after an atomic rename of each binary).

The node binaries of the one-node cluster tier (tests/cluster) come from the same
wrapper module and go into the same directory: kubelet, kube-scheduler and kube-proxy
from the same ``k8s.io/kubernetes`` pin, and a CoreDNS with only the plugins a test
cluster's Corefile uses (``cmd/coredns``, CoreDNS pinned by its require line in go.mod).
They are complete when NODE-BUILD-INFO.json (written last) names the same pins.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
GO_MOD = HERE / "go.mod"

ENV_DIR = "KUBETRADE_CONTROLPLANE_DIR"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
INFO_FILE = "BUILD-INFO.json"

# Go package -> output binary name.
PACKAGES = {
    "go.etcd.io/etcd/server/v3": "etcd",
    "k8s.io/kubernetes/cmd/kube-apiserver": "kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-controller-manager": "kube-controller-manager",
    "k8s.io/kubernetes/cmd/kubectl": "kubectl",
}

# The one-node cluster's node binaries (build-node), from the same wrapper module.
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy", "coredns")
NODE_INFO_FILE = "NODE-BUILD-INFO.json"
NODE_PACKAGES = {
    "k8s.io/kubernetes/cmd/kubelet": "kubelet",
    "k8s.io/kubernetes/cmd/kube-scheduler": "kube-scheduler",
    "k8s.io/kubernetes/cmd/kube-proxy": "kube-proxy",
    "kubetrade.local/controlplane/cmd/coredns": "coredns",
}

_K8S_RE = re.compile(
    r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v1\.(\d+)\.(\d+))\s*(?://.*)?$", re.M
)
_ETCD_RE = re.compile(r"^\s*(?:require\s+)?go\.etcd\.io/etcd/server/v3\s+(v3\.\d+\.\d+)\b", re.M)
_COREDNS_RE = re.compile(r"^\s*(?:require\s+)?github\.com/coredns/coredns\s+(v\S+)", re.M)
_REPLACE_RE = re.compile(r"^\s*(k8s\.io/[a-z0-9-]+)\s+=>\s+(k8s\.io/[a-z0-9-]+)\s+(\S+)\s*$", re.M)


class PinError(RuntimeError):
    pass


def versions(go_mod: Path = GO_MOD) -> dict[str, str]:
    """The pins, read from go.mod (the one place they are written)."""
    text = go_mod.read_text()
    k8s = _K8S_RE.search(text)
    if not k8s:
        raise PinError(f"{go_mod}: no `k8s.io/kubernetes v1.Y.Z` require line")
    etcd = _ETCD_RE.search(text)
    if not etcd:
        raise PinError(f"{go_mod}: no go.etcd.io/etcd/server/v3 requirement (run `build.py pin`)")
    out = {
        "kubernetes": k8s.group(1),
        "kubernetes_major": "1",
        "kubernetes_minor": k8s.group(2),
        "staging": f"v0.{k8s.group(2)}.{k8s.group(3)}",
        "etcd": etcd.group(1),
    }
    coredns = _COREDNS_RE.search(text)
    if coredns:
        out["coredns"] = coredns.group(1)
    return out


def check_replaces(go_mod: Path = GO_MOD) -> None:
    """Every k8s.io staging replace must point at the published v0.Y.Z of the pin."""
    v = versions(go_mod)
    text = go_mod.read_text()
    bad = [
        f"{old} => {new} {ver}"
        for old, new, ver in _REPLACE_RE.findall(text)
        if old != new or ver != v["staging"]
    ]
    if bad:
        raise PinError(
            f"{go_mod}: replace lines disagree with k8s.io/kubernetes {v['kubernetes']} "
            f"(expected `=> same-module {v['staging']}`): {bad}. "
            f"Run: python3 {Path(__file__).name} pin {v['kubernetes']}"
        )


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kubetrade" / "controlplane"


def bin_dir() -> Path:
    """Directory holding the binaries: $KUBETRADE_CONTROLPLANE_DIR or the cache."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser().resolve()
    v = versions()
    return cache_root() / f"k8s-{v['kubernetes']}-etcd-{v['etcd']}"


def missing(directory: Path | None = None) -> list[str]:
    """Names of what is missing for a complete build in `directory` ([] = complete)."""
    d = directory or bin_dir()
    out = [b for b in BINARIES if not os.access(d / b, os.X_OK)]
    # A directory given explicitly through the env var may be hand-made (e.g.
    # envtest's assets): the binaries are enough there. The cache needs the stamp.
    if not os.environ.get(ENV_DIR) and not (d / INFO_FILE).is_file():
        out.append(INFO_FILE)
    return out


def node_dir() -> Path:
    """Where the node binaries go: beside the control plane's."""
    return bin_dir()


def missing_node(directory: Path | None = None) -> list[str]:
    """What is missing for a complete node build in `directory` ([] = complete)."""
    d = directory or node_dir()
    out = [b for b in NODE_BINARIES if not os.access(d / b, os.X_OK)]
    if not os.environ.get(ENV_DIR):
        try:
            info = json.loads((d / NODE_INFO_FILE).read_text())
        except (OSError, ValueError):
            return [*out, NODE_INFO_FILE]
        v = versions()
        if (info.get("kubernetes"), info.get("coredns")) != (v["kubernetes"], v.get("coredns")):
            out.append(
                f"{NODE_INFO_FILE} for kubernetes {v['kubernetes']}, coredns {v.get('coredns')}"
            )
    return out


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"controlplane: another build holds {path}; waiting...", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _go_env(extra_goflags: str) -> dict[str, str]:
    env = dict(os.environ)
    goflags = env.get("GOFLAGS", "")
    # Builds must use exactly the committed go.mod/go.sum.
    goflags = " ".join(f for f in goflags.split() if not f.startswith("-mod="))
    env["GOFLAGS"] = f"{goflags} {extra_goflags}".strip()
    env["CGO_ENABLED"] = "0"  # like upstream's release builds of these binaries
    env.setdefault("GOPROXY", "https://proxy.golang.org,direct")
    return env


def _module_time(env: dict[str, str]) -> str:
    out = subprocess.run(
        ["go", "list", "-m", "-json", "k8s.io/kubernetes"],
        cwd=HERE,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    t = json.loads(out).get("Time")
    if t:
        return _dt.datetime.fromisoformat(t.replace("Z", "+00:00")).strftime("%Y-%m-%dT%H:%M:%SZ")
    return "1970-01-01T00:00:00Z"


def _ldflags(v: dict[str, str], env: dict[str, str]) -> list[str]:
    """Strip symbols; stamp the release version the way upstream's release builds do."""
    xs = {
        "gitVersion": v["kubernetes"],
        "gitMajor": v["kubernetes_major"],
        "gitMinor": v["kubernetes_minor"],
        "gitTreeState": "clean",
        "buildDate": _module_time(env),
    }
    ldflags = ["-s", "-w"]
    for key, val in xs.items():
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            ldflags.append(f"-X {pkg}.{key}={val}")
    return ldflags


def build_node(force: bool = False, nice: int = 19) -> Path:
    """Build kubelet, kube-scheduler, kube-proxy and coredns into node_dir() unless there."""
    check_replaces()
    v = versions()
    if "coredns" not in v:
        raise PinError(f"{GO_MOD}: no github.com/coredns/coredns requirement")
    dest = node_dir()
    if not force and not missing_node(dest):
        print(f"node: cached build present in {dest}", flush=True)
        return dest
    if shutil.which("go") is None:
        raise SystemExit("node: `go` is not on PATH; install Go >= 1.26 to build")
    with _lock(dest.parent / f".{dest.name}.lock"):
        if not force and not missing_node(dest):
            print(f"node: cached build present in {dest}", flush=True)
            return dest
        dest.mkdir(parents=True, exist_ok=True)
        (dest / NODE_INFO_FILE).unlink(missing_ok=True)
        tmp = dest / ".build-node-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        env = _go_env("-mod=readonly")
        go_version = subprocess.run(
            ["go", "version"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        ldflags = _ldflags(v, env)
        print(
            f"node: building kubelet, kube-scheduler, kube-proxy (kubernetes {v['kubernetes']}) "
            f"and coredns {v['coredns']} with {go_version} into {dest}",
            flush=True,
        )
        t0 = time.monotonic()
        subprocess.run(["go", "mod", "download"], cwd=HERE, env=env, check=True)
        cmd = ["go", "build", "-trimpath", "-ldflags", " ".join(ldflags), "-o", str(tmp) + "/"]
        cmd += list(NODE_PACKAGES)
        if nice and shutil.which("nice"):
            cmd = ["nice", "-n", str(nice), *cmd]
        subprocess.run(cmd, cwd=HERE, env=env, check=True)
        for name in NODE_BINARIES:
            src = tmp / name
            if not src.is_file():
                raise SystemExit(f"node: go build did not produce {src}")
            os.replace(src, dest / name)
        shutil.rmtree(tmp, ignore_errors=True)
        info = {
            "kubernetes": v["kubernetes"],
            "coredns": v["coredns"],
            "go": go_version,
            "ldflags": ldflags,
            "built_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "total_seconds": round(time.monotonic() - t0, 1),
            "nproc": os.cpu_count(),
            "sizes_bytes": {b: (dest / b).stat().st_size for b in NODE_BINARIES},
        }
        tmp_info = dest / (NODE_INFO_FILE + ".tmp")
        tmp_info.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp_info, dest / NODE_INFO_FILE)
        print(f"node: built in {info['total_seconds']:.0f}s -> {dest}", flush=True)
        return dest


def build(force: bool = False, nice: int = 19) -> Path:
    check_replaces()
    v = versions()
    dest = bin_dir()
    if not force and not missing(dest):
        print(f"controlplane: cached build present in {dest}", flush=True)
        return dest
    if shutil.which("go") is None:
        raise SystemExit("controlplane: `go` is not on PATH; install Go >= 1.26 to build")

    with _lock(dest.parent / f".{dest.name}.lock"):
        if not force and not missing(dest):  # built by whoever held the lock
            print(f"controlplane: cached build present in {dest}", flush=True)
            return dest
        dest.mkdir(parents=True, exist_ok=True)
        (dest / INFO_FILE).unlink(missing_ok=True)
        tmp = dest / ".build-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()

        env = _go_env("-mod=readonly")
        go_version = subprocess.run(
            ["go", "version"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        ldflags = _ldflags(v, env)

        print(
            f"controlplane: building kubernetes {v['kubernetes']} + etcd {v['etcd']} "
            f"with {go_version} into {dest}",
            flush=True,
        )
        t0 = time.monotonic()
        dl = (
            ["go", "mod", "download", "-x"]
            if os.environ.get("KUBETRADE_CP_VERBOSE")
            else ["go", "mod", "download"]
        )
        subprocess.run(dl, cwd=HERE, env=env, check=True)
        t_dl = time.monotonic() - t0
        print(f"controlplane: modules downloaded in {t_dl:.0f}s", flush=True)

        # One `go build` for all four main packages: they share most of their
        # dependency graph, so the toolchain compiles each package once.
        cmd = [
            "go",
            "build",
            "-trimpath",
            "-ldflags",
            " ".join(ldflags),
            "-o",
            str(tmp) + "/",
            *PACKAGES,
        ]
        if nice and shutil.which("nice"):
            cmd = ["nice", "-n", str(nice), *cmd]
        t1 = time.monotonic()
        subprocess.run(cmd, cwd=HERE, env=env, check=True)
        t_build = time.monotonic() - t1

        # `go build -o dir/` names a /vN module's binary after the path element
        # before the major-version suffix: go.etcd.io/etcd/server/v3 -> "server".
        produced = {"etcd": tmp / "server"}
        for name in BINARIES:
            produced.setdefault(name, tmp / name)
        for name, src in produced.items():
            if not src.is_file():
                raise SystemExit(f"controlplane: go build did not produce {src}")
            os.replace(src, dest / name)
        shutil.rmtree(tmp, ignore_errors=True)

        info = {
            "kubernetes": v["kubernetes"],
            "etcd": v["etcd"],
            "go": go_version,
            "ldflags": ldflags,
            "built_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "download_seconds": round(t_dl, 1),
            "build_seconds": round(t_build, 1),
            "total_seconds": round(time.monotonic() - t0, 1),
            "nproc": os.cpu_count(),
            "sizes_bytes": {b: (dest / b).stat().st_size for b in BINARIES},
        }
        tmp_info = dest / (INFO_FILE + ".tmp")
        tmp_info.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp_info, dest / INFO_FILE)
        print(
            f"controlplane: built in {info['total_seconds']:.0f}s "
            f"(download {t_dl:.0f}s, compile {t_build:.0f}s) -> {dest}",
            flush=True,
        )
        return dest


def pin(version: str) -> None:
    """Move the pin to k8s.io/kubernetes `version`; rewrite replaces, etcd, go.sum."""
    m = re.fullmatch(r"v1\.(\d+)\.(\d+)", version)
    if not m:
        raise SystemExit(f"pin: expected v1.Y.Z, got {version!r}")
    staging = f"v0.{m.group(1)}.{m.group(2)}"
    env = _go_env("-mod=mod")
    info = json.loads(
        subprocess.run(
            ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
            cwd=HERE,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    upstream = Path(info["GoMod"]).read_text()
    staged = sorted(set(re.findall(r"^\s*(k8s\.io/[a-z0-9-]+)\s+=>\s+\./staging/", upstream, re.M)))
    etcd = re.search(r"^\s*go\.etcd\.io/etcd/server/v3\s+(v\S+)", upstream, re.M)
    required = set(re.findall(r"^\s*(k8s\.io/[a-z0-9-]+)\s+v0\.0\.0\b", upstream, re.M))
    text = GO_MOD.read_text()
    head = text.split("\nrequire", 1)[0].rstrip() + "\n"
    lines = [head, f"require k8s.io/kubernetes {version}\n"]
    if etcd:
        lines.append(f"\nrequire go.etcd.io/etcd/server/v3 {etcd.group(1)}\n")
    coredns = _COREDNS_RE.search(text)
    if coredns:  # CoreDNS has its own release line: moving the Kubernetes pin keeps it
        lines.append(f"\nrequire github.com/coredns/coredns {coredns.group(1)}\n")
    lines.append("\nreplace (\n")
    for mod in staged:
        # Staging modules that upstream does not require (sample-controller,
        # sample-cli-plugin) are not published for every release; skip them.
        if mod in required:
            lines.append(f"\t{mod} => {mod} {staging}\n")
    lines.append(")\n")
    GO_MOD.write_text("".join(lines))
    (HERE / "go.sum").unlink(missing_ok=True)
    subprocess.run(["go", "mod", "tidy"], cwd=HERE, env=env, check=True)
    check_replaces()
    print(f"pinned: {versions()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("build", help="build into the cache unless already there")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument("--nice", type=int, default=int(os.environ.get("KUBETRADE_CP_NICE", "19")))
    bn = sub.add_parser(
        "build-node", help="also build kubelet, kube-scheduler, kube-proxy, coredns"
    )
    bn.add_argument("--force", action="store_true", help="rebuild even if cached")
    bn.add_argument("--nice", type=int, default=int(os.environ.get("KUBETRADE_CP_NICE", "19")))
    sub.add_parser("check-node", help="exit 0 iff the node binaries are built too")
    sub.add_parser("path", help="print the binary directory")
    sub.add_parser("check", help="exit 0 iff a complete build is present")
    sub.add_parser("versions", help="print the pinned versions as JSON")
    p = sub.add_parser("pin", help="move the Kubernetes pin (maintainers)")
    p.add_argument("version")
    args = ap.parse_args(argv)
    try:
        if args.cmd in (None, "build"):
            d = build(force=getattr(args, "force", False), nice=getattr(args, "nice", 19))
            print(d)
        elif args.cmd == "build-node":
            print(build_node(force=args.force, nice=args.nice))
        elif args.cmd == "check-node":
            miss = missing_node()
            if miss:
                print(
                    f"node: {node_dir()} lacks {', '.join(miss)}; run `make cluster`",
                    file=sys.stderr,
                )
                return 1
            print(node_dir())
        elif args.cmd == "path":
            print(bin_dir())
        elif args.cmd == "check":
            miss = missing()
            if miss:
                print(
                    f"controlplane: {bin_dir()} lacks {', '.join(miss)}; run `make controlplane`",
                    file=sys.stderr,
                )
                return 1
            print(bin_dir())
        elif args.cmd == "versions":
            print(json.dumps(versions(), indent=2))
        elif args.cmd == "pin":
            pin(args.version)
    except PinError as e:
        print(f"controlplane: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(
            f"controlplane: command failed ({e.returncode}): {' '.join(map(str, e.cmd))}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
