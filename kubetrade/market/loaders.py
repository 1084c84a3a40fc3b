"""Candle files (CSV or Parquet) in three layouts, read into cleaned candle frames.

Layouts (``layout="auto"`` detects them from the header, or from the column count when there
is no header):

- ``binance``: Binance kline archives: ``open_time, open, high, low, close, volume, close_time,
  quote_volume, count, taker_buy_volume, taker_buy_quote_volume, ignore``, with or without the
  header. Times in ms (µs in the 2025+ spot archives; detected). The symbol and timeframe are
  read from the archive's file name (``BTCUSDT-1h-2024-01.csv``) when not given.
- ``ccxt``: ``fetch_ohlcv`` rows ``timestamp, open, high, low, close, volume``, optionally with
  that header and an optional ``symbol`` column.
- ``cryptodatadownload``: a banner line, then ``[unix,] date, symbol, open, high, low, close``
  and the volumes, in any of the vendor's layouts over the years: ``volume_<base>,
  volume[_<quote>]``, ``Volume <BASE>, Volume <QUOTE>`` or the older ``VolumeFrom, VolumeTo``
  (``Unix Timestamp`` for ``unix``); dates like ``2019-10-17 09-AM`` or ISO; unix times in
  s or ms (some files switch unit part-way, so each row's unit is read from its magnitude);
  newest row first or oldest first (detected). The base-currency volume is used as volume.

A file without a symbol column (a ccxt export) names its market through ``symbol`` or
``default_symbol`` (the bot's single symbol); the command line's ``--symbol`` passes it.

Every load is cleaned (``kubetrade.market.clean``); the report is logged and returned by
``load_candles_with_report``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from kubetrade.domain import TIMEFRAME_MS
from kubetrade.errors import InvalidInputError
from kubetrade.market.clean import CleaningReport, clean_candles
from kubetrade.market.frame import (
    CANDLE_COLUMNS,
    PRICE_COLUMNS,
    CandleDataError,
    infer_frame_timeframe,
    to_epoch_ms,
)
from kubetrade.market.symbols import base_currency, normalize_symbol

Layout = Literal["binance", "ccxt", "cryptodatadownload"]
_LAYOUT_NAMES: dict[str, Layout] = {
    "binance": "binance",
    "ccxt": "ccxt",
    "cryptodatadownload": "cryptodatadownload",
}
LAYOUTS: tuple[str, ...] = tuple(_LAYOUT_NAMES)

BINANCE_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
CCXT_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
# Binance archive names: BTCUSDT-1h-2024-01.csv, BTCUSDT-15m-2024-01-31.zip.csv, ...
_BINANCE_NAME = re.compile(r"^([A-Za-z0-9]+)-(\d+[mhdw])-\d{4}")
_CDD_DATE_FORMATS = (
    "%Y-%m-%d %I-%p",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d",
)


@dataclass(frozen=True, slots=True)
class LoadedCandles:
    """A loaded file: the cleaned frame, its timeframe, the layout read, the cleaning report."""

    frame: pd.DataFrame
    timeframe: str
    layout: Layout
    report: CleaningReport


def load_candles(
    path: str | Path,
    *,
    symbol: str | None = None,
    timeframe: str | None = None,
    layout: str = "auto",
    max_damage: float = 0.05,
    default_symbol: str | None = None,
) -> pd.DataFrame:
    """Read a CSV or Parquet candle file into a cleaned candle frame (see ``frame``).

    ``symbol`` names the market when the file has no symbol column, or selects one when it has
    several; ``default_symbol`` names it only when the file has no symbol column (a bot's single
    symbol). ``timeframe`` is inferred from the median spacing when not given, and checked
    against the data when given. See ``load_candles_with_report`` for the cleaning report.
    """
    return load_candles_with_report(
        path,
        symbol=symbol,
        timeframe=timeframe,
        layout=layout,
        max_damage=max_damage,
        default_symbol=default_symbol,
    ).frame


def load_candles_with_report(
    path: str | Path,
    *,
    symbol: str | None = None,
    timeframe: str | None = None,
    layout: str = "auto",
    max_damage: float = 0.05,
    default_symbol: str | None = None,
) -> LoadedCandles:
    """``load_candles`` that also returns the timeframe, the layout and the cleaning report."""
    file = Path(path)
    if not file.is_file():
        what = "is not a file" if file.exists() else "does not exist"
        raise CandleDataError(f"candle file {file} {what}")
    table, found = _read_table(file, _check_layout(layout))
    try:
        raw = _PARSERS[found](table, str(file))
        raw = _apply_symbol(raw, symbol, default_symbol, file, found)
    except CandleDataError:
        raise
    except InvalidInputError as error:  # e.g. a symbol that is no market: name the file
        raise CandleDataError(f"{file}: {error}") from None
    named_tf = _timeframe_from_name(file) if found == "binance" else None
    actual = infer_frame_timeframe(raw, where=str(file)) if len(raw) > 1 else named_tf
    chosen = timeframe or actual
    if chosen is None:
        raise CandleDataError(f"{file}: a single candle has no spacing; pass timeframe= explicitly")
    if chosen not in TIMEFRAME_MS:
        raise CandleDataError(f"unknown timeframe {chosen!r}; use one of {', '.join(TIMEFRAME_MS)}")
    if actual is not None and chosen != actual:
        raise CandleDataError(
            f"{file}: holds {actual} candles (median spacing), not {chosen}; load it as {actual} "
            f"and convert with kubetrade.market.resample(frame, {chosen!r})"
        )
    cleaned, report = clean_candles(raw, chosen, source=str(file), max_damage=max_damage)
    return LoadedCandles(frame=cleaned, timeframe=chosen, layout=found, report=report)


def _check_layout(layout: str) -> Layout | None:
    """None for "auto", else the named layout; unknown names are refused."""
    if layout == "auto":
        return None
    if layout in _LAYOUT_NAMES:
        return _LAYOUT_NAMES[layout]
    raise CandleDataError(f"unknown layout {layout!r}; use 'auto' or one of {', '.join(LAYOUTS)}")


def detect_layout(path: str | Path) -> Layout:
    """The layout of a candle file, from its header or, without one, its column count."""
    return _read_table(Path(path), None)[1]


def _read_table(file: Path, layout: Layout | None) -> tuple[pd.DataFrame, Layout]:
    """The file as a table with lower-case column names, and its layout; a file that cannot be
    read as one (binary, not UTF-8, ragged rows, a broken Parquet footer) is refused in one
    line naming it."""
    try:
        return _read_table_unchecked(file, layout)
    except CandleDataError:
        raise
    except UnicodeDecodeError as error:
        raise CandleDataError(
            f"{file}: not UTF-8 text (byte 0x{error.object[error.start : error.start + 1].hex()} "
            f"at offset {error.start}); save the file as UTF-8 CSV"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise CandleDataError(f"{file}: not a readable CSV table: {_first_line(error)}") from None
    except (pa.ArrowException, OSError) as error:
        raise CandleDataError(f"{file}: cannot be read: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split("\n", 1)[0].split())
    return text[:300] or type(error).__name__


def _read_table_unchecked(file: Path, layout: Layout | None) -> tuple[pd.DataFrame, Layout]:
    suffix = file.suffix.lower()
    if suffix in (".parquet", ".pq"):
        table = pd.read_parquet(file)
        table.columns = [str(c).strip().lower() for c in table.columns]
        found = layout or _layout_from_columns(list(table.columns), file)
        if found == "binance" and "open_time" not in table.columns:
            table = _name_positional(table, BINANCE_COLUMNS, file)
        if found == "ccxt" and "timestamp" not in table.columns:
            table = _name_positional(table, CCXT_COLUMNS, file)
        return table, found
    if suffix not in (".csv", ".txt"):
        raise CandleDataError(f"{file}: unsupported file type {suffix!r}; use .csv or .parquet")
    return _read_csv(file, layout)


def _read_csv(file: Path, layout: Layout | None) -> tuple[pd.DataFrame, Layout]:
    with file.open(encoding="utf-8-sig") as handle:
        head = [line.strip() for line, _ in zip(handle, range(2), strict=False)]
    if not head or not head[0]:
        raise CandleDataError(f"{file}: the file is empty")
    header_row = next((i for i, line in enumerate(head) if _is_header(line)), None)
    if header_row is not None:
        table = pd.read_csv(file, skiprows=header_row, encoding="utf-8-sig")
        table.columns = [str(c).strip().lower() for c in table.columns]
        return table, layout or _layout_from_columns(list(table.columns), file)
    fields = head[0].split(",")
    if layout is None:
        if len(fields) == len(CCXT_COLUMNS):
            layout = "ccxt"
        elif len(fields) in (len(BINANCE_COLUMNS), len(BINANCE_COLUMNS) - 1):
            layout = "binance"
        else:
            raise CandleDataError(
                f"{file}: no header and {len(fields)} columns; expected 6 (ccxt OHLCV) or 12 "
                "(Binance klines); pass layout= or add a header"
            )
    names = {"ccxt": CCXT_COLUMNS, "binance": BINANCE_COLUMNS}.get(layout)
    if names is None:
        raise CandleDataError(f"{file}: the {layout} layout needs its header line, found none")
    table = pd.read_csv(file, header=None, encoding="utf-8-sig")
    return _name_positional(table, names, file), layout


def _is_header(line: str) -> bool:
    fields = {f.strip().strip('"').lower() for f in line.split(",")}
    return {"open", "close"} <= fields


def _layout_from_columns(columns: list[str], file: Path) -> Layout:
    names = set(columns)
    if names & {"date", "unix", "unix timestamp"} and "symbol" in names:
        return "cryptodatadownload"
    if "timestamp" in names:
        return "ccxt"
    if "open_time" in names or "open time" in names:
        return "binance"
    if columns and all(c.isdigit() for c in columns):
        return "ccxt" if len(columns) == len(CCXT_COLUMNS) else "binance"
    raise CandleDataError(
        f"{file}: cannot tell the layout from columns {columns}; expected a Binance kline, ccxt "
        "OHLCV or CryptoDataDownload header, or pass layout="
    )


def _name_positional(table: pd.DataFrame, names: tuple[str, ...], file: Path) -> pd.DataFrame:
    if table.shape[1] < len(CCXT_COLUMNS):
        raise CandleDataError(f"{file}: {table.shape[1]} columns, need at least 6 (time and OHLCV)")
    renamed = table.iloc[:, : min(len(names), table.shape[1])].copy()
    renamed.columns = list(names[: renamed.shape[1]])
    return renamed


def _numeric(table: pd.DataFrame, column: str, file: str) -> pd.Series:
    """A column as float64; a missing column, or text that is not a number, is refused."""
    if column not in table.columns:
        raise CandleDataError(
            f"{file}: no {column!r} column among {list(table.columns)}; name the column "
            f"{column!r} in the header, or pass the file's layout"
        )
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna() & table[column].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CandleDataError(
            f"{file}: column {column!r}, data row {row + 1}, holds "
            f"{table[column].iloc[row]!r}, which is not a number; fix or drop that row"
        )
    return values.astype(np.float64)


def _frame(table: pd.DataFrame, times: np.ndarray, volume: str, file: str) -> pd.DataFrame:
    """The raw candle frame; without a symbol column the symbol is left empty for
    ``_apply_symbol`` to fill in."""
    symbols: object = ""
    if "symbol" in table.columns:
        raw = table["symbol"].astype(str)
        # Normalize each distinct name once: files repeat one symbol on every row.
        symbols = raw.map({s: normalize_symbol(s) for s in raw.unique()}).to_numpy()
    return pd.DataFrame(
        {
            "open_time": times,
            **{c: _numeric(table, c, file).to_numpy() for c in PRICE_COLUMNS},
            "volume": _numeric(table, volume, file).to_numpy(),
            "symbol": symbols,
        }
    ).loc[:, list(CANDLE_COLUMNS)]


def _parse_binance(table: pd.DataFrame, file: str) -> pd.DataFrame:
    time_column = "open_time" if "open_time" in table.columns else "open time"
    times = to_epoch_ms(_numeric(table, time_column, file), where=f"{file} [{time_column}]")
    return _frame(table, times, "volume", file)


def _parse_ccxt(table: pd.DataFrame, file: str) -> pd.DataFrame:
    times = to_epoch_ms(_numeric(table, "timestamp", file), where=f"{file} [timestamp]")
    return _frame(table, times, "volume", file)


def _parse_cryptodatadownload(table: pd.DataFrame, file: str) -> pd.DataFrame:
    table = table.rename(columns={"unix timestamp": "unix"})
    if "unix" in table.columns:
        times = _mixed_unit_ms(_numeric(table, "unix", file), f"{file} [unix]")
    elif "date" in table.columns:
        times = _parse_dates(table["date"].astype(str), file)
    else:
        raise CandleDataError(f"{file}: no 'unix' or 'date' column among {list(table.columns)}")
    symbols = table["symbol"].astype(str).unique().tolist()
    try:
        bases = {base_currency(s) for s in symbols}
    except InvalidInputError as error:
        raise CandleDataError(f"{file}: column 'symbol': {error}") from None
    if len(bases) != 1:
        raise CandleDataError(
            f"{file}: column 'symbol' holds several markets {symbols}; split the file per market"
        )
    volume = _base_volume_column(list(table.columns), bases.pop(), file)
    frame = _frame(table, times, volume, file)
    # Vendor files list the newest candle first (older exports oldest first): restore time
    # order so that only genuinely misplaced rows are reported as unsorted by the cleaner.
    if len(frame) > 1 and times[0] > times[-1]:
        frame = frame.iloc[::-1]
    return frame.reset_index(drop=True)


def _mixed_unit_ms(values: pd.Series, where: str) -> npt.NDArray[np.int64]:
    """Epoch times whose unit (s, ms or µs) is read per row from its magnitude: some
    CryptoDataDownload files switch from seconds to milliseconds part-way."""
    raw = values.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(raw)):
        row = int(np.flatnonzero(~np.isfinite(raw))[0])
        raise CandleDataError(f"{where}: data row {row + 1} has no time; fill it in or drop it")
    scale = np.where(raw >= 1e14, 1e-3, np.where(raw >= 1e11, 1.0, 1e3))
    millis: npt.NDArray[np.int64] = np.floor(raw * scale).astype(np.int64)
    return millis


def _parse_dates(dates: pd.Series, file: str) -> npt.NDArray[np.int64]:
    best: pd.Series | None = None
    for fmt in _CDD_DATE_FORMATS:
        parsed = pd.to_datetime(dates, format=fmt, utc=True, errors="coerce")
        if not parsed.isna().any():
            # pandas picks the datetime resolution from the input; fix it to ms explicitly.
            millis: npt.NDArray[np.int64] = (
                parsed.dt.as_unit("ms").astype("int64").to_numpy(dtype=np.int64)
            )
            return millis
        if best is None or parsed.notna().sum() > best.notna().sum():
            best = parsed
    row = int(np.flatnonzero(best.isna().to_numpy())[0]) if best is not None else 0
    raise CandleDataError(
        f"{file}: column 'date', data row {row + 1}, holds {dates.iloc[row]!r}, which matches "
        f"none of the formats {list(_CDD_DATE_FORMATS)}; fix that row or use a unix column"
    )


def _base_volume_column(columns: list[str], base: str, file: str) -> str:
    """The volume column in the base currency: ``volume_btc``, ``volume btc`` (``Volume BTC``)
    or the older ``volumefrom`` / ``volume from``; a lone ``volume`` column is taken as is."""
    wanted = [f"volume_{base.lower()}", f"volume {base.lower()}", "volumefrom", "volume from"]
    for name in wanted:
        if name in columns:
            return name
    volumes = [c for c in columns if c.startswith("volume")]
    if volumes == ["volume"]:
        return "volume"
    raise CandleDataError(
        f"{file}: no base-currency volume column for {base} among {volumes}; expected one of "
        f"{wanted}; rename the column holding the volume in {base}"
    )


_PARSERS = {
    "binance": _parse_binance,
    "ccxt": _parse_ccxt,
    "cryptodatadownload": _parse_cryptodatadownload,
}


def _apply_symbol(
    raw: pd.DataFrame, symbol: str | None, default: str | None, file: Path, layout: Layout
) -> pd.DataFrame:
    """Name the market (``symbol``, the archive's file name, then ``default``) or select
    ``symbol`` from a file with a symbol column."""
    present = sorted(s for s in raw["symbol"].unique().tolist() if s)
    if not present:
        named = _symbol_from_name(file) if layout == "binance" else None
        name = symbol or named or default
        if name is None:
            raise CandleDataError(
                f"{file}: the file has no symbol column, so its market is unknown; name it "
                "with --symbol BASE/QUOTE (train, validate), replay it with a bot that trades "
                "one symbol, or add a symbol column"
            )
        return raw.assign(symbol=normalize_symbol(name))
    if symbol is None:
        return raw
    wanted = normalize_symbol(symbol)
    if wanted not in present:
        raise CandleDataError(
            f"{file}: holds {present}, not {wanted}; name one of those markets, or replay a "
            f"file of {wanted}"
        )
    return raw.loc[raw["symbol"] == wanted].reset_index(drop=True)


def _symbol_from_name(file: Path) -> str | None:
    match = _BINANCE_NAME.match(file.name)
    return match.group(1) if match else None


def _timeframe_from_name(file: Path) -> str | None:
    match = _BINANCE_NAME.match(file.name)
    return match.group(2) if match and match.group(2) in TIMEFRAME_MS else None
