"""Write k8s/base/ and k8s/dashboards/ from the Helm chart, so both install the same things.

    .venv/bin/python k8s/generate.py           # rewrite them
    .venv/bin/python k8s/generate.py --check   # exit 1 when they are stale

The base is the chart rendered with its default values as release ``kubetrade`` in namespace
``kubetrade-system``, labelled as managed by kustomize instead of Helm; the CRD is the
generated one. The dashboards are the chart's Grafana dashboard ConfigMap. tests/test_chart.py
fails when the files here differ from a fresh render. ``chart_objects`` is also the one chart
render of the tests (tests/test_chart.py, tests/test_operator_e2e.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHART = REPO / "charts" / "kubetrade"
CRD = REPO / "crds" / "tradingbot.yaml"
NAMESPACE = "kubetrade-system"
RELEASE = "kubetrade"
HEADER = "# Generated from charts/kubetrade by k8s/generate.py; do not edit.\n"


def chart_objects(
    values: dict[str, Any] | None = None, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """The chart's templates rendered with the real Helm SDK into ``namespace``, in file order."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=namespace)
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def _unhelmed(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without the labels that say Helm installed it."""

    def relabel(labels: dict[str, str]) -> None:
        labels.pop("helm.sh/chart", None)
        if labels.get("app.kubernetes.io/managed-by") == "Helm":
            labels["app.kubernetes.io/managed-by"] = "kustomize"

    relabel(obj["metadata"].get("labels", {}))
    template = obj.get("spec", {}).get("template", {})
    if template:
        relabel(template["metadata"].get("labels", {}))
    return obj


def generated_files() -> dict[str, str]:
    """Path under k8s/ -> content of every generated file."""
    objects = [_unhelmed(o) for o in chart_objects()]
    # The operator's own namespace and those its Roles live in (the bots' namespaces) must
    # exist before anything is applied into them.
    watched = [o["metadata"]["namespace"] for o in objects if o["kind"] == "Role"]
    namespaces = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        for name in [NAMESPACE, *watched]
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["namespace.yaml", "tradingbot-crd.yaml", "operator.yaml"],
    }
    [dashboard] = [
        _unhelmed(o)
        for o in chart_objects({"dashboards": {"enabled": True}})
        if o["kind"] == "ConfigMap"
    ]

    def dump(documents: list[dict[str, Any]]) -> str:
        return HEADER + yaml.safe_dump_all(documents, sort_keys=False, width=100)

    crd = CRD.read_text().split("\n", 2)[2]  # the CRD without its own generated-by header
    return {
        "base/kustomization.yaml": dump([kustomization]),
        "base/namespace.yaml": dump(namespaces),
        "base/tradingbot-crd.yaml": HEADER + crd,
        "base/operator.yaml": dump(objects),
        "dashboards/kustomization.yaml": dump(
            [{**kustomization, "resources": ["kubetrade-dashboard.yaml"]}]
        ),
        "dashboards/kubetrade-dashboard.yaml": dump([dashboard]),
    }


def _current(name: str, text: str) -> bool:
    path = HERE / name
    return path.exists() and path.read_text() == text


def main(argv: list[str] | None = None) -> int:
    """Write or check the generated files."""
    parser = argparse.ArgumentParser(description="Generate k8s/base and k8s/dashboards.")
    parser.add_argument("--check", action="store_true", help="fail when they are stale")
    args = parser.parse_args(argv)
    files = generated_files()
    if args.check:
        stale = [n for n, text in files.items() if not _current(n, text)]
        if stale:
            print(f"stale in k8s/ ({', '.join(stale)}): run k8s/generate.py", file=sys.stderr)
            return 1
        return 0
    for name, text in files.items():
        (HERE / name).parent.mkdir(exist_ok=True)
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
