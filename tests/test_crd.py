"""The TradingBot CRD: generated from the spec, checked in, structural, and as strict as the model.

The API server's admission is emulated here with real validators: defaults are applied the
way the server applies them, then the OpenAPI v3.0 schema is checked with
``openapi-schema-validator``, unknown fields are refused as ``kubectl apply`` (strict field
validation) refuses them, and the CEL rules run in ``cel-python``. A real kube-apiserver checks
the same file in the control-plane tests.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, V1JSONSchemaProps

from kubetrade import crd
from kubetrade.spec import URL_NEEDS_SHA256, ManifestError, TradingBotSpec, parse_bot

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "k8s" / "examples").glob("*.yaml"))
SCHEMA = crd.object_schema()
KNOWN_SCHEMA_KEYS = set(V1JSONSchemaProps.attribute_map.values())

Validate = Callable[[dict[str, Any]], list[str]]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (``.items`` for list items, ``.*`` for map values)."""
    yield path, node
    for name, prop in node.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def manifest(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetrade.io/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": "btc-trend", "namespace": "bots"},
        "spec": {"symbols": ["BTC/USDT"], "model": {"name": "btc-xgb"}, **spec},
    }


def rule_manifest(**spec: Any) -> dict[str, Any]:
    """A bot whose strategy uses no model (no spec.model)."""
    document = manifest(**spec)
    del document["spec"]["model"]
    return document


# --- the checked-in file ------------------------------------------------------------------


def test_checked_in_crd_is_the_generated_one() -> None:
    assert crd.CRD_PATH.read_text(encoding="utf-8") == crd.render_yaml(), (
        f"{crd.CRD_PATH} is stale: the spec model changed; run `make crds` and commit it"
    )


def test_check_fails_on_a_stale_file_and_write_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "crds" / "tradingbot.yaml"

    assert crd.main(["--check", "--path", str(path)]) == 1
    assert "is missing: run `make crds`" in capsys.readouterr().err

    path.parent.mkdir()
    path.write_text(crd.render_yaml().replace("tradingbots", "tradingbotz"))
    assert crd.main(["--check", "--path", str(path)]) == 1
    assert "is stale: run `make crds`" in capsys.readouterr().err

    assert crd.main(["--write", "--path", str(path)]) == 0
    assert crd.main(["--check", "--path", str(path)]) == 0
    assert path.read_text() == crd.render_yaml()


def test_without_options_it_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert crd.main([]) == 0

    assert yaml.safe_load(capsys.readouterr().out) == crd.custom_resource_definition()


# --- the resource definition ------------------------------------------------------------


