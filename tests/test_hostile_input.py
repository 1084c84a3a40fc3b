"""Hostile input: malformed manifests, candle files, bus messages and HTTP requests are refused
in one line (never a traceback, never a 500), the same way by ``kubetrade check``, ``run`` and the
CRD; a property-based fuzzer (Hypothesis) looks for anything else that escapes.

Each group prints how many inputs it tried and how many were handled (refused cleanly or
accepted as valid): ``pytest -q tests/test_hostile_input.py`` shows the counts.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetrade.cli import main
from kubetrade.market import load_candles
from kubetrade.market.frame import CandleDataError
from kubetrade.messages import (
    CandleMessage,
    ControlMessage,
    FillMessage,
    MessageError,
    OrderMessage,
    SignalMessage,
    StatusMessage,
    decode,
)
from kubetrade.spec import ManifestError, parse_bot
from kubetrade.yaml_documents import DocumentError, decode_text, parse_documents

pytest.importorskip("test_serving")
from test_serving import store  # noqa: F401 - the trained model fixture, for /signal

COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print tried vs handled per group once the module's tests ran (past output capture)."""
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    lines = [
        f"  {group}: {COUNTS[f'{group}:handled']} of {COUNTS[f'{group}:tried']} handled"
        for group in sorted({key.split(":")[0] for key in COUNTS})
    ]
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\nhostile input tried vs handled:\n" + "\n".join(lines))


def _tally(group: str, handled: bool) -> None:
    COUNTS[f"{group}:tried"] += 1
    COUNTS[f"{group}:handled"] += int(handled)


# --- manifests ------------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "apiVersion": "kubetrade.io/v1alpha1",
    "kind": "TradingBot",
    "metadata": {"name": "hostile"},
    "spec": {"symbols": ["BTC/USDT"], "model": {"name": "m"}},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(GOOD)
    node = document
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return document


NUMBER_FIELDS = [
    "spec.execution.initialCapital",
    "spec.execution.feeRate",
    "spec.execution.slippageBps",
    "spec.exchange.speed",
    "spec.exchange.seed",
    "spec.exchange.limit",
    "spec.strategy.longAbove",
    "spec.risk.sizing.payoffRatio",
    "spec.risk.sizing.fractionPct",
    "spec.risk.stopLoss.atrMultiplier",
    "spec.risk.takeProfit.riskReward",
    "spec.risk.breakers.maxConsecutiveLosses",
]
NON_FINITE = {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}
FINITE_BAD = {"negative": -1, "absurd": 10**30, "text": "lots"}
BAD_NAMES = {
    "60 characters": "a" * 60,
    "54 characters": "a" * 54,
    "leading digit": "1inch-bot",
    "upper case": "BTC-Bot",
    "underscore": "btc_bot",
    "dot": "btc.bot",
    "trailing dash": "btc-",
    "empty": "",
    "space": "btc bot",
    "unicode": "bött",
}
GOOD_TEXT = yaml.safe_dump(GOOD, sort_keys=False)


def _structural() -> dict[str, bytes]:
    deep = "spec: " + "[" * 5000 + "]" * 5000 + "\n"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)
    )
    return {
        "duplicate key": (GOOD_TEXT + "spec: {}\n").encode(),
        "duplicate nested key": GOOD_TEXT.replace(
            "  symbols:", "  timeframe: 1h\n  timeframe: 4h\n  symbols:"
        ).encode(),
        "deep nesting": deep.encode(),
        "alias bomb": (GOOD_TEXT + bomb).encode(),
        "binary": bytes(range(256)) * 8,
        "latin-1": GOOD_TEXT.replace("hostile", "h\xf6stile").encode("latin-1"),
        "utf-16": GOOD_TEXT.encode("utf-16"),
        "nul byte": GOOD_TEXT.encode().replace(b"kind", b"ki\x00nd"),
        "empty": b"",
        "only a comment": b"# nothing here\n",
        "a scalar": b"just text\n",
        "a list": b"- 1\n- 2\n",
        "no kind": GOOD_TEXT.replace("kind: TradingBot\n", "").encode(),
        "wrong apiVersion": GOOD_TEXT.replace("v1alpha1", "v9").encode(),
        "unclosed bracket": b"spec: [unclosed\n",
        "tab indentation": GOOD_TEXT.replace("  symbols", "\tsymbols").encode(),
        "over 1 MiB": (GOOD_TEXT + "# " + "x" * (1024 * 1024) + "\n").encode(),
        "List with a bad item": yaml.safe_dump(
            {"apiVersion": "v1", "kind": "List", "items": [_with("metadata.name", "Bad")]}
        ).encode(),
        "non-string key": GOOD_TEXT.replace("spec:", "spec:\n  1: one").encode(),
    }


