"""A bot that trades in real pods: the chart installed with Helm on the one-node cluster.

The chart (real Helm, pinned in tests/cluster/helm.py) installs the operator as a pod under its
ServiceAccount, with the development NATS and PostgreSQL from test images built here
(tests/cluster/images.py; no registry is reachable, so the chart's image values point at them).
A replay bot (real BTC/USD hours served from a pod, a model shipped as a model image) trades
exactly as `kubetrade backtest`, survives a force-deleted executor, logs JSON lines, rolls the
right pods on edits, obeys the kill switch and flattens when deleted with onDelete: flatten.
See tests/cluster/README.md.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RELEASE = "kubetrade"
SYSTEM_NS = "kt-system"
BOTS_NS = "kt-bots"
OPERATOR_READY_S = 240
BENCH_OUT_ENV = "KUBETRADE_CLUSTER_BENCH_OUT"  # bench/cluster.py reads the figures from there
DEV_SELECTOR = "app.kubernetes.io/component in (dev-nats,dev-postgresql)"
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"


def _load(name: str, file: str) -> Any:
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, HERE / file)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


_images = _load("_kubetrade_cluster_images", "images.py")
_helm = _load("_kubetrade_cluster_helm", "helm.py")
_cluster_mod = _load("_kubetrade_cluster", "cluster.py")


@dataclass
class Release:
    """The chart as installed: where, with which images, and how long it took."""

    cluster: Any
    helm: Path
    images: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)

    def helm_run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [str(self.helm), *args],
            capture_output=True,
            text=True,
            env={**self.cluster.env, "HELM_CACHE_HOME": str(self.cluster.workdir / "helm")},
            timeout=timeout,
            check=False,
        )
        if r.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{r.stderr}{r.stdout}")
        return r

    def kubectl(
        self, *args: str, ns: str = SYSTEM_NS, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        r: subprocess.CompletedProcess[str] = self.cluster.kubectl(*args, namespace=ns, **kw)
        return r

    def pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        out = self.kubectl("get", "pods", "-l", selector, "-o", "json", ns=ns).stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items


def import_image(cluster: Any, archive: Path) -> float:
    """Import an OCI archive into the node's containerd unless the same digest is there."""
    ref, digest = _cluster_mod.archive_ref(archive)
    have = cluster.ctr("images", "ls", timeout=30).stdout.splitlines()[1:]
    if any(line.split()[:1] == [ref] and digest in line for line in have):
        return 0.0
    t0 = time.monotonic()
    r = cluster.ctr("images", "import", str(archive), timeout=300)
    assert r.returncode == 0, f"ctr images import {archive}: {r.stderr}{r.stdout}"
    return time.monotonic() - t0


def _describe_failure(rel: Release, ns: str) -> str:
    pods = rel.kubectl("get", "pods", "-o", "wide", ns=ns, check=False).stdout
    events = rel.kubectl("get", "events", "--sort-by=.lastTimestamp", ns=ns, check=False).stdout
    return f"pods in {ns}:\n{pods}\nevents:\n{events[-4000:]}"


@pytest.fixture(scope="module")
def release(cluster: Any) -> Iterator[Release]:
    """`helm install` of the chart with dev NATS and PostgreSQL; the operator Ready."""
    with installed_release(cluster) as rel:
        yield rel


