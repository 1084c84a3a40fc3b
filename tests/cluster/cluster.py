#!/usr/bin/env python3
"""A real one-node Kubernetes cluster on this machine, started and torn down by the tests.

The way upstream's ``hack/local-up-cluster.sh`` runs one: etcd, kube-apiserver,
kube-controller-manager (all default controllers), kube-scheduler, containerd (its CRI plugin) with
runc and the CNI bridge, kubelet, kube-proxy (iptables) and CoreDNS, all as host processes. The
binaries come from ``make controlplane`` / ``make cluster`` (tests/controlplane/build.py and
tests/cluster/build.py); the images (pause and the project's) are imported from OCI archives, so
nothing is pulled from a registry.

Host state. A node uses host-global things: iptables chains (ip and ip6), network namespaces
``/run/netns/cni-*``, the bridge ``ktbr0``, ``kubepods`` cgroups, ``/var/log/containers``, a few
sysctls, DNS on port 53 of the node address. So only one cluster runs at a time on a machine (a
lock in ``/run/kubetrade-cluster``) and :func:`teardown` removes everything a start created, in
order: node agents, every container (``ctr tasks kill``), containerd, the control plane, mounts,
netns, bridge, ``kube-proxy --cleanup``, CNI and kubelet iptables rules, files, cgroups, sysctls.
What existed before the start (chains, netns, directories, sysctl values) is recorded first and
left alone.

A reaper process (``cluster.py reap``) is started before anything else. It holds the lock and
waits for EOF on a pipe whose write end only the test process has: when the tests end, fail, are
interrupted or the test process is SIGKILLed, the reaper tears the cluster down. If the reaper
itself is killed too, the next start finds the state file and tears that down first.

Addresses: the API server, kubelet and CoreDNS listen on this machine's own address (the one on its
default-route interface), the rest on 127.0.0.1; pods live on 10.244.0.0/24 behind the bridge,
Services on 10.0.0.0/24 behind kube-proxy. Nothing is routed off the machine that the machine
would not route anyway (pods reach the outside through the node's masquerade, as in any cluster).

CLI (stdlib only, root)::

    python3 tests/cluster/cluster.py down      # tear down a cluster left behind (state file)
    python3 tests/cluster/cluster.py status    # is one running? (state file, lock)
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import errno
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_DIR = Path(os.environ.get("KUBETRADE_CLUSTER_STATE_DIR", "/run/kubetrade-cluster"))
LOCK_FILE = STATE_DIR / "lock"
STATE_FILE = STATE_DIR / "state.json"

NODE_NAME = "kubetrade-node"
BRIDGE = "ktbr0"
CNI_NETWORK = "kubetrade-pods"
POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"

BENIGN_ENV = {"BENTOML_DO_NOT_TRACK": "true", "ORT_DISABLE_TELEMETRY": "1"}

# Host paths that a node writes outside its own folder. Recorded before a start; whatever did not
# exist then is removed by teardown.
HOST_PATHS = (
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
    "/run/netns",
    "/etc/cni",
    "/opt/cni",
)
# Sysctls kubelet, kube-proxy or the start change; restored to their recorded values.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)
CHAIN_PREFIXES = ("KUBE-", "CNI-")
IPT_TABLES = ("filter", "nat", "mangle", "raw")
CGROUP_ROOT = Path("/sys/fs/cgroup")

# Stop order: node agents first (pods keep running), then containers, then the control plane.
NODE_AGENTS = ("coredns", "kube-proxy", "kubelet")


def _now() -> float:
    return time.monotonic()


# --------------------------------------------------------------------------- small helpers


def node_ip() -> str:
    """This machine's own address: the first IPv4 address of its default-route interface."""
    override = os.environ.get("KUBETRADE_CLUSTER_NODE_IP")
    if override:
        return override
    dev = None
    with open("/proc/net/route") as fh:
        for line in fh.readlines()[1:]:
            parts = line.split()
            if len(parts) > 3 and parts[1] == "00000000" and int(parts[3], 16) & 2:
                dev = parts[0]
                break
    if dev is None:
        raise RuntimeError("no default route: cannot pick the node address")
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", dev],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    if not m:
        raise RuntimeError(f"no IPv4 address on {dev}")
    return m.group(1)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _starttime(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, starttime: int | None) -> bool:
    st = _starttime(pid)
    if st is None:
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    if "\nState:\tZ" in status:
        return False
    return starttime is None or st == starttime


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _run(
    cmd: list[str], timeout: float = 30, check: bool = False
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env={**os.environ, **BENIGN_ENV},
        )
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, 124, "", f"timeout after {timeout}s: {e}")
    except FileNotFoundError as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))


def _read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys", name).write_text(value + "\n")


def _iptables_chains(binary: str) -> dict[str, list[str]]:
    """Chains per table, as iptables-save lists them."""
    out: dict[str, list[str]] = {}
    for table in IPT_TABLES:
        r = _run([f"{binary}-save", "-t", table], timeout=20)
        out[table] = re.findall(r"^:(\S+)", r.stdout, re.M) if r.returncode == 0 else []
    return out


