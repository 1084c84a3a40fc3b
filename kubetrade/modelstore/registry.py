"""The model registry: ONNX models with their metadata in the BentoML model store.

Each version is a BentoML model directory holding ``model.onnx`` and ``metadata.json``; the
BentoML model's labels and metadata carry the same facts for ``bentoml models list``. The store
is ``$BENTOML_HOME/models`` (default ``~/bentoml/models``), read when each function is called so
that tests and tools can point it elsewhere at any time.

``latest`` is what bots get when they name no version: the promoted version when one is
promoted (``promote``; a file ``promoted`` beside the versions, which BentoML ignores), else the
most recently registered one. Promotion is what makes a new version go live: registering one
does not change what a bot that follows ``latest`` serves once a version is promoted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kubetrade.errors import InvalidInputError, ModelError
from kubetrade.modelstore.metadata import ModelMetadata
from kubetrade.settings import quiet_environment

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
LATEST = "latest"
PROMOTED_FILE = "promoted"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")
_VERSION = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?$")


class ModelNotFoundError(ModelError):
    """The asked-for model or version is not in the store; the message lists what is."""


class RegistryError(ModelError):
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
        raise InvalidInputError(
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
        raise InvalidInputError(
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
        # BentoML's metadata takes no None and should stay readable in `bentoml models get`;
        # the whole document is metadata.json.
        metadata=metadata.model_dump(
            mode="json", exclude={"feature_spec", "model", "params"}, exclude_none=True
        ),
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


def promoted_version(name: str) -> str | None:
    """The version of ``name`` promoted to ``latest``, if any (and still in the store)."""
    file = store_path() / name / PROMOTED_FILE
    if not file.is_file():
        return None
    version = file.read_text().strip()
    return version if version in _versions(name) else None


def _check_version(name: str, version: str) -> list[str]:
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
    return versions


def resolve(name: str, version: str = LATEST) -> ModelRecord:
    """The record of ``name`` at ``version`` (``latest``: the promoted version, else the most
    recently registered)."""
    store = _store()
    _check_version(name, version)
    if version == LATEST:
        version = promoted_version(name) or LATEST
    return _record(store.get(f"{name}:{version}"))


def promote(name: str, version: str) -> ModelRecord:
    """Make ``version`` of ``name`` the one ``latest`` names, for every bot that follows it."""
    if version == LATEST:
        raise InvalidInputError("promote a concrete version, not 'latest'")
    record = resolve(name, version)
    file = store_path() / name / PROMOTED_FILE
    staging = file.with_suffix(".tmp")
    staging.write_text(record.version + "\n")
    # A rename is atomic: a server resolving 'latest' meanwhile sees the old or the new file.
    staging.replace(file)
    log.info("model promoted", extra={"model": name, "version": record.version})
    return record


def export_files(name: str, version: str, directory: Path) -> list[Path]:
    """Copy the ONNX file and metadata of ``name:version`` into ``directory`` (created)."""
    record = resolve(name, version)
    directory.mkdir(parents=True, exist_ok=True)
    copied = []
    for file_name in (ONNX_FILE, METADATA_FILE):
        target = directory / file_name
        shutil.copyfile(record.path / file_name, target)
        copied.append(target)
    log.info(
        "model exported",
        extra={"model": name, "version": record.version, "directory": str(directory)},
    )
    return copied


def list_models(name: str | None = None) -> list[ModelRecord]:
    """Every kubetrade model version (of ``name`` when given) in the store, oldest first.

    Other BentoML models sharing the store are left out: they have no kubetrade metadata.
    """
    store = _store()
    names = [name] if name is not None else _names()
    models = [store.get(f"{n}:{v}") for n in names for v in _versions(n)]
    records = [_record(m) for m in models if m.info.labels.get("kubetrade") == "true"]
    return sorted(records, key=lambda r: (r.created_at, r.name, r.version))


def import_dir(directory: Path, name: str, version: str) -> ModelRecord:
    """Register the files :func:`export_files` wrote (``model.onnx``, ``metadata.json``) as
    ``name:version`` in the store in effect now; the inverse of an export.

    Importing the same files again is a no-op (a restarted pod re-imports its model); other
    files under a version that already exists are refused rather than silently served.
    """
    onnx, metadata_file = directory / ONNX_FILE, directory / METADATA_FILE
    missing = [f.name for f in (onnx, metadata_file) if not f.is_file()]
    if missing:
        raise RegistryError(
            f"{directory} lacks {' and '.join(missing)}: import a directory written by "
            "`kubetrade model export` (or `kubetrade model image`)"
        )
    model_bytes = onnx.read_bytes()
    metadata = ModelMetadata.from_json(metadata_file.read_text(), str(metadata_file))
    if version in _versions(name):
        record = resolve(name, version)
        if record.onnx_path.read_bytes() != model_bytes:
            raise RegistryError(
                f"model {name}:{version} in {store_path()} differs from the one in {directory}: "
                "give the new model another version"
            )
        return record
    return register(name, model_bytes, metadata, version=version)
