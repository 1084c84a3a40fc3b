"""Models reach inference pods as model images (modelcars): ``kubetrade model image`` writes the
build context, ``render`` adds the init container that copies the model into an emptyDir, and
inference imports it into its own empty store at start. A model rollout rolls inference only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest

from kubetrade.embedded import free_port
from kubetrade.modelstore.modelcar import import_models
from kubetrade.modelstore.registry import RegistryError, export_files, import_dir, list_models
from kubetrade.processes import local_processes
from kubetrade.render import CONFIG_HASH_ANNOTATION, Platform, render
from kubetrade.settings import ENV_MODEL_IMPORT_DIR, POD_MODELS_DIR, QUIET_ENV
from kubetrade.spec import ManifestError, TradingBot, parse_bot
from tests.waiting import wait_for

IMAGE = "registry.example:5000/models/btc-model:7"
KUBE_VERSION = "1.37.0"
LOCAL = Platform(database_url="postgresql://localhost/unused")


def make_bot(model: dict[str, Any]) -> TradingBot:
    return parse_bot(
        {
            "apiVersion": "kubetrade.io/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": "btc", "namespace": "bots", "uid": "u-1"},
            "spec": {"symbols": ["BTC/USDT"], "model": model},
        }
    )


def deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o
        for o in objects
        if o["kind"] == "Deployment"
    }


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


# --- render -----------------------------------------------------------------------------


def test_a_model_image_becomes_an_init_container_of_inference_only() -> None:
    bot = make_bot({"name": "btc-model", "version": "7", "image": IMAGE})
    found = deployments(render(bot, Platform()))

    inference = pod(found["inference"])
    [init] = inference["initContainers"]
    assert init["image"] == IMAGE
    assert init["command"] == ["cp", "-R", "/models/.", f"{POD_MODELS_DIR}/"]
    assert init["securityContext"]["runAsUser"] == 10001
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert init["volumeMounts"] == [{"name": "models", "mountPath": POD_MODELS_DIR}]
    assert {"name": "models", "emptyDir": {}} in inference["volumes"]
    [container] = inference["containers"]
    assert {"name": "models", "mountPath": POD_MODELS_DIR, "readOnly": True} in container[
        "volumeMounts"
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[ENV_MODEL_IMPORT_DIR] == POD_MODELS_DIR
    assert "BENTOML_HOME" not in env  # the image's default, on the /tmp emptyDir
    for component in ("feed", "executor"):
        assert "initContainers" not in pod(found[component])
        names = {e["name"] for e in pod(found[component])["containers"][0]["env"]}
        assert ENV_MODEL_IMPORT_DIR not in names
    for obj in render(bot, Platform()):
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_without_a_model_image_nothing_changes() -> None:
    found = deployments(render(make_bot({"name": "btc-model"}), Platform()))
    assert all("initContainers" not in pod(d) for d in found.values())
    assert all(v["name"] != "models" for v in pod(found["inference"])["volumes"])


def test_a_model_image_wins_over_a_read_only_model_store_claim() -> None:
    platform = Platform(model_store="/var/lib/kubetrade/bentoml", model_store_claim="models")
    image = deployments(render(make_bot({"name": "m", "image": IMAGE}), platform))["inference"]
    claim = deployments(render(make_bot({"name": "m"}), platform))["inference"]

    assert all("persistentVolumeClaim" not in v for v in pod(image)["volumes"])
    assert any("persistentVolumeClaim" in v for v in pod(claim)["volumes"])


def test_a_model_rollout_rolls_inference_only() -> None:
    before = make_bot({"name": "btc-model", "version": "7", "image": IMAGE})
    after = make_bot({"name": "btc-model", "version": "8", "image": IMAGE.replace(":7", ":8")})

    def hashes(bot: TradingBot) -> dict[str, str]:
        return {
            c: d["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
            for c, d in deployments(render(bot, Platform())).items()
        }

    old, new = hashes(before), hashes(after)
    assert old["inference"] != new["inference"]
    assert old["feed"] == new["feed"] and old["executor"] == new["executor"]
    rolled = deployments(render(after, Platform()))["inference"]
    assert pod(rolled)["initContainers"][0]["image"].endswith(":8")


@pytest.mark.parametrize(
    "image", ["My/Image:1", "registry/models:tag with space", "a" * 513, "models@sha256:abc"]
)
def test_a_malformed_model_image_is_refused(image: str) -> None:
    with pytest.raises(ManifestError, match=r"spec\.model\.image"):
        make_bot({"name": "m", "image": image})


# --- the model store: import is the inverse of export -------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A BENTOML_HOME holding `delivery-model:1`, a small XGBoost model."""
    from kubetrade.market.synthetic import generate
    from kubetrade.onnx_export.models.boosted import XGBoostParams
    from kubetrade.onnx_export.pipeline import TrainConfig, train_and_register
    from kubetrade.onnx_export.sources import frames_by_symbol

    home = tmp_path_factory.mktemp("trainer-bentoml")
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        frames = frames_by_symbol(generate(["BTC/USDT"], "1h", 1200, seed=5))
        config = TrainConfig(
            name="delivery-model",
            version="1",
            timeframe="1h",
            source="t",
            model=XGBoostParams(n_estimators=20, max_depth=3),
        )
        train_and_register(frames, config)
        yield home
    finally:
        if previous is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = previous


