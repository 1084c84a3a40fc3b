"""Figures of kubetrade on the one-node cluster: start, image, install, first fill, memory.

* cluster start, **cold** (an empty containerd store: every image imported) and **warm** (the
  persistent store of the test tier: nothing imported), each a full start to node Ready + DNS
  and a teardown (tests/cluster/cluster.py);
* the project image's build time and size (``~/.cache/kubetrade/image/IMAGE-INFO.json``, written
  by ``make image``);
* ``helm install`` (dev NATS + dev PostgreSQL) -> operator Ready, a replay bot applied ->
  Running -> first fill -> last fill, and each pod's peak memory (its cgroup's high-water mark)
  against the memory it requests (for the bot's pods: ``kubetrade/render.py``
  ``DEFAULT_RESOURCES``) — from one run of
  ``tests/cluster/test_bot_in_pods.py::test_a_replay_bot_trades_in_pods_exactly_as_the_backtest``.

    .venv/bin/python bench/cluster.py [--json OUT] [--skip-starts]

``--capacity``: how many replay bots the node holds while every bot keeps up with its candles.
The chart is installed once (``installed_release``, the tier's ``release`` fixture) on the tier's
cluster (``session_cluster``), a model and a candle file of the newest ``--candles`` hours are
made once (``make_replay``); then for each step of ``--steps`` that many bots are applied at once,
each replaying the same file at ``--speed`` (default 3600: one 1h candle per second per bot, a
live cadence faster than any real exchange's 1-minute candles), and deleted after. A bot *keeps
up* when every candle of the file has a decision in the ledger (``signals``) and the p99 of
candle published -> decided (``decided_at - candle_published_at``) over its steady state (candles
published from 10 s after its last pod turned Ready; before that the stream buffers what the
feed published while inference was starting) is under ``--bound-ms`` (default 1000: one candle
interval at the default speed). Steps stop at the first one where a pod is left Pending
(unschedulable, the scheduler's reason recorded) or a bot falls behind. Each step records the
pods Running/Pending, the pods' CPU (kubepods cgroup) and working-set memory, the whole host's
CPU busy share and load average (other engineers' processes share the two cores), and per bot
p50/p99/max latency, candles decided and CPU used.

    .venv/bin/python bench/cluster.py --capacity [--steps 1,2,3,4,6,8] [--json OUT]

Needs root and the builds of the cluster tier (``make controlplane cluster image``); takes the
cluster host lock, so it waits for any other cluster run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubetrade.render import DEFAULT_RESOURCES  # noqa: E402
from kubetrade.store import Store  # noqa: E402
from tests.cluster import fixtures  # noqa: E402
from tests.cluster import test_bot_in_pods as bots  # noqa: E402

QUIET = {"BENTOML_DO_NOT_TRACK": "true", "ORT_DISABLE_TELEMETRY": "1"}
BOT_TEST = (
    "tests/cluster/test_bot_in_pods.py::test_a_replay_bot_trades_in_pods_exactly_as_the_backtest"
)


def cluster_start(containerd_root: Path, workdir: Path) -> dict[str, Any]:
    """Start and tear down one cluster on ``containerd_root``; its start figures."""
    build, cluster = fixtures._build, fixtures._cluster
    archives = [
        build.pause_archive_path(),
        build.archive_path(),
        *fixtures._images.existing_archives(),
    ]
    t0 = time.monotonic()
    with cluster.one_node_cluster(
        build.cp_build.bin_dir(),
        build.cp_build.node_dir(),
        workdir,
        archives,
        containerd_root=containerd_root,
        say=lambda m: print(m, file=sys.stderr, flush=True),
    ) as c:
        started = time.monotonic() - t0
    timings = dict(c.timings)  # after the with: the reaper's teardown time is in it now
    imported = sum(v for k, v in timings.items() if k.startswith("import "))
    return {
        "start_s": round(started, 1),
        "images_imported_s": round(imported, 1),
        "teardown_s": timings.get("teardown"),
    }


def bot_run() -> dict[str, Any]:
    """One run of the replay-bot test; the figures its fixture writes."""
    with tempfile.TemporaryDirectory(prefix="kt-bench-") as d:
        out = Path(d) / "figures.json"
        env = {**os.environ, **QUIET, "KUBETRADE_REQUIRE_CLUSTER": "1"}
        env["KUBETRADE_CLUSTER_BENCH_OUT"] = str(out)
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cluster",
             BOT_TEST],
            cwd=REPO, env=env, check=False,
        )  # fmt: skip
        if r.returncode != 0:
            raise SystemExit(f"{BOT_TEST} failed ({r.returncode}); no figures")
        figures: dict[str, Any] = json.loads(out.read_text())
        figures["pytest_s"] = round(time.monotonic() - t0, 1)
        return figures


def image_figures() -> dict[str, Any]:
    info = fixtures._build.image_info() or {}
    return {
        k: info.get(k)
        for k in (
            "image",
            "total_seconds",
            "bud_seconds",
            "archive_seconds",
            "wheelhouse_cached",
            "uncompressed_bytes",
            "archive_bytes",
            "built_at",
        )
    }


def render_requests() -> dict[str, str]:
    return {c: r["requests"]["memory"] for c, r in DEFAULT_RESOURCES.items()}


# --------------------------------------------------------------------------- capacity

CGROUP = Path("/sys/fs/cgroup")
STEADY_AFTER_READY_S = 10.0
SCHEDULE_TIMEOUT_S = 120.0  # plus 20 s per bot: every pod compiles its imports on start


def _cpu_ns(cgroup: Path) -> int:
    """CPU time (ns) of a cgroup: v1 cpuacct, else v2 cpu.stat."""
    v1 = CGROUP / "cpuacct" / cgroup / "cpuacct.usage"
    if v1.is_file():
        return int(v1.read_text())
    stat = dict(line.split() for line in (CGROUP / cgroup / "cpu.stat").read_text().splitlines())
    return int(stat["usage_usec"]) * 1000


def _working_set(cgroup: Path) -> int:
    """Memory in use (bytes) minus inactive file cache, as kubelet's working set counts it."""
    base = CGROUP / "memory" / cgroup
    if (base / "memory.usage_in_bytes").is_file():
        usage = int((base / "memory.usage_in_bytes").read_text())
        key = "total_inactive_file"
    else:
        base = CGROUP / cgroup
        usage = int((base / "memory.current").read_text())
        key = "inactive_file"
    stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
    return max(usage - int(stat.get(key, 0)), 0)