@contextlib.contextmanager
def installed_release(cluster: Any) -> Iterator[Release]:
    """The ``release`` fixture: install, yield, record peak memory and figures, uninstall.

    bench/cluster.py uses it outside pytest.
    """
    helm = _helm.build()
    built = _images.build_all()
    rel = Release(cluster, helm, built)
    for img in built.values():
        rel.timings[f"import {img.name}"] = round(import_image(cluster, img.archive), 2)
    cluster.kubectl("create", "namespace", BOTS_NS)
    values = {
        "image.pullPolicy": "Never",  # imported into the node, never pulled
        "bots.image.pullPolicy": "Never",
        "operator.watchNamespaces": "{" + BOTS_NS + "}",
        "operator.logLevel": "INFO",
        "nats.dev.enabled": "true",
        "nats.dev.persistence.enabled": "false",  # no storage provisioner on this node
        "nats.dev.image.repository": built["nats"].repository,
        "nats.dev.image.tag": built["nats"].tag,
        "nats.dev.image.pullPolicy": "Never",
        "database.dev.enabled": "true",
        "database.dev.persistence.enabled": "false",
        "database.dev.image.repository": built["postgresql"].repository,
        "database.dev.image.tag": built["postgresql"].tag,
        "database.dev.image.pullPolicy": "Never",
    }
    args = [f"--set={k}={v}" for k, v in values.items()]
    t0 = time.monotonic()
    try:
        rel.helm_run(
            "install", RELEASE, str(REPO / "charts" / "kubetrade"), "-n", SYSTEM_NS,
            "--create-namespace", "--wait", f"--timeout={OPERATOR_READY_S}s", *args,
        )  # fmt: skip
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_describe_failure(rel, SYSTEM_NS)}") from None
    rel.timings["helm install -> operator ready"] = round(time.monotonic() - t0, 2)
    try:
        yield rel
    finally:
        record_peak_memory(rel, SYSTEM_NS, "app.kubernetes.io/instance=" + RELEASE, "")
        figures = {"timings": rel.timings, "peak_memory": rel.memory}
        cluster.timings["bot-in-pods"] = figures
        out = os.environ.get(BENCH_OUT_ENV)
        if out:
            Path(out).write_text(json.dumps(figures, indent=1) + "\n")
        rel.helm_run("uninstall", RELEASE, "-n", SYSTEM_NS, "--wait", "--timeout=120s")


def peak_memory(pod: dict[str, Any]) -> dict[str, int]:
    """Peak memory (bytes) of each container of a running pod, from its cgroup (v1 or v2)."""
    uid = pod["metadata"]["uid"]
    out: dict[str, int] = {}
    for status in pod.get("status", {}).get("containerStatuses", []):
        cid = status.get("containerID", "").split("://")[-1]
        if not cid:
            continue
        for pattern in (
            f"/sys/fs/cgroup/memory/kubepods*/**/pod{uid}/{cid}/memory.max_usage_in_bytes",
            f"/sys/fs/cgroup/kubepods*/**/pod{uid}/{cid}/memory.peak",
        ):
            found = sorted(Path("/").glob(pattern.lstrip("/")))
            if found:
                out[status["name"]] = int(found[0].read_text())
                break
    return out


def record_peak_memory(release: Release, ns: str, selector: str, prefix: str) -> None:
    """Each container's peak memory next to the memory it requests, into the release's figures."""
    for pod in release.pods(ns, selector):
        requests = {
            c["name"]: c.get("resources", {}).get("requests", {}).get("memory")
            for c in pod["spec"]["containers"]
        }
        for container, peak in peak_memory(pod).items():
            release.memory[f"{prefix}{container}"] = {
                "peak_MiB": round(peak / 2**20, 1),
                "request": requests.get(container),
            }


