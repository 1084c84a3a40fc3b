"""The model registry: ONNX models with their metadata in the BentoML model store.

Each version is a BentoML model directory holding ``model.onnx`` and ``metadata.json``; the
BentoML model's labels and metadata carry the same facts for ``bentoml models list``. The store
is ``$BENTOML_HOME/models`` (default ``~/bentoml/models``), read when each function is called so
that tests and tools can point it elsewhere at any time.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kubetrade.onnx_export.metadata import ModelMetadata
from kubetrade.settings import quiet_environment

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
LATEST = "latest"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")
_VERSION = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?$")


class ModelNotFoundError(LookupError):
    """The asked-for model or version is not in the store; the message lists what is."""


class RegistryError(RuntimeError):
    """The model could not be registered or read back."""


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One registered model version."""

    name: str
    version: str
    path: Path
    metadata: ModelMetadata
    created_at: datetime

    @property
    def onnx_path(self) -> Path:
        """The ONNX file of this version."""
        return self.path / ONNX_FILE

    @property
    def tag(self) -> str:
        """``name:version``, as BentoML names it."""
        return f"{self.name}:{self.version}"


def store_path() -> Path:
    """The model store directory in effect now."""
    home = os.environ.get("BENTOML_HOME") or str(Path.home() / "bentoml")
    return Path(os.path.expandvars(home)).expanduser() / "models"


def _store() -> Any:
    quiet_environment()
    # Building the store from the path read now, instead of BentoML's process-wide singleton,
    # is what lets BENTOML_HOME change between calls (tests, tools handling several stores).
    from bentoml._internal.models.model import ModelStore

    path = store_path()
    path.mkdir(parents=True, exist_ok=True)
    return ModelStore(path)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use lowercase letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit (at most 63 characters)"
        )


def _labels(metadata: ModelMetadata) -> dict[str, str]:
    return {
        "kubetrade": "true",
        "model-type": metadata.model_type,
        "feature-hash": metadata.feature_hash,
        "horizon": str(metadata.label.horizon),
        "timeframe": metadata.training.timeframe,
    }


def register(
    name: str,
    model_bytes: bytes,
    metadata: ModelMetadata,
    version: str | None = None,
) -> ModelRecord:
    """Store a serialized ONNX model under ``name`` and ``version`` (automatic when None)."""
    _check_name(name)
    if version is not None and (version == LATEST or not _VERSION.match(version)):
        raise ValueError(
            f"invalid model version {version!r}: use letters, digits, '-', '_' or '.' "
            f"(at most 63 characters, not {LATEST!r}), or omit it for an automatic version"
        )
    import bentoml

    store = _store()
    if version is not None and (store_path() / name / version).is_dir():
        raise RegistryError(
            f"model {name} version {version} already exists in {store_path()}; "
            "choose another --version or omit it for an automatic one"
        )
    tag = name if version is None else f"{name}:{version}"
    with bentoml.models.create(
        tag,
        labels=_labels(metadata),
        metadata=metadata.model_dump(mode="json", exclude={"feature_spec"}),
        _model_store=store,
    ) as model:
        directory = Path(model.path)
        (directory / ONNX_FILE).write_bytes(model_bytes)
        (directory / METADATA_FILE).write_text(metadata.model_dump_json(indent=2))
        saved_version = str(model.tag.version)
    record = resolve(name, saved_version)
    log.info(
        "model registered",
        extra={"model": name, "version": record.version, "path": str(record.path)},
    )
    return record


def _versions(name: str) -> list[str]:
    directory = store_path() / name
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.is_dir())


def _names() -> list[str]:
    path = store_path()
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and any(p.iterdir()))


def _record(model: Any) -> ModelRecord:
    directory = Path(model.path)
    metadata_file = directory / METADATA_FILE
    if not (directory / ONNX_FILE).is_file() or not metadata_file.is_file():
        raise RegistryError(
            f"model {model.tag} in {directory} lacks {ONNX_FILE} or {METADATA_FILE}: it was "
            "not registered by kubetrade; register it again with `kubetrade train`"
        )
    return ModelRecord(
        name=str(model.tag.name),
        version=str(model.tag.version),
        path=directory,
        metadata=ModelMetadata.from_json(metadata_file.read_text(), str(metadata_file)),
        created_at=model.creation_time,
    )


def resolve(name: str, version: str = LATEST) -> ModelRecord:
    """The record of ``name`` at ``version`` (``latest``: the most recently registered)."""
    store = _store()
    versions = _versions(name)
    if not versions:
        known = ", ".join(_names()) or "none"
        raise ModelNotFoundError(
            f"no model named {name!r} in {store_path()}; registered models: {known}. "
            "Train one with `kubetrade train --name NAME`"
        )
    if version != LATEST and version not in versions:
        raise ModelNotFoundError(
            f"model {name!r} has no version {version!r} in {store_path()}; "
            f"its versions: {', '.join(versions)} (or use 'latest')"
        )
    return _record(store.get(f"{name}:{version}"))


def list_models(name: str | None = None) -> list[ModelRecord]:
    """Every kubetrade model version (of ``name`` when given) in the store, oldest first.

    Other BentoML models sharing the store are left out: they have no kubetrade metadata.
    """
    store = _store()
    names = [name] if name is not None else _names()
    models = [store.get(f"{n}:{v}") for n in names for v in _versions(n)]
    records = [_record(m) for m in models if m.info.labels.get("kubetrade") == "true"]
    return sorted(records, key=lambda r: (r.created_at, r.name, r.version))