def _field_documents() -> dict[str, dict[str, Any]]:
    documents: dict[str, dict[str, Any]] = {}
    for path in NUMBER_FIELDS:
        for label, value in FINITE_BAD.items():
            documents[f"{path} {label}"] = _with(path, value)
    for label, name in BAD_NAMES.items():
        documents[f"name {label}"] = _with("metadata.name", name)
    documents["model name 64 characters"] = _with("spec.model", {"name": "m" * 64})
    documents["model version with a slash"] = _with("spec.model", {"name": "m", "version": "a/b"})
    documents["exchange pattern"] = _with("spec.exchange.name", "Bad!")
    documents["credentials secret name"] = _with("spec.exchange.credentialsSecret", "Not_A_Name")
    documents["duration 40 characters"] = _with("spec.risk.maxHolding", "1" * 39 + "h")
    return documents


def _non_finite_texts() -> dict[str, bytes]:
    texts = {}
    for path in NUMBER_FIELDS:
        for label, literal in NON_FINITE.items():
            document = _with(path, "@@")
            text = yaml.safe_dump(document, sort_keys=False).replace("'@@'", literal)
            texts[f"{path} {label}"] = text.encode()
    return texts


MANIFESTS: dict[str, bytes] = {
    **_structural(),
    # The API server refuses it too (no such namespace can exist); the CRD schema has no say.
    "namespace 64 characters": yaml.safe_dump(_with("metadata.namespace", "n" * 64)).encode(),
    **{k: yaml.safe_dump(v, sort_keys=False).encode() for k, v in _field_documents().items()},
    **_non_finite_texts(),
}


def test_there_are_about_ninety_malformed_manifests() -> None:
    assert len(MANIFESTS) >= 90


