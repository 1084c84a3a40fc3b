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
made once (``make_replay``). Each bot replays that file at ``--speed`` (default 3600: one 1h
candle per second per bot, faster than any exchange's 1-minute candles live). Bots are *added*
step by step up to each count of ``--steps`` (earlier ones keep running: the file lasts 30 min at
the default speed); once the new bots' pods are Ready (or refused), a window of ``--window``
seconds (opening 20 s later, so a new bot has decided what its feed published while inference
was starting) measures every running bot. A bot *keeps up* when every candle due in the window
(the feed releases candle k at its start + k / candles per second) has a decision in the ledger
(``signals``) and the p99 of candle due -> decided is under ``--bound-ms`` (default 1000: one
candle interval at the default speed). Steps stop at the first one where a pod is left Pending
(the scheduler's FailedScheduling message recorded), a bot does not start, or one falls behind.
Each step records the pods Running/Pending, the pods' CPU (kubepods cgroup) and working-set
memory, the whole host's CPU busy share and load average (other engineers' processes share the
two cores), container restarts, and per bot p50/p99/max latency and CPU used.
``--cpu-request`` replaces render's CPU request of the bots' pods, to find the next limit.

    .venv/bin/python bench/cluster.py --capacity [--steps 1,2,3,4,6,8] [--json OUT]

Needs root and the builds of the cluster tier (``make controlplane cluster image``); takes the
cluster host lock, so it waits for any other cluster run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
STEADY_AFTER_READY_S = 20.0  # a new bot decides its start-up backlog first
SCHEDULE_TIMEOUT_S = 240.0  # plus 30 s per new bot: every pod compiles its imports on start


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


def _window_figures(
    url: str, key: str, speed: int, candles: int, t0: float, t1: float
) -> dict[str, Any]:
    """One bot's candles due in [t0, t1]: how many were decided, and due -> decided latency.

    The feed releases candle k at its start + k candle intervals / speed (workers/feed.py
    ``paced``), so a candle is *due* then; its start is the earliest published time minus the
    candle's offset (no candle goes out before it is due). Due -> decided counts a feed that
    publishes late as well as inference or an executor that decides late.
    """
    with Store.connect(url) as db:
        signals = db.read_signals(key)
        counts = db.count_rows(key)
    out: dict[str, Any] = {"candles_stored": counts.candles, "decided": counts.signals}
    if not signals:
        return out | {"window_due": 0, "window_decided": 0, "keeps_up": False}
    open_ms = np.array([s.time for s in signals], dtype=np.int64)
    pub = np.array([s.candle_published_us for s in signals], dtype=np.int64)
    dec = np.array([s.decided_us for s in signals], dtype=np.int64)
    interval_us = float(np.min(np.diff(open_ms))) * 1000 / speed if len(signals) > 1 else 1e6
    offset = (open_ms - open_ms[0]) * 1000 / speed
    start = float(np.min(pub - offset))
    due = start + offset
    inside = (due >= t0 * 1e6) & (due <= t1 * 1e6)
    # the candles the file had due in the window, decided or not
    first = max(0, int(np.ceil((t0 * 1e6 - start) / interval_us)))
    last = min(candles - 1, int(np.floor((t1 * 1e6 - start) / interval_us)))
    out |= {"window_due": max(0, last - first + 1), "window_decided": int(inside.sum())}
    if inside.any():
        lat = (dec[inside] - due[inside]) / 1000.0
        out |= {
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(lat.max()), 1),
            "published_p99_ms": round(float(np.percentile((pub - due)[inside] / 1000.0, 99)), 1),
        }
    return out


