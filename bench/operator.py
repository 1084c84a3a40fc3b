"""Operator at scale: 500 TradingBots on the real control plane.

Reports the time until every bot has all six objects and an up-to-date status
(``status.observedGeneration == metadata.generation``), the time one spec edit takes to reach
its Deployment (the executor's config-hash annotation), and the operator's peak resident
memory (``VmHWM``). Targets from issue 4: under 120 s, under 2 s, at most 500 MiB.

    .venv/bin/python bench/operator.py [--bots 500] [--edits 5]

Needs the control-plane binaries (``make controlplane``). Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubetrade.embedded import start_nats  # noqa: E402
from kubetrade.render import CONFIG_HASH_ANNOTATION  # noqa: E402
from tests.controlplane import fixtures  # noqa: E402

NAMESPACE = "bench"
GROUP, VERSION, PLURAL = "kubetrade.io", "v1alpha1", "tradingbots"
OWNED_PER_BOT = 6
TARGETS = {"ready_s": 120.0, "edit_s": 2.0, "rss_mib": 500.0}


# The test control plane serves 10.0.0.0/24, about 250 Service IPs; each bot has a Service,
# so the bench widens the range for its own control plane (nothing else changes).
SERVICE_RANGE = ("--service-cluster-ip-range=10.0.0.0/24", "--service-cluster-ip-range=10.0.0.0/16")


def _spawn_with_wide_service_range(name: str, argv: list[str], logdir: Path) -> Any:
    return _spawn(name, [SERVICE_RANGE[1] if a == SERVICE_RANGE[0] else a for a in argv], logdir)


_spawn = fixtures._spawn
fixtures._spawn = _spawn_with_wide_service_range


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of a process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def bot(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(
        (REPO / "k8s" / "examples" / "synthetic-paper.yaml").read_text()
    )
    document["metadata"] = {"name": name, "namespace": NAMESPACE}
    return document


def _list(api: Any, path: str, selector: str = "") -> list[dict[str, Any]]:
    """Raw JSON list from the API server's watch cache: the poller must not eat the CPU the
    operator and the API server are measured on (the typed client's models cost far more)."""
    query = {"resourceVersion": "0"}
    if selector:
        query["labelSelector"] = selector
    url = f"{api.configuration.host}{path}?{urllib.parse.urlencode(query)}"
    response = api.rest_client.request("GET", url, headers={"Accept": "application/json"})
    items: list[dict[str, Any]] = json.loads(response.read())["items"]
    return items


def progress(api: Any, count: int) -> tuple[int, int]:
    """(bots with all their objects, bots with an up-to-date status)."""
    selector = "app.kubernetes.io/managed-by=kubetrade-operator"
    owned: dict[str, int] = {}
    for path in (
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
        f"/api/v1/namespaces/{NAMESPACE}/services",
        f"/api/v1/namespaces/{NAMESPACE}/configmaps",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
    ):
        for obj in _list(api, path, selector):
            name = obj["metadata"]["labels"]["kubetrade.io/bot"]
            owned[name] = owned.get(name, 0) + 1
    bots = _list(api, f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}")
    current = sum(
        1
        for b in bots
        if (b.get("status") or {}).get("observedGeneration") == b["metadata"]["generation"]
        and (b.get("status") or {}).get("conditions")
    )
    complete = sum(1 for n in owned.values() if n == OWNED_PER_BOT)
    return min(complete, count), current


def spec_edit_latency(api: Any, name: str, value: float) -> float:
    """Seconds from a spec patch to the new config hash on the bot's executor Deployment."""
    from kubernetes import client

    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)

    def current() -> str:
        deployment: Any = apps.read_namespaced_deployment(f"{name}-executor", NAMESPACE)
        return str(deployment.spec.template.metadata.annotations[CONFIG_HASH_ANNOTATION])

    before = current()
    started = time.monotonic()
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, name, {"spec": {"strategy": {"longAbove": value}}}
    )
    while current() == before:
        if time.monotonic() - started > 30:
            raise RuntimeError(f"{name}: the spec edit did not reach its Deployment in 30 s")
        time.sleep(0.01)
    return time.monotonic() - started


