"""The ``TradingBot`` CustomResourceDefinition, generated from the spec model.

``kubetrade/spec.py`` is the single source of truth; this module turns its Pydantic JSON schema
into the structural OpenAPI v3 schema the Kubernetes API server accepts, adds the CEL rules that
mirror the model validators, and writes ``crds/tradingbot.yaml``::

    python -m kubetrade.crd            # print the CRD
    python -m kubetrade.crd --write    # rewrite crds/tradingbot.yaml (what `make crds` runs)
    python -m kubetrade.crd --check    # exit 1 when the checked-in file is stale
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kubetrade.domain import TIMEFRAME_MS
from kubetrade.errors import KubetradeError
from kubetrade.spec import (
    API_GROUP,
    API_VERSION,
    BOT_NAME,
    BOT_NAME_MAX,
    DURATION,
    KIND,
    PLURAL,
    SYMBOL,
    URL_NEEDS_SHA256,
    TradingBotSpec,
    TradingBotStatus,
)
from kubetrade.strategies.builtin import BUILTINS
from kubetrade.venues import LIVE_VENUES

Schema = dict[str, Any]

CRD_NAME = f"{PLURAL}.{API_GROUP}"
CRD_PATH = Path(__file__).resolve().parent.parent / "crds" / "tradingbot.yaml"
SHORT_NAMES = ["tb", "bot"]

HEADER = (
    "# Generated from kubetrade/spec.py by `make crds` (python -m kubetrade.crd --write).\n"
    "# Do not edit: change the spec model and regenerate.\n"
)

# Keys of Pydantic's JSON schema that a structural schema has no place for: titles repeat the
# field names, and `additionalProperties: false` is refused next to `properties` (the API
# server prunes unknown fields instead).
_DROPPED_KEYS = frozenset({"title", "$defs", "additionalProperties"})

# The spec's field validators are Python code; these are their schema equivalents, by path.
_FIELD_SCHEMA: dict[str, Schema] = {
    "spec.symbols": {"x-kubernetes-list-type": "set"},
    "spec.symbols.items": {"pattern": SYMBOL.pattern},
    "spec.timeframe": {"enum": list(TIMEFRAME_MS)},
    "spec.risk.maxHolding": {"pattern": DURATION.pattern, "minLength": 1},
    "spec.risk.breakers.consecutiveLossCooldown": {"pattern": DURATION.pattern, "minLength": 1},
    "spec.risk.breakers.drawdownCooldown": {"pattern": DURATION.pattern, "minLength": 1},
    # A strategy's parameters are validated by the strategy (built-in or from an installed
    # package, which the API server cannot know): kept as given.
    "spec.strategy.params": {"x-kubernetes-preserve-unknown-fields": True},
    # Conditions merge by type, as in every built-in Kubernetes status.
    "status.conditions": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
}

# Readers of the YAML (and of `kubectl explain`) look for the type and description first.
_KEY_ORDER = ("type", "description", "nullable", "default", "enum", "format")

_MODEL_STRATEGIES = [name for name, kind in BUILTINS.items() if kind.needs_model]
_RULE_STRATEGIES = [name for name, kind in BUILTINS.items() if not kind.needs_model]

# The spec's model validators as CEL rules, by path. Fields with a default are always present
# (the API server applies defaults before it validates); optional ones are guarded by has().
_RULES: dict[str, list[Schema]] = {
    "": [
        {
            "rule": f"self.metadata.name.matches('{BOT_NAME.pattern}')",
            "message": "metadata.name must be a DNS label that starts with a letter and has at "
            f"most {BOT_NAME_MAX} characters (lowercase letters, digits and '-'; the bot's "
            "Service is '<name>-inference', at most 63)",
            "reason": "FieldValueInvalid",
        }
    ],
    "spec": [
        {
            "rule": "self.mode != 'live' || !(self.exchange.name in ['synthetic', 'replay'])",
            "message": "live mode needs a real exchange, not synthetic or replay",
            "fieldPath": ".exchange.name",
        },
        {
            "rule": "self.mode != 'live' || (has(self.exchange.credentialsSecret)"
            " && size(self.exchange.credentialsSecret) > 0)",
            "message": "live mode needs exchange.credentialsSecret",
            "fieldPath": ".exchange.credentialsSecret",
            "reason": "FieldValueRequired",
        },
        {
            "rule": "self.mode != 'live' || self.liveConfirmed",
            "message": "live mode needs liveConfirmed: true (it sends real orders)",
            "fieldPath": ".liveConfirmed",
        },
        {
            "rule": "self.mode != 'live' || self.exchange.name in ['synthetic', 'replay']"
            f" || self.exchange.name in {sorted(LIVE_VENUES)}",
            "message": "live trading is supported on " + ", ".join(sorted(LIVE_VENUES)),
            "fieldPath": ".exchange.name",
        },
        # The built-ins only: whether an installed strategy needs a model, the model knows.
        {
            "rule": f"has(self.model) || !(self.strategy.type in {_MODEL_STRATEGIES})",
            "message": "the strategy needs a model: set spec.model",
            "fieldPath": ".model",
            "reason": "FieldValueRequired",
        },
        {
            "rule": f"!has(self.model) || !(self.strategy.type in {_RULE_STRATEGIES})",
            "message": "the strategy uses no model: remove spec.model (or use hybrid)",
            "fieldPath": ".model",
        },
    ],
    "spec.exchange": [
        {
            "rule": "!(has(self.sandbox) && self.sandbox)"
            f" || !(self.name in {sorted(n for n, v in LIVE_VENUES.items() if not v.testnet)})",
            "message": "this exchange has no testnet: set exchange.sandbox: false",
            "fieldPath": ".sandbox",
        },
        {
            "rule": "self.name != 'replay' || (has(self.uri) && size(self.uri) > 0)",
            "message": "exchange.name 'replay' needs exchange.uri (a CSV or Parquet file)",
            "reason": "FieldValueRequired",
        },
        {
            "rule": "!has(self.uri) || !self.uri.matches('^[hH][tT][tT][pP][sS]?://')"
            " || has(self.sha256)",
            "message": URL_NEEDS_SHA256,
            "fieldPath": ".sha256",
            "reason": "FieldValueRequired",
        },
    ],
    "spec.strategy": [
        {
            "rule": "self.type != 'threshold' || !has(self.params)",
            "message": "the threshold strategy takes its parameters as fields of strategy "
            "(longAbove, exitBelow, ...), not params",
            "fieldPath": ".params",
        },
        {
            "rule": "self.exitBelow <= self.longAbove",
            "message": "exitBelow must not exceed longAbove",
            "fieldPath": ".exitBelow",
        },
        {
            "rule": "!self.allowShort || self.exitAbove >= self.shortBelow",
            "message": "exitAbove must not be below shortBelow",
            "fieldPath": ".exitAbove",
        },
    ],
}

PRINTER_COLUMNS: list[Schema] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
    {"name": "Symbols", "type": "string", "jsonPath": ".spec.symbols"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
    {"name": "Equity", "type": "number", "jsonPath": ".status.trading.equity"},
    {"name": "PnL", "type": "number", "jsonPath": ".status.trading.realizedPnl"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class SchemaConversionError(KubetradeError):
    """The spec model uses a construct that has no structural-schema equivalent."""


def _without_nulls(value: Any) -> Any:
    """A default with its null members removed (a null is pruned from a non-nullable field)."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _convert(node: Schema, defs: Mapping[str, Schema], where: str) -> Schema:
    """One Pydantic JSON-schema node as a structural OpenAPI v3 node, every $ref inlined."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _convert({**defs[name], **siblings}, defs, where)
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v != {"type": "null"}]
        if len(variants) != 1 or len(variants) == len(node["anyOf"]):
            raise SchemaConversionError(
                f"{where or '(root)'}: only 'X | None' unions map to a structural schema; "
                "use a single type or a discriminated submodel in kubetrade/spec.py"
            )
        siblings = {k: v for k, v in node.items() if k != "anyOf"}
        # The variant's own description (a submodel's docstring) yields to the field's.
        return {**_convert({**variants[0], **siblings}, defs, where), "nullable": True}
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020-12 gives the bound; OpenAPI v3.0 a flag on minimum/maximum.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "default":
            if value is not None:
                out["default"] = _without_nulls(value)
        elif key == "properties":
            out["properties"] = {
                name: _convert(prop, defs, f"{where}.{name}".lstrip("."))
                for name, prop in value.items()
            }
        elif key == "items":
            out["items"] = _convert(value, defs, f"{where}.items")
        else:
            out[key] = value
    if node.get("additionalProperties") not in (None, False, True):
        out["additionalProperties"] = _convert(node["additionalProperties"], defs, where)
    if "type" not in out:
        raise SchemaConversionError(f"{where or '(root)'}: a structural schema needs a type")
    return out


def _key_rank(key: str) -> tuple[int, str]:
    """Sort key: the keys of _KEY_ORDER first, in that order, then the rest alphabetically."""
    return (_KEY_ORDER.index(key), "") if key in _KEY_ORDER else (len(_KEY_ORDER), key)


def _tidy(node: Schema) -> Schema:
    """A converted node with its keys in reading order and docstring markup made plain."""
    out: Schema = {}
    for key in sorted(node, key=_key_rank):
        value = node[key]
        if key == "description":
            value = value.replace("``", "`")
        elif key == "properties":
            value = {name: _tidy(prop) for name, prop in value.items()}
        elif key in ("items", "additionalProperties"):
            value = _tidy(value)
        out[key] = value
    return out


def structural_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of a Pydantic model (camelCase, $refs inlined)."""
    source = model.model_json_schema(by_alias=True)
    return _tidy(_convert(source, source.get("$defs", {}), ""))


