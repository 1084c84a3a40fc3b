"""The TradingBot spec refuses malformed manifests, naming every bad field by its camelCase path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from kubetrade.spec import (
    ManifestError,
    Mode,
    TradingBot,
    dump_spec,
    load_bot,
    parse_bot,
    parse_duration,
)
from kubetrade.venues import LIVE_VENUES

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "k8s" / "examples").glob("*.yaml"))


def manifest(**spec: Any) -> dict[str, Any]:
    """A minimal valid manifest, with ``spec`` fields replaced."""
    return {
        "apiVersion": "kubetrade.io/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": "btc-trend", "namespace": "bots"},
        "spec": {"symbols": ["BTC/USDT"], "model": {"name": "btc-xgb"}, **spec},
    }


def errors_of(document: Any) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_bot(document, "bot.yaml")
    return caught.value.errors


def test_minimal_manifest_gets_the_documented_defaults() -> None:
    bot = parse_bot(manifest())

    assert bot.spec.mode is Mode.PAPER
    assert bot.spec.exchange.name == "synthetic"
    assert bot.spec.timeframe == "1h"
    assert bot.spec.model is not None and bot.spec.model.version == "latest"
    assert bot.spec.risk.breakers.max_drawdown_pct == 15
    assert bot.key == "bots/btc-trend"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"risk": {"breakers": {"maxDrawdownPct": 150}}},
            "spec.risk.breakers.maxDrawdownPct: must be between 0 and 100 (excluding 0)",
        ),
        (
            {"risk": {"breakers": {"maxDailyLossPct": -1}}},
            "spec.risk.breakers.maxDailyLossPct: must be between 0 and 100 (excluding 0)",
        ),
        (
            {"risk": {"sizing": {"maxPositionPct": 101}}},
            "spec.risk.sizing.maxPositionPct: must be between 0 and 100 (excluding 0)",
        ),
        (
            {"execution": {"feeRate": 0.5}},
            "spec.execution.feeRate: must be between 0 and 0.1",
        ),
        (
            {"risk": {"sizing": {"method": "martingale"}}},
            "spec.risk.sizing.method: must be 'kelly', 'fixed-fraction' or 'volatility'",
        ),
        (
            {"timeframe": "7m"},
            "spec.timeframe: must be one of 1m, 3m, 5m, 15m, 30m, 1h, 2h, 4h, 6h, 12h, 1d",
        ),
        (
            {"symbols": ["btc-usdt", "ETH/USDT"]},
            "spec.symbols: symbols must look like BTC/USDT; got btc-usdt",
        ),
        (
            {"symbols": ["BTC/USDT", "BTC/USDT"]},
            "spec.symbols: symbols must be unique",
        ),
        (
            {"exchange": {"name": "replay"}},
            "spec.exchange: exchange.name 'replay' needs exchange.uri (a CSV or Parquet file)",
        ),
        (
            {"strategy": {"longAbove": 0.4, "exitBelow": 0.5}},
            "spec.strategy: exitBelow must not exceed longAbove",
        ),
        (
            {"risk": {"maxHolding": "forever"}},
            "spec.risk.maxHolding: invalid duration 'forever': use e.g. 30m, 24h, 1d12h",
        ),
        (
            {"model": {"version": "3"}},
            "spec.model.name: required field is missing",
        ),
    ],
)
def test_a_bad_field_is_named_by_its_camel_case_path(spec: dict[str, Any], expected: str) -> None:
    assert errors_of(manifest(**spec)) == [expected]


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"riskk": {}}, "spec.riskk"),
        ({"risk": {"stop_loss": {"atrMultiplier": 2}}}, "spec.risk.stop_loss"),
        ({"exchange": {"name": "binance", "apiKey": "leaked"}}, "spec.exchange.apiKey"),
    ],
)
def test_unknown_fields_are_refused_not_ignored(spec: dict[str, Any], path: str) -> None:
    assert errors_of(manifest(**spec)) == [
        f"{path}: unknown field (check the spelling; fields are camelCase)"
    ]


def test_empty_symbols_are_refused() -> None:
    [error] = errors_of(manifest(symbols=[]))

    assert error.startswith("spec.symbols: ")
    assert "at least 1" in error


@pytest.mark.parametrize(
    ("exchange", "confirmed", "expected"),
    [
        ({"name": "synthetic"}, True, "live mode needs a real exchange, not synthetic or replay"),
        (
            {"name": "replay", "uri": "candles.csv"},
            True,
            "live mode needs a real exchange, not synthetic or replay",
        ),
        ({"name": "binance"}, True, "live mode needs exchange.credentialsSecret"),
        (
            {"name": "binance", "credentialsSecret": "binance-keys"},
            False,
            "live mode needs liveConfirmed: true (it sends real orders)",
        ),
    ],
)
def test_live_mode_is_never_one_field_away(
    exchange: dict[str, Any], confirmed: bool, expected: str
) -> None:
    document = manifest(mode="live", exchange=exchange, liveConfirmed=confirmed)

    assert errors_of(document) == [f"spec: {expected}"]


@pytest.mark.parametrize(
    ("mode", "exchange", "expected"),
    [
        (
            "live",
            {"name": "okx", "credentialsSecret": "keys"},
            "live trading on 'okx' is not supported; live exchanges: binance, bybit, coinbase, "
            "kraken (paper mode works on any ccxt exchange)",
        ),
        (
            "live",
            {"name": "kraken", "credentialsSecret": "keys", "sandbox": True},
            "exchange kraken has no testnet; set exchange.sandbox: false (real orders) or use "
            "one with a testnet: binance, bybit",
        ),
        (
            "paper",
            {"name": "coinbase", "sandbox": True},
            "exchange coinbase has no testnet; set exchange.sandbox: false (real orders) or use "
            "one with a testnet: binance, bybit",
        ),
    ],
)
def test_a_live_exchange_or_testnet_the_executor_cannot_use_is_refused_before_any_pod(
    mode: str, exchange: dict[str, Any], expected: str
) -> None:
    document = manifest(mode=mode, exchange=exchange, liveConfirmed=True)

    assert errors_of(document) == [f"spec: {expected}"]


def test_the_live_venues_testnets_are_the_ones_ccxt_knows() -> None:
    import ccxt.async_support as ccxt_async

    for name, venue in LIVE_VENUES.items():
        exchange = getattr(ccxt_async, name)()
        assert bool(exchange.urls.get("test")) is venue.testnet, name


def test_live_mode_with_keys_and_confirmation_is_accepted() -> None:
    exchange = {"name": "binance", "credentialsSecret": "binance-keys"}
    bot = parse_bot(manifest(mode="live", exchange=exchange, liveConfirmed=True))

    assert bot.spec.mode is Mode.LIVE
    assert bot.spec.exchange.is_exchange


def test_every_bad_field_is_reported_at_once() -> None:
    document = manifest(
        timeframe="7m",
        risk={"breakers": {"maxDrawdownPct": 150}, "sizing": {"method": "martingale"}},
    )
    document["metadata"]["name"] = "Bad_Name"

    errors = errors_of(document)

    assert sorted(e.split(":")[0] for e in errors) == [
        "metadata.name",
        "spec.risk.breakers.maxDrawdownPct",
        "spec.risk.sizing.method",
        "spec.timeframe",
    ]


def test_the_error_names_the_source_and_hides_the_pydantic_traceback() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_bot(manifest(timeframe="7m"), "bots/btc.yaml")

    assert str(caught.value).startswith("bots/btc.yaml: invalid TradingBot manifest:\n  - ")
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize("document", [None, [], "spec: {}"])
def test_a_document_that_is_not_a_mapping_is_refused(document: Any) -> None:
    assert errors_of(document) == ["(manifest): must be a mapping with apiVersion, kind, spec"]


def test_wrong_kind_and_missing_spec_are_named() -> None:
    document = manifest()
    document["kind"] = "Deployment"
    del document["spec"]

    assert errors_of(document) == [
        "kind: must be 'TradingBot'",
        "spec: required field is missing",
    ]


def test_load_bot_reports_file_problems_as_manifest_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")

    with pytest.raises(ManifestError, match="file not found"):
        load_bot(tmp_path / "missing.yaml")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_bot(broken)
    with pytest.raises(ManifestError, match="no document with kind: TradingBot"):
        load_bot(other)


def test_load_bot_takes_the_trading_bot_out_of_a_multi_document_file(tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: keys}\n---\n"
        "apiVersion: kubetrade.io/v1alpha1\nkind: TradingBot\nmetadata: {name: b}\n"
        "spec: {symbols: [ETH/USDT], model: {name: m}, timeframe: 15m}\n"
    )

    assert load_bot(path).spec.symbols == ["ETH/USDT"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_examples_load(path: Path) -> None:
    bot = load_bot(path)

    assert bot.spec.mode is Mode.PAPER
    # A rule-only example has no model; every model example names the baseline.
    needs_model = bot.spec.strategy.build().needs_model
    assert (bot.spec.model is not None) == needs_model
    assert bot.spec.model is None or bot.spec.model.name == "kubetrade-baseline"
    assert bot.metadata.name == path.stem


def test_the_examples_exist() -> None:
    assert [p.name for p in EXAMPLES] == [
        "hybrid.yaml",
        "replay-paper.yaml",
        "sma-crossover.yaml",
        "synthetic-paper.yaml",
    ]


def test_dump_spec_round_trips_in_camel_case() -> None:
    document = manifest(risk={"maxHolding": "24h", "trailingStop": {"trailPct": 0.5}})
    bot = parse_bot(copy.deepcopy(document))

    text = dump_spec(bot)

    assert '"maxHolding":"24h"' in text
    assert "max_holding" not in text
    assert TradingBot.model_validate_json(text) == bot


def test_dump_spec_keeps_a_breaker_switched_off() -> None:
    """``kubetrade run`` and the pods read the spec from dump_spec: a null must stay null, or
    they trade with the default breaker the backtest does not have."""
    risk = {"breakers": {"maxDrawdownPct": None, "maxConsecutiveLosses": None}}
    bot = parse_bot(manifest(risk=risk))
    breakers = TradingBot.model_validate_json(dump_spec(bot)).spec.risk.breakers
    assert (breakers.max_drawdown_pct, breakers.max_consecutive_losses) == (None, None)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("24h", 86400), ("1d12h", 129600), ("90s", 90)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "  ", "12", "1w", "h"])
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