def _nft_tables() -> list[str]:
    """The ip/ip6 netfilter tables (iptables-nft creates one per table on first use)."""
    r = _run(["nft", "list", "tables"], timeout=20)
    return sorted(
        line.removeprefix("table ").strip()
        for line in r.stdout.splitlines()
        if line.startswith(("table ip ", "table ip6 "))
    )


def _netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except OSError:
        return []


def snapshot_host() -> dict[str, Any]:
    """What exists before a start, so teardown removes only what the start added."""
    return {
        "paths": {p: os.path.lexists(p) for p in HOST_PATHS},
        "sysctls": {s: _read_sysctl(s) for s in SYSCTLS},
        "iptables": {b: _iptables_chains(b) for b in ("iptables", "ip6tables")},
        "nft_tables": _nft_tables(),
        "netns": _netns(),
        "links": sorted(os.listdir("/sys/class/net")),
        "cgroups": sorted(str(p) for p in CGROUP_ROOT.glob("*/kubepods")),
    }


# --------------------------------------------------------------------------- host lock


class LockTimeoutError(RuntimeError):
    pass


def acquire_lock(timeout: float, say: Callable[[str], None] = print) -> int:
    """Host-wide: only one cluster at a time. Returns the open fd holding the lock."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = _now() + timeout
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if _now() > deadline:
                os.close(fd)
                raise LockTimeoutError(
                    f"another one-node cluster holds {LOCK_FILE} (pid {_lock_owner()}); "
                    f"waited {timeout:.0f}s"
                ) from None
            if not told:
                say(f"cluster: another cluster holds {LOCK_FILE}; waiting up to {timeout:.0f}s")
                told = True
            time.sleep(1)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _lock_owner() -> str:
    try:
        return LOCK_FILE.read_text().strip() or "?"
    except OSError:
        return "?"


# --------------------------------------------------------------------------- PKI


def make_pki(d: Path, ip: str) -> None:
    """CA, serving and client certificates, service-account keys, and a kubeconfig per client."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.UTC) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=7)

    def write_key(k: Any, name: str) -> None:
        p = d / name
        p.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        p.chmod(0o600)

    def write_crt(c: Any, name: str) -> None:
        (d / name).write_bytes(c.public_bytes(serialization.Encoding.PEM))

    def ca(cn: str) -> tuple[Any, Any]:
        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
        c = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .sign(k, hashes.SHA256())
        )
        return c, k

    def leaf(
        fname: str, cn: str, orgs: tuple[str, ...], issuer: tuple[Any, Any], sans: tuple[str, ...]
    ) -> None:
        icrt, ikey = issuer
        k = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(icrt.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if sans else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            alt: list[x509.GeneralName] = []
            for s in sans:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(s)))
                except ValueError:
                    alt.append(x509.DNSName(s))
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        write_crt(b.sign(ikey, hashes.SHA256()), fname + ".crt")
        write_key(k, fname + ".key")

    root = ca("kubetrade-cluster-ca")
    write_crt(root[0], "ca.crt")
    write_key(root[1], "ca.key")
    front = ca("kubetrade-cluster-front-proxy-ca")
    write_crt(front[0], "front-proxy-ca.crt")
    svc = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")
    leaf(
        "apiserver",
        "kube-apiserver",
        (),
        root,
        (
            "localhost",
            *svc,
            f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
            "127.0.0.1",
            KUBERNETES_SERVICE_IP,
            ip,
        ),
    )
    leaf("kubelet-serving", NODE_NAME, (), root, (NODE_NAME, ip))
    leaf("admin", "kubetrade-cluster-admin", ("system:masters",), root, ())
    leaf("kubelet", f"system:node:{NODE_NAME}", ("system:nodes",), root, ())
    leaf("scheduler", "system:kube-scheduler", (), root, ())
    leaf("proxy", "system:kube-proxy", (), root, ())
    leaf("controller-manager", "system:kube-controller-manager", (), root, ())
    leaf("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",), root, ())
    leaf("front-proxy-client", "front-proxy-client", (), front, ())
    sa = ec.generate_private_key(ec.SECP256R1())
    write_key(sa, "sa.key")
    (d / "sa.pub").write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def kubeconfig(pki: Path, server: str, who: str, namespace: str = "default") -> str:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kubetrade-cluster",
                    "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
                }
            ],
            "users": [
                {
                    "name": who,
                    "user": {
                        "client-certificate-data": b64(f"{who}.crt"),
                        "client-key-data": b64(f"{who}.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "kubetrade-cluster",
                    "context": {
                        "cluster": "kubetrade-cluster",
                        "user": who,
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "kubetrade-cluster",
        },
        indent=1,
    )


# --------------------------------------------------------------------------- configuration


def containerd_config(run: Path, conf: Path, root: Path) -> str:
    return f"""version = 2
root = "{root}"
state = "{run}/containerd/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "{STATE_DIR}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{run}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  disable_apparmor = true
  enable_selinux = false
  # No CAP_SYS_RESOURCE in this VM: runc cannot give the pause container oom_score_adj -998
  # ("can't get final child's PID from pipe" for every sandbox) unless it is clamped.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{conf}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{run}/runc"
"""


def cni_config(run: Path) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(run / "cni-ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=1,
    )


def kubelet_config(run: Path, pki: Path, ip: str, port: int, healthz: int) -> str:
    return json.dumps(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this host has cgroup v1; v1.37 refuses it otherwise
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{STATE_DIR}/containerd.sock",
            "podLogsDir": str(run / "pod-logs"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "tlsCertFile": str(pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [ip],
            "readOnlyPort": 0,
            "address": ip,
            "port": port,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            "hairpinMode": "hairpin-veth",
            "serializeImagePulls": False,
            # Images are imported, never pulled: garbage-collecting one would break the tier.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "resolvConf": "/etc/resolv.conf",
            "protectKernelDefaults": False,
            "makeIPTablesUtilChains": True,
            "shutdownGracePeriod": "0s",
            "staticPodPath": "",
            "syncFrequency": "10s",
            "nodeStatusReportFrequency": "10s",
        },
        indent=1,
    )


def proxy_config(pki_dir: Path, ip: str, healthz: int, metrics: int) -> str:
    return json.dumps(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(pki_dir / "proxy.kubeconfig")},
            "mode": "iptables",
            "clusterCIDR": CLUSTER_CIDR,
            "hostnameOverride": NODE_NAME,
            "bindAddress": ip,
            "healthzBindAddress": f"127.0.0.1:{healthz}",
            "metricsBindAddress": f"127.0.0.1:{metrics}",
            "nodePortAddresses": [f"{ip}/32"],
            # Leave the host's conntrack sysctls alone (table size, TCP timeouts): 0 = do not set.
            "conntrack": {
                "maxPerCore": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            # no NodePorts on 127.0.0.1, so kube-proxy need not set route_localnet on the host
            "iptables": {"localhostNodePorts": False},
        },
        indent=1,
    )


def corefile(ip: str, pki_dir: Path, health: int, ready: int) -> str:
    return f""".:53 {{
    bind {ip}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {pki_dir}/admin.kubeconfig kubetrade-cluster
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
}}
"""


# --------------------------------------------------------------------------- the cluster


def archive_ref(archive: Path) -> tuple[str, str]:
    """(image name, manifest digest) of a one-image OCI archive."""
    import tarfile

    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise StartError(f"{archive}: no index.json")
        index = json.load(member)
    m = index["manifests"][0]
    return m["annotations"]["org.opencontainers.image.ref.name"], m["digest"]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    starttime: int | None

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        rc = self.popen.poll()
        if rc is not None:
            raise RuntimeError(f"{self.name} exited with {rc}; log {self.log}:\n{self.tail()}")


class StartError(RuntimeError):
    pass


@dataclass
class Cluster:
    """A running one-node cluster. Start with :meth:`start`; :func:`teardown` removes it."""

    controlplane_bin: Path
    node_bin: Path
    workdir: Path
    archives: list[Path]
    state: dict[str, Any] = field(default_factory=dict)
    processes: list[Proc] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    node_ip: str = ""
    server: str = ""
    containerd_root: Path = Path()
    image: str = ""
    image_info: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    # --- paths -------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if self.containerd_root == Path():
            self.containerd_root = self.run / "containerd" / "root"

    @property
    def run(self) -> Path:
        """Runtime state (etcd, kubelet, containerd state, pod logs): short and fixed, since
        kubelet and containerd put unix sockets in it (paths are limited to ~104 bytes) and
        only one cluster runs at a time. Removed by teardown; logs and configs stay in workdir."""
        return STATE_DIR / "run"

    @property
    def conf(self) -> Path:
        return self.workdir / "conf"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def containerd_socket(self) -> Path:
        return STATE_DIR / "containerd.sock"

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG for this cluster (for subprocesses such as helm)."""
        return {
            **os.environ,
            **BENIGN_ENV,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(self.workdir / "kubectl-cache"),
        }

    # --- clients -----------------------------------------------------------------------
    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        namespace: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """The pinned kubectl against this cluster; check=True raises with kubectl's stderr."""
        argv = [str(self.controlplane_bin / "kubectl"), f"--kubeconfig={self.kubeconfig}"]
        if namespace:
            argv.append(f"--namespace={namespace}")
        argv += list(args)
        r = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stderr}{r.stdout}"
            )
        return r

    def api_client(self) -> Any:
        from kubernetes import config

        new_client: Any = config.new_client_from_config
        return new_client(config_file=str(self.kubeconfig))

    def ctr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _run(
            ["ctr", "-a", str(self.containerd_socket), "-n", "k8s.io", *args], timeout=timeout
        )

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def api_get(self, path: str, timeout: float = 5) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(
                self.server + path, context=self._ssl(), timeout=timeout
            ) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None

    # --- processes ---------------------------------------------------------------------
    def _save_state(self) -> None:
        self.state["processes"] = [
            {"name": p.name, "pid": p.popen.pid, "starttime": p.starttime} for p in self.processes
        ]
        _write_json(STATE_FILE, self.state)

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as fh:
            p = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C reaches the test process, which tears down in order.
                start_new_session=True,
                close_fds=True,
                env={**os.environ, **BENIGN_ENV},
                cwd=self.workdir,
            )
        proc = Proc(name, p, log, _starttime(p.pid))
        self.processes.append(proc)
        self._save_state()
        return proc

    def _wait(
        self, what: str, proc: Proc | None, probe: Callable[[], bool], timeout: float
    ) -> None:
        t0 = _now()
        deadline = t0 + timeout
        last: BaseException | None = None
        while _now() < deadline:
            if proc is not None:
                proc.check_alive()
            try:
                if probe():
                    self.timings[f"{what} ready"] = round(_now() - self._t0, 2)
                    return
            except (OSError, urllib.error.URLError, ValueError, ssl.SSLError) as e:
                last = e
            time.sleep(0.2)
        tail = f"; log {proc.log}:\n{proc.tail()}" if proc else ""
        raise StartError(f"{what} not ready after {timeout:.0f}s (last error: {last!r}){tail}")

    @staticmethod
    def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError:
            return False

    # --- start ---------------------------------------------------------------------------
    def start(self, timeout: float = 180) -> None:
        self._t0 = _now()
        for d in (self.run, self.conf / "cni", self.pki, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        ip = self.node_ip = node_ip()
        self.state.update(
            {
                "workdir": str(self.workdir),
                "run": str(self.run),
                "node_bin": str(self.node_bin),
                "containerd_socket": str(self.containerd_socket),
                "containerd_root": str(self.containerd_root),
                "node_ip": ip,
            }
        )
        _write_sysctl("net/ipv4/ip_forward", "1")
        make_pki(self.pki, ip)
        self.timings["pki"] = round(_now() - self._t0, 2)
        cp, nb, pki = self.controlplane_bin, self.node_bin, self.pki

        # containerd first, in parallel with the control plane: importing images takes longest
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        (self.conf / "containerd.toml").write_text(
            containerd_config(self.run, self.conf, self.containerd_root)
        )
        (self.conf / "cni" / "10-kubetrade.conflist").write_text(cni_config(self.run))
        containerd = self._spawn(
            "containerd", ["containerd", "--config", str(self.conf / "containerd.toml")]
        )
        import_error: list[BaseException] = []

        def import_images() -> None:
            try:
                self._wait(
                    "containerd",
                    containerd,
                    lambda: self.ctr("version", timeout=5).returncode == 0,
                    timeout,
                )
                self._prepare_images(timeout)
            except BaseException as e:
                import_error.append(e)

        importer = threading.Thread(target=import_images, name="image-import", daemon=True)
        importer.start()

        # etcd
        ec, ep = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{ec}"
        etcd = self._spawn(
            "etcd",
            [
                str(cp / "etcd"),
                "--name=default",
                f"--data-dir={self.run / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{ep}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ep}",
                f"--initial-cluster=default=http://127.0.0.1:{ep}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", etcd, lambda: self._http_ok(f"{etcd_url}/health"), timeout)

        # kube-apiserver on the node address (pods reach it through the kubernetes Service)
        port = free_port(ip)
        self.server = f"https://{ip}:{port}"
        self.state["server"] = self.server
        for who in ("admin", "kubelet", "scheduler", "proxy", "controller-manager"):
            p = pki / f"{who}.kubeconfig"
            p.write_text(kubeconfig(pki, self.server, who))
            p.chmod(0o600)
        shutil.copy2(pki / "admin.kubeconfig", self.kubeconfig)
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(cp / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={ip}",
                f"--advertise-address={ip}",
                f"--secure-port={port}",
                f"--cert-dir={self.run / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        ctx = self._ssl()
        self._wait(
            "kube-apiserver",
            apiserver,
            lambda: self._http_ok(f"{self.server}/readyz", ctx),
            timeout,
        )

        kport, sport = free_port(), free_port()
        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(cp / "kube-controller-manager"),
                f"--kubeconfig={pki / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={pki / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={pki / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kport}",
                f"--cert-dir={self.run / 'kcm-certs'}",
                "--controllers=*",
                "--leader-elect=false",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                "--use-service-account-credentials=true",
                f"--cluster-name={NODE_NAME}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--v=1",
            ],
        )
        scheduler = self._spawn(
            "kube-scheduler",
            [
                str(nb / "kube-scheduler"),
                f"--kubeconfig={pki / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={pki / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={pki / 'scheduler.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sport}",
                "--leader-elect=false",
                "--v=1",
            ],
        )

        # kubelet as soon as the runtime answers and the images are in
        importer.join(timeout)
        if importer.is_alive():
            raise StartError(f"image import not done after {timeout:.0f}s")
        if import_error:
            raise import_error[0]
        kubelet_port, kubelet_healthz = free_port(ip), free_port()
        (self.conf / "kubelet.json").write_text(
            kubelet_config(self.run, pki, ip, kubelet_port, kubelet_healthz)
        )
        kubelet = self._spawn(
            "kubelet",
            [
                str(nb / "kubelet"),
                f"--config={self.conf / 'kubelet.json'}",
                f"--kubeconfig={pki / 'kubelet.kubeconfig'}",
                f"--root-dir={self.run / 'kubelet'}",
                f"--cert-dir={self.run / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={ip}",
                "--v=1",
            ],
        )
        proxy_healthz, proxy_metrics = free_port(), free_port()
        (self.conf / "kube-proxy.json").write_text(
            proxy_config(pki, ip, proxy_healthz, proxy_metrics)
        )
        proxy = self._spawn(
            "kube-proxy",
            [str(nb / "kube-proxy"), f"--config={self.conf / 'kube-proxy.json'}", "--v=1"],
        )
        dns_health, dns_ready = free_port(), free_port()
        (self.conf / "Corefile").write_text(corefile(ip, pki, dns_health, dns_ready))
        coredns = self._spawn(
            "coredns", [str(nb / "coredns"), "-conf", str(self.conf / "Corefile")]
        )

        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # their self-signed serving certs, loopback only
        self._wait(
            "kube-controller-manager",
            kcm,
            lambda: self._http_ok(f"https://127.0.0.1:{kport}/healthz", insecure),
            timeout,
        )
        self._wait(
            "kube-scheduler",
            scheduler,
            lambda: self._http_ok(f"https://127.0.0.1:{sport}/healthz", insecure),
            timeout,
        )
        self._wait(
            "kubelet",
            kubelet,
            lambda: self._http_ok(f"http://127.0.0.1:{kubelet_healthz}/healthz"),
            timeout,
        )
        self._wait("node Ready", kubelet, self._node_ready, timeout)
        self._wait(
            "kube-proxy",
            proxy,
            lambda: self._http_ok(f"http://127.0.0.1:{proxy_healthz}/healthz"),
            timeout,
        )
        self._wait(
            "coredns",
            coredns,
            lambda: self._http_ok(f"http://127.0.0.1:{dns_ready}/ready"),
            timeout,
        )
        self._wait(
            "default ServiceAccount",
            kcm,
            lambda: self.api_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            timeout,
        )
        self.timings["start"] = round(_now() - self._t0, 2)

    def _prepare_images(self, timeout: float) -> None:
        """Containers a dead run left in the (persistent) store go; images are imported once.

        containerd's root (content and unpacked snapshots) outlives a cluster, so an image
        already imported with the same manifest digest is not imported again; any other image is
        removed (its content is garbage-collected).
        """
        for task in self.ctr("tasks", "ls", "-q", timeout=15).stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, timeout=15)
            self.ctr("tasks", "rm", "-f", task, timeout=15)
        for cid in self.ctr("containers", "ls", "-q", timeout=15).stdout.split():
            self.ctr("containers", "rm", cid, timeout=15)
        have = {}
        for line in self.ctr("images", "ls", timeout=30).stdout.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 3:
                have[cols[0]] = cols[2]
        wanted: dict[str, str] = {}
        for arch in self.archives:
            ref, digest = archive_ref(arch)
            wanted[ref] = digest
            if have.get(ref) == digest:
                self.timings[f"import {arch.name}"] = 0.0
                continue
            t = _now()
            r = self.ctr("images", "import", str(arch), timeout=timeout)
            if r.returncode != 0:
                raise StartError(f"ctr images import {arch} failed: {r.stderr}{r.stdout}")
            self.timings[f"import {arch.name}"] = round(_now() - t, 2)
        stale = [ref for ref, digest in have.items() if digest not in wanted.values()]
        if stale:
            self.ctr("images", "rm", *stale, timeout=60)

    def _node_ready(self) -> bool:
        code, node = self.api_get(f"/api/v1/nodes/{NODE_NAME}")
        if code != 200 or not node:
            return False
        conds = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