def _node(root: Schema, path: str) -> Schema:
    """The schema node at a dotted camelCase path ("" is the root; "items" enters a list)."""
    node = root
    for part in filter(None, path.split(".")):
        node = node["items"] if part == "items" else node["properties"][part]
    return node


def object_schema() -> Schema:
    """The whole TradingBot object's schema: spec and status from the models, plus CEL rules."""
    schema: Schema = {
        "type": "object",
        "description": "A machine-learning trading bot: feed, inference and executor.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural_schema(TradingBotSpec),
            "status": structural_schema(TradingBotStatus),
        },
        "required": ["spec"],
    }
    for path, extra in _FIELD_SCHEMA.items():
        _node(schema, path).update(copy.deepcopy(extra))
    for path, rules in _RULES.items():
        _node(schema, path)["x-kubernetes-validations"] = copy.deepcopy(rules)
    return _tidy(schema)


def custom_resource_definition() -> Schema:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of TradingBot."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": list(SHORT_NAMES),
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": object_schema()},
                }
            ],
        },
    }


def render_yaml() -> str:
    """The CRD as the YAML text checked in at ``crds/tradingbot.yaml``."""
    body: str = yaml.safe_dump(
        custom_resource_definition(), sort_keys=False, width=100, allow_unicode=True
    )
    return HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    """Print, write or check the generated CRD; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m kubetrade.crd", description="Generate the TradingBot CRD."
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="write the CRD file")
    action.add_argument("--check", action="store_true", help="fail when the CRD file is stale")
    parser.add_argument("--path", type=Path, default=CRD_PATH, help="CRD file to write or check")
    args = parser.parse_args(argv)
    text = render_yaml()
    if args.write:
        args.path.parent.mkdir(parents=True, exist_ok=True)
        args.path.write_text(text, encoding="utf-8")
        print(f"wrote {args.path}")
        return 0
    if args.check:
        current = args.path.read_text(encoding="utf-8") if args.path.exists() else None
        if current != text:
            state = "is missing" if current is None else "is stale"
            print(f"{args.path} {state}: run `make crds` and commit it", file=sys.stderr)
            return 1
        print(f"{args.path} is up to date")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