def test_the_chart_runs_the_operator_and_dev_servers_as_pods(release: Release) -> None:
    rel = release
    (op,) = rel.pods(SYSTEM_NS, OPERATOR_SELECTOR)
    sa = rel.kubectl("get", "serviceaccounts", "-o", "jsonpath={.items[*].metadata.name}").stdout
    assert op["spec"]["serviceAccountName"] in sa.split()
    assert op["spec"]["serviceAccountName"] != "default"
    assert op["spec"]["containers"][0]["image"] == rel.cluster.image
    dev = rel.pods(SYSTEM_NS, DEV_SELECTOR)
    assert len(dev) == 2
    for pod in (op, *dev):
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready.get("Ready") == "True", pod["metadata"]["name"]
    images = {p["spec"]["containers"][0]["image"] for p in dev}
    assert images == {rel.images["nats"].ref, rel.images["postgresql"].ref}
    # the bots' database Secret the dev PostgreSQL created in the watched namespace
    uri = rel.kubectl(
        "get", "secret", "kubetrade-database", "-o", "jsonpath={.data.uri}", ns=BOTS_NS
    ).stdout
    assert base64.b64decode(uri).decode().startswith("postgresql://kubetrade:")
    # the operator's RBAC is the chart's: it may not read Secrets
    can = rel.kubectl(
        "auth", "can-i", "get", "secrets", "-n", BOTS_NS,
        f"--as=system:serviceaccount:{SYSTEM_NS}:{op['spec']['serviceAccountName']}",
        check=False,
    ).stdout.strip()  # fmt: skip
    assert can == "no"


# --------------------------------------------------------------------------- a replay bot

BTC_CSV = Path("/work/shared/data/coinbase_btcusd_1h.csv")
CANDLES = 2000  # the newest hours of the real file; the older ones train the model
PACE = 3600 * 50  # 50 one-hour candles per second: the replay lasts ~40 s
MODEL = "kt-e2e"
QUIET = {"BENTOML_DO_NOT_TRACK": "true", "ORT_DISABLE_TELEMETRY": "1"}


@dataclass
class Replay:
    """What a replay bot needs: the candle file, its URL in the cluster, the model image."""

    csv: Path
    url: str
    sha256: str
    model_home: Path
    model_image: str
    timings: dict[str, float] = field(default_factory=dict)


def _cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "kubetrade", *args],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip
    assert r.returncode == 0, f"kubetrade {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def replay(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Replay:
    """The newest CANDLES hours served from a pod; a model trained on the rest, as an image."""
    return make_replay(release, tmp_path_factory.mktemp("replay"))


def make_replay(release: Release, root: Path, candles: int = CANDLES) -> Replay:
    """The ``replay`` fixture with ``candles`` newest hours (bench/cluster.py uses fewer)."""
    import hashlib
    import os

    if not BTC_CSV.is_file():
        pytest.fail(f"{BTC_CSV} is missing (the shared BTC/USD file)", pytrace=False)
    lines = BTC_CSV.read_text().splitlines()
    head, rows = lines[:2], lines[2:]  # CryptoDataDownload: a banner, the header, newest first
    csv = root / "btc.csv"
    csv.write_text("\n".join(head + rows[:candles]) + "\n")
    train = root / "train.csv"
    train.write_text("\n".join(head + rows[candles:]) + "\n")
    sha = hashlib.sha256(csv.read_bytes()).hexdigest()

    # the model: trained on the host, shipped as a model image (the documented route)
    home = root / "bentoml"
    env = {**os.environ, **QUIET, "BENTOML_HOME": str(home)}
    t0 = time.monotonic()
    _cli("train", "--data", str(train), "--name", MODEL, "--version", "1", "--trees", "60",
         "--promote", env=env)  # fmt: skip
    replay_timings = {"train": round(time.monotonic() - t0, 1)}
    ctx = root / "model-ctx"
    _cli("model", "image", f"{MODEL}:1", "--output", str(ctx), env=env)
    ref = f"localhost/kubetrade-test/{MODEL}:1"
    archive = root / "model.oci.tar"
    replay_timings["model image build"] = round(_images.build_context(ctx, ref, archive), 1)
    replay_timings["model image import"] = round(import_image(release.cluster, archive), 1)
    release.timings.update(replay_timings)

    # the candle file, served over HTTP by the project's image from a ConfigMap
    cm = release.kubectl(
        "create", "configmap", "candles", f"--from-file=btc.csv={csv}", "--dry-run=client",
        "-o", "json", ns=BOTS_NS,
    ).stdout  # fmt: skip
    release.kubectl("apply", "-f", "-", input=cm, ns=BOTS_NS)
    release.kubectl("apply", "-f", "-", input=json.dumps(_candle_server(release.cluster.image)),
                    ns=BOTS_NS)  # fmt: skip
    release.kubectl("rollout", "status", "deployment/candles", "--timeout=180s", ns=BOTS_NS,
                    timeout=200)  # fmt: skip
    return Replay(
        csv=csv, url=f"http://candles.{BOTS_NS}.svc/btc.csv", sha256=sha, model_home=home,
        model_image=ref, timings=replay_timings,
    )  # fmt: skip