# --------------------------------------------------------------------------- teardown


def _stop_pids(entries: list[dict[str, Any]], grace: float, say: Callable[[str], None]) -> None:
    """SIGTERM all of them at once, wait up to `grace`, then SIGKILL what is left."""
    live = [e for e in entries if _alive(e["pid"], e.get("starttime"))]
    for e in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(e["pid"], signal.SIGTERM)
    deadline = _now() + grace
    while live and _now() < deadline:
        live = [e for e in live if _alive(e["pid"], e.get("starttime"))]
        if live:
            time.sleep(0.1)
        for e in live:  # reap our own children so they do not linger as zombies
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(e["pid"], os.WNOHANG)
    for e in live:
        say(f"teardown: {e['name']} ({e['pid']}) ignored SIGTERM for {grace:.0f}s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(e["pid"], signal.SIGKILL)
    deadline = _now() + 10
    while _now() < deadline and any(_alive(e["pid"], e.get("starttime")) for e in live):
        for e in live:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(e["pid"], os.WNOHANG)
        time.sleep(0.05)


def _pids_in_cgroups() -> set[int]:
    pids: set[int] = set()
    for top in CGROUP_ROOT.glob("*/kubepods"):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def _shim_pids(socket_path: str) -> set[int]:
    """containerd-shim processes of this cluster's containerd (they outlive it)."""
    out: set[int] = set()
    if not socket_path:
        return out
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and b"containerd-shim" in cmd[0] and socket_path.encode() in cmd:
            out.add(int(d.name))
    return out


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = _now() + 10
    while _now() < deadline and any(_alive(p, None) for p in pids):
        time.sleep(0.05)


def _mounts_under(prefixes: tuple[str, ...]) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4].replace("\\040", " ")
            if any(mp == p or mp.startswith(p.rstrip("/") + "/") for p in prefixes):
                out.append(mp)
    return out