@pytest.mark.parametrize("case", MANIFESTS, ids=list(MANIFESTS))
def test_check_refuses_a_malformed_manifest_in_one_message(case: str, tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_bytes(MANIFESTS[case])

    result = CliRunner().invoke(main, ["check", str(path)])

    handled = result.exit_code == 2 and "Traceback" not in result.output
    _tally("manifests", handled)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 2, result.output
    first = result.output.splitlines()[0]
    assert first.startswith(f"kubetrade check: {path}"), result.output
    assert "Traceback" not in result.output


def test_several_bots_in_one_file_are_checked_together_but_never_run_silently(
    tmp_path: Path,
) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(GOOD_TEXT + "---\n" + GOOD_TEXT.replace("hostile", "second"))

    checked = CliRunner().invoke(main, ["check", str(path)])
    run = CliRunner().invoke(main, ["run", str(path), "--report-dir", str(tmp_path / "r")])

    assert checked.exit_code == 0, checked.output
    assert "default/hostile" in checked.output and "default/second" in checked.output
    assert run.exit_code == 2, run.output
    assert "holds 2 TradingBot documents (hostile, second)" in run.output
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def admit() -> Any:
    """The CRD's admission of an object (OpenAPI schema, strict fields, CEL), as in test_crd."""
    from test_crd import SCHEMA, apply_defaults, cel_errors, strict_field_errors

    validators = pytest.importorskip("openapi_schema_validator")
    celpy = pytest.importorskip("celpy")
    validator = validators.OAS30Validator(SCHEMA)

    def run(document: dict[str, Any]) -> list[str]:
        obj = apply_defaults(SCHEMA, copy.deepcopy(document))
        errors = [e.message for e in validator.iter_errors(obj)]
        errors += strict_field_errors(SCHEMA, obj, "")
        return errors or cel_errors(celpy, SCHEMA, obj, "")

    return run


FIELD_DOCUMENTS = _field_documents()


@pytest.mark.parametrize("case", FIELD_DOCUMENTS, ids=list(FIELD_DOCUMENTS))
def test_what_check_refuses_the_crd_refuses(admit: Any, case: str) -> None:
    document = FIELD_DOCUMENTS[case]

    with pytest.raises(ManifestError):
        parse_bot(copy.deepcopy(document))
    assert admit(document), f"the CRD admits what the model refuses: {case}"


@pytest.mark.parametrize(
    "update",
    [
        ("metadata.name", "a" * 53),
        ("metadata.name", "a1-b2"),
        ("spec.execution.initialCapital", 1e12),
        ("spec.exchange.seed", 2**32 - 1),
    ],
    ids=str,
)
def test_the_limits_themselves_are_accepted_by_both(admit: Any, update: tuple[str, Any]) -> None:
    document = _with(*update)

    parse_bot(copy.deepcopy(document))
    assert admit(document) == []


# --- candle files ---------------------------------------------------------------------------

_GOOD_CSV = "timestamp,open,high,low,close,volume\n" + "".join(
    f"{1704067200000 + i * 3600000},{100 + i},{101 + i},{99 + i},{100.5 + i},5\n" for i in range(50)
)
CANDLE_FILES: dict[str, bytes] = {
    "empty.csv": b"",
    "blank.csv": b"\n\n\n",
    "binary.csv": bytes(range(256)) * 20,
    "latin1.csv": _GOOD_CSV.replace("timestamp", "timestamp\xe9").encode("latin-1"),
    "utf16.csv": _GOOD_CSV.encode("utf-16"),
    "header_only.csv": b"timestamp,open,high,low,close,volume\n",
    "jagged.csv": (_GOOD_CSV + "1,2,3,4,5,6,7,8,9\n").encode(),
    "unterminated_quote.csv": (_GOOD_CSV + '"1704067200000,1,2\n').encode(),
    "ts_1e30.csv": _GOOD_CSV.replace("1704067200000,", "1e30,", 1).encode(),
    "ts_negative.csv": _GOOD_CSV.replace("1704067200000,", "-5,", 1).encode(),
    "ts_inf.csv": _GOOD_CSV.replace("1704067200000,", "inf,", 1).encode(),
    "price_1e308.csv": (
        "timestamp,open,high,low,close,volume\n"
        + "".join(f"{1704067200000 + i * 3600000},1e308,1e308,1e308,1e308,5\n" for i in range(50))
    ).encode(),
    "text_price.csv": _GOOD_CSV.replace(",100,", ",abc,", 1).encode(),
    "bad.parquet": b"PAR1garbagePAR1",
    "candles.json": _GOOD_CSV.encode(),
    "off_grid.csv": _GOOD_CSV.replace("1704067200000,", "1704067200001,", 1).encode(),
    "all_nan.csv": (
        "timestamp,open,high,low,close,volume\n"
        + "".join(f"{1704067200000 + i * 3600000},,,,,\n" for i in range(50))
    ).encode(),
    "symbol_garbage.csv": (
        "timestamp,open,high,low,close,volume,symbol\n"
        + "".join(f"{1704067200000 + i * 3600000},1,2,0.5,1.5,3,??!!\n" for i in range(5))
    ).encode(),
    "huge_columns.csv": (",".join(f"c{i}" for i in range(5000)) + "\n").encode(),
    "mixed_units.csv": _GOOD_CSV.replace("1704067200000,", "1704067200,", 1).encode(),
}


@pytest.mark.parametrize("name", CANDLE_FILES, ids=list(CANDLE_FILES))
def test_a_bad_candle_file_is_refused_in_one_line_naming_it(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(CANDLE_FILES[name])

    # Refused before any arithmetic on it: no overflow or invalid-value warning on the way.
    with warnings.catch_warnings(), pytest.raises(CandleDataError) as caught:
        warnings.simplefilter("error", RuntimeWarning)
        load_candles(path, symbol="BTC/USDT")

    message = str(caught.value)
    _tally("candle files", str(path) in message and "\n" not in message)
    assert str(path) in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["binary.csv", "jagged.csv", "ts_1e30.csv", "bad.parquet"])
def test_run_refuses_a_bad_replay_file_before_anything_starts(name: str, tmp_path: Path) -> None:
    data = tmp_path / name
    data.write_bytes(CANDLE_FILES[name])
    manifest = tmp_path / "bot.yaml"
    manifest.write_text(GOOD_TEXT)
    report_dir = tmp_path / "report"

    started = time.monotonic()
    result = CliRunner().invoke(
        main, ["run", str(manifest), "--data", str(data), "--report-dir", str(report_dir)]
    )

    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"kubetrade run: {data}"), result.output
    assert "Traceback" not in result.output
    assert not report_dir.exists(), "nothing may start before the replay file is checked"
    assert time.monotonic() - started < 10


