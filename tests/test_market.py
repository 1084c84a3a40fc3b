"""Market data: loaders in every layout, cleaning counts and refusals, resampling, the synthetic
market, and closed-candle selection of the ccxt poller."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from ccxt.base.errors import NetworkError

from kubetrade.domain import Candle
from kubetrade.errors import ExchangeError, InvalidInputError
from kubetrade.market import (
    REGIMES,
    clean_candles,
    detect_layout,
    from_candles,
    generate,
    infer_timeframe,
    iter_candles,
    load_candles,
    load_candles_with_report,
    normalize_symbol,
    resample,
    simulate,
    to_candles,
)
from kubetrade.market.exchange import (
    create_exchange,
    parse_ohlcv,
    parse_ohlcv_row,
    poll_closed_candles,
    select_closed,
)

RECORDED = Path(__file__).parent / "data/binance_btcusdt_1h_ohlcv.json"
HOUR = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
VALUES = ["open", "high", "low", "close", "volume"]


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """48 hourly BTC/USDT candles from the synthetic market."""
    return generate(["BTC/USDT"], "1h", 48, seed=3)


def _binance_rows(frame: pd.DataFrame, time_unit: int = 1) -> pd.DataFrame:
    times = frame["open_time"].to_numpy()
    return pd.DataFrame(
        {
            "open_time": times * time_unit,
            **{c: frame[c].to_numpy() for c in VALUES},
            "close_time": (times + HOUR - 1) * time_unit,
            "quote_volume": frame["volume"].to_numpy() * frame["close"].to_numpy(),
            "count": np.arange(len(frame)) + 100,
            "taker_buy_volume": frame["volume"].to_numpy() / 2,
            "taker_buy_quote_volume": frame["volume"].to_numpy() * frame["close"].to_numpy() / 2,
            "ignore": 0,
        }
    )


def _assert_same_candles(loaded: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert loaded["open_time"].tolist() == expected["open_time"].tolist()
    assert loaded["symbol"].tolist() == expected["symbol"].tolist()
    np.testing.assert_allclose(loaded[VALUES].to_numpy(), expected[VALUES].to_numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------------ loaders


def test_binance_csv_without_header_takes_symbol_and_timeframe_from_the_archive_name(
    tmp_path: Path, sample: pd.DataFrame
) -> None:
    path = tmp_path / "BTCUSDT-1h-2024-01.csv"
    _binance_rows(sample).to_csv(path, header=False, index=False)
    assert detect_layout(path) == "binance"
    _assert_same_candles(load_candles(path), sample)


def test_binance_csv_with_header_and_microsecond_times(
    tmp_path: Path, sample: pd.DataFrame
) -> None:
    """The 2025+ Binance spot archives use µs; the unit is detected from the magnitude."""
    path = tmp_path / "klines.csv"
    _binance_rows(sample, time_unit=1000).to_csv(path, index=False)
    loaded = load_candles_with_report(path, symbol="btcusdt")
    assert (loaded.layout, loaded.timeframe) == ("binance", "1h")
    _assert_same_candles(loaded.frame, sample)


def test_binance_parquet(tmp_path: Path, sample: pd.DataFrame) -> None:
    path = tmp_path / "BTCUSDT-1h-2024-01.parquet"
    _binance_rows(sample).to_parquet(path)
    _assert_same_candles(load_candles(path), sample)


def test_ccxt_csv_without_header_needs_the_symbol(tmp_path: Path, sample: pd.DataFrame) -> None:
    path = tmp_path / "ohlcv.csv"
    sample.drop(columns="symbol").to_csv(path, header=False, index=False)
    assert detect_layout(path) == "ccxt"
    with pytest.raises(
        InvalidInputError, match=r"ohlcv\.csv: the file has no symbol column.*--symbol"
    ):
        load_candles(path)
    _assert_same_candles(load_candles(path, symbol="BTC/USDT", timeframe="1h"), sample)


def test_ccxt_csv_with_header_and_symbol_column_selects_a_symbol(tmp_path: Path) -> None:
    frame = generate(["BTC/USDT", "ETH/USDT"], "15m", 40, seed=1)
    path = tmp_path / "two.csv"
    frame.rename(columns={"open_time": "timestamp"}).to_csv(path, index=False)
    both = load_candles(path)
    _assert_same_candles(both, frame)
    eth = load_candles(path, symbol="ETHUSDT")
    _assert_same_candles(eth, frame[frame["symbol"] == "ETH/USDT"].reset_index(drop=True))
    with pytest.raises(InvalidInputError, match="not SOL/USDT"):
        load_candles(path, symbol="SOL/USDT")


def test_ccxt_parquet(tmp_path: Path, sample: pd.DataFrame) -> None:
    path = tmp_path / "ohlcv.parquet"
    sample.rename(columns={"open_time": "timestamp"}).to_parquet(path)
    assert detect_layout(path) == "ccxt"
    _assert_same_candles(load_candles(path), sample)


def _cdd_table(frame: pd.DataFrame) -> pd.DataFrame:
    """CryptoDataDownload columns, newest first, base volume plus quote volume."""
    dates = pd.to_datetime(frame["open_time"], unit="ms", utc=True).dt.strftime("%Y-%m-%d %I-%p")
    table = pd.DataFrame(
        {
            "date": dates,
            "symbol": frame["symbol"].str.replace("/", ""),
            **{c: frame[c] for c in ("open", "high", "low", "close")},
            "volume_btc": frame["volume"],
            "volume": frame["volume"] * frame["close"],
        }
    )
    return table.iloc[::-1].reset_index(drop=True)


def test_cryptodatadownload_csv_with_banner(tmp_path: Path, sample: pd.DataFrame) -> None:
    path = tmp_path / "cdd.csv"
    banner = "Timestamps are UTC timezone,https://www.CryptoDataDownload.com\n"
    path.write_text(banner + _cdd_table(sample).to_csv(index=False))
    loaded = load_candles_with_report(path)
    assert loaded.layout == "cryptodatadownload"
    assert loaded.report.unsorted_fixed == 0  # newest-first is the layout, not disorder
    # The base-currency column (volume_btc) is the volume, not the USD column.
    _assert_same_candles(loaded.frame, sample)


def test_cryptodatadownload_parquet(tmp_path: Path, sample: pd.DataFrame) -> None:
    path = tmp_path / "cdd.parquet"
    _cdd_table(sample).to_parquet(path)
    _assert_same_candles(load_candles(path, layout="cryptodatadownload"), sample)


def test_ccxt_export_without_symbol_column_takes_the_bots_single_symbol(
    tmp_path: Path, sample: pd.DataFrame
) -> None:
    """What ``fetch_ohlcv`` gives, saved with its header and no symbol column, in CSV and
    Parquet: a one-symbol bot replays it as its own market; train names it with --symbol."""
    from kubetrade.market.sources import replay_frame
    from kubetrade.onnx_export.sources import file_frames

    table = sample.drop(columns="symbol").rename(columns={"open_time": "timestamp"})
    bot = _replay_bot(["BTC/USDT"])
    for path in (tmp_path / "fetch_ohlcv.csv", tmp_path / "fetch_ohlcv.parquet"):
        if path.suffix == ".csv":
            table.to_csv(path, index=False)
        else:
            table.to_parquet(path)
        _assert_same_candles(replay_frame(bot, str(path)), sample)
        _assert_same_candles(file_frames(path, "1h", "BTC/USDT")["BTC/USDT"], sample)
        with pytest.raises(InvalidInputError, match=rf"{path.name}: the file has no symbol"):
            replay_frame(_replay_bot(["BTC/USDT", "ETH/USDT"]), str(path))


def _replay_bot(symbols: list[str]) -> Any:
    from kubetrade.spec import parse_bot

    return parse_bot(
        {
            "apiVersion": "kubetrade.io/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": "files", "namespace": "t"},
            "spec": {
                "symbols": symbols,
                "timeframe": "1h",
                "exchange": {"name": "replay", "uri": "unused.csv"},
                "model": {"name": "m", "version": "latest"},
                "strategy": {"longAbove": 0.6, "exitBelow": 0.5},
            },
        },
        "<test bot>",
    )


BANNER = "Timestamps are UTC timezone,https://www.CryptoDataDownload.com\n"


def test_cryptodatadownload_old_layout_volumefrom_volumeto(
    tmp_path: Path, sample: pd.DataFrame
) -> None:
    """``Date,Symbol,Open,High,Low,Close,VolumeFrom,VolumeTo``: VolumeFrom is the base volume."""
    old = _cdd_table(sample).rename(columns={"volume_btc": "VolumeFrom", "volume": "VolumeTo"})
    old.columns = [c[0].upper() + c[1:] for c in old.columns]
    path = tmp_path / "Coinbase_BTCUSD_1h.csv"
    path.write_text(BANNER + old.to_csv(index=False))
    loaded = load_candles_with_report(path)
    assert loaded.layout == "cryptodatadownload"
    _assert_same_candles(loaded.frame, sample)


def test_cryptodatadownload_unix_seconds_then_ms_volume_base_quote_either_order(
    tmp_path: Path, sample: pd.DataFrame
) -> None:
    """``Unix Timestamp`` (seconds in older rows, ms in newer ones, as in the vendor's files),
    ``Volume BTC``/``Volume USDT``; newest first, and the same rows oldest first."""
    table = _cdd_table(sample).rename(columns={"volume_btc": "Volume BTC", "volume": "Volume USDT"})
    unix = (sample["open_time"].to_numpy() // 1000)[::-1].astype(np.int64)
    unix[: len(unix) // 2] *= 1000  # the newer half in ms
    table.insert(0, "Unix Timestamp", unix)
    table = table.drop(columns="date")
    for name, rows in (("newest_first.csv", table), ("oldest_first.csv", table.iloc[::-1])):
        path = tmp_path / name
        path.write_text(BANNER + rows.to_csv(index=False))
        loaded = load_candles_with_report(path)
        assert loaded.report.unsorted_fixed == 0, name
        _assert_same_candles(loaded.frame, sample)
        parquet = path.with_suffix(".parquet")
        rows.to_parquet(parquet)
        _assert_same_candles(load_candles(parquet), sample)


def test_cryptodatadownload_refusals_name_the_file_the_column_and_the_row(
    tmp_path: Path, sample: pd.DataFrame
) -> None:
    table = _cdd_table(sample)
    table.loc[3, "date"] = "yesterday"
    path = tmp_path / "bad_date.csv"
    path.write_text(BANNER + table.to_csv(index=False))
    with pytest.raises(
        InvalidInputError, match=r"bad_date\.csv: column 'date', data row 4, holds 'yesterday'"
    ):
        load_candles(path)
    quote_only = _cdd_table(sample).rename(columns={"volume_btc": "volume_eth"})
    path = tmp_path / "no_base_volume.csv"
    path.write_text(BANNER + quote_only.to_csv(index=False))
    with pytest.raises(InvalidInputError, match=r"no_base_volume\.csv: no base-currency volume"):
        load_candles(path)
    no_volume = tmp_path / "no_volume.csv"
    sample.drop(columns="volume").rename(columns={"open_time": "timestamp"}).to_csv(
        no_volume, index=False
    )
    with pytest.raises(InvalidInputError, match=r"no_volume\.csv: no 'volume' column .* name"):
        load_candles(no_volume)
    blank_time = tmp_path / "blank_time.csv"
    rows = sample.rename(columns={"open_time": "timestamp"}).to_csv(index=False).splitlines()
    rows[3] = "," + rows[3].split(",", 1)[1]
    blank_time.write_text("\n".join(rows))
    with pytest.raises(InvalidInputError, match=r"data row 3 is missing.*fix or drop that row"):
        load_candles(blank_time)


def test_layout_errors_name_the_file_and_the_fix(tmp_path: Path, sample: pd.DataFrame) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(InvalidInputError, match=r"odd\.csv: no header and 3 columns.*pass layout="):
        load_candles(path)
    with pytest.raises(InvalidInputError, match="unknown layout 'kraken'"):
        load_candles(path, layout="kraken")
    hourly = tmp_path / "hourly.csv"
    sample.rename(columns={"open_time": "timestamp"}).to_csv(hourly, index=False)
    with pytest.raises(InvalidInputError, match=r"holds 1h candles .* not 15m.*resample"):
        load_candles(hourly, timeframe="15m")
    garbled = tmp_path / "garbled.csv"
    text = sample.rename(columns={"open_time": "timestamp"}).to_csv(index=False).splitlines()
    fields = text[2].split(",")
    fields[4] = "12o5"  # a typo in the close of the second data row
    text[2] = ",".join(fields)
    garbled.write_text("\n".join(text))
    with pytest.raises(InvalidInputError, match=r"column 'close', data row 2, holds '12o5'"):
        load_candles(garbled)


def test_symbols_are_normalized() -> None:
    assert normalize_symbol("BTCUSD") == "BTC/USD"
    assert normalize_symbol("btcusdt") == "BTC/USDT"
    assert normalize_symbol("ETH-BTC") == "ETH/BTC"
    assert normalize_symbol("sol_usdc") == "SOL/USDC"
    assert normalize_symbol("BTC/USDT") == "BTC/USDT"
    with pytest.raises(InvalidInputError, match="write it as BASE/QUOTE"):
        normalize_symbol("FOOBAR")


def test_real_btc_file_loads_sorted_hourly_with_its_anomalies_reported(btc_csv: Path) -> None:
    loaded = load_candles_with_report(btc_csv)
    frame, report = loaded.frame, loaded.report
    assert (loaded.layout, loaded.timeframe) == ("cryptodatadownload", "1h")
    assert len(frame) == 20_111
    assert frame["open_time"].iloc[0] == pd.Timestamp("2017-07-01 11:00", tz="UTC").value // 10**6
    assert frame["open_time"].iloc[-1] == pd.Timestamp("2019-10-17 09:00", tz="UTC").value // 10**6
    assert (np.diff(frame["open_time"].to_numpy()) == HOUR).all()
    assert set(frame["symbol"]) == {"BTC/USD"}
    assert frame["volume"].iloc[-1] == 61.25  # volume_btc, not the USD volume
    # What the file holds: no duplicate times and no gaps, but five rows out of order on
    # 2017-11-12 whose OHLCV repeat the five hours before them (a vendor copy), and 28 flat
    # zero-volume candles (vendor gap fills). Reported, not altered.
    assert (report.rows_in, report.rows_out) == (20_111, 20_111)
    assert (report.duplicates_dropped, report.gaps_filled, report.damaged_rows) == (0, 0, 0)
    assert (report.unsorted_fixed, report.repeated_ohlcv, report.zero_volume_rows) == (5, 5, 28)


# ----------------------------------------------------------------------------------- cleaning


def test_cleaning_repairs_and_counts_every_defect(caplog: pytest.LogCaptureFixture) -> None:
    clean = generate(["ETH/USDT"], "1h", 100, seed=5)
    dirty = clean.drop(index=[10, 11, 40]).copy()  # two gaps: 2 candles and 1 candle
    dirty = pd.concat([dirty, clean.loc[[20]]])  # exact duplicate
    conflict = clean.loc[[30]].assign(close=clean.loc[30, "close"] * 1.01)
    dirty = pd.concat([conflict, dirty])  # earlier in the file: the later row wins
    dirty.loc[50, "close"] = np.nan  # missing price: dropped, then its slot is filled
    dirty.loc[60, "volume"] = np.nan  # missing volume: becomes 0
    dirty.loc[70, ["high", "low"]] = dirty.loc[70, ["low", "high"]].to_numpy()  # swapped
    dirty.loc[80, "open"] = -1.0  # impossible price: dropped, slot filled
    dirty = pd.concat([dirty.iloc[:5], dirty.iloc[5:9].iloc[::-1], dirty.iloc[9:]])

    with caplog.at_level(logging.INFO, logger="kubetrade.market.clean"):
        cleaned, report = clean_candles(dirty, "1h", source="crafted", max_damage=0.2)

    assert report.rows_in == len(dirty)
    assert report.rows_out == 100
    # descents: the conflicting copy of 30 before 0, three in the reversed block, and the
    # duplicate of 20 after 99
    assert report.unsorted_fixed == 5
    assert (report.duplicates_dropped, report.conflicting_duplicates) == (2, 1)
    assert (report.nan_rows_dropped, report.nan_volume_repaired) == (1, 1)
    assert (report.invalid_rows_dropped, report.invalid_ohlc_repaired) == (1, 1)
    assert (report.gaps_filled, report.gap_count, report.largest_gap) == (5, 4, 2)
    # slots 10, 11, 40, 50, 80 filled; 30 conflicting; 60 and 70 repaired
    assert report.damaged_rows == 8 and report.total_slots == 100

    assert cleaned["open_time"].tolist() == clean["open_time"].tolist()
    filled = cleaned.loc[[10, 11, 40, 50, 80]]
    assert (filled["volume"] == 0).all()
    for i in (10, 11, 40, 50, 80):
        flat = cleaned.loc[i, ["open", "high", "low", "close"]].to_numpy()
        assert (flat == cleaned.loc[i - 1, "close"]).all()
    assert cleaned.loc[30, "close"] == clean.loc[30, "close"]  # the last row in the file
    assert cleaned.loc[60, "volume"] == 0.0
    assert cleaned.loc[70, "high"] >= cleaned.loc[70, "low"]
    record = next(r for r in caplog.records if r.getMessage().startswith("candles cleaned"))
    assert record.levelno == logging.WARNING
    assert record.__dict__["gaps_filled"] == 5 and record.__dict__["source"] == "crafted"


def test_cleaning_refuses_damage_above_the_threshold_with_counts() -> None:
    clean = generate(["ETH/USDT"], "1h", 100, seed=5)
    holed = clean.drop(index=range(20, 30))
    with pytest.raises(
        InvalidInputError, match=r"holed\.csv: refusing candles: 10 of 100 .*10\.0%.*5%"
    ):
        clean_candles(holed, "1h", source="holed.csv")
    cleaned, report = clean_candles(holed, "1h", source="holed.csv", max_damage=0.15)
    assert len(cleaned) == 100 and report.gaps_filled == 10


def test_cleaning_refuses_times_off_the_grid() -> None:
    frame = generate(["ETH/USDT"], "1h", 10, seed=5)
    frame.loc[3, "open_time"] += 60_000
    with pytest.raises(InvalidInputError, match=r"1 candles do not open on a 1h boundary .*row 3"):
        clean_candles(frame, "1h")


def test_infer_timeframe_from_median_spacing() -> None:
    times = T0 + HOUR * np.array([0, 1, 2, 4, 5, 6])  # one gap does not move the median
    assert infer_timeframe(times) == "1h"
    with pytest.raises(InvalidInputError, match="matches no timeframe"):
        infer_timeframe(T0 + 7 * 60_000 * np.arange(5))


# --------------------------------------------------------------------------------- resampling


def test_resample_1h_to_4h_aggregates_closed_epoch_aligned_buckets() -> None:
    hours = np.arange(2, 14)  # 02:00 .. 13:00: buckets 00-04 and 12-16 are incomplete
    frame = pd.DataFrame(
        {
            "open_time": T0 + HOUR * hours,
            "open": 100.0 + hours,
            "high": 110.0 + hours,
            "low": 90.0 + hours,
            "close": 101.0 + hours,
            "volume": 1.0 + hours,
            "symbol": "BTC/USDT",
        }
    )
    four = resample(frame, "4h")
    assert four["open_time"].tolist() == [T0 + 4 * HOUR, T0 + 8 * HOUR]
    assert four[VALUES].to_numpy().tolist() == [
        [104.0, 117.0, 94.0, 108.0, 5.0 + 6 + 7 + 8],
        [108.0, 121.0, 98.0, 112.0, 9.0 + 10 + 11 + 12],
    ]
    with pytest.raises(InvalidInputError, match="finer 15m"):
        resample(frame, "15m")
    with pytest.raises(InvalidInputError, match="not a whole number"):
        resample(four, "6h", source_timeframe="4h")
    with pytest.raises(InvalidInputError, match="gaps"):
        resample(frame.drop(index=5), "4h", source_timeframe="1h")


# ---------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed_and_symbol() -> None:
    a = generate(["BTC/USDT", "ETH/USDT"], "1h", 300, seed=11)
    pd.testing.assert_frame_equal(a, generate(["BTC/USDT", "ETH/USDT"], "1h", 300, seed=11))
    assert not a.equals(generate(["BTC/USDT", "ETH/USDT"], "1h", 300, seed=12))
    btc, eth = (a[a["symbol"] == s].reset_index(drop=True) for s in ("BTC/USDT", "ETH/USDT"))
    returns = [np.diff(np.log(f["close"].to_numpy())) for f in (btc, eth)]
    assert abs(np.corrcoef(returns[0], returns[1])[0, 1]) < 0.3
    # A symbol's path does not depend on the other symbols or on n (a longer run extends it).
    alone = generate(["btcusdt"], "1h", 2000, seed=11)
    pd.testing.assert_frame_equal(alone.iloc[:300], btc)


def test_synthetic_iterator_yields_generate_in_time_then_symbol_order() -> None:
    symbols = ["SOL/USDT", "BTC/USDT"]
    candles = list(iter_candles(symbols, "5m", seed=4, n=1100))
    assert len(candles) == 2200
    assert [c.symbol for c in candles[:4]] == ["SOL/USDT", "BTC/USDT"] * 2
    assert all(a.open_time <= b.open_time for a, b in itertools.pairwise(candles))
    frame = generate(symbols, "5m", 1100, seed=4)
    assert from_candles(candles).equals(frame)
    endless = iter_candles(symbols, "5m", seed=4)
    assert [next(endless) for _ in range(6)] == candles[:6]


def test_synthetic_ohlc_is_valid_positive_and_realistic() -> None:
    frame = generate(["BTC/USDT", "DOGE/USDT"], "1h", 20_000, seed=2)
    o, h, lo, c, v = (frame[k].to_numpy() for k in VALUES)
    assert (lo > 0).all() and (v > 0).all()
    assert (lo <= np.minimum(o, c)).all() and (np.maximum(o, c) <= h).all()
    btc = frame[frame["symbol"] == "BTC/USDT"]
    returns = np.diff(np.log(btc["close"].to_numpy()))
    assert 0.003 < returns.std() < 0.03  # hourly crypto volatility, not a toy walk
    excess_kurtosis = ((returns - returns.mean()) ** 4).mean() / returns.var() ** 2 - 3
    assert excess_kurtosis > 1  # fat tails
    assert btc["open"].iloc[0] == 40_000.0 and btc["open_time"].iloc[0] == T0
    daily = generate(["ETH/USDT"], "1d", 50, seed=2, start_price=1.5)
    assert daily["open"].iloc[0] == 1.5
    assert (np.diff(daily["open_time"].to_numpy()) == 86_400_000).all()


def test_synthetic_regimes_differ_visibly_in_volatility() -> None:
    path = simulate("BTC/USDT", "1h", 30_000, seed=9)
    returns = np.diff(np.log(path.frame["close"].to_numpy()))
    labels = path.regimes[1:]
    vol = {r.name: returns[labels == i].std() for i, r in enumerate(REGIMES)}
    counts = np.bincount(labels, minlength=len(REGIMES))
    assert (counts > 1000).all(), counts  # every regime is visited for long stretches
    assert vol["range"] < vol["bull"] < vol["bear"] < vol["turbulent"]
    assert vol["turbulent"] > 3 * vol["range"]


# ----------------------------------------------------------------------------------- exchange


def _recorded() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RECORDED.read_text())
    return data


def test_closed_candle_selection_on_a_recorded_response() -> None:
    recorded = _recorded()
    poll = recorded["scenarios"]["live"]["polls"][0]
    candles, errors = parse_ohlcv(poll["response"], symbol="BTCUSDT", timeframe="1h")
    assert errors == [] and len(candles) == 6 and candles[0].symbol == "BTC/USDT"
    closed = select_closed(candles, now_ms=poll["server_ms"], after=None)
    assert [c.open_time for c in closed] == [r[0] for r in poll["response"][:5]]
    assert select_closed(candles, now_ms=poll["server_ms"], after=closed[2].open_time) == closed[3:]
    # A repeated row is delivered once.
    repeat = recorded["scenarios"]["live"]["polls"][2]
    candles, _ = parse_ohlcv(repeat["response"], symbol="BTC/USDT", timeframe="1h")
    assert len(select_closed(candles, now_ms=repeat["server_ms"], after=None)) == 1


def test_create_exchange_by_ccxt_id() -> None:
    with pytest.raises(ExchangeError, match=r"unknown exchange 'nope'.*ccxt exchange id"):
        create_exchange("nope")

    async def make_and_close() -> str:
        exchange = create_exchange("binance")
        try:
            return str(exchange.id)
        finally:
            await exchange.close()

    assert asyncio.run(make_and_close()) == "binance"


def test_malformed_exchange_rows_are_reported_not_raised() -> None:
    good = [1709251200000, 61130.98, 61480.0, 60950.12, 61422.01, None]
    rows: list[list[Any]] = [
        good,
        [1709254800000, 61422.01, None, 61302.4, 61588.9, 9.0],
        [1709258400000, 1.0],
    ]
    candles, errors = parse_ohlcv(rows, symbol="BTC/USDT", timeframe="1h")
    assert len(candles) == 1 and candles[0].volume == 0.0
    assert "not numeric" in errors[0] and "expected [timestamp" in errors[1]
    with pytest.raises(ExchangeError, match="high/low do not envelope"):
        parse_ohlcv_row([1709251200000, 10.0, 9.0, 8.0, 9.5, 1.0], symbol="X/Y", timeframe="1h")


class RecordedExchange:
    """A stand-in for ``ccxt.async_support.binance``: no exchange is reachable from the test
    environment, so it answers ``fetch_ohlcv`` with the recorded responses, in order, and runs
    the local and exchange clocks of the recording."""

    def __init__(self, scenario: dict[str, Any], offset: int, fail_first: bool = False) -> None:
        self.has = {"fetchTime": True}
        self.polls = list(scenario["polls"])
        self.offset = offset
        self.server_ms = int(self.polls[0]["server_ms"]) - 5_000
        self.calls: list[tuple[int | None, int | None]] = []
        self.fail_first = fail_first

    async def fetch_time(self) -> int:
        return self.server_ms

    def milliseconds(self) -> int:
        return self.server_ms - self.offset

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str = "1m", since: int | None = None, limit: int | None = None
    ) -> list[list[Any]]:
        assert (symbol, timeframe) == ("BTC/USDT", "1h")
        if self.fail_first:
            self.fail_first = False
            raise NetworkError("binance GET https://api.binance.com/api/v3/klines timed out")
        poll = self.polls.pop(0)
        self.calls.append((since, limit))
        assert since == poll["since"], "the poller asked from the wrong cursor"
        self.server_ms = int(poll["server_ms"])
        return list(poll["response"])


def _run_poller(name: str, wanted: int, fail_first: bool = False) -> tuple[Any, ...]:
    recorded = _recorded()
    scenario = recorded["scenarios"][name]
    exchange = RecordedExchange(scenario, recorded["clock_offset_ms"], fail_first)
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def collect() -> list[Candle]:
        got: list[Candle] = []
        poller = poll_closed_candles(
            exchange,
            "BTCUSDT",
            "1h",
            since=scenario["start_since"],
            limit=scenario["limit"],
            sleep=fake_sleep,
        )
        async for candle in poller:
            got.append(candle)
            if len(got) == wanted:
                break
        await poller.aclose()
        return got

    return asyncio.run(collect()), exchange, sleeps


def test_poller_delivers_each_closed_candle_once_and_waits_for_the_next_close() -> None:
    candles, exchange, sleeps = _run_poller("live", wanted=7, fail_first=True)
    times = [c.open_time for c in candles]
    assert times == [1709251200000 + i * HOUR for i in range(7)]
    # The 05:00 candle is delivered with its final values, not the partial ones seen open.
    assert candles[5].close == 61790.01 and candles[5].volume == 1544.70112
    assert [since for since, _ in exchange.calls] == [None, times[5], times[6]]
    # One backoff after the network error, then sleeps until each next close + 1.5 s settle
    # (the exchange clock is 250 ms ahead of the local one, and is what counts).
    assert sleeps[0] == 1.0
    assert sleeps[1] == pytest.approx((1709272800000 - 1709270434000 + 1500) / 1000)
    assert sleeps[2] == pytest.approx((3_600_000 - 1700 + 1500) / 1000)


def test_poller_pages_through_history_without_sleeping() -> None:
    candles, exchange, sleeps = _run_poller("history", wanted=5)
    assert [c.open_time for c in candles] == [1709251200000 + i * HOUR for i in range(5)]
    assert exchange.calls == [(1709251200000, 3), (1709262000000, 3)]
    assert sleeps == []


def test_to_candles_round_trip(sample: pd.DataFrame) -> None:
    candles = to_candles(sample, "1h")
    assert candles[0] == Candle("BTC/USDT", "1h", T0, *(float(sample.loc[0, c]) for c in VALUES))
    assert from_candles(candles).equals(sample)
