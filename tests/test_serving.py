"""The ONNX predictor and the BentoML inference service, served for real by `bentoml serve`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
from nats.aio.msg import Msg

from kubetrade.bus import connect, ensure_stream
from kubetrade.domain import Candle
from kubetrade.embedded import free_port
from kubetrade.errors import InvalidInputError, ModelError
from kubetrade.features import (
    FeatureMismatchError,
    FeatureSpec,
    compute_features,
    default_feature_spec,
)
from kubetrade.market.frame import to_candles
from kubetrade.market.synthetic import generate
from kubetrade.messages import CandleMessage, SignalMessage, decode_signals, encode
from kubetrade.modelstore.predictor import OnnxPredictor
from kubetrade.modelstore.registry import register
from kubetrade.onnx_export.dataset import LabelSpec, build_dataset, chronological_split
from kubetrade.onnx_export.models.boosted import XGBoostModel, XGBoostParams
from kubetrade.onnx_export.pipeline import TrainConfig, train_and_register
from kubetrade.onnx_export.sources import frames_by_symbol
from kubetrade.serving.service import (
    ModelChoice,
    ModelChoiceError,
    model_choice,
    serve_command,
)
from kubetrade.serving.validation import BatchError, CandleIn, check_batch, check_candles
from kubetrade.settings import ENV_HTTP_HOST, ENV_HTTP_PORT, ENV_NATS_URL, ENV_SPEC, QUIET_ENV
from kubetrade.subjects import Subjects
from tests.waiting import wait_for

SMALL = XGBoostParams(n_estimators=40, max_depth=3)
STARTUP_TIMEOUT = 90.0


@dataclass(frozen=True)
class Store:
    """A model store holding a good model and one trained on other features."""

    home: Path
    rows: np.ndarray
    names: list[str]
    candles: pd.DataFrame


def _other_spec() -> FeatureSpec:
    spec = default_feature_spec()
    data = spec.to_dict()
    data["names"] = list(reversed(data["names"]))
    data.pop("hash", None)
    return FeatureSpec.from_dict(data)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """BENTOML_HOME with `serve-test:1` (good) and `serve-mismatch:1` (other feature order)."""
    home = tmp_path_factory.mktemp("bentoml")
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        frames = frames_by_symbol(generate(["BTC/USDT"], "1h", 1500, seed=3))
        good = train_and_register(
            frames,
            TrainConfig(name="serve-test", version="1", timeframe="1h", source="t", model=SMALL),
        )
        other = _other_spec()
        register(
            "serve-mismatch",
            good.record.onnx_path.read_bytes(),
            good.record.metadata.model_copy(
                update={
                    "feature_spec": other.to_dict(),
                    "feature_names": list(other.names),
                    "feature_hash": other.hash,
                }
            ),
            version="1",
        )
        features = compute_features(frames["BTC/USDT"], default_feature_spec())
        rows = features[np.isfinite(features).all(axis=1)][-50:]
        yield Store(home, rows, list(default_feature_spec().names), frames["BTC/USDT"])
    finally:
        if previous is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = previous


@dataclass
class Server:
    """A `bentoml serve` process tree started by a test."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> int:
        """SIGTERM the arbiter, wait for it; the return code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def _start(store: Store, log: Path, **settings: str) -> Server:
    """`bentoml serve` the service with ``settings`` (model, spec, NATS) as its environment."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("KUBETRADE_MODEL_NAME", ENV_NATS_URL, ENV_SPEC)
    }
    env.update(QUIET_ENV)
    env.update(settings)
    env.update(
        {"BENTOML_HOME": str(store.home), ENV_HTTP_HOST: "127.0.0.1", ENV_HTTP_PORT: str(port)}
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            serve_command(env), env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"bentoml serve exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/livez", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    _kill_tree(process)
    raise AssertionError(f"bentoml serve did not start:\n{log.read_text()[-3000:]}")


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """Last resort after a failed test: kill the arbiter we started and its children."""
    try:
        parent = psutil.Process(process.pid)
        children = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for child in children:
        child.kill()
    parent.kill()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The inference service serving `serve-test:latest`."""
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    running = _start(store, log, KUBETRADE_MODEL_NAME="serve-test")
    try:
        yield running
    finally:
        try:
            running.stop()
        finally:
            _kill_tree(running.process)


def _predict(server: Server, body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json=body, timeout=10)


# --- the predictor, in process --------------------------------------------------------------


def test_predictor_matches_xgboost_and_checks_specs(store: Store) -> None:
    os.environ["BENTOML_HOME"] = str(store.home)
    predictor = OnnxPredictor.load("serve-test")
    assert (predictor.model_name, predictor.model_version) == ("serve-test", "1")
    assert predictor.feature_spec.hash == default_feature_spec().hash
    assert predictor.warmup == default_feature_spec().warmup

    # Training is seeded and single-threaded: refitting on the same split gives the same trees,
    # so the served ONNX model must reproduce native XGBoost on them.
    frames = frames_by_symbol(generate(["BTC/USDT"], "1h", 1500, seed=3))
    train, _ = chronological_split(build_dataset(frames, default_feature_spec(), LabelSpec()), 0.2)
    model = XGBoostModel(SMALL)
    model.fit(train)
    native = model.predict_proba(store.rows)
    served = predictor.predict_proba(store.rows)
    assert served.dtype == np.float64 and served.shape == (len(store.rows),)
    np.testing.assert_allclose(served, native, atol=1e-5)
    assert predictor.predict_proba(store.rows[:1])[0] == pytest.approx(served[0], abs=1e-7)

    predictor.check(default_feature_spec())
    with pytest.raises(FeatureMismatchError) as error:
        predictor.check(_other_spec())
    names = list(default_feature_spec().names)
    assert str(names[0]) in str(error.value) and str(names[-1]) in str(error.value)

    assert (predictor.window, predictor.model_type) == (1, "xgboost")
    with pytest.raises(ModelError, match=r"takes rows of \d+ features .*got shape \(50, 58\)"):
        predictor.predict_proba(store.rows[:, :-1])


def test_predictor_single_row_latency(store: Store) -> None:
    os.environ["BENTOML_HOME"] = str(store.home)
    predictor = OnnxPredictor.load("serve-test")
    row = np.ascontiguousarray(store.rows[:1], dtype=np.float32)
    for _ in range(200):
        predictor.predict_proba(row)
    timings = []
    for _ in range(2000):
        started = time.perf_counter()
        predictor.predict_proba(row)
        timings.append(time.perf_counter() - started)
    # Target 50 µs; the bound leaves room for a loaded, shared machine.
    assert float(np.median(timings)) < 250e-6


# --- pure helpers of the service ------------------------------------------------------------


def test_model_choice_prefers_explicit_env_then_bot_spec() -> None:
    assert model_choice({"KUBETRADE_MODEL_NAME": "m"}) == ModelChoice("m", "latest")
    assert model_choice({"KUBETRADE_MODEL_NAME": "m", "KUBETRADE_MODEL_VERSION": "3"}) == (
        ModelChoice("m", "3")
    )
    bot = {
        "apiVersion": "kubetrade.io/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": "b"},
        "spec": {"symbols": ["BTC/USDT"], "model": {"name": "from-spec", "version": "7"}},
    }
    assert model_choice({ENV_SPEC: json.dumps(bot)}) == ModelChoice("from-spec", "7")
    with pytest.raises(ModelChoiceError, match="KUBETRADE_MODEL_NAME"):
        model_choice({})


def test_check_batch_names_what_is_wrong() -> None:
    names = ["a", "b"]
    batch = check_batch([[1.0, 2.0]], names, names)
    assert batch.dtype == np.float32 and batch.shape == (1, 2)
    with pytest.raises(BatchError, match="empty batch"):
        check_batch([], names, names)
    with pytest.raises(BatchError, match=r"expected \['a', 'b'\], got \['b', 'a'\]"):
        check_batch([[1.0, 2.0]], ["b", "a"], names)
    with pytest.raises(BatchError, match="row 1 has 1 values"):
        check_batch([[1.0, 2.0], [1.0]], names, names)
    with pytest.raises(BatchError, match="row 0 feature 'b' is nan"):
        check_batch([[1.0, float("nan")]], names, names)
    with pytest.raises(BatchError, match="send them as `rows`, not `windows`"):
        check_batch(None, names, names, windows=[[[1.0, 2.0]]])


def test_check_batch_of_windows() -> None:
    names = ["a", "b"]
    window = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    batch = check_batch(None, names, names, 3, [window, window])
    assert batch.shape == (2, 3, 2)
    with pytest.raises(BatchError, match=r"windows of 3 consecutive feature rows.*\[n, 3, 2\]"):
        check_batch([[1.0, 2.0]], names, names, 3)
    with pytest.raises(
        BatchError, match="window 1 has 2 rows; the model takes windows of exactly 3"
    ):
        check_batch(None, names, names, 3, [window, window[:2]])
    with pytest.raises(BatchError, match="window 0 row 2 has 1 values"):
        check_batch(None, names, names, 3, [[*window[:2], [1.0]]])
    with pytest.raises(BatchError, match="window 1 row 0 feature 'a' is inf"):
        check_batch(None, names, names, 3, [window, [[float("inf"), 1.0], *window[1:]]])


def _candles_in(frame: pd.DataFrame) -> list[CandleIn]:
    return [
        CandleIn(
            open_time=int(r.open_time),
            open=r.open,
            high=r.high,
            low=r.low,
            close=r.close,
            volume=r.volume,
        )
        for r in frame.itertuples()
    ]


def test_check_candles_refuses_short_gapped_or_impossible_series(store: Store) -> None:
    candles = _candles_in(store.candles.iloc[:10])
    columns = check_candles(candles, 3_600_000, 10)
    np.testing.assert_array_equal(columns["close"], store.candles["close"].iloc[:10])
    with pytest.raises(BatchError, match="10 candles are too few: the model needs the last 11"):
        check_candles(candles, 3_600_000, 11)
    with pytest.raises(BatchError, match=r"candle 5 opens at .*not 3600000 ms after candle 4"):
        check_candles([*candles[:5], *candles[6:]], 3_600_000, 5)
    broken = [
        *candles[:3],
        candles[3].model_copy(update={"low": candles[3].high * 2}),
        *candles[4:],
    ]
    with pytest.raises(BatchError, match=r"candle 3 .* has impossible prices"):
        check_candles(broken, 3_600_000, 5)


def test_serve_command_binds_the_configured_address() -> None:
    command = serve_command({ENV_HTTP_HOST: "127.0.0.1", ENV_HTTP_PORT: "3123"})
    assert command[1:5] == ["-m", "bentoml", "serve", "kubetrade.serving.service:InferenceService"]
    assert command[-4:] == ["--host", "127.0.0.1", "--port", "3123"]
    with pytest.raises(InvalidInputError, match="not a port number"):
        serve_command({ENV_HTTP_PORT: "http"})


# --- the real service -----------------------------------------------------------------------


def test_every_log_line_of_the_service_is_json(server: Server, store: Store) -> None:
    """BentoML's arbiter and worker configure their own text format; ours replaces it."""
    good = {"rows": store.rows[:2].tolist(), "feature_names": store.names}
    assert _predict(server, good).is_success
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    assert _predict(server, {"rows": [[1.0]], "feature_names": ["x"]}).is_client_error
    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    assert lines, "the service logged nothing"
    not_json = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            not_json.append(line)
            continue
        assert record["component"] == "inference", record
    assert not not_json, f"{len(not_json)} of {len(lines)} lines are not JSON: {not_json[:3]}"


def test_predict_over_http(server: Server, store: Store) -> None:
    response = _predict(server, {"rows": store.rows.tolist(), "feature_names": store.names})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"]) == ("serve-test", "1")
    assert body["feature_hash"] == default_feature_spec().hash
    os.environ["BENTOML_HOME"] = str(store.home)
    expected = OnnxPredictor.load("serve-test").predict_proba(store.rows)
    np.testing.assert_allclose(body["probabilities"], expected, atol=1e-7)


def test_health_model_and_metrics(server: Server, store: Store) -> None:
    assert httpx.get(f"{server.url}/livez").status_code == 200
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200, ready.text

    info = httpx.get(f"{server.url}/model").json()
    assert info["ready"] is True
    assert info["model"]["name"] == "serve-test"
    assert info["model"]["feature_names"] == store.names
    assert info["model"]["parity_max_abs_diff"] <= 1e-5

    _predict(server, {"rows": store.rows[:2].tolist(), "feature_names": store.names})
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'kubetrade_inference_requests_total{endpoint="predict",outcome="ok"}' in metrics
    assert "kubetrade_inference_batch_rows_bucket" in metrics
    assert "kubetrade_inference_model_ready" in metrics
    assert "bentoml_service_request_duration_seconds" in metrics


@pytest.mark.parametrize(
    ("mutate", "status", "message"),
    [
        (lambda rows, names: {"rows": [], "feature_names": names}, 422, "empty batch"),
        (
            lambda rows, names: {"rows": rows, "feature_names": names[::-1]},
            422,
            "feature names do not match the model: expected [",
        ),
        (
            lambda rows, names: {"rows": [r[:-1] for r in rows], "feature_names": names},
            422,
            "row 0 has",
        ),
        (
            lambda rows, names: {
                "rows": [[float("nan"), *r[1:]] for r in rows],
                "feature_names": names,
            },
            422,
            "must be finite numbers",
        ),
        (
            lambda rows, names: {"rows": [[None, *r[1:]] for r in rows], "feature_names": names},
            400,
            "validation error",
        ),
        (lambda rows, names: {"rows": rows}, 400, "feature_names"),
        (
            lambda rows, names: {"windows": [rows], "feature_names": names},
            422,
            "send them as `rows`, not `windows`",
        ),
        (
            lambda rows, names: {"rows": [[*r, 1.0] for r in rows], "feature_names": names},
            422,
            "row 0 has 60 values",
        ),
    ],
    ids=["empty", "names", "count", "nan", "null", "no-names", "windows", "too-many"],
)
def test_bad_requests_get_4xx_with_a_message(
    server: Server, store: Store, mutate: object, status: int, message: str
) -> None:
    assert callable(mutate)
    body = mutate(store.rows[:3].tolist(), store.names)
    response = httpx.post(
        f"{server.url}/predict",
        content=json.dumps(body),  # json.dumps writes NaN, as numpy-based clients do
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == status, response.text
    assert message in response.text


def test_signal_from_recent_candles(server: Server, store: Store) -> None:
    spec = default_feature_spec()
    recent = store.candles.iloc[-(spec.warmup + 20) :]
    body: dict[str, Any] = {
        "symbol": "BTC/USDT",
        "timeframe": "1h",
        "candles": [c.model_dump() for c in _candles_in(recent)],
    }
    response = httpx.post(f"{server.url}/signal", json=body, timeout=10)
    assert response.status_code == 200, response.text
    signal = response.json()
    assert signal["symbol"] == "BTC/USDT"
    assert signal["open_time"] == int(recent["open_time"].iloc[-1])
    # The same candle's features through /predict: the signal is that row's prediction.
    row = compute_features(store.candles, spec)[-1:]
    expected = _predict(server, {"rows": row.tolist(), "feature_names": store.names}).json()
    assert signal["prob_up"] == pytest.approx(expected["probabilities"][0], abs=1e-6)
    assert signal["direction"] == ("up" if signal["prob_up"] > 0.5 else "down")
    assert signal["confidence"] == pytest.approx(abs(2 * signal["prob_up"] - 1))
    assert (signal["model_name"], signal["model_version"]) == ("serve-test", "1")

    short = {**body, "candles": body["candles"][-10:]}
    response = httpx.post(f"{server.url}/signal", json=short, timeout=10)
    assert response.status_code == 422 and "10 candles are too few" in response.text
    gapped = {**body, "candles": body["candles"][:100] + body["candles"][101:]}
    response = httpx.post(f"{server.url}/signal", json=gapped, timeout=10)
    assert response.status_code == 422 and "without gaps" in response.text
    response = httpx.post(f"{server.url}/signal", json={**body, "timeframe": "7m"}, timeout=10)
    assert response.status_code == 422 and "unknown timeframe '7m'" in response.text
    response = httpx.post(f"{server.url}/signal", json={"candles": "none"}, timeout=10)
    assert response.status_code == 400
    assert httpx.get(f"{server.url}/readyz").status_code == 200, "bad requests crash nothing"


def test_mismatched_model_keeps_the_service_up_but_not_ready(store: Store, tmp_path: Path) -> None:
    server = _start(store, tmp_path / "mismatch.log", KUBETRADE_MODEL_NAME="serve-mismatch")
    try:
        tree = psutil.Process(server.process.pid).children(recursive=True)
        assert httpx.get(f"{server.url}/livez").status_code == 200
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        expected = list(_other_spec().names)
        actual = list(default_feature_spec().names)
        assert "feature mismatch" in ready.text
        assert f"model expects {len(expected)} features {expected}" in ready.text
        assert f"this code computes {len(actual)} {actual}" in ready.text
        response = _predict(server, {"rows": store.rows[:1].tolist(), "feature_names": actual})
        assert response.status_code == 503
        assert "feature mismatch" in response.json()["error"]
        assert httpx.get(f"{server.url}/model").json()["ready"] is False

        assert server.stop() == 0, "SIGTERM stops bentoml serve cleanly"
        wait_for(
            lambda: not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
            "every process of bentoml serve to exit",
            10,
        )
    finally:
        _kill_tree(server.process)


async def _signals_for(
    nats_url: str, subjects: Subjects, candles: list[Candle]
) -> list[SignalMessage]:
    """Publish candles to the bot's stream and collect one signal per candle."""
    nc = await connect(nats_url, "test-serving")
    try:
        js = nc.jetstream()
        await ensure_stream(js, subjects)
        received: asyncio.Queue[SignalMessage] = asyncio.Queue()

        async def collect(msg: Msg) -> None:
            for signal in decode_signals(msg.subject, msg.data):
                received.put_nowait(signal)

        await nc.subscribe(subjects.all_signals, cb=collect)
        for candle in candles:
            message = CandleMessage.from_candle(candle, time.time_ns() // 1000)
            await js.publish(subjects.candles(candle.symbol), encode(message))
        return [await asyncio.wait_for(received.get(), timeout=30) for _ in candles]
    finally:
        await nc.close()


@pytest.mark.integration
def test_nats_bridge_shares_the_model_of_the_service_process(
    store: Store, nats_url: str, tmp_path: Path
) -> None:
    bot = {
        "apiVersion": "kubetrade.io/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": "bridge-test", "namespace": "serving"},
        "spec": {"symbols": ["BTC/USDT"], "model": {"name": "serve-test", "version": "1"}},
    }
    server = _start(
        store, tmp_path / "bridge.log", KUBETRADE_SPEC=json.dumps(bot), KUBETRADE_NATS_URL=nats_url
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while httpx.get(f"{server.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, httpx.get(f"{server.url}/readyz").text
            time.sleep(0.2)
        info = httpx.get(f"{server.url}/model").json()
        assert info["bridge"]["state"] == "running"
        assert len(psutil.Process(server.process.pid).children(recursive=True)) == 1

        spec = default_feature_spec()
        frame = generate(["BTC/USDT"], "1h", spec.warmup + 4, seed=5)
        signals = asyncio.run(
            _signals_for(nats_url, Subjects("serving", "bridge-test"), to_candles(frame, "1h"))
        )
        predicted = [s.prediction.prob_up for s in signals if s.prediction is not None]
        assert len(predicted) == 5, "one prediction per candle once the features are warm"
        rows = compute_features(frame, spec)[-5:]
        served = _predict(server, {"rows": rows.tolist(), "feature_names": store.names}).json()
        np.testing.assert_allclose(predicted, served["probabilities"], atol=1e-7)

        assert server.stop() == 0
    finally:
        _kill_tree(server.process)


def test_a_signal_batch_with_a_strategys_features_stays_within_the_message_budget() -> None:
    """Signals that carry every feature of the registry, each value at its longest, split into
    messages that stay under the budget (NATS refuses a payload over 1 MiB)."""
    from kubetrade.domain import Direction, MarketEvent, Prediction
    from kubetrade.messages import SignalBatch
    from kubetrade.serving.bridge import MESSAGE_BUDGET_BYTES, signals_per_message
    from kubetrade.signals import SignalPipeline

    spec = default_feature_spec()
    pipeline = SignalPipeline(None, strategy_features=spec)
    per_message = signals_per_message(pipeline)
    longest = -1.2345678901234567e-300  # 24 characters in JSON
    values = dict.fromkeys(spec.names, longest)
    candle = Candle("BTC/USDT", "1h", 1_700_000_000_000, 1e-300, 1e300, 1e-300, 1e300, 1e300)
    prediction = Prediction(
        0.1234567890123456, Direction.UP, 0.1234567890123456, "m" * 63, "v" * 63, "f" * 64
    )
    event = MarketEvent(candle, prediction, values, values)
    signal = SignalMessage.from_event(event, 2**62, 2**62)
    payload = encode(SignalBatch(signals=[signal] * per_message))
    assert 1 < per_message < 500
    assert len(payload) <= MESSAGE_BUDGET_BYTES
    # No budget to keep without features: a candle batch's signals go in one message.
    assert signals_per_message(SignalPipeline(None)) >= 500