def capacity_step(
    rel: Any,
    replay: Any,
    names: list[str],
    n: int,
    args: argparse.Namespace,
    sampler: NodeSampler,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """Add bots up to ``n`` (``names`` grows), wait for their pods, measure a window of all."""

    def say(message: str) -> None:
        print(f"[capacity {n}] {message}", file=sys.stderr, flush=True)

    load_start = os.getloadavg()
    t_apply = time.time()
    exchange = bots._exchange(replay, args.speed)
    new = [f"cap-{i}" for i in range(len(names), n)]
    for name in new:
        bots.apply_bot(rel, bots.bot_manifest(name, replay, exchange=exchange, **overrides))
    names.extend(new)
    try:
        bots.wait_for(
            f"{len(new)} new bots' pods Ready or unschedulable",
            lambda: _settled(rel, new),
            SCHEDULE_TIMEOUT_S + 30 * len(new),
            interval=2,
        )
    except AssertionError as e:  # a pod neither Ready nor refused: measure what runs
        say(str(e))
    t_settled = time.time()
    by_bot = _step_pods(rel, names)
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
    running = sorted(
        b for b, pods in by_bot.items()
        if len(pods) == 3 and all(_ready_at(p) is not None for p in pods)
    )  # fmt: skip
    say(f"settled in {t_settled - t_apply:.0f}s: {len(running)} of {n} bots Running, "
        f"{len(pending)} pods Pending, {len(not_ready)} not Ready")  # fmt: skip
    # the window opens once a new bot's start-up backlog is decided
    t0 = time.time() + STEADY_AFTER_READY_S
    time.sleep(STEADY_AFTER_READY_S)
    cpu0 = {b: _pod_cpu(by_bot[b]) for b in running}
    time.sleep(args.window)
    t1 = time.time()
    cpu1 = {b: _pod_cpu(by_bot[b]) for b in running}
    time.sleep(args.bound_ms / 1000 + 1)  # a candle due at t1 has until t1 + bound
    per_bot: dict[str, Any] = {}
    with bots.database(rel) as url:
        for b in running:
            fig = _window_figures(url, f"{bots.BOTS_NS}/{b}", args.speed, args.candles, t0, t1)
            fig["cpu_cores"] = round((cpu1[b] - cpu0[b]) / 1e9 / (t1 - t0), 3)
            fig["keeps_up"] = (
                fig["window_due"] > 0
                and fig["window_decided"] >= fig["window_due"]
                and fig.get("p99_ms", float("inf")) < args.bound_ms
            )
            per_bot[b] = fig
    restarts = sum(
        c.get("restartCount", 0)
        for pods in _step_pods(rel, names).values()
        for p in pods
        for c in p.get("status", {}).get("containerStatuses", [])
    )
    step = {
        "bots": n,
        "bots_running": len(running),
        "pods_running": sum(1 for pods in by_bot.values() for p in pods if _ready_at(p)),
        "pods_pending": len(pending),
        "pending": pending,
        "scheduled_not_ready": not_ready,
        "container_restarts": restarts,
        "new_bots_settled_after_s": round(t_settled - t_apply, 1),
        "window_s": round(t1 - t0, 1),
        "node_window": sampler.between(t0, t1),
        "load_avg_at_start": [round(x, 2) for x in load_start],
        "per_bot": per_bot,
        "all_keep_up": len(running) == n and all(v["keeps_up"] for v in per_bot.values()),
    }
    say(json.dumps(step))  # each step as it ends: a failed later step keeps the earlier ones
    return step


def capacity(steps: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Install once, then add bots in ``steps`` until a pod is refused or a bot falls behind.

    ``args.cpu_request`` replaces render's CPU request of each bot's three pods
    (``spec.resources``), to see what holds the node once requests are not the limit.
    """
    reason = fixtures._missing_reason()
    if reason:
        raise SystemExit(reason)
    requests = {c: dict(r["requests"]) for c, r in DEFAULT_RESOURCES.items()}
    overrides: dict[str, Any] = {}
    if args.cpu_request:
        for req in requests.values():
            req["cpu"] = args.cpu_request
        overrides["resources"] = {c: {"requests": {"cpu": args.cpu_request}} for c in requests}
    result: dict[str, Any] = {
        "speed": args.speed,
        "candles_per_s_per_bot": args.speed / 3600,
        "candles_per_bot": args.candles,
        "keep_up": (
            f"every candle due in a {args.window:g} s window decided, "
            f"p99 candle due -> decided < {args.bound_ms:g} ms"
        ),
        "bot_requests": requests,
        "steps": [],
    }
    with tempfile.TemporaryDirectory(prefix="kt-bench-capacity-") as d:
        root = Path(d)
        (root / "replay").mkdir()
        with fixtures.session_cluster(root / "cluster") as c, bots.installed_release(c) as rel:
            node = json.loads(c.kubectl("get", "node", "-o", "json").stdout)["items"][0]
            result["node_allocatable"] = node["status"]["allocatable"]
            replay = bots.make_replay(rel, root / "replay", args.candles)
            names: list[str] = []
            try:
                with NodeSampler() as sampler:
                    for n in steps:
                        step = capacity_step(rel, replay, names, n, args, sampler, overrides)
                        result["steps"].append(step)
                        if not step["all_keep_up"]:
                            break
            finally:
                rel.kubectl("delete", "tradingbot", "--all", "--wait=true", "--timeout=180s",
                            ns=bots.BOTS_NS, timeout=200, check=False)  # fmt: skip
    ok = [s["bots"] for s in result["steps"] if s["all_keep_up"]]
    result["max_bots_keeping_up"] = max(ok, default=0)
    last = result["steps"][-1] if result["steps"] else {}
    if last.get("pods_pending"):
        why = "; ".join(sorted({str(v) for v in last["pending"].values()}))
        result["limited_by"] = f"scheduler: {why}"
    elif last and not last.get("all_keep_up"):
        result["limited_by"] = "a bot did not start or fell behind: see the last step"
    else:
        result["limited_by"] = "not reached: every step kept up"
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--skip-starts", action="store_true", help="only the image and the bot run")
    ap.add_argument("--capacity", action="store_true", help="only the replay-bot capacity steps")
    ap.add_argument("--steps", default="1,2,3,4,6,8,12,16", help="bots per capacity step")
    ap.add_argument("--candles", type=int, default=1800, help="candles each capacity bot replays")
    ap.add_argument("--window", type=float, default=90.0, help="seconds measured per step")
    ap.add_argument("--speed", type=int, default=3600, help="replay speed (3600: 1 candle/s)")
    ap.add_argument("--bound-ms", type=float, default=1000.0, help="steady p99 to keep up")
    ap.add_argument("--cpu-request", help="CPU request of every bot pod instead of render's")
    args = ap.parse_args(argv)
    os.environ.update(QUIET)
    # SIGTERM unwinds like Ctrl-C (bots deleted, helm uninstall, cluster down); a background
    # job started by a shell ignores SIGINT
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result: dict[str, Any] = {"load_before": os.getloadavg()}
    if args.capacity:
        steps = [int(n) for n in args.steps.split(",")]
        result["capacity"] = capacity(steps, args)
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