# --- the fuzzer -----------------------------------------------------------------------------

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
SPEC_KEYS = st.sampled_from(
    ["symbols", "model", "exchange", "execution", "risk", "strategy", "timeframe", "mode"]
)


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_manifest_bytes_are_refused_or_read(data: bytes) -> None:
    try:
        parse_documents(decode_text(data))
        handled = True
    except DocumentError as error:
        handled = "\n" not in str(error)
    _tally("fuzz manifest bytes", handled)
    assert handled


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("{}[]:-,&*!|>'\"# \n\tab1.")), max_size=400))
def test_fuzz_yaml_text_is_refused_or_read(text: str) -> None:
    try:
        parse_documents(text)
        handled = True
    except DocumentError as error:
        handled = "\n" not in str(error)
    _tally("fuzz yaml text", handled)
    assert handled


@FUZZ
@given(st.dictionaries(SPEC_KEYS, JSON, max_size=6), st.text(max_size=70))
def test_fuzz_manifest_documents_are_refused_or_valid(spec: dict[str, Any], name: str) -> None:
    document = {"apiVersion": GOOD["apiVersion"], "kind": "TradingBot", "metadata": {"name": name}}
    document["spec"] = spec
    try:
        bot = parse_bot(document)
        json.loads(bot.model_dump_json())  # whatever is accepted serializes as strict JSON
    except ManifestError:
        pass
    _tally("fuzz manifest documents", True)


@FUZZ
@given(
    st.lists(
        st.lists(
            st.one_of(
                st.integers(-(10**20), 10**20).map(str),
                st.floats().map(repr),
                st.text(alphabet='0123456789.-eE,"nafi ', max_size=8),
            ),
            min_size=1,
            max_size=8,
        ),
        max_size=30,
    ),
    st.sampled_from(["timestamp,open,high,low,close,volume", "", "open_time,open,high,low,close"]),
)
def test_fuzz_candle_files_are_refused_or_loaded(
    tmp_path: Path, rows: list[list[str]], header: str
) -> None:
    path = tmp_path / "fuzz.csv"
    body = "\n".join(",".join(row) for row in rows)
    path.write_text(f"{header}\n{body}\n" if header else f"{body}\n")
    try:
        load_candles(path, symbol="BTC/USDT")
        handled = True
    except CandleDataError as error:
        handled = "\n" not in str(error)
    _tally("fuzz candle files", handled)
    assert handled


MESSAGE_KINDS = [
    CandleMessage,
    SignalMessage,
    OrderMessage,
    FillMessage,
    StatusMessage,
    ControlMessage,
]


@FUZZ
@given(
    st.sampled_from(MESSAGE_KINDS),
    st.one_of(st.binary(max_size=300), JSON.map(lambda v: json.dumps(v).encode())),
)
def test_fuzz_bus_messages_are_dead_lettered_or_decoded(kind: Any, data: bytes) -> None:
    with contextlib.suppress(MessageError):
        decode(kind, data)
    _tally("fuzz bus messages", True)


# --- HTTP: /signal and request bodies -------------------------------------------------------


@pytest.mark.integration
def test_signal_refuses_absurd_times_and_prices_and_huge_bodies(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A real ``bentoml serve``: 4xx (never 500) for 1e30 times and 1e308 prices, and a 40 MB
    body refused before it is read."""
    from test_serving import _candles_in, _kill_tree, _start

    from kubetrade.features import default_feature_spec

    stored = request.getfixturevalue("store")
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    server = _start(stored, log, KUBETRADE_MODEL_NAME="serve-test")
    try:
        recent = stored.candles.iloc[-(default_feature_spec().warmup + 20) :]
        candles = [c.model_dump() for c in _candles_in(recent)]
        url = f"{server.url}/signal"
        good = httpx.post(url, json={"candles": candles}, timeout=30)
        assert good.status_code == 200, good.text
        cases = {
            "open_time 1e30": [*candles[:-1], {**candles[-1], "open_time": 1e30}],
            "price 1e308": [*candles[:-1], {**candles[-1], "high": 1e308}],
            "negative time": [*candles[:-1], {**candles[-1], "open_time": -1}],
        }
        for label, body in cases.items():
            response = httpx.post(url, json={"candles": body}, timeout=30)
            _tally("http requests", 400 <= response.status_code < 500)
            assert 400 <= response.status_code < 500, (label, response.status_code, response.text)
        huge = b'{"candles": [' + b"1," * (20 * 1024 * 1024) + b"1]}"
        started = time.monotonic()
        response = httpx.post(
            url, content=huge, headers={"content-type": "application/json"}, timeout=30
        )
        elapsed = time.monotonic() - started
        _tally("http requests", response.status_code == 413)
        assert response.status_code == 413, response.text
        assert elapsed < 2.0, f"a {len(huge):,}-byte body took {elapsed:.1f}s to refuse"
    finally:
        server.stop()
        _kill_tree(server.process)