def _candle_server(image: str) -> dict[str, Any]:
    labels = {"app": "candles"}
    pod = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "http",
            "image": image,
            "imagePullPolicy": "Never",
            # tini forwards SIGTERM. A test helper, not a kubetrade pod: http.server logs in
            # its own format, so it is left out of the JSON-lines check.
            "command": ["/usr/bin/tini", "--", "python3", "-m", "http.server", "8080",
                        "--directory", "/srv"],
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/btc.csv", "port": 8080},
                               "periodSeconds": 1},
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                          "limits": {"memory": "128Mi"}},
            "securityContext": {"allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "srv", "mountPath": "/srv"},
                             {"name": "tmp", "mountPath": "/tmp"}],
        }],
        "volumes": [{"name": "srv", "configMap": {"name": "candles"}},
                    {"name": "tmp", "emptyDir": {}}],
    }  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "candles"},
             "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                      "template": {"metadata": {"labels": labels}, "spec": pod}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "candles"},
             "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}},
        ],
    }  # fmt: skip


def bot_manifest(name: str, replay: Replay, **overrides: Any) -> dict[str, Any]:
    """A paper bot replaying the served file, loose enough to trade on the small model."""
    spec: dict[str, Any] = {
        "mode": "paper",
        "symbols": ["BTC/USD"],
        "timeframe": "1h",
        "exchange": {"name": "replay", "uri": replay.url, "sha256": replay.sha256,
                     "speed": PACE},
        "model": {"name": MODEL, "version": "1", "image": replay.model_image},
        "strategy": {"longAbove": 0.52, "exitBelow": 0.48},
        "risk": {
            "sizing": {"method": "fixed-fraction", "fractionPct": 20, "maxPositionPct": 25},
            "maxHolding": "24h",
            "breakers": {"maxDailyLossPct": 50, "maxDrawdownPct": 90,
                         "maxConsecutiveLosses": 50},
        },
        **overrides,
    }  # fmt: skip
    return {
        "apiVersion": "kubetrade.io/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": name, "namespace": BOTS_NS},
        "spec": spec,
    }


