"""Choosing a model's features by hand: a list such as ``sma(window=30),rsi,log_return`` or a
YAML/JSON file, turned into a :class:`FeatureSpec` of registry groups with their parameters.

List syntax: comma-separated groups, each a registry key (``kubetrade.features.REGISTRY``) or
one of the short names in ``ALIASES``, optionally with parameters in parentheses written as
``name=value`` (values in YAML flow syntax: ``windows=[10, 30]``, ``width=2.5``). A group
without parameters takes its defaults, a parameter left out takes its default, and a single
value for a list parameter may be given in the singular (``sma(window=30)`` is
``sma_ratio(windows=[30])``). A file holds either such a list (a YAML sequence of strings) or a
mapping ``group: {param: value}``. The columns come in registry order whatever the order given,
as for every FeatureSpec.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kubetrade.errors import InvalidInputError
from kubetrade.features.spec import REGISTRY, FeatureSpec, feature_spec

ALIASES = {"sma": "sma_ratio", "ema": "ema_ratio", "returns": "log_return"}
_ITEM = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


class FeatureChoiceError(InvalidInputError):
    """A feature list or file that does not name registry groups with valid parameters."""


def _shown(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


def _known() -> str:
    return ", ".join(
        f"{g.key}({', '.join(f'{k}={_shown(v)}' for k, v in g.defaults.items())})" for g in REGISTRY
    )


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside brackets and parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in (p.strip() for p in parts) if p]


def _group_params(key: str, given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The group's defaults overlaid with ``given`` (singular names of list parameters mapped)."""
    group = next((g for g in REGISTRY if g.key == key), None)
    if group is None:
        raise FeatureChoiceError(f"{where}: unknown feature group {key!r}; known: {_known()}")
    params: dict[str, Any] = {
        k: list(v) if isinstance(v, tuple) else v for k, v in group.defaults.items()
    }
    for name, value in given.items():
        plural = f"{name}s"
        if name not in params and isinstance(params.get(plural), list):
            params[plural] = value if isinstance(value, list) else [value]
        else:
            params[name] = value
    return params


def _parse_item(item: str) -> tuple[str, dict[str, Any]]:
    match = _ITEM.match(item)
    if match is None:
        raise FeatureChoiceError(
            f"feature {item!r}: write a group name, optionally with parameters, e.g. "
            "sma(window=30) or rsi(windows=[7, 14])"
        )
    name, inside = match.group(1), match.group(2)
    key = ALIASES.get(name, name)
    given: dict[str, Any] = {}
    for pair in _split(inside or "", ","):
        param, equals, raw = pair.partition("=")
        if not equals or not param.strip():
            raise FeatureChoiceError(f"feature {item!r}: parameter {pair!r} is not name=value")
        try:
            given[param.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise FeatureChoiceError(
                f"feature {item!r}: value of {param.strip()!r} is not a number or a list"
            ) from None
    return key, _group_params(key, given, f"feature {item!r}")


def parse_feature_list(text: str) -> FeatureSpec:
    """The FeatureSpec of a comma-separated list such as ``sma(window=30),rsi,log_return``."""
    return _spec_of([_parse_item(item) for item in _split(text, ",")], repr(text))


def _spec_of(chosen: list[tuple[str, dict[str, Any]]], where: str) -> FeatureSpec:
    if not chosen:
        raise FeatureChoiceError(f"{where}: name at least one feature group; known: {_known()}")
    params: dict[str, dict[str, Any]] = {}
    for key, values in chosen:
        if key in params:
            raise FeatureChoiceError(
                f"{where}: group {key!r} is named twice; give it every window at once, e.g. "
                "sma_ratio(windows=[10, 30])"
            )
        params[key] = values
    try:
        return feature_spec(params)
    except ValueError as error:
        raise FeatureChoiceError(f"{where}: {error}") from None


def load_feature_choice(path: Path) -> FeatureSpec:
    """The FeatureSpec a YAML/JSON file describes (a list of items or ``group: {param: v}``)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise FeatureChoiceError(f"{path}: cannot read a feature list: {error}") from None
    if isinstance(document, list) and all(isinstance(i, str) for i in document):
        return _spec_of([_parse_item(item) for item in document], str(path))
    if isinstance(document, Mapping) and all(
        isinstance(k, str) and (v is None or isinstance(v, Mapping)) for k, v in document.items()
    ):
        chosen = []
        for name, given in document.items():
            key = ALIASES.get(str(name), str(name))
            chosen.append((key, _group_params(key, given or {}, str(path))))
        return _spec_of(chosen, str(path))
    raise FeatureChoiceError(
        f"{path}: a feature file holds a list of groups (['sma(window=30)', 'rsi']) or a "
        "mapping of group to parameters ({sma_ratio: {windows: [30]}})"
    )


def feature_choice(value: str) -> FeatureSpec:
    """``--features``: a file when ``value`` names one, else a comma-separated list."""
    path = Path(value)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        return load_feature_choice(path)
    return parse_feature_list(value)