def main() -> int:
    """Run the benchmark; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bots", type=int, default=500)
    parser.add_argument("--edits", type=int, default=5)
    args = parser.parse_args()
    if fixtures._missing_reason():
        print(fixtures._missing_reason(), file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kubetrade-bench-operator-"))
    started = time.monotonic()
    cp = fixtures.start_controlplane(fixtures._build.bin_dir(), work / "controlplane")
    nats = start_nats(work / "nats")
    operator: subprocess.Popen[bytes] | None = None
    try:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "tradingbot.yaml"))
        cp.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}")
        cp.kubectl("create", "namespace", NAMESPACE)
        print(f"control plane up in {time.monotonic() - started:.1f}s", flush=True)
        log = open(work / "operator.log", "wb")  # noqa: SIM115 - closed with the process
        command = [sys.executable, "-m", "kubetrade", "operator", "--nats-url", nats.url,
                   "--metrics-port", "0", "--liveness", ""]  # fmt: skip
        operator = subprocess.Popen(
            command,
            env={**cp.env, "KUBETRADE_LOG_LEVEL": "WARNING"},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        api = cp.api_client()
        from kubernetes import client

        custom = client.CustomObjectsApi(api)
        time.sleep(3)  # the operator's start-up is not part of the figure
        idle_rss = peak_rss_mib(operator.pid)
        names = [f"bot-{i:04d}" for i in range(args.bots)]
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda n: custom.create_namespaced_custom_object(
                        GROUP, VERSION, NAMESPACE, PLURAL, bot(n)
                    ),
                    names,
                )
            )
        applied_s = time.monotonic() - t0
        print(f"{args.bots} bots created in {applied_s:.1f}s", flush=True)
        complete = current = 0
        while complete < args.bots or current < args.bots:
            if operator.poll() is not None:
                raise RuntimeError(f"the operator exited; log: {work / 'operator.log'}")
            if time.monotonic() - t0 > 600:
                raise RuntimeError(f"not ready after 600 s: {complete} complete, {current} current")
            time.sleep(1.0)
            complete, current = progress(api, args.bots)
            print(
                f"  {time.monotonic() - t0:6.1f}s  objects {complete}/{args.bots}"
                f"  status {current}/{args.bots}",
                flush=True,
            )
        ready_s = time.monotonic() - t0
        time.sleep(2)
        edits = [
            spec_edit_latency(api, names[(i * 97) % args.bots], 0.61 + i / 100)
            for i in range(args.edits)
        ]
        rss = peak_rss_mib(operator.pid)
        cpu = sum(
            float(x) for x in Path(f"/proc/{operator.pid}/stat").read_text().split()[13:15]
        ) / os.sysconf("SC_CLK_TCK")
        result = {
            "bots": args.bots,
            "ready_s": round(ready_s, 1),
            "create_requests_s": round(applied_s, 1),
            "edit_s_median": round(statistics.median(edits), 3),
            "edit_s_max": round(max(edits), 3),
            "operator_peak_rss_mib": round(rss, 1),
            "operator_idle_rss_mib": round(idle_rss, 1),
            "operator_cpu_s": round(cpu, 1),
        }
        print(json.dumps(result, indent=2))
        met = (
            ready_s < TARGETS["ready_s"]
            and max(edits) < TARGETS["edit_s"]
            and rss <= TARGETS["rss_mib"]
        )
        print(
            f"targets: ready < {TARGETS['ready_s']:g} s, edit < {TARGETS['edit_s']:g} s, "
            f"peak RSS <= {TARGETS['rss_mib']:g} MiB: {'met' if met else 'MISSED'}"
        )
        return 0 if met else 1
    finally:
        if operator is not None and operator.poll() is None:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                operator.kill()
        nats.stop()
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