@contextlib.contextmanager
def port_forward(cluster: Any, ns: str, target: str, port: int) -> Iterator[int]:
    """``kubectl port-forward`` to a local port picked by kubectl; yields that port."""
    proc = subprocess.Popen(
        [str(cluster.controlplane_bin / "kubectl"), f"--kubeconfig={cluster.kubeconfig}",
         "-n", ns, "port-forward", target, f"0:{port}", "--address=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:NNNNN -> 5432"
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            proc.kill()
            raise AssertionError(
                f"port-forward {target}: {line}{proc.stderr.read() if proc.stderr else ''}"
            )
        yield int(m.group(1))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def database(release: Release) -> Iterator[str]:
    """A URL of the dev PostgreSQL reachable from this host (through a port-forward)."""
    raw = release.kubectl(
        "get", "secret", "kubetrade-database", "-o", "jsonpath={.data.uri}", ns=BOTS_NS
    ).stdout
    uri = base64.b64decode(raw).decode()
    with port_forward(release.cluster, SYSTEM_NS, f"svc/{RELEASE}-postgresql", 5432) as port:
        yield re.sub(r"@[^/]+/", f"@127.0.0.1:{port}/", uri)


def _fill_rows(csv_text: str) -> list[list[str]]:
    """fills.csv rows without client_order_id (ids are per process, not per decision)."""
    import csv as csvmod
    import io

    return [row[:8] for row in list(csvmod.reader(io.StringIO(csv_text)))[1:]]


def db_fill_rows(url: str, bot_key: str) -> list[list[str]]:
    """The bot's fills as the executor stored them, in the backtest report's CSV layout."""
    import tempfile

    from kubetrade.report import write_fills_csv
    from kubetrade.store import Store

    with Store.connect(url) as db:
        fills = db.read_fills(bot_key)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fills.csv"
        write_fills_csv(fills, path)
        return _fill_rows(path.read_text())


def backtest_fill_rows(replay: Replay, manifest: dict[str, Any], root: Path) -> list[list[str]]:
    """`kubetrade backtest` of the same manifest on the same file, on this host."""
    import os

    import yaml

    path = root / "bot.yaml"
    path.write_text(yaml.safe_dump(manifest))
    env = {**os.environ, **QUIET, "BENTOML_HOME": str(replay.model_home)}
    _cli("backtest", str(path), "--data", str(replay.csv), "--report-dir", str(root / "bt"),
         env=env)  # fmt: skip
    return _fill_rows((root / "bt" / "fills.csv").read_text())


def get_bot(release: Release, name: str) -> dict[str, Any]:
    out = release.kubectl("get", "tradingbot", name, "-o", "json", ns=BOTS_NS).stdout
    bot: dict[str, Any] = json.loads(out)
    return bot


def wait_for(what: str, probe: Any, timeout: float, interval: float = 1.0) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)  # polling the API and the database, not synchronising threads
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def bot_pods(release: Release, name: str) -> dict[str, dict[str, Any]]:
    """Running pods of a bot by component (feed, inference, executor)."""
    items = release.pods(BOTS_NS, f"app.kubernetes.io/instance={name}")
    out: dict[str, dict[str, Any]] = {}
    for p in items:
        comp = p["metadata"]["labels"].get("app.kubernetes.io/component", "")
        if p["metadata"].get("deletionTimestamp") is None:
            out[comp] = p
    return out


@pytest.fixture(scope="module")
def expected(replay: Replay, tmp_path_factory: pytest.TempPathFactory) -> list[list[str]]:
    """The backtest's fills of the bot manifest (its name does not change them)."""
    rows = backtest_fill_rows(
        replay, bot_manifest("backtest", replay), tmp_path_factory.mktemp("bt")
    )
    assert len(rows) > 5, "the backtest trades too little for the comparison to mean much"
    return rows


def db_counts(url: str, bot_key: str) -> Any:
    from kubetrade.store import Store

    with Store.connect(url) as db:
        return db.count_rows(bot_key), db.read_orders(bot_key)


def apply_bot(release: Release, manifest: dict[str, Any]) -> None:
    release.kubectl("apply", "-f", "-", input=json.dumps(manifest), ns=BOTS_NS)


def delete_bot(release: Release, name: str) -> None:
    release.kubectl("delete", "tradingbot", name, "--wait=true", "--timeout=120s", ns=BOTS_NS,
                    timeout=150)  # fmt: skip


def wait_running(release: Release, name: str, timeout: float = 300) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        bot = get_bot(release, name)
        return bot if bot.get("status", {}).get("phase") == "Running" else None

    bot: dict[str, Any] = wait_for(f"{name} phase Running", running, timeout)
    return bot


def test_a_replay_bot_trades_in_pods_exactly_as_the_backtest(
    release: Release, replay: Replay, expected: list[list[str]]
) -> None:
    name = "replay"
    key = f"{BOTS_NS}/{name}"
    t0 = time.monotonic()
    apply_bot(release, bot_manifest(name, replay))
    try:
        wait_running(release, name)
        release.timings["bot applied -> Running"] = round(time.monotonic() - t0, 1)
        with database(release) as url:
            wait_for("a first fill", lambda: db_fill_rows(url, key), 300, interval=0.5)
            release.timings["bot applied -> first fill"] = round(time.monotonic() - t0, 1)
            got = wait_for(
                "every fill of the backtest",
                lambda: (rows := db_fill_rows(url, key)) == expected and rows,
                300,
                interval=2,
            )
            counts, _ = db_counts(url, key)
        release.timings["bot applied -> last fill"] = round(time.monotonic() - t0, 1)

        def shown() -> list[str] | None:
            table = release.kubectl("get", "tradingbots", name, ns=BOTS_NS).stdout
            header, row = table.splitlines()[:2]
            cols = row.split()
            if cols[1] == "Running" and cols[5] != "<none>" and cols[6] not in ("<none>", "0"):
                return [header, row]
            return None

        header, row = wait_for("equity and PnL in kubectl get tradingbots", shown, 60)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_describe_failure(release, BOTS_NS)}") from None
    assert got == expected
    assert counts.candles == CANDLES
    assert header.split()[:8] == [
        "NAME", "PHASE", "MODE", "SYMBOLS", "MODEL", "EQUITY", "PNL", "AGE"
    ]  # fmt: skip
    cols = row.split()
    assert float(cols[5]) > 0
    assert float(cols[6]) != 0
    assert get_bot(release, name)["status"]["trading"]["trades"] >= 1
    record_peak_memory(release, BOTS_NS, f"app.kubernetes.io/instance={name}", "bot ")
    delete_bot(release, name)
    wait_for("the bot's pods gone", lambda: not bot_pods(release, name), 120)