def _pod_cgroup(uid: str) -> Path | None:
    """The pod's cgroup below the cgroup root (kubepods/<qos>/pod<uid>)."""
    for base in (CGROUP / "cpuacct", CGROUP):
        found = sorted(base.glob(f"kubepods/**/pod{uid}"))
        if found:
            return found[0].relative_to(base)
    return None


def _host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class NodeSampler:
    """Every 2 s: the pods' CPU and working set (kubepods cgroup), host CPU and load average."""

    def __init__(self) -> None:
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> NodeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            busy, total = _host_cpu()
            self.samples.append({
                "t": time.time(),
                "pods_cpu_ns": _cpu_ns(Path("kubepods")),
                "pods_mem": _working_set(Path("kubepods")),
                "host_busy": busy,
                "host_total": total,
                "load1": os.getloadavg()[0],
            })  # fmt: skip
            if self._stop.wait(2.0):
                return

    def between(self, t0: float, t1: float) -> dict[str, Any]:
        """Averages over [t0, t1]: pods' cores, host busy share; peak pods memory, load."""
        window = [s for s in self.samples if t0 <= s["t"] <= t1]
        if len(window) < 2:
            return {}
        a, b = window[0], window[-1]
        return {
            "seconds": round(b["t"] - a["t"], 1),
            "pods_cpu_cores": round(
                (b["pods_cpu_ns"] - a["pods_cpu_ns"]) / 1e9 / (b["t"] - a["t"]), 3
            ),
            "pods_working_set_MiB_peak": round(max(s["pods_mem"] for s in window) / 2**20),
            "host_cpu_busy_pct": round(
                100 * (b["host_busy"] - a["host_busy"]) / max(b["host_total"] - a["host_total"], 1),
                1,
            ),
            "load1_mean": round(float(np.mean([s["load1"] for s in window])), 2),
            "load1_max": round(max(s["load1"] for s in window), 2),
        }


