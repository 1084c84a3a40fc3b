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
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubetrade.render import DEFAULT_RESOURCES  # noqa: E402
from tests.cluster import fixtures  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--skip-starts", action="store_true", help="only the image and the bot run")
    args = ap.parse_args(argv)
    os.environ.update(QUIET)
    result: dict[str, Any] = {"load_before": os.getloadavg()}
    if not args.skip_starts:
        with tempfile.TemporaryDirectory(prefix="kt-bench-cold-") as d:
            result["cold_start"] = cluster_start(Path(d) / "containerd", Path(d) / "work")
        warm_root = fixtures._build.cache_root() / "cluster" / "containerd"
        with tempfile.TemporaryDirectory(prefix="kt-bench-warm-") as d:
            cluster_start(warm_root, Path(d) / "w1")  # make sure everything is imported
            result["warm_start"] = cluster_start(warm_root, Path(d) / "w2")
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