def test_a_force_deleted_executor_loses_and_doubles_nothing(
    release: Release, replay: Replay, expected: list[list[str]]
) -> None:
    name = "crash"
    key = f"{BOTS_NS}/{name}"
    apply_bot(release, bot_manifest(name, replay))
    try:
        wait_running(release, name)
        with database(release) as url:
            wait_for("a first fill", lambda: db_fill_rows(url, key), 300, interval=0.5)
            executor = bot_pods(release, name)["executor"]["metadata"]["name"]
            release.kubectl("delete", "pod", executor, "--grace-period=0", "--force",
                            ns=BOTS_NS)  # fmt: skip
            counts_at_kill, _ = db_counts(url, key)
            got = wait_for(
                "every fill of the backtest after the executor was killed",
                lambda: (rows := db_fill_rows(url, key)) == expected and rows,
                300,
                interval=2,
            )
            wait_for("every candle stored", lambda: db_counts(url, key)[0].candles == CANDLES, 60)
            counts, orders = db_counts(url, key)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_describe_failure(release, BOTS_NS)}") from None
    # the kill happened mid-run: the replay had candles left to process
    assert counts_at_kill.candles < CANDLES or counts_at_kill.fills < len(expected), counts_at_kill
    replacement = bot_pods(release, name)["executor"]["metadata"]["name"]
    assert replacement != executor
    assert got == expected  # nothing lost
    assert counts.fills == len(expected)  # nothing doubled
    assert len({o.order.client_order_id for o in orders}) == len(orders) == counts.orders
    delete_bot(release, name)
    wait_for("the bot's pods gone", lambda: not bot_pods(release, name), 120)


# --------------------------------------------------------------------------- a bot to operate

SLOW_PACE = 3600 * 5  # 5 candles/s: the replay lasts ~400 s, longer than the tests below need
# Always long, no exit of its own (no exit signal, stop, target or time exit): a position is
# open from the first candle on, so a kill or a flatten-on-delete always has one to close.
ALWAYS_LONG = {
    "strategy": {"longAbove": 0.0, "exitBelow": 0.0},
    "risk": {
        "sizing": {"method": "fixed-fraction", "fractionPct": 20, "maxPositionPct": 25},
        # 100 ATRs away: never reached in 400 hours of BTC/USD
        "stopLoss": {"atrMultiplier": 100},
        "takeProfit": {"riskReward": 100},
        "breakers": {"maxDailyLossPct": 50, "maxDrawdownPct": 90, "maxConsecutiveLosses": 50},
    },
}


