"""Inference benchmark: every model kind, from ONNX Runtime to HTTP and the NATS bridge.

Reports, in one run on this machine, for XGBoost, LSTM, Transformer and their stacked ensemble
(trained on the real BTC/USD hourly file, or synthetic candles without it):

- ONNX Runtime (the served session: one thread) latency for one input, p50 and p99, and
  throughput at batch 1, 64 and 1024, beside the native framework's (XGBoost, PyTorch);
- the signal pipeline per candle (incremental features + model: what the NATS bridge computes),
  p50 and p99;
- a real ``bentoml serve``: single-row ``/predict`` round trip (p50, p99) from one keep-alive
  client, throughput with 16 concurrent clients, and the resident memory of the service;
- XGBoost only: candle published to NATS -> signal received through the bridge inside the
  service process, one candle at a time (p50, p99).

    .venv/bin/python bench/inference.py                # all kinds (PyTorch needed for 3 of 4)
    .venv/bin/python bench/inference.py --kinds xgboost --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from kubetrade.settings import QUIET_ENV, quiet_environment

quiet_environment()

REPO = Path(__file__).resolve().parents[1]
BTC_CSV = REPO.parent / "shared" / "data" / "coinbase_btcusd_1h.csv"
KINDS = ("xgboost", "lstm", "transformer", "ensemble")
BATCHES = (1, 64, 1024)
WINDOW = 24
CLIENTS = 16


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p99 in microseconds."""
    values = np.asarray(samples) * 1e6
    return {"p50_us": float(np.percentile(values, 50)), "p99_us": float(np.percentile(values, 99))}


def time_calls(call: Callable[[], object], seconds: float, warmup: int = 50) -> list[float]:
    """Durations of repeated calls for about ``seconds`` (at least 200 calls)."""
    for _ in range(warmup):
        call()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 200:
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def load_frames(candles: int) -> tuple[dict[str, Any], str]:
    from kubetrade.onnx_export.sources import file_frames, synthetic_frames

    if BTC_CSV.exists():
        frames = file_frames(BTC_CSV, "1h")
        return {s: f.iloc[-candles:].reset_index(drop=True) for s, f in frames.items()}, str(
            BTC_CSV
        )
    return synthetic_frames(["BTC/USDT"], "1h", candles, 5), "synthetic(seed=5)"


def model_config(kind: str) -> Any:
    from kubetrade.onnx_export.models.boosted import XGBoostParams

    trees = XGBoostParams()
    if kind == "xgboost":
        return trees
    from kubetrade.onnx_export.models.ensemble import EnsembleParams
    from kubetrade.onnx_export.models.neural import NeuralParams

    lstm = NeuralParams("lstm", window=WINDOW, hidden=32, epochs=2)
    transformer = NeuralParams("transformer", window=WINDOW, hidden=32, epochs=2)
    if kind == "lstm":
        return lstm
    if kind == "transformer":
        return transformer
    return EnsembleParams((trees, lstm, transformer), method="stacked", folds=2)


@dataclass
class Trained:
    kind: str
    name: str
    checkpoint: Any
    train_seconds: float


def train(kind: str, frames: dict[str, Any], source: str) -> Trained:
    from kubetrade.onnx_export.pipeline import TrainConfig, fit_checkpoint, register_checkpoint

    name = f"bench-{kind}"
    config = TrainConfig(
        name=name, version="1", timeframe="1h", source=source, model=model_config(kind)
    )
    fitted = fit_checkpoint(frames, config)
    register_checkpoint(fitted.checkpoint, name, "1")
    return Trained(kind, name, fitted.checkpoint, fitted.train_seconds)


