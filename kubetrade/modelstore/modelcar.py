"""Model images ("modelcars", after KServe): how a trained model reaches an inference pod.

``kubetrade model image NAME[:VERSION] --output DIR`` writes a build context: the model's
exported files under ``models/<name>/<version>/`` and a Dockerfile that puts them at
``/models/<name>/<version>/`` in an image holding nothing else (a base with ``cp``). With
``spec.model.image`` naming that image, ``render`` adds an init container to the inference pod
that copies ``/models`` into an emptyDir; inference imports every version found there into its
own BentoML store (``BENTOML_HOME`` on the pod's ``/tmp``) at start, then loads
``spec.model`` as always. The model travels through the registry like the worker image, is
pinned by tag or digest in the manifest, and a rollout is a manifest edit (only inference
rolls: its config hash covers ``spec.model``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from kubetrade.errors import InvalidInputError
from kubetrade.modelstore.registry import ModelRecord, export_files, import_dir, resolve
from kubetrade.settings import ENV_MODEL_IMPORT_DIR, MODEL_IMAGE_DIR, POD_MODELS_DIR

__all__ = [
    "ENV_MODEL_IMPORT_DIR",
    "MODEL_IMAGE_DIR",
    "POD_MODELS_DIR",
    "dockerfile",
    "import_models",
    "write_context",
]

log = logging.getLogger(__name__)

DEFAULT_BASE = "docker.io/library/busybox:1.37"
UID = 10001


def dockerfile(name: str, version: str, base: str = DEFAULT_BASE) -> str:
    """The Dockerfile of a model image holding ``name:version``."""
    return (
        f"# Model image (modelcar) of {name}:{version}, written by `kubetrade model image`.\n"
        "#\n"
        f"#   docker build -t REGISTRY/{name}:{version} .\n"
        "#\n"
        "# It holds only the exported model under /models/<name>/<version>/. The inference\n"
        "# pod's init container runs `cp -R /models/. <emptyDir>` (so the base needs cp and\n"
        "# nothing else) and inference imports what it finds there at start.\n"
        f"ARG BASE={base}\n"
        "FROM ${BASE}\n"
        "COPY models/ /models/\n"
        f"USER {UID}:{UID}\n"
    )


def write_context(
    name: str, version: str, output: Path, base: str = DEFAULT_BASE
) -> tuple[ModelRecord, Path]:
    """Write the build context of ``name:version`` (``latest`` resolved) into ``output``.

    Returns the record and the Dockerfile's path. ``output`` must not hold another context.
    """
    record = resolve(name, version)
    if (output / "Dockerfile").exists() or (output / "models").exists():
        raise InvalidInputError(
            f"{output} already holds a build context (Dockerfile or models/): choose an empty "
            "--output directory"
        )
    export_files(record.name, record.version, output / "models" / record.name / record.version)
    file = output / "Dockerfile"
    file.write_text(dockerfile(record.name, record.version, base))
    (output / ".dockerignore").write_text("*\n!models/\n")
    return record, file


def import_models(root: Path) -> list[ModelRecord]:
    """Import every ``<name>/<version>/`` under ``root`` into the store in effect now.

    A missing ``root`` imports nothing: a local run renders the same environment without the
    init container, and serves from the caller's store.
    """
    if not root.is_dir():
        log.info("no model directory to import", extra={"directory": str(root)})
        return []
    records = []
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for version_dir in sorted(p for p in name_dir.iterdir() if p.is_dir()):
            record = import_dir(version_dir, name_dir.name, version_dir.name)
            log.info(
                "model imported",
                extra={"model": record.name, "version": record.version, "from": str(version_dir)},
            )
            records.append(record)
    return records