@pytest.fixture(scope="module")
def ops_bot(release: Release, replay: Replay) -> Iterator[str]:
    """A slower replay bot that the tests below pause, edit, roll out, kill and delete."""
    name = "ops"
    apply_bot(
        release, bot_manifest(name, replay, exchange=_exchange(replay, SLOW_PACE), **ALWAYS_LONG)
    )
    try:
        wait_running(release, name)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_describe_failure(release, BOTS_NS)}") from None
    yield name
    release.kubectl("delete", "tradingbot", name, "--ignore-not-found", "--wait=true",
                    "--timeout=120s", ns=BOTS_NS, timeout=150, check=False)  # fmt: skip


def _exchange(replay: Replay, speed: int) -> dict[str, Any]:
    return {"name": "replay", "uri": replay.url, "sha256": replay.sha256, "speed": speed}


def _json_lines(text: str) -> list[str]:
    """The lines of a log that are not one JSON object each."""
    bad = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if not ok:
            bad.append(line)
    return bad


def test_every_kubetrade_pod_logs_json_lines(release: Release, ops_bot: str) -> None:
    with database(release) as url:
        wait_for("a first fill", lambda: db_fill_rows(url, f"{BOTS_NS}/{ops_bot}"), 300)
    pods = {
        f"{SYSTEM_NS}/{p['metadata']['name']}": p
        for p in release.pods(SYSTEM_NS, OPERATOR_SELECTOR)
    }
    for p in bot_pods(release, ops_bot).values():
        pods[f"{BOTS_NS}/{p['metadata']['name']}"] = p
    assert len(pods) == 4, list(pods)
    for where, pod in pods.items():
        ns, name = where.split("/")
        for c in pod["spec"]["containers"]:
            text = release.kubectl("logs", name, "-c", c["name"], ns=ns).stdout
            assert text.strip(), f"{where}/{c['name']} logged nothing"
            bad = _json_lines(text)
            assert not bad, f"{where}/{c['name']}: {len(bad)} non-JSON lines, e.g. {bad[:3]}"


def _pod_names(release: Release, name: str) -> dict[str, str]:
    return {c: p["metadata"]["name"] for c, p in bot_pods(release, name).items()}


def _patch(release: Release, name: str, patch: dict[str, Any]) -> None:
    release.kubectl("patch", "tradingbot", name, "--type=merge", "-p", json.dumps(patch),
                    ns=BOTS_NS)  # fmt: skip


def _settled(release: Release, name: str, before: dict[str, str], rolled: set[str]) -> Any:
    """Pods of ``rolled`` components replaced and Ready, the others untouched; else None."""
    now = bot_pods(release, name)
    if set(now) != set(before):
        return None
    for comp, pod in now.items():
        replaced = pod["metadata"]["name"] != before[comp]
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )
        if replaced != (comp in rolled) or not ready:
            return None
    return {c: p["metadata"]["name"] for c, p in now.items()}


def test_spec_edits_roll_only_the_pods_that_read_them(release: Release, ops_bot: str) -> None:
    before = _pod_names(release, ops_bot)
    # onDelete is read by the operator only: no pod restarts
    _patch(release, ops_bot, {"spec": {"onDelete": "flatten"}})
    gen = get_bot(release, ops_bot)["metadata"]["generation"]
    wait_for(
        "the edit observed",
        lambda: get_bot(release, ops_bot)["status"].get("observedGeneration") == gen,
        60,
    )
    assert _settled(release, ops_bot, before, set()), _pod_names(release, ops_bot)
    # the strategy is read by every worker: all three roll
    _patch(release, ops_bot, {"spec": {"strategy": {"longAbove": 0.01, "exitBelow": 0.0}}})
    after = wait_for(
        "feed, inference and executor rolled",
        lambda: _settled(release, ops_bot, before, {"feed", "inference", "executor"}),
        240,
    )
    wait_running(release, ops_bot)
    before = after
    # the same model under a new image tag: a model rollout, inference only
    image = get_bot(release, ops_bot)["spec"]["model"]["image"]
    assert image
    release.cluster.ctr("images", "tag", image, f"{image}-rollout")
    _patch(release, ops_bot, {"spec": {"model": {"image": f"{image}-rollout"}}})
    wait_for(
        "inference alone rolled",
        lambda: _settled(release, ops_bot, before, {"inference"}),
        240,
    )
    model = wait_running(release, ops_bot)["status"]["model"]
    assert model["transition"] == "UpToDate", model