def _unschedulable(pod: dict[str, Any]) -> str | None:
    for cond in pod.get("status", {}).get("conditions", []):
        if cond["type"] == "PodScheduled" and cond["status"] == "False":
            return str(cond.get("message") or cond.get("reason") or "unschedulable")
    return None


def _ready_at(pod: dict[str, Any]) -> float | None:
    """Wall-clock time the pod turned Ready (its condition's lastTransitionTime), or None."""
    from datetime import datetime

    for cond in pod.get("status", {}).get("conditions", []):
        if cond["type"] == "Ready" and cond["status"] == "True":
            return datetime.fromisoformat(cond["lastTransitionTime"]).timestamp()
    return None


def _step_pods(rel: Any, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The live pods of each of ``names`` (the step's bots)."""
    selector = f"app.kubernetes.io/instance in ({','.join(names)})"
    by_bot: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for pod in rel.pods(bots.BOTS_NS, selector):
        if pod["metadata"].get("deletionTimestamp") is None:
            by_bot[pod["metadata"]["labels"]["app.kubernetes.io/instance"]].append(pod)
    return by_bot


def _settled(rel: Any, names: list[str]) -> dict[str, list[dict[str, Any]]] | None:
    """Every bot has its three pods, each Ready or unschedulable; else None."""
    by_bot = _step_pods(rel, names)
    for pods in by_bot.values():
        if len(pods) < 3:
            return None
        if any(_ready_at(p) is None and _unschedulable(p) is None for p in pods):
            return None
    return by_bot


def _scheduler_events(rel: Any) -> dict[str, str]:
    """The newest FailedScheduling message per pod name in the bots' namespace."""
    out = rel.kubectl(
        "get", "events", "--field-selector=reason=FailedScheduling", "-o", "json",
        ns=bots.BOTS_NS, check=False,
    ).stdout  # fmt: skip
    events = json.loads(out or '{"items": []}')["items"]
    events.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return {e["involvedObject"]["name"]: e["message"] for e in events}


def _pod_cpu(pods: list[dict[str, Any]]) -> int:
    total = 0
    for pod in pods:
        cg = _pod_cgroup(pod["metadata"]["uid"])
        if cg is not None:
            total += _cpu_ns(cg)
    return total


def _latencies(url: str, key: str, steady_from_s: float) -> dict[str, Any]:
    with Store.connect(url) as db:
        signals = db.read_signals(key)
        stored = db.count_rows(key).candles
    if not signals:
        return {"decided": 0, "candles_stored": stored}
    pub = np.array([s.candle_published_us for s in signals], dtype=np.int64)
    lat = (np.array([s.decided_us for s in signals], dtype=np.int64) - pub) / 1000.0
    steady = lat[pub >= steady_from_s * 1e6]
    out: dict[str, Any] = {
        "decided": len(signals),
        "candles_stored": stored,
        "all_p50_ms": round(float(np.percentile(lat, 50)), 1),
        "all_max_ms": round(float(lat.max()), 1),
        "steady_candles": int(steady.size),
    }
    if steady.size:
        out |= {
            "p50_ms": round(float(np.percentile(steady, 50)), 1),
            "p99_ms": round(float(np.percentile(steady, 99)), 1),
            "max_ms": round(float(steady.max()), 1),
            "last_ms": round(float(steady[-1]), 1),
        }
    return out


def capacity_step(
    rel: Any,
    replay: Any,
    n: int,
    candles: int,
    speed: int,
    bound_ms: float,
    sampler: NodeSampler,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """Apply ``n`` replay bots at once, measure them until their replay ends, delete them."""
    names = [f"cap{n}-{i}" for i in range(n)]
    load_start = os.getloadavg()
    t_apply = time.time()
    exchange = bots._exchange(replay, speed)
    for name in names:
        bots.apply_bot(rel, bots.bot_manifest(name, replay, exchange=exchange, **overrides))

    def say(message: str) -> None:
        print(f"[capacity {n}] {message}", file=sys.stderr, flush=True)

    try:
        by_bot = bots.wait_for(
            f"{n} bots' pods Ready or unschedulable",
            lambda: _settled(rel, names),
            SCHEDULE_TIMEOUT_S + 20 * n,
            interval=2,
        )
    except AssertionError as e:  # a pod neither Ready nor refused: measure what runs
        say(str(e))
        by_bot = _step_pods(rel, names)
    t_settled = time.time()
    reasons = _scheduler_events(rel)
    pending = {
        p["metadata"]["name"]: reasons.get(p["metadata"]["name"]) or _unschedulable(p)
        for pods in by_bot.values() for p in pods if _unschedulable(p) is not None
    }  # fmt: skip
    not_ready = {
        p["metadata"]["name"]: p.get("status", {}).get("phase")
        for pods in by_bot.values() for p in pods
        if _ready_at(p) is None and _unschedulable(p) is None
    }  # fmt: skip
    running = {b for b, pods in by_bot.items() if all(_ready_at(p) is not None for p in pods)}
    say(f"settled in {t_settled - t_apply:.0f}s: {len(running)} bots Running, "
        f"{len(pending)} pods Pending")  # fmt: skip
    ready = {b: max(_ready_at(p) or 0.0 for p in by_bot[b]) for b in running}
    steady_from = max(ready.values(), default=t_settled) + STEADY_AFTER_READY_S
    cpu_at = {b: (time.time(), _pod_cpu(by_bot[b])) for b in running}
    # the replay lasts candles/(speed/3600) s from the feed's start; wait for it plus slack
    replay_s = candles * 3600 / speed
    done: dict[str, Any] = {}
    per_bot: dict[str, Any] = {}
    with bots.database(rel) as url:
        # each feed starts with its pod: the last bot Ready is the last to finish
        deadline = max(ready.values(), default=t_settled) + replay_s + 120
        while running - set(done) and time.time() < deadline:
            for b in sorted(running - set(done)):
                with Store.connect(url) as db:
                    if db.count_rows(f"{bots.BOTS_NS}/{b}").signals >= candles:
                        done[b] = time.time()
                        t, ns0 = cpu_at[b]
                        per_bot[b] = {"cpu_cores": round((_pod_cpu(by_bot[b]) - ns0) / 1e9
                                                         / (done[b] - t), 3)}  # fmt: skip
            time.sleep(2)  # polling the ledger
        t_end = time.time()
        for b in sorted(running):
            lat = _latencies(url, f"{bots.BOTS_NS}/{b}", ready[b] + STEADY_AFTER_READY_S)
            keeps = lat["decided"] >= candles and lat.get("p99_ms", float("inf")) < bound_ms
            ready_after = round(ready[b] - t_apply, 1)
            per_bot[b] = {
                **per_bot.get(b, {}),
                **lat,
                "ready_after_s": ready_after,
                "keeps_up": keeps,
            }
    node = sampler.between(steady_from, t_end)
    step = {
        "bots": n,
        "bots_running": len(running),
        "pods_running": sum(1 for pods in by_bot.values() for p in pods if _ready_at(p)),
        "pods_pending": len(pending),
        "pending": pending,
        "scheduled_not_ready": not_ready,
        "container_restarts": sum(
            c.get("restartCount", 0)
            for pods in _step_pods(rel, names).values()
            for p in pods
            for c in p.get("status", {}).get("containerStatuses", [])
        ),
        "settled_after_s": round(t_settled - t_apply, 1),
        "node_steady": node,
        "load_avg_at_start": [round(x, 2) for x in load_start],
        "per_bot": per_bot,
        "all_keep_up": len(running) == n and all(v["keeps_up"] for v in per_bot.values()),
    }
    say(json.dumps(step))  # each step as it ends: a failed later step keeps the earlier ones
    rel.kubectl("delete", "tradingbot", *names, "--wait=true", "--timeout=180s",
                ns=bots.BOTS_NS, timeout=200)  # fmt: skip
    bots.wait_for("the step's pods gone", lambda: not any(_step_pods(rel, names).values()), 180)
    return step


def capacity(
    steps: list[int], candles: int, speed: int, bound_ms: float, cpu_request: str | None
) -> dict[str, Any]:
    """Install once, then bots in ``steps`` until a pod is refused or a bot falls behind.

    ``cpu_request`` replaces render's CPU request of each bot's three pods (``spec.resources``),
    to see what holds the node once requests are not the limit.
    """
    reason = fixtures._missing_reason()
    if reason:
        raise SystemExit(reason)
    requests = {c: dict(r["requests"]) for c, r in DEFAULT_RESOURCES.items()}
    overrides: dict[str, Any] = {}
    if cpu_request:
        for req in requests.values():
            req["cpu"] = cpu_request
        overrides["resources"] = {c: {"requests": {"cpu": cpu_request}} for c in requests}
    result: dict[str, Any] = {
        "speed": speed,
        "candles_per_s_per_bot": speed / 3600,
        "candles_per_bot": candles,
        "keep_up": f"every candle decided and steady-state p99 < {bound_ms:g} ms",
        "bot_requests": requests,
        "steps": [],
    }
    with tempfile.TemporaryDirectory(prefix="kt-bench-capacity-") as d:
        root = Path(d)
        (root / "replay").mkdir()
        with fixtures.session_cluster(root / "cluster") as c, bots.installed_release(c) as rel:
            node = json.loads(c.kubectl("get", "node", "-o", "json").stdout)["items"][0]
            result["node_allocatable"] = node["status"]["allocatable"]
            replay = bots.make_replay(rel, root / "replay", candles)
            with NodeSampler() as sampler:
                for n in steps:
                    step = capacity_step(
                        rel, replay, n, candles, speed, bound_ms, sampler, overrides
                    )
                    result["steps"].append(step)
                    if not step["all_keep_up"]:
                        break
    ok = [s["bots"] for s in result["steps"] if s["all_keep_up"]]
    result["max_bots_keeping_up"] = max(ok, default=0)
    last = result["steps"][-1] if result["steps"] else {}
    if last.get("pods_pending"):
        result["limited_by"] = "scheduler: " + "; ".join(
            sorted(set(map(str, last["pending"].values())))
        )
    elif last and not last.get("all_keep_up"):
        result["limited_by"] = "a bot fell behind (real CPU or I/O), see the last step"
    else:
        result["limited_by"] = "not reached: every step kept up"
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--skip-starts", action="store_true", help="only the image and the bot run")
    ap.add_argument("--capacity", action="store_true", help="only the replay-bot capacity steps")
    ap.add_argument("--steps", default="1,2,3,4,6,8,12,16", help="bots per capacity step")
    ap.add_argument("--candles", type=int, default=240, help="candles each capacity bot replays")
    ap.add_argument("--speed", type=int, default=3600, help="replay speed (3600: 1 candle/s)")
    ap.add_argument("--bound-ms", type=float, default=1000.0, help="steady p99 to keep up")
    ap.add_argument("--cpu-request", help="CPU request of every bot pod instead of render's")
    args = ap.parse_args(argv)
    os.environ.update(QUIET)
    result: dict[str, Any] = {"load_before": os.getloadavg()}
    if args.capacity:
        steps = [int(n) for n in args.steps.split(",")]
        result["capacity"] = capacity(
            steps, args.candles, args.speed, args.bound_ms, args.cpu_request
        )
    elif not args.skip_starts:
        with tempfile.TemporaryDirectory(prefix="kt-bench-cold-") as d:
            result["cold_start"] = cluster_start(Path(d) / "containerd", Path(d) / "work")
        warm_root = fixtures._build.cache_root() / "cluster" / "containerd"
        with tempfile.TemporaryDirectory(prefix="kt-bench-warm-") as d:
            cluster_start(warm_root, Path(d) / "w1")  # make sure everything is imported
            result["warm_start"] = cluster_start(warm_root, Path(d) / "w2")
    if not args.capacity:
        result["image"] = image_figures()
        result["bot"] = bot_run()
        result["render_memory_requests"] = render_requests()
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
