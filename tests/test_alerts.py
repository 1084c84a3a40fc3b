"""The chart's Prometheus Operator objects: the ServiceMonitor, PodMonitor and PrometheusRule are
rendered only when enabled and the cluster serves monitoring.coreos.com/v1; they select what the
operator and the bots' pods really expose; every metric a rule reads is in our registries; and
every alert is unit-tested by ``promtool test rules`` (tests/promtool/kubetrade-rules.test.yaml:
each alert both firing and not firing) and passes ``promtool check rules``.

promtool is built from the Prometheus Go module by ``make promtool`` (tests/promtool/build.py).
Without it the promtool tests skip, unless KUBETRADE_REQUIRE_PROMTOOL=1 makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from helm_python import _native

from tests.promtool import build as promtool_build

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "kubetrade"
RULES_TESTS = REPO / "tests" / "promtool" / "kubetrade-rules.test.yaml"
SYSTEM = "kubetrade-system"
MONITORING_API = "monitoring.coreos.com/v1"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
REQUIRE_ENV = "KUBETRADE_REQUIRE_PROMTOOL"
PROMTOOL_TIMEOUT_S = 120

# What kubetrade-rules.test.yaml assumes: the chart's default thresholds, and one extra label.
ALL_ON: dict[str, Any] = {
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True},
        "rules": {"enabled": True, "labels": {"team": "trading"}},
    }
}


def render(
    values: dict[str, Any] | None = None, api_versions: tuple[str, ...] = (MONITORING_API,)
) -> list[dict[str, Any]]:
    """The chart rendered as on a cluster serving ``api_versions`` (helm's --api-versions).

    helm-python-sdk's Chart.render does not take api_versions yet; its native helm_render does.
    """
    options = {"name": "kubetrade", "namespace": SYSTEM, "api_versions": list(api_versions)}
    with helm.Chart.load(CHART) as chart:
        rendered = json.loads(
            _native.call_string(
                "helm_render",
                chart._raw(),
                json.dumps(values) if values is not None else None,
                json.dumps(options),
            )
        )
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind]
    return found


def rule_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = one(render(values or ALL_ON), "PrometheusRule")["spec"]["groups"]
    return groups


def alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


# --- when the objects are rendered -------------------------------------------------------


@pytest.mark.parametrize(
    ("enabled", "api_versions", "expected"),
    [
        (True, (MONITORING_API,), MONITORING_KINDS),
        (True, (), set()),  # no Prometheus Operator CRDs: nothing that would fail to apply
        (False, (MONITORING_API,), set()),  # the default: off
    ],
    ids=["enabled-with-crds", "enabled-without-crds", "disabled"],
)
def test_monitoring_objects_need_both_the_values_and_the_crds(
    enabled: bool, api_versions: tuple[str, ...], expected: set[str]
) -> None:
    values = ALL_ON if enabled else None
    kinds = {o["kind"] for o in render(values, api_versions)}

    assert kinds & MONITORING_KINDS == expected
    for obj in render(values, api_versions):
        if obj["kind"] in MONITORING_KINDS:
            assert obj["apiVersion"] == MONITORING_API
            assert obj["metadata"]["namespace"] == SYSTEM


def test_each_monitor_can_be_enabled_alone() -> None:
    for key, kind in (
        ("serviceMonitor", "ServiceMonitor"),
        ("podMonitor", "PodMonitor"),
        ("rules", "PrometheusRule"),
    ):
        kinds = {o["kind"] for o in render({"monitoring": {key: {"enabled": True}}})}
        assert kinds & MONITORING_KINDS == {kind}


def test_the_service_monitor_scrapes_the_operator_s_metrics_service() -> None:
    objects = render({**ALL_ON, "monitoring": {**ALL_ON["monitoring"], "labels": {"a": "b"}}})
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")

    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [SYSTEM]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["a"] == "b"


def test_the_service_monitor_refuses_a_disabled_metrics_service() -> None:
    values = {**ALL_ON, "metrics": {"service": {"enabled": False}}}
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert "needs metrics.service.enabled=true" in str(refused.value)


def test_the_pod_monitor_selects_every_bot_pod_in_the_watched_namespaces() -> None:
    from kubetrade.render import Platform
    from kubetrade.render import render as render_bot
    from kubetrade.spec import load_bot

    bot = load_bot(REPO / "k8s" / "examples" / "synthetic-paper.yaml")
    deployments = [o for o in render_bot(bot, Platform()) if o["kind"] == "Deployment"]
    monitor = one(render(ALL_ON), "PodMonitor")
    selected = monitor["spec"]["selector"]["matchLabels"]
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]

    assert len(deployments) == 3
    for deployment in deployments:
        pod = deployment["spec"]["template"]
        assert selected.items() <= pod["metadata"]["labels"].items()
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert endpoint["port"] in ports
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["bots"]}
    wide = {**ALL_ON, "operator": {"clusterWide": True}}
    assert one(render(wide), "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}


def test_the_rules_select_the_job_labels_the_monitors_set() -> None:
    objects = render(ALL_ON)
    jobs = {
        one(objects, "ServiceMonitor")["spec"]["endpoints"][0]["relabelings"][0]["replacement"],
        one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["relabelings"][0][
            "replacement"
        ],
    }
    exprs = [rule["expr"] for rule in alerts(rule_groups()).values()]

    assert jobs == {"kubetrade-operator", "kubetrade-bots"}
    assert all(set(re.findall(r'job="([^"]+)"', e)) <= jobs for e in exprs)
    assert all(re.search(r'job="[^"]+"', e) for e in exprs), exprs


# --- what the rules read ------------------------------------------------------------------


def test_the_chart_alerts_on_what_the_issue_asks() -> None:
    assert set(alerts(rule_groups())) == {
        "KubetradeBotStalled",
        "KubetradeBotNoProgress",
        "KubetradeWorkerDown",
        "KubetradeBotHalted",
        "KubetradeDrawdownNearBreaker",
        "KubetradeDeadLettersRising",
        "KubetradeOperatorDown",
        "KubetradeReconcileErrors",
    }
    for name, rule in alerts(rule_groups()).items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["labels"]["team"] == "trading", name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def test_every_metric_a_rule_reads_exists_in_our_registries() -> None:
    from prometheus_client import REGISTRY as WORKERS

    import kubetrade.metrics  # noqa: F401  (registers the workers' metrics)
    from kubetrade.operator.metrics import REGISTRY as OPERATOR

    exprs = [rule["expr"] for rule in alerts(rule_groups()).values()]
    used = {m for e in exprs for m in re.findall(r"\b(kubetrade_[a-z_]+)", e)}
    families = [f for registry in (WORKERS, OPERATOR) for f in registry.collect()]
    known = {s.name for f in families for s in f.samples} | {
        f.name + suffix for f in families for suffix in ("", "_total", "_bucket")
    }
    assert len(used) >= 6 and used <= known, used - known
    # Prometheus's own series; no other name may appear.
    others = {m for e in exprs for m in re.findall(r"\b([a-z_]+)\{", e)} - used
    assert others <= {"up"}, others


def test_the_promtool_tests_cover_every_alert_firing_and_quiet() -> None:
    cases = [
        case
        for group in yaml.safe_load(RULES_TESTS.read_text())["tests"]
        for case in group["alert_rule_test"]
    ]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}

    assert firing == quiet == set(alerts(rule_groups()))


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"monitoring": {"rules": {"stalledFor": "five minutes"}}}, "stalledFor"),
        ({"monitoring": {"rules": {"drawdownNearBreaker": 1.5}}}, "drawdownNearBreaker"),
        ({"monitoring": {"podMonitor": {"interval": 30}}}, "interval"),
        ({"monitoring": {"rules": {"severity": "page"}}}, "severity"),
    ],
)
def test_the_values_schema_refuses_bad_monitoring_values(
    values: dict[str, Any], named: str
) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(ALL_ON)
        with pytest.raises(helm.HelmValuesError) as refused:
            chart.validate_schema(values)
    assert named in str(refused.value)


def test_the_chart_lints_clean_with_monitoring_on() -> None:
    report = helm.lint(CHART, ALL_ON, strict=True)

    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


# --- promtool -----------------------------------------------------------------------------


def _promtool() -> Path:
    path = promtool_build.binary_path()
    if promtool_build.is_built():
        return path
    message = (
        f"promtool {promtool_build.PROMETHEUS_VERSION} is not built ({path}): run `make "
        "promtool` (a one-time ~6 min build from the Prometheus Go module)"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message}; {REQUIRE_ENV}=1 makes that a failure")
    pytest.skip(message)


def _write_rules(directory: Path, values: dict[str, Any] | None = None) -> Path:
    """The rendered rule groups as a Prometheus rule file, beside a copy of the unit tests."""
    (directory / "rules.yaml").write_text(
        yaml.safe_dump({"groups": rule_groups(values)}, sort_keys=False)
    )
    shutil.copy(RULES_TESTS, directory / RULES_TESTS.name)
    return directory / "rules.yaml"


def _run(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )


def test_promtool_checks_the_rendered_rules(tmp_path: Path) -> None:
    promtool = _promtool()
    rules = _write_rules(tmp_path)

    checked = _run(promtool, "check", "rules", rules.name, cwd=tmp_path)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts(rule_groups()))} rules found" in checked.stdout


def test_promtool_unit_tests_of_every_alert_pass(tmp_path: Path) -> None:
    promtool = _promtool()
    _write_rules(tmp_path)

    tested = _run(promtool, "test", "rules", RULES_TESTS.name, cwd=tmp_path)

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    """The unit tests bite: at half the breaker instead of 80%, eth's 11% drawdown alerts."""
    promtool = _promtool()
    _write_rules(tmp_path, {**ALL_ON, "monitoring": {**ALL_ON["monitoring"], "rules": {
        **ALL_ON["monitoring"]["rules"], "drawdownNearBreaker": 0.5}}})  # fmt: skip

    tested = _run(promtool, "test", "rules", RULES_TESTS.name, cwd=tmp_path)

    assert tested.returncode != 0
    assert "KubetradeDrawdownNearBreaker" in tested.stdout + tested.stderr


def test_the_drawdown_gauge_is_what_the_drawdown_breaker_compares() -> None:
    from kubetrade.spec import BreakerSpec
    from kubetrade.trading.breakers import BreakerState, drawdown_pct, evaluate

    state = BreakerState(peak_equity=10_000.0, day_start_equity=10_000.0)
    spec = BreakerSpec(max_drawdown_pct=12, max_daily_loss_pct=None)

    assert drawdown_pct(state, 8_800.0) == pytest.approx(12.0)
    assert "drawdown" in evaluate(spec, state, 8_800.0, now=0)
    assert "drawdown" not in evaluate(spec, state, 8_810.0, now=0)
    assert drawdown_pct(state, 10_500.0) == 0.0  # above the peak is no drawdown
    assert drawdown_pct(BreakerState(peak_equity=0.0, day_start_equity=0.0), 5.0) == 0.0