def test_import_dir_is_the_inverse_of_export_and_idempotent(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(trained))
    exported = tmp_path / "exported"
    export_files("delivery-model", "1", exported)
    original = (trained / "models/delivery-model/1/model.onnx").read_bytes()

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "pod-store"))
    record = import_dir(exported, "delivery-model", "1")
    again = import_dir(exported, "delivery-model", "1")

    assert record.onnx_path.read_bytes() == original
    assert again.version == record.version == "1"
    assert [r.tag for r in list_models()] == ["delivery-model:1"]
    (exported / "model.onnx").write_bytes(original + b"\0")
    with pytest.raises(RegistryError, match="differs from the one in"):
        import_dir(exported, "delivery-model", "1")
    with pytest.raises(RegistryError, match=r"lacks model\.onnx and metadata\.json"):
        import_dir(tmp_path / "empty", "delivery-model", "2")


def test_no_model_directory_imports_nothing(tmp_path: Path) -> None:
    assert import_models(tmp_path / "absent") == []


# --- end to end: kubetrade model image -> init container -> inference worker ---------------


@pytest.mark.integration
def test_the_inference_worker_serves_a_model_from_its_image_with_an_empty_store(
    trained: Path, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    cli_env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(trained)}
    written = subprocess.run(
        [sys.executable, "-m", "kubetrade", "model", "image", "delivery-model:1",
         "--output", str(context)],
        env=cli_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    dockerfile = (context / "Dockerfile").read_text()
    assert "COPY models/ /models/" in dockerfile and "USER 10001:10001" in dockerfile
    assert sorted(p.name for p in (context / "models/delivery-model/1").iterdir()) == [
        "metadata.json",
        "model.onnx",
    ]

    bot = make_bot({"name": "delivery-model", "version": "1", "image": IMAGE})
    objects = render(bot, LOCAL)
    inference = deployments(objects)["inference"]
    # The init container's own command, with the image's /models and the pod's emptyDir
    # standing at local paths.
    pod_models = tmp_path / "pod-models"
    pod_models.mkdir()
    [init] = pod(inference)["initContainers"]
    command = [
        arg.replace("/models/.", f"{context}/models/.").replace(POD_MODELS_DIR, str(pod_models))
        for arg in init["command"]
    ]
    subprocess.run(command, check=True, timeout=60)

    empty_store = tmp_path / "inference-bentoml"
    port = free_port()
    [process] = [
        p
        for p in local_processes(
            objects,
            overrides={
                "inference": {
                    ENV_MODEL_IMPORT_DIR: str(pod_models),
                    "BENTOML_HOME": str(empty_store),
                    "KUBETRADE_NATS_URL": "",  # HTTP only: no NATS bridge in this test
                    "KUBETRADE_HTTP_HOST": "127.0.0.1",
                    "KUBETRADE_HTTP_PORT": str(port),
                }
            },
        )
        if p.component == "inference"
    ]
    log = tmp_path / "inference.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            process.command,
            # `kubetrade` as the image has it on PATH: this interpreter's scripts directory.
            env={
                **os.environ,
                **process.env,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert worker.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(f"{url}{process.probes['readiness']}", timeout=2).is_success
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=120, what=f"inference ready (log: {log})")
        info = httpx.get(f"{url}/model", timeout=5).json()
        assert info["ready"] is True
        assert (info["model"]["name"], info["model"]["version"]) == ("delivery-model", "1")
        imported = empty_store / "models/delivery-model/1/model.onnx"
        assert (
            imported.read_bytes() == (trained / "models/delivery-model/1/model.onnx").read_bytes()
        )
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            code = worker.wait(timeout=10)
    assert code == 0, log.read_text()[-3000:]