def micro(trained: Trained, frames: dict[str, Any], seconds: float) -> dict[str, Any]:
    """ONNX Runtime and native latency/throughput; pipeline per-candle cost."""
    from kubetrade.features import default_feature_spec
    from kubetrade.market.frame import to_candles
    from kubetrade.modelstore.predictor import OnnxPredictor
    from kubetrade.onnx_export.dataset import LabelSpec, build_dataset
    from kubetrade.signals import SignalPipeline

    predictor = OnnxPredictor.load(trained.name, "1")
    model = trained.checkpoint.model
    dataset = build_dataset(frames, default_feature_spec(), LabelSpec(), predictor.window)
    inputs = np.ascontiguousarray(dataset.inputs(predictor.window)[-1024:], dtype=np.float32)
    result: dict[str, Any] = {"train_seconds": round(trained.train_seconds, 2)}
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "onnx": predictor.predict_proba,
        "native": model.predict_proba,
    }
    for label, predict in predictors.items():
        one_row = functools.partial(predict, inputs[:1])
        result[f"{label}_one_row"] = percentiles(time_calls(one_row, seconds))
        throughput = {}
        for batch in BATCHES:
            samples = time_calls(functools.partial(predict, inputs[:batch]), seconds / 2, 5)
            throughput[str(batch)] = float(batch / np.median(samples))
        result[f"{label}_rows_per_s"] = throughput

    _symbol, frame = next(iter(frames.items()))
    candles = to_candles(frame, "1h")
    pipeline = SignalPipeline(predictor)
    spec = default_feature_spec()
    pipeline.warm_up(candles[: spec.warmup + predictor.window])
    rest = candles[spec.warmup + predictor.window :][:3000]
    samples = []
    for candle in rest:
        started = time.perf_counter()
        pipeline.process([candle])
        samples.append(time.perf_counter() - started)
    result["pipeline_per_candle"] = percentiles(samples)
    return result


class Server:
    """A `bentoml serve` of one model on 127.0.0.1."""

    def __init__(self, home: Path, model: str, log: Path, **env: str) -> None:
        from kubetrade.embedded import free_port
        from kubetrade.serving.service import serve_command

        self.port = free_port()
        environment = {
            **os.environ,
            **QUIET_ENV,
            "BENTOML_HOME": str(home),
            "KUBETRADE_MODEL_NAME": model,
            "KUBETRADE_HTTP_HOST": "127.0.0.1",
            "KUBETRADE_HTTP_PORT": str(self.port),
            **env,
        }
        self.log = log.open("wb")
        self.process = subprocess.Popen(
            serve_command(environment), env=environment, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited; see {log}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"bentoml serve did not get ready; see {log}")

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of the arbiter and of the worker (the process holding the model)."""
        parent = psutil.Process(self.process.pid)
        children = parent.children(recursive=True)
        return {
            "arbiter_mib": parent.memory_info().rss / 2**20,
            "worker_mib": sum(c.memory_info().rss for c in children) / 2**20,
        }

    def stop(self) -> None:
        """SIGTERM the arbiter (it stops its worker) and wait."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(self.process.pid).children(recursive=True):
                    child.kill()
                self.process.kill()
        self.log.close()


