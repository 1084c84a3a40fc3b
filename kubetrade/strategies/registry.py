"""Which strategies exist: the built-ins, then those installed packages register.

A package registers a strategy under the entry-point group ``kubetrade.strategies``; the entry
point's name is the ``spec.strategy.type`` that chooses it and its object a :class:`Strategy`
subclass::

    [project.entry-points."kubetrade.strategies"]
    my-breakout = "my_package.strategies:Breakout"

Built-in names cannot be taken over by a package. Installed packages are looked up only for a
name that is not built in, so validating a manifest of a built-in strategy reads no metadata.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubetrade.errors import InvalidInputError
from kubetrade.strategies.base import Strategy, build
from kubetrade.strategies.builtin import BUILTINS

ENTRY_POINT_GROUP = "kubetrade.strategies"


class StrategyError(InvalidInputError):
    """A strategy type or parameters that cannot be used; ``problems`` lists
    ``(path under spec.strategy, message)`` for every bad field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))


@dataclass(frozen=True)
class StrategyInfo:
    """One available strategy, as ``kubetrade strategies`` lists it."""

    name: str
    source: str
    needs_model: bool
    summary: str
    problem: str | None = None


def _summary(strategy: type[Strategy[Any]]) -> str:
    return (strategy.__doc__ or "").strip().splitlines()[0] if strategy.__doc__ else ""


def _load(entry: importlib.metadata.EntryPoint) -> type[Strategy[Any]]:
    """The class an entry point names, or StrategyError saying what is wrong with it."""
    where = f"entry point {entry.name!r} ({entry.value}) of group {ENTRY_POINT_GROUP}"
    try:
        loaded = entry.load()
    except Exception as error:  # a broken plugin must not take the product down with it
        raise StrategyError([("type", f"{where} failed to import: {error}")]) from None
    if not (isinstance(loaded, type) and issubclass(loaded, Strategy)):
        raise StrategyError(
            [("type", f"{where} is {loaded!r}, not a kubetrade.strategies.Strategy subclass")]
        )
    return loaded


def _installed() -> dict[str, importlib.metadata.EntryPoint]:
    return {
        entry.name: entry
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if entry.name not in BUILTINS
    }


def strategy_class(name: str) -> type[Strategy[Any]]:
    """The strategy registered as ``name``, or StrategyError naming the known ones."""
    builtin = BUILTINS.get(name)
    if builtin is not None:
        return builtin
    installed = _installed()
    entry = installed.get(name)
    if entry is None:
        known = ", ".join([*BUILTINS, *sorted(installed)])
        raise StrategyError(
            [
                (
                    "type",
                    f"unknown strategy {name!r}; known: {known} (a package adds one under the "
                    f"entry-point group {ENTRY_POINT_GROUP}; `kubetrade strategies` lists them)",
                )
            ]
        )
    return _load(entry)


def _pydantic_problems(error: ValidationError, prefix: str) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"])
        path = f"{prefix}.{loc}" if loc else prefix
        if item["type"] == "extra_forbidden":
            message = "unknown parameter (check the spelling; parameters are camelCase)"
        elif item["type"] == "value_error" and "ctx" in item:
            message = str(item["ctx"]["error"])
        else:
            message = item["msg"].replace("Input should be", "must be")
        problems.append((path, message))
    return problems


def make_strategy(name: str, params: Mapping[str, Any], where: str = "params") -> Strategy[Any]:
    """The strategy ``name`` with ``params`` validated; StrategyError names every bad field
    (paths under ``spec.strategy``, starting with ``where``)."""
    strategy = strategy_class(name)
    try:
        return build(strategy, params)
    except ValidationError as error:
        raise StrategyError(_pydantic_problems(error, where)) from None
    except ValueError as error:
        # A strategy's own check of its parameters, e.g. in its features().
        raise StrategyError([(where, str(error))]) from None
    except StrategyError as error:
        # A nested rule (the hybrid's) names its fields under ruleParams.
        raise StrategyError(
            [
                (f"{where}.{path}" if path != "type" else f"{where}.rule", message)
                for path, message in error.problems
            ]
        ) from None


def rule_strategy(name: str, params: Mapping[str, Any]) -> Strategy[Any]:
    """A strategy that needs no model (the rule of a hybrid), or StrategyError."""
    rule = make_strategy(name, params, where="ruleParams")
    if rule.needs_model:
        raise StrategyError([("type", f"{name!r} needs a model; a hybrid's rule must not")])
    return rule


def available() -> list[StrategyInfo]:
    """The built-ins, then every installed strategy (one that fails to load says why)."""
    found = [
        StrategyInfo(name, "built-in", cls.needs_model, _summary(cls))
        for name, cls in BUILTINS.items()
    ]
    for name, entry in sorted(_installed().items()):
        source = entry.dist.name if entry.dist is not None else entry.value
        try:
            cls = _load(entry)
        except StrategyError as error:
            found.append(StrategyInfo(name, source, False, "", str(error)))
            continue
        found.append(StrategyInfo(name, source, cls.needs_model, _summary(cls)))
    return found