def _open_positions(release: Release, name: str) -> int:
    trading = get_bot(release, name).get("status", {}).get("trading") or {}
    return int(trading.get("openPositions") or 0)


def _reasons(url: str, key: str) -> list[str]:
    return [row[7] for row in db_fill_rows(url, key)]


KILL = "kubetrade.io/kill-switch"


def test_the_kill_switch_flattens_and_halts(release: Release, ops_bot: str) -> None:
    key = f"{BOTS_NS}/{ops_bot}"
    wait_for("an open position", lambda: _open_positions(release, ops_bot) > 0, 180, 0.5)
    release.kubectl("annotate", "tradingbot", ops_bot, f"{KILL}=flatten", ns=BOTS_NS)
    with database(release) as url:
        wait_for("a flatten fill", lambda: "flatten" in _reasons(url, key), 60, 0.5)
        bot = wait_for(
            "phase Halted with no open position",
            lambda: (
                (b := get_bot(release, ops_bot))["status"]["phase"] == "Halted"
                and _open_positions(release, ops_bot) == 0
                and b
            ),
            60,
        )
        halted = {c["type"]: c for c in bot["status"]["conditions"]}["Halted"]
        assert halted["status"] == "True" and halted["reason"] == "KillSwitch", halted
        fills_at_halt = len(_reasons(url, key))
        candles_at_halt = db_counts(url, key)[0].candles
        # halted: the replay goes on (50 more candles stored) and no order is filled
        wait_for(
            "50 more candles",
            lambda: db_counts(url, key)[0].candles >= min(candles_at_halt + 50, CANDLES),
            60,
            0.5,
        )
        assert len(_reasons(url, key)) == fills_at_halt
    release.kubectl("annotate", "tradingbot", ops_bot, f"{KILL}-", ns=BOTS_NS)
    wait_running(release, ops_bot, 60)


def test_deleting_a_bot_with_on_delete_flatten_flattens_before_its_pods_go(
    release: Release, ops_bot: str
) -> None:
    key = f"{BOTS_NS}/{ops_bot}"
    assert get_bot(release, ops_bot)["spec"]["onDelete"] == "flatten"
    wait_for("an open position", lambda: _open_positions(release, ops_bot) > 0, 180, 0.5)
    with database(release) as url:
        flattens = _reasons(url, key).count("flatten")
        release.kubectl("delete", "tradingbot", ops_bot, "--wait=false", ns=BOTS_NS)
        wait_for(
            "the bot gone",
            lambda: (
                not release.kubectl(
                    "get", "tradingbot", ops_bot, "--ignore-not-found", "-o", "name", ns=BOTS_NS
                ).stdout.strip()
            ),
            120,
        )
        assert _reasons(url, key).count("flatten") == flattens + 1
    events = release.kubectl(
        "get", "events", f"--field-selector=involvedObject.name={ops_bot}",
        "-o", "jsonpath={range .items[*]}{.reason}{'\\n'}{end}", ns=BOTS_NS,
    ).stdout.split()  # fmt: skip
    assert {"Flattening", "Flattened"} <= set(events), events
    assert "FinalizerTimeout" not in events, events
    wait_for("the bot's pods gone", lambda: not bot_pods(release, ops_bot), 120)