def _iptables_cleanup(binary: str, before: dict[str, list[str]]) -> None:
    """Remove KUBE-*/CNI-* chains this cluster added (and every rule that jumps to them)."""
    for table in IPT_TABLES:
        r = _run([f"{binary}-save", "-t", table], timeout=20)
        if r.returncode != 0:
            continue
        existed = set(before.get(table, []))
        ours = {
            c
            for c in re.findall(r"^:(\S+)", r.stdout, re.M)
            if c.startswith(CHAIN_PREFIXES) and c not in existed
        }
        if not ours:
            continue
        # rules in chains we keep that jump to ours
        for line in r.stdout.splitlines():
            m = re.match(r"^-A (\S+) (.*)$", line)
            if not m or m.group(1) in ours:
                continue
            jump = re.search(r"-[jg] (\S+)", m.group(2))
            if jump and jump.group(1) in ours:
                _run([binary, "-w", "5", "-t", table, "-D", m.group(1), *_split(m.group(2))])
        for c in ours:
            _run([binary, "-w", "5", "-t", table, "-F", c])
        for c in ours:
            _run([binary, "-w", "5", "-t", table, "-X", c])


def _split(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


def _rmdir_tree(top: Path) -> None:
    if not top.is_dir():
        return
    for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


def leftovers(state: dict[str, Any]) -> list[str]:
    """What of this cluster is still on the host (empty after a complete teardown)."""
    snap = state.get("snapshot", {})
    out = []
    for e in state.get("processes", []):
        if _alive(e["pid"], e.get("starttime")):
            out.append(f"process {e['name']} ({e['pid']})")
    sock = state.get("containerd_socket")
    if sock and (os.path.exists(sock) or os.path.exists(sock + ".ttrpc")):
        out.append(f"socket {sock}")
    if sock and _shim_pids(sock):
        out.append(f"containerd shims {sorted(_shim_pids(sock))}")
    if _pids_in_cgroups():
        out.append(f"processes in kubepods cgroups {sorted(_pids_in_cgroups())}")
    run = state.get("run")
    roots = tuple(p for p in (run, state.get("containerd_root", "")) if p)
    if roots and _mounts_under(roots):
        out.append(f"mounts {_mounts_under(roots)}")
    new_ns = [n for n in _netns() if n not in snap.get("netns", [])]
    if new_ns:
        out.append(f"netns {new_ns}")
    if BRIDGE not in snap.get("links", []) and Path(f"/sys/class/net/{BRIDGE}").exists():
        out.append(f"link {BRIDGE}")
    for binary, before in snap.get("iptables", {}).items():
        now = _iptables_chains(binary)
        for table, chains in now.items():
            new = [
                c for c in chains if c.startswith(CHAIN_PREFIXES) and c not in before.get(table, [])
            ]
            if new:
                out.append(f"{binary} {table} chains {new}")
    if "nft_tables" in snap:
        new_tables = [t for t in _nft_tables() if t not in snap["nft_tables"]]
        if new_tables:
            out.append(f"netfilter tables {new_tables}")
    cg = [str(p) for p in CGROUP_ROOT.glob("*/kubepods") if str(p) not in snap.get("cgroups", [])]
    if cg:
        out.append(f"cgroups {cg}")
    for p, existed in snap.get("paths", {}).items():
        if not existed and os.path.lexists(p):
            out.append(f"path {p}")
    for name, value in snap.get("sysctls", {}).items():
        if value is not None and _read_sysctl(name) != value:
            out.append(f"sysctl {name}={_read_sysctl(name)} (was {value})")
    return out


def teardown(state: dict[str, Any], say: Callable[[str], None] = print) -> dict[str, Any]:
    """Remove everything the start recorded in `state` created. Idempotent; never raises."""
    t0 = _now()
    timings: dict[str, float] = {}
    snap = state.get("snapshot", {})
    procs = {e["name"]: e for e in state.get("processes", [])}
    run = state.get("run", "")
    sock = state.get("containerd_socket", "")

    def mark(what: str) -> None:
        timings[what] = round(_now() - t0, 2)

    def step(what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # keep going: every later step still removes its part
            say(f"teardown: {what}: {e!r}")
        mark(what)

    # 1. node agents: pods keep running, nothing restarts them any more
    step(
        "node agents",
        lambda: _stop_pids([procs[n] for n in NODE_AGENTS if n in procs], 10, say),
    )

    # 2. every container: SIGKILL through containerd (fast; no CNI DEL, host state goes below)
    def containers() -> None:
        c = procs.get("containerd")
        if not c or not _alive(c["pid"], c.get("starttime")) or not os.path.exists(sock):
            return
        base = ["ctr", "-a", sock, "-n", "k8s.io"]
        tasks = _run([*base, "tasks", "ls", "-q"], timeout=15).stdout.split()
        for t in tasks:
            _run([*base, "tasks", "kill", "-s", "SIGKILL", t], timeout=15)
        deadline = _now() + 10
        while _now() < deadline:
            out = _run([*base, "tasks", "ls"], timeout=15).stdout
            if "RUNNING" not in out:
                break
            time.sleep(0.2)
        for t in tasks:
            _run([*base, "tasks", "rm", "-f", t], timeout=15)
        for cid in _run([*base, "containers", "ls", "-q"], timeout=15).stdout.split():
            _run([*base, "containers", "rm", cid], timeout=15)

    step("containers", containers)
    step("stragglers", lambda: _kill_all(_pids_in_cgroups() | _shim_pids(sock)))

    # 3. containerd and the control plane
    step(
        "containerd", lambda: _stop_pids([procs[n] for n in ("containerd",) if n in procs], 9, say)
    )

    def control_plane() -> None:
        # scheduler and controller-manager together, then the apiserver, then etcd
        for group in (
            ("kube-scheduler", "kube-controller-manager"),
            ("kube-apiserver",),
            ("etcd",),
        ):
            _stop_pids([procs[n] for n in group if n in procs], 10, say)

    step("control plane", control_plane)
    step("shims", lambda: _kill_all(_shim_pids(sock)))

    # 4. mounts, netns, bridge
    roots = tuple(p for p in (run, state.get("containerd_root", "")) if p)

    def mounts() -> None:
        for mp in sorted(_mounts_under(roots), key=len, reverse=True):
            r = _run(["umount", mp], timeout=15)
            if r.returncode != 0:
                _run(["umount", "-l", mp], timeout=15)

    step("mounts", mounts)

    def netns() -> None:
        for ns in _netns():
            if ns.startswith("cni-") and ns not in snap.get("netns", []):
                r = _run(["ip", "netns", "del", ns], timeout=15)
                if r.returncode != 0:
                    say(f"teardown: ip netns del {ns}: {r.stderr.strip()}")

    step("netns", netns)

    def bridge() -> None:
        if BRIDGE not in snap.get("links", []) and Path(f"/sys/class/net/{BRIDGE}").exists():
            _run(["ip", "link", "del", BRIDGE], timeout=15)

    step("bridge", bridge)

    # 5. iptables: kube-proxy's own cleanup, then what CNI and kubelet added
    def iptables() -> None:
        kp = Path(state.get("node_bin", "")) / "kube-proxy"
        if kp.is_file():
            _run([str(kp), "--cleanup", "--v=0"], timeout=60)
        for binary, before in snap.get("iptables", {}).items():
            _iptables_cleanup(binary, before)
        # iptables-nft leaves the (now empty) tables it created: drop those that were not there
        if "nft_tables" in snap:
            for table in _nft_tables():
                if table in snap["nft_tables"]:
                    continue
                family, name = table.split()
                binary = "iptables" if family == "ip" else "ip6tables"
                rules = _run([f"{binary}-save", "-t", name], timeout=20).stdout
                if "\n-A " not in rules:
                    _run(["nft", "delete", "table", family, name], timeout=20)

    step("iptables", iptables)

    # 6. files outside the run folder, then cgroups, then sysctls
    def files() -> None:
        if sock:
            for s in (sock, sock + ".ttrpc"):
                with contextlib.suppress(OSError):
                    os.unlink(s)
        logs = Path("/var/log/containers")
        if logs.is_dir() and run:
            for link in logs.iterdir():
                with contextlib.suppress(OSError):
                    if link.is_symlink() and os.readlink(link).startswith(run):
                        link.unlink()
        for p, existed in snap.get("paths", {}).items():
            if existed or not os.path.lexists(p):
                continue
            if _mounts_under((p,)):
                say(f"teardown: {p} still has mounts {_mounts_under((p,))}; left in place")
                continue
            shutil.rmtree(p, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(p)

    step("files", files)

    def cgroups() -> None:
        for top in CGROUP_ROOT.glob("*/kubepods"):
            if str(top) not in snap.get("cgroups", []):
                _rmdir_tree(top)

    step("cgroups", cgroups)

    def sysctls() -> None:
        for name, value in snap.get("sysctls", {}).items():
            if value is not None and _read_sysctl(name) != value:
                _write_sysctl(name, value)

    step("sysctls", sysctls)

    # 7. the run folder's bulk (container root filesystems, etcd); logs and configs stay
    def run_dir() -> None:
        if run and os.path.isdir(run) and not _mounts_under((run,)):
            shutil.rmtree(run, ignore_errors=True)

    step("run folder", run_dir)
    left = leftovers(state)
    report = {"seconds": round(_now() - t0, 2), "steps": timings, "leftovers": left}
    say(f"teardown: {report['seconds']:.1f}s" + (f"; LEFT: {left}" if left else ", host clean"))
    return report


def teardown_stale(say: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Tear down a cluster whose test process and reaper both died (needs the lock held)."""
    try:
        state = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None
    say(f"cluster: a previous cluster ({state.get('workdir')}) was left behind; tearing it down")
    report = teardown(state, say)
    if not report["leftovers"]:
        STATE_FILE.unlink(missing_ok=True)
    return report


# --------------------------------------------------------------------------- reaper


def reap(fd: int, report_path: Path, log_path: Path) -> int:
    """Wait for EOF on `fd` (the test process ended, however), then tear down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the test process
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        try:
            if not os.read(fd, 4096):
                break
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            break
    with open(log_path, "a") as log:

        def say(msg: str) -> None:
            log.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
            log.flush()

        try:
            state = json.loads(STATE_FILE.read_text())
        except (OSError, ValueError):
            _write_json(report_path, {"seconds": 0, "steps": {}, "leftovers": []})
            return 0
        report = teardown(state, say)
        if not report["leftovers"]:
            STATE_FILE.unlink(missing_ok=True)
        _write_json(report_path, report)
    return 0


@dataclass
class Reaper:
    """The reaper process and the pipe whose EOF starts the teardown."""

    popen: subprocess.Popen[bytes]
    write_fd: int
    report: Path
    log: Path

    def finish(self, timeout: float = 180) -> dict[str, Any]:
        """Trigger teardown now and wait for its report."""
        with contextlib.suppress(OSError):
            os.close(self.write_fd)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return {"leftovers": [f"reaper still running after {timeout:.0f}s (log {self.log})"]}
        try:
            result: dict[str, Any] = json.loads(self.report.read_text())
            return result
        except (OSError, ValueError):
            return {"leftovers": [f"reaper exited {self.popen.returncode} without a report"]}


def start_reaper(workdir: Path, lock_fd: int, python: str = sys.executable) -> Reaper:
    r, w = os.pipe()
    report = workdir / "teardown.json"
    log = workdir / "teardown.log"
    report.unlink(missing_ok=True)
    with open(log, "ab") as fh:
        p = subprocess.Popen(
            [
                python,
                str(Path(__file__).resolve()),
                "reap",
                "--fd",
                str(r),
                "--report",
                str(report),
                "--log",
                str(log),
            ],
            pass_fds=(r, lock_fd),  # the lock stays held until the reaper is done too
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **BENIGN_ENV},
        )
    os.close(r)
    return Reaper(p, w, report, log)


@contextlib.contextmanager
def one_node_cluster(
    controlplane_bin: Path,
    node_bin: Path,
    workdir: Path,
    archives: list[Path],
    containerd_root: Path | None = None,
    lock_timeout: float = 900,
    start_timeout: float = 180,
    say: Callable[[str], None] = print,
) -> Iterator[Cluster]:
    """Lock, sweep what a crashed run left, start the reaper, start the cluster; tear down after."""
    if os.geteuid() != 0:
        raise PermissionError("a one-node cluster needs root (containerd, iptables, cgroups)")
    workdir.mkdir(parents=True, exist_ok=True)
    lock_fd = acquire_lock(lock_timeout, say)
    try:
        teardown_stale(say)
        state: dict[str, Any] = {
            "owner_pid": os.getpid(),
            "workdir": str(workdir),
            "snapshot": snapshot_host(),
        }
        _write_json(STATE_FILE, state)
        reaper = start_reaper(workdir, lock_fd)
        cluster = Cluster(controlplane_bin, node_bin, workdir, archives, state=state)
        if containerd_root is not None:
            cluster.containerd_root = containerd_root
        report: dict[str, Any] = {}
        try:
            cluster.start(start_timeout)
            yield cluster
        finally:
            report = reaper.finish()
            cluster.timings["teardown"] = float(report.get("seconds", -1))
            if report.get("leftovers"):
                raise RuntimeError(
                    f"cluster teardown left host state behind: {report['leftovers']} "
                    f"(log {reaper.log}); `python3 tests/cluster/cluster.py down` retries"
                )
    finally:
        os.close(lock_fd)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("reap", help="(internal) wait for EOF on --fd, then tear down")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    sub.add_parser("down", help="tear down a cluster left behind")
    sub.add_parser("status", help="say whether a cluster is running")
    args = ap.parse_args(argv)
    if args.cmd == "reap":
        return reap(args.fd, args.report, args.log)
    if args.cmd == "status":
        try:
            state = json.loads(STATE_FILE.read_text())
        except (OSError, ValueError):
            print("no cluster state")
            return 1
        print(json.dumps({k: state.get(k) for k in ("owner_pid", "workdir", "server")}, indent=1))
        return 0
    fd = acquire_lock(30)
    try:
        report = teardown_stale()
        if report is None:
            print("nothing to tear down")
        return 1 if report and report["leftovers"] else 0
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