def test_names_group_version_and_subresources() -> None:
    definition = crd.custom_resource_definition()
    spec = definition["spec"]
    [version] = spec["versions"]

    assert definition["metadata"]["name"] == "tradingbots.kubetrade.io"
    assert spec["group"] == "kubetrade.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "TradingBot"
    assert spec["names"]["plural"] == "tradingbots"
    assert spec["names"]["shortNames"] == ["tb", "bot"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_the_kubernetes_client_reads_the_crd() -> None:
    # The public deserialize() changed its signature across client versions; this did not.
    deserialize = ApiClient()._ApiClient__deserialize  # type: ignore[attr-defined]

    parsed = deserialize(crd.custom_resource_definition(), "V1CustomResourceDefinition")

    schema = parsed.spec.versions[0].schema.open_apiv3_schema
    rules = schema.properties["spec"].x_kubernetes_validations
    spec_rules = SCHEMA["properties"]["spec"]["x-kubernetes-validations"]
    assert [r.message for r in rules] == [r["message"] for r in spec_rules]
    assert schema.properties["spec"].properties["exchange"].properties["uri"].nullable


def test_printer_columns_point_at_fields_of_the_schema() -> None:
    paths = {path for path, _ in walk(SCHEMA)}
    columns = crd.PRINTER_COLUMNS

    assert [c["name"] for c in columns] == [
        "Phase", "Mode", "Symbols", "Model", "Equity", "PnL", "Age"
    ]  # fmt: skip
    for column in columns:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            continue
        assert column["jsonPath"] in paths, column
        node = dict(walk(SCHEMA))[column["jsonPath"]]
        expected = {"string": ("string", "array"), "number": ("number", "integer")}
        assert node["type"] in expected[column["type"]], column


# --- structural schema -----------------------------------------------------------------


def test_the_schema_is_structural() -> None:
    for path, node in walk(SCHEMA):
        where = path or "(root)"
        assert "type" in node, f"{where} has no type"
        assert set(node) <= KNOWN_SCHEMA_KEYS, f"{where}: {set(node) - KNOWN_SCHEMA_KEYS}"
        for key in ("$ref", "$defs", "definitions", "title", "anyOf", "oneOf", "allOf", "not"):
            assert key not in node, f"{where} has {key}"
        # One exception: a strategy's parameters, which the strategy validates (an installed
        # package's strategy is unknown to the API server).
        if where == ".spec.strategy.params":
            assert node["x-kubernetes-preserve-unknown-fields"] is True
            continue
        assert not node.get("x-kubernetes-preserve-unknown-fields"), where
        assert not node.get("uniqueItems"), f"{where}: uniqueItems is refused by the API server"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{where}: properties with additional"
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(key, True) is True, f"{where}: {key} must be a flag in OpenAPI v3.0"
        if node["type"] == "object" and node is not SCHEMA["properties"]["metadata"]:
            assert "properties" in node or "additionalProperties" in node, where


def test_defaults_are_kept_without_nulls() -> None:
    nodes = dict(walk(SCHEMA))

    assert nodes[".spec.mode"]["default"] == "paper"
    assert nodes[".spec.timeframe"]["default"] == "1h"
    assert nodes[".spec.risk.breakers.maxDrawdownPct"]["default"] == 15
    assert nodes[".spec.exchange"]["default"] == {
        "name": "synthetic", "speed": 0.0, "seed": 7, "sandbox": False, "websocket": True
    }  # fmt: skip
    for path, node in nodes.items():
        if "default" in node:
            assert "null" not in json.dumps(node["default"]), path


def test_descriptions_types_and_enums_come_from_the_model() -> None:
    nodes = dict(walk(SCHEMA))

    assert nodes[".spec.exchange.speed"]["description"].startswith("Replay pacing")
    assert nodes[".spec.mode"]["enum"] == ["paper", "live"]
    assert nodes[".spec.strategy.type"]["pattern"] == "^[a-z][a-z0-9-]{0,62}$"
    assert nodes[".spec.risk.sizing.method"]["enum"] == ["kelly", "fixed-fraction", "volatility"]
    assert nodes[".spec.risk.trailingStop"]["nullable"] is True
    percent = nodes[".spec.risk.sizing.maxPositionPct"]
    assert (percent["minimum"], percent["exclusiveMinimum"], percent["maximum"]) == (0, True, 100)
    assert nodes[".spec.resources.feed.requests.*"] == {"type": "string"}
    assert nodes[".spec"]["required"] == ["symbols"]
    assert set(nodes[".spec"]["properties"]) == {
        f.alias or n for n, f in TradingBotSpec.model_fields.items()
    }


def test_cel_rules_mirror_the_model_validators() -> None:
    celpy = pytest.importorskip("celpy", reason="cel-python (a dev dependency) compiles CEL")
    nodes = dict(walk(SCHEMA))
    messages = {
        path: [rule["message"] for rule in node.get("x-kubernetes-validations", [])]
        for path, node in nodes.items()
    }

    assert messages[".spec"] == [
        "live mode needs a real exchange, not synthetic or replay",
        "live mode needs exchange.credentialsSecret",
        "live mode needs liveConfirmed: true (it sends real orders)",
        "live trading is supported on binance, bybit, coinbase, kraken",
        "the strategy needs a model: set spec.model",
        "the strategy uses no model: remove spec.model (or use hybrid)",
    ]
    assert messages[".spec.exchange"] == [
        "this exchange has no testnet: set exchange.sandbox: false",
        "exchange.name 'replay' needs exchange.uri (a CSV or Parquet file)",
        URL_NEEDS_SHA256,
    ]
    assert messages[".spec.strategy"] == [
        "the threshold strategy takes its parameters as fields of strategy (longAbove, "
        "exitBelow, ...), not params",
        "exitBelow must not exceed longAbove",
        "exitAbove must not be below shortBelow",
    ]
    assert messages[""][0].startswith("metadata.name must be a DNS label")
    environment = celpy.Environment()
    for path, node in nodes.items():
        for rule in node.get("x-kubernetes-validations", []):
            environment.compile(rule["rule"])
            field = rule.get("fieldPath")
            assert field is None or f"{path}{field}" in nodes, (path, field)


# --- admission: the CRD refuses what the model refuses ------------------------------------


def _number_as_double(schema: dict[str, Any], value: Any) -> Any:
    """CEL sees a ``number`` field as a double even when the JSON holds an integer."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The object with schema defaults filled in, top-down, as the API server does."""
    value = _number_as_double(schema, value)
    if isinstance(value, dict) and "properties" in schema:
        for name, prop in schema["properties"].items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = apply_defaults(prop, value[name])
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key in value:
            value[key] = apply_defaults(schema["additionalProperties"], value[key])
    elif isinstance(value, list) and "items" in schema:
        value[:] = [apply_defaults(schema["items"], item) for item in value]
    return value


def strict_field_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """Unknown and duplicate-set fields, which ``kubectl apply`` (strict validation) refuses."""
    errors = []
    if isinstance(value, dict) and "properties" in schema:
        for name, item in value.items():
            if name not in schema["properties"]:
                if path != ".metadata":
                    errors.append(f"{path}.{name}: unknown field")
                continue
            errors += strict_field_errors(schema["properties"][name], item, f"{path}.{name}")
    elif isinstance(value, list) and "items" in schema:
        if schema.get("x-kubernetes-list-type") == "set" and len(set(value)) != len(value):
            errors.append(f"{path}: duplicate entries in a set")
        for index, item in enumerate(value):
            errors += strict_field_errors(schema["items"], item, f"{path}[{index}]")
    return errors


def cel_errors(celpy: Any, schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """Messages of the CEL rules that do not hold (an evaluation error counts as a failure)."""
    if value is None:
        return []
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        environment = celpy.Environment()
        program = environment.program(environment.compile(rule["rule"]))
        try:
            holds = bool(program.evaluate({"self": celpy.json_to_cel(value)}))
        except celpy.CELEvalError:
            holds = False
        if not holds:
            errors.append(f"{path or '(root)'}: {rule['message']}")
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name in value:
                errors += cel_errors(celpy, prop, value[name], f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += cel_errors(celpy, schema["items"], item, f"{path}[{index}]")
    return errors


@pytest.fixture(scope="module")
def admit() -> Validate:
    """Admission of one object by the CRD: the error messages, empty when admitted."""
    validators = pytest.importorskip(
        "openapi_schema_validator",
        reason="openapi-schema-validator (a dev dependency) checks the OpenAPI v3.0 schema",
    )
    celpy = pytest.importorskip("celpy", reason="cel-python (a dev dependency) runs CEL")
    validator = validators.OAS30Validator(SCHEMA)

    def run(document: dict[str, Any]) -> list[str]:
        obj = apply_defaults(SCHEMA, copy.deepcopy(document))
        errors = [
            f".{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
        errors += strict_field_errors(SCHEMA, obj, "")
        return errors or cel_errors(celpy, SCHEMA, obj, "")

    return run


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_examples_are_admitted(admit: Validate, path: Path) -> None:
    [document] = [d for d in yaml.safe_load_all(path.read_text()) if d]

    assert admit(document) == []


def test_defaults_applied_by_the_server_give_the_model_defaults() -> None:
    document = manifest()
    defaulted = apply_defaults(SCHEMA, copy.deepcopy(document))

    assert parse_bot(defaulted) == parse_bot(document)


def test_a_rule_bot_read_back_with_the_servers_defaults_is_the_same_bot() -> None:
    # The server fills in longAbove and the other threshold fields beside type: sma-crossover;
    # only a changed threshold field is refused for another type.
    document = rule_manifest(strategy={"type": "sma-crossover", "params": {"fast": 5}})
    defaulted = apply_defaults(SCHEMA, copy.deepcopy(document))

    assert defaulted["spec"]["strategy"]["longAbove"] == 0.6
    assert parse_bot(defaulted) == parse_bot(document)


ACCEPTED = {
    "minimal": {},
    "live with keys and confirmation": {
        "mode": "live",
        "liveConfirmed": True,
        "exchange": {"name": "binance", "credentialsSecret": "binance-keys"},
    },
    "replay with a file": {"exchange": {"name": "replay", "uri": "candles.csv", "speed": 60}},
    "replay of a checked download": {
        "exchange": {
            "name": "replay",
            "uri": "https://data.example/c.csv",
            "sha256": "0123456789abcdef" * 4,
        }
    },
    "model from an image": {
        "model": {"name": "m", "version": "3", "image": "registry.example:5000/models/m:3"}
    },
    "shorts with ordered thresholds": {
        "strategy": {"allowShort": True, "shortBelow": 0.3, "exitAbove": 0.45}
    },
    "exits switched off": {"risk": {"stopLoss": None, "takeProfit": None}},
    "every breaker off": {"risk": {"breakers": {"maxDailyLossPct": None, "maxDrawdownPct": None}}},
    "integer thresholds": {"strategy": {"longAbove": 1, "exitBelow": 0}},
    "durations": {"risk": {"maxHolding": "1d12h", "breakers": {"consecutiveLossCooldown": "90m"}}},
    "resources": {"resources": {"inference": {"limits": {"memory": "1Gi"}}}},
}

REFUSED = {
    "percent above 100": ({"risk": {"breakers": {"maxDrawdownPct": 150}}}, "maxDrawdownPct"),
    "zero trailing percent": ({"risk": {"trailingStop": {"trailPct": 0}}}, "trailPct"),
    "unknown sizing method": ({"risk": {"sizing": {"method": "martingale"}}}, "martingale"),
    "threshold with params": ({"strategy": {"params": {"fast": 3}}}, "not params"),
    "strategy type with capitals": ({"strategy": {"type": "SMA"}}, "strategy.type"),
    "bad timeframe": ({"timeframe": "7m"}, "spec.timeframe"),
    "bad symbol": ({"symbols": ["btc-usdt"]}, "spec.symbols.0"),
    "duplicate symbols": ({"symbols": ["BTC/USDT", "BTC/USDT"]}, "duplicate entries"),
    "no symbols": ({"symbols": []}, "spec.symbols"),
    "replay without a file": ({"exchange": {"name": "replay"}}, "needs exchange.uri"),
    "download without sha256": (
        {"exchange": {"name": "replay", "uri": "HTTPS://data.example/c.csv"}},
        "needs exchange.sha256",
    ),
    "sha256 not hex": ({"exchange": {"sha256": "xyz"}}, "sha256"),
    "model image with spaces": ({"model": {"name": "m", "image": "my image"}}, "image"),
    "live on synthetic": ({"mode": "live", "liveConfirmed": True}, "needs a real exchange"),
    "live without keys": (
        {"mode": "live", "liveConfirmed": True, "exchange": {"name": "binance"}},
        "needs exchange.credentialsSecret",
    ),
    "live unconfirmed": (
        {"mode": "live", "exchange": {"name": "binance", "credentialsSecret": "binance-keys"}},
        "needs liveConfirmed: true",
    ),
    "live on an unsupported exchange": (
        {
            "mode": "live",
            "liveConfirmed": True,
            "exchange": {"name": "okx", "credentialsSecret": "k"},
        },
        "live trading",
    ),
    "a testnet that does not exist": (
        {"exchange": {"name": "kraken", "sandbox": True}},
        "has no testnet",
    ),
    "exit above entry": ({"strategy": {"longAbove": 0.4, "exitBelow": 0.5}}, "exitBelow"),
    "short exit below entry": (
        {"strategy": {"allowShort": True, "shortBelow": 0.4, "exitAbove": 0.3}},
        "exitAbove",
    ),
    "bad duration": ({"risk": {"maxHolding": "forever"}}, "maxHolding"),
    "empty duration": ({"risk": {"maxHolding": ""}}, "maxHolding"),
    "fee too high": ({"execution": {"feeRate": 0.5}}, "feeRate"),
    "model without name": ({"model": {"version": "3"}}, "'name' is a required property"),
    "unknown field": ({"riskk": {}}, ".spec.riskk: unknown field"),
    "snake_case field": ({"risk": {"stop_loss": {}}}, ".spec.risk.stop_loss: unknown field"),
    "mode mistyped": ({"mode": "Live"}, "spec.mode"),
}


def _model_accepts(document: dict[str, Any]) -> bool:
    try:
        parse_bot(copy.deepcopy(document))
    except ManifestError:
        return False
    return True


@pytest.mark.parametrize("spec", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_what_the_model_accepts_the_crd_admits(admit: Validate, spec: dict[str, Any]) -> None:
    document = manifest(**spec)

    assert _model_accepts(document)
    assert admit(document) == []


@pytest.mark.parametrize(("spec", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_what_the_model_refuses_the_crd_refuses(
    admit: Validate, spec: dict[str, Any], reason: str
) -> None:
    document = manifest(**spec)

    assert not _model_accepts(document)
    errors = admit(document)
    assert any(reason in e for e in errors), errors


def test_rule_bots_need_no_model_and_model_strategies_need_one(admit: Validate) -> None:
    rule = rule_manifest(strategy={"type": "sma-crossover", "params": {"fast": 10, "slow": 30}})
    assert _model_accepts(rule)
    assert admit(rule) == []

    threshold_without_model = rule_manifest()
    assert not _model_accepts(threshold_without_model)
    assert any("needs a model" in e for e in admit(threshold_without_model))

    rule_with_model = manifest(strategy={"type": "momentum"})
    assert not _model_accepts(rule_with_model)
    assert any("uses no model" in e for e in admit(rule_with_model))


def test_an_unknown_strategy_type_is_refused_by_the_model_naming_the_known_ones() -> None:
    # The CRD cannot know the strategies an installed package registers: the model (and so
    # `kubetrade check`, run and the operator) refuses an unknown one.
    with pytest.raises(ManifestError) as caught:
        parse_bot(rule_manifest(strategy={"type": "martingale"}))
    [line] = caught.value.errors
    assert line.startswith("spec.strategy.type: unknown strategy 'martingale'; known: threshold")


@pytest.mark.parametrize("name", ["Bad_Name", "btc.trend", "-btc", "a" * 64])
def test_a_name_that_is_not_a_dns_label_is_refused_by_both(admit: Validate, name: str) -> None:
    document = manifest()
    document["metadata"]["name"] = name

    assert not _model_accepts(document)
    assert any("metadata.name must be a DNS label" in e for e in admit(document))


def test_the_cel_message_is_the_model_message(admit: Validate) -> None:
    document = manifest(mode="live", liveConfirmed=True, exchange={"name": "binance"})

    with pytest.raises(ManifestError) as caught:
        parse_bot(document)

    assert caught.value.errors == ["spec: live mode needs exchange.credentialsSecret"]
    assert admit(document) == [".spec: live mode needs exchange.credentialsSecret"]


def test_status_is_validated_too(admit: Validate) -> None:
    document = manifest()
    document["status"] = {"phase": "Running", "trading": {"equity": 10412.5, "trades": 27}}
    assert admit(document) == []

    document["status"]["phase"] = "Exploded"
    assert admit(document) != []