def http_round_trip(port: int, body: bytes, seconds: float) -> dict[str, float]:
    """One keep-alive client, one request at a time."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"content-type": "application/json"}

    def call() -> None:
        connection.request("POST", "/predict", body, headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"/predict answered {response.status}: {payload[:200]!r}")

    return percentiles(time_calls(call, seconds))


def http_concurrent(port: int, body: bytes, seconds: float) -> dict[str, float]:
    """CLIENTS concurrent keep-alive clients (aiohttp), each one request at a time."""
    import aiohttp

    async def client(session: aiohttp.ClientSession, deadline: float, out: list[float]) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.post(
                f"http://127.0.0.1:{port}/predict",
                data=body,
                headers={"content-type": "application/json"},
            ) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"/predict answered {response.status}")
            out.append(time.perf_counter() - started)

    async def run() -> list[float]:
        out: list[float] = []
        connector = aiohttp.TCPConnector(limit=CLIENTS)
        async with aiohttp.ClientSession(connector=connector) as session:
            deadline = time.perf_counter() + seconds
            await asyncio.gather(*(client(session, deadline, out) for _ in range(CLIENTS)))
        return out

    started = time.perf_counter()
    samples = asyncio.run(run())
    elapsed = time.perf_counter() - started
    return {"requests_per_s": len(samples) / elapsed, **percentiles(samples)}


def one_input_body(trained: Trained) -> bytes:
    from kubetrade.features import default_feature_spec

    names = list(default_feature_spec().names)
    sample = trained.checkpoint.parity_inputs[-1:]
    key = "rows" if sample.ndim == 2 else "windows"
    return json.dumps({key: sample.tolist(), "feature_names": names}).encode()


def serve(trained: Trained, home: Path, logs: Path, seconds: float) -> dict[str, Any]:
    server = Server(home, trained.name, logs / f"serve-{trained.kind}.log")
    try:
        body = one_input_body(trained)
        idle = server.rss_mib()
        result: dict[str, Any] = {
            "http_one_row": http_round_trip(server.port, body, seconds),
            "http_16_clients": http_concurrent(server.port, body, seconds),
        }
        result["rss_idle"] = idle
        result["rss_after_load"] = server.rss_mib()
        return result
    finally:
        server.stop()


def nats_bridge(home: Path, logs: Path, frames: dict[str, Any], count: int) -> dict[str, Any]:
    """Candle published -> signal received, through the bridge in the service process."""
    from kubetrade.bus import connect, ensure_stream
    from kubetrade.embedded import start_nats
    from kubetrade.features import default_feature_spec
    from kubetrade.market.frame import to_candles
    from kubetrade.messages import CandleMessage, encode
    from kubetrade.subjects import Subjects

    symbol = next(iter(frames))
    bot = {
        "apiVersion": "kubetrade.io/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": "bench-bridge", "namespace": "bench"},
        "spec": {"symbols": [symbol], "model": {"name": "bench-xgboost", "version": "1"}},
    }
    nats = start_nats(Path(tempfile.mkdtemp(prefix="bench-nats-")))
    server = Server(
        home,
        "bench-xgboost",
        logs / "serve-bridge.log",
        KUBETRADE_SPEC=json.dumps(bot),
        KUBETRADE_NATS_URL=nats.url,
    )
    candles = to_candles(frames[symbol], "1h")
    warm = default_feature_spec().warmup
    subjects = Subjects("bench", "bench-bridge")

    async def run() -> list[float]:
        nc = await connect(nats.url, "bench")
        js = nc.jetstream()
        await ensure_stream(js, subjects)
        received: asyncio.Queue[float] = asyncio.Queue()

        async def on_signal(_: Any) -> None:
            received.put_nowait(time.perf_counter())

        await nc.subscribe(subjects.all_signals, cb=on_signal)
        samples = []
        for index, candle in enumerate(candles[: warm + count]):
            message = CandleMessage.from_candle(candle, time.time_ns() // 1000)
            started = time.perf_counter()
            await js.publish(subjects.candles(candle.symbol), encode(message))
            done = await asyncio.wait_for(received.get(), timeout=30)
            if index >= warm:
                samples.append(done - started)
        await nc.close()
        return samples

    try:
        samples = asyncio.run(run())
        return {"candle_to_signal": percentiles(samples), "candles": len(samples)}
    finally:
        server.stop()
        nats.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help="Comma-separated model kinds.")
    parser.add_argument("--seconds", type=float, default=3.0, help="Per measurement.")
    parser.add_argument("--candles", type=int, default=8000, help="Candles to train on.")
    parser.add_argument("--bridge-candles", type=int, default=500)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench" / "inference.json")
    args = parser.parse_args()

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if any(k != "xgboost" for k in kinds):
        try:
            import torch  # noqa: F401
        except ImportError:
            print("PyTorch not installed: benchmarking xgboost only", file=sys.stderr)
            kinds = [k for k in kinds if k == "xgboost"]
    home = Path(tempfile.mkdtemp(prefix="bench-bentoml-"))
    os.environ["BENTOML_HOME"] = str(home)
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    frames, source = load_frames(args.candles)
    report: dict[str, Any] = {"source": source, "candles": args.candles, "models": {}}
    for kind in kinds:
        print(f"[{kind}] training", file=sys.stderr, flush=True)
        trained = train(kind, frames, source)
        print(f"[{kind}] ONNX Runtime and native", file=sys.stderr, flush=True)
        figures = micro(trained, frames, args.seconds)
        print(f"[{kind}] bentoml serve over HTTP", file=sys.stderr, flush=True)
        figures |= serve(trained, home, logs, args.seconds)
        report["models"][kind] = figures
        print(json.dumps({kind: figures}, indent=1), file=sys.stderr, flush=True)
    if "xgboost" in kinds:
        print("[bridge] NATS candle -> signal", file=sys.stderr, flush=True)
        report["nats_bridge_xgboost"] = nats_bridge(home, logs, frames, args.bridge_candles)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {args.out}; server logs in {logs}", file=sys.stderr)


if __name__ == "__main__":
    main()
