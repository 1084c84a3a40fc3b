"""Cleaning: candle series are repaired or refused, and every repair is counted and logged.

Models see gap-free, sorted, de-duplicated series with valid OHLC. What the cleaner does:

- rows out of order are sorted (lossless; counted as ``unsorted_fixed``, not as damage);
- open times off the timeframe grid are refused outright: no repair can place them;
- rows with a missing or non-finite price are dropped; a missing volume becomes 0;
- rows with a non-positive or absurd price (above ``MAX_PRICE``) or a negative or absurd volume
  are dropped;
- duplicate open times keep the last row in file order (the latest write of that candle);
  copies with other values are counted as ``conflicting_duplicates``;
- high/low that do not envelope open/close are widened to the envelope;
- missing candles (including the slots of dropped rows) become flat candles at the previous
  close with zero volume, the usual convention, which features and models read as "no trading".

``damaged_rows`` counts the distinct candle slots that were dropped, filled or altered; above
``max_damage`` of all slots the series is refused with a ValueError naming the counts, since a
model trained or run on mostly invented candles is worse than no model.

Two anomalies are reported but left in place, because the true values are unknown:
``repeated_ohlcv`` (a traded candle whose OHLCV exactly repeats an earlier one: a vendor copy)
and ``zero_volume_rows`` (flat candles already present in the input, e.g. vendor gap fills).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from kubetrade.domain import timeframe_ms
from kubetrade.market.frame import CANDLE_COLUMNS, PRICE_COLUMNS, CandleDataError, sort_frame

log = logging.getLogger(__name__)

# No traded asset is quoted above this, nor trades this much in one candle: a larger value is a
# unit error or a forgery, and would overflow the engine's figures (1e308 * quantity = inf).
MAX_PRICE = 1e9
MAX_VOLUME = 1e18
KEY_COLUMNS = ["symbol", "open_time"]
VALUE_COLUMNS = [*PRICE_COLUMNS, "volume"]


@dataclass(frozen=True, slots=True)
class CleaningReport:
    """What cleaning found and did to one candle source (all symbols together)."""

    source: str
    timeframe: str
    symbols: tuple[str, ...]
    rows_in: int
    rows_out: int
    unsorted_fixed: int
    duplicates_dropped: int
    conflicting_duplicates: int
    nan_rows_dropped: int
    nan_volume_repaired: int
    invalid_rows_dropped: int
    invalid_ohlc_repaired: int
    gaps_filled: int
    gap_count: int
    largest_gap: int
    repeated_ohlcv: int
    zero_volume_rows: int
    damaged_rows: int
    total_slots: int

    @property
    def damage_fraction(self) -> float:
        """Share of candle slots that were dropped, filled or altered."""
        return self.damaged_rows / self.total_slots if self.total_slots else 0.0

    @property
    def clean(self) -> bool:
        """True when nothing had to be repaired and no anomaly was seen."""
        return (
            self.damaged_rows == 0
            and self.duplicates_dropped == 0
            and self.repeated_ohlcv == 0
            and self.unsorted_fixed == 0
        )

    def summary(self) -> str:
        """The non-zero counts as ``name=value`` pairs, for messages and logs."""
        counts = {
            k: v
            for k, v in asdict(self).items()
            if isinstance(v, int) and v and k not in ("rows_in", "rows_out", "total_slots")
        }
        text = ", ".join(f"{k}={v}" for k, v in counts.items())
        return f"rows_in={self.rows_in}, rows_out={self.rows_out}" + (f", {text}" if text else "")


def clean_candles(
    raw: pd.DataFrame, timeframe: str, *, source: str = "candles", max_damage: float = 0.05
) -> tuple[pd.DataFrame, CleaningReport]:
    """Repair a raw candle frame (see the module doc) and report what was done.

    ``raw`` has the columns of ``CANDLE_COLUMNS`` in any row order, prices may be NaN.
    Returns the cleaned frame in stream order and the report (also logged).
    Raises ValueError when open times are off the timeframe grid, nothing valid remains, or
    more than ``max_damage`` (a fraction, default 5 %) of the candle slots needed repair.
    """
    if not 0.0 <= max_damage <= 1.0:
        raise CandleDataError(f"max_damage is a fraction between 0 and 1, got {max_damage}")
    missing = [c for c in CANDLE_COLUMNS if c not in raw.columns]
    if missing:
        raise CandleDataError(f"{source}: candle frame lacks columns {missing}")
    step = timeframe_ms(timeframe)
    frame = raw.loc[:, list(CANDLE_COLUMNS)].reset_index(drop=True)
    rows_in = len(frame)

    unsorted = int((frame.groupby("symbol", sort=False)["open_time"].diff() < 0).sum())
    _refuse_off_grid(frame, step, timeframe, source)

    prices = frame[list(PRICE_COLUMNS)].to_numpy(dtype=np.float64)
    volume = frame["volume"].to_numpy(dtype=np.float64)
    nan_price = ~np.isfinite(prices).all(axis=1)
    nan_volume = ~np.isfinite(volume) & ~nan_price
    invalid = ~nan_price & (
        (prices <= 0).any(axis=1)
        | (prices > MAX_PRICE).any(axis=1)
        | (np.nan_to_num(volume) < 0)
        | (np.nan_to_num(volume) > MAX_VOLUME)
    )
    dropped_keys = frame.loc[nan_price | invalid, KEY_COLUMNS]
    frame.loc[nan_volume, "volume"] = 0.0
    repaired_keys = [frame.loc[nan_volume, KEY_COLUMNS]]
    frame = frame.loc[~(nan_price | invalid)]

    frame, dup_count, conflict_keys = _drop_duplicates(frame)
    repaired_keys.append(conflict_keys)
    frame, envelope_keys = _repair_envelope(frame)
    repaired_keys.append(envelope_keys)

    traded = frame[frame["volume"] > 0]
    repeated = int(traded.duplicated(["symbol", *VALUE_COLUMNS], keep="first").sum())
    zero_volume = int((frame["volume"] == 0).sum())

    if frame.empty:
        raise CandleDataError(
            f"{source}: no valid candles remain out of {rows_in} rows "
            f"({int(nan_price.sum())} with missing prices, {int(invalid.sum())} invalid); "
            "check the file's layout and content"
        )
    _refuse_early_if_gaps_too_large(frame, step, max_damage, source)
    frame, filled_keys, gap_count, largest_gap = _fill_gaps(frame, step)

    touched = pd.concat([dropped_keys, *repaired_keys, filled_keys], ignore_index=True)
    touched = touched.drop_duplicates()
    all_slots = pd.concat([touched, frame[KEY_COLUMNS]], ignore_index=True).drop_duplicates()
    cleaned = sort_frame(frame)
    report = CleaningReport(
        source=source,
        timeframe=timeframe,
        symbols=tuple(sorted(cleaned["symbol"].unique().tolist())),
        rows_in=rows_in,
        rows_out=len(cleaned),
        unsorted_fixed=unsorted,
        duplicates_dropped=dup_count,
        conflicting_duplicates=len(conflict_keys),
        nan_rows_dropped=int(nan_price.sum()),
        nan_volume_repaired=int(nan_volume.sum()),
        invalid_rows_dropped=int(invalid.sum()),
        invalid_ohlc_repaired=len(envelope_keys),
        gaps_filled=len(filled_keys),
        gap_count=gap_count,
        largest_gap=largest_gap,
        repeated_ohlcv=repeated,
        zero_volume_rows=zero_volume,
        damaged_rows=len(touched),
        total_slots=len(all_slots),
    )
    _log_report(report)
    if report.damage_fraction > max_damage:
        raise CandleDataError(
            f"{source}: refusing candles: {report.damaged_rows} of {report.total_slots} candle "
            f"slots ({report.damage_fraction:.1%}) needed repair, above the {max_damage:.0%} "
            f"limit ({report.summary()}). Check the file (wrong timeframe? truncated or merged "
            "download?) or pass a higher max_damage if these repairs are acceptable."
        )
    return cleaned, report


def _refuse_off_grid(frame: pd.DataFrame, step: int, timeframe: str, source: str) -> None:
    times = frame["open_time"].to_numpy(dtype=np.int64)
    off = np.flatnonzero(times % step != 0)
    if off.size:
        first = pd.Timestamp(int(times[off[0]]), unit="ms", tz="UTC")
        raise CandleDataError(
            f"{source}: {off.size} candles do not open on a {timeframe} boundary of UTC "
            f"(first at row {int(off[0])}: {first.isoformat()}); the file's timeframe is not "
            f"{timeframe}, or its times are shifted"
        )


def _drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, pd.DataFrame]:
    """Keep the last row per (symbol, open_time); also return keys whose copies disagreed."""
    ordered = frame.sort_values(KEY_COLUMNS, kind="stable")
    dup = ordered.duplicated(KEY_COLUMNS, keep="last").to_numpy()
    if not dup.any():
        return ordered, 0, frame.loc[[], KEY_COLUMNS]
    kept = ordered.loc[~dup]
    dropped = ordered.loc[dup]
    joined = dropped.merge(kept, on=KEY_COLUMNS, suffixes=("", "_kept"))
    differs = np.zeros(len(joined), dtype=bool)
    for column in VALUE_COLUMNS:
        differs |= joined[column].to_numpy() != joined[f"{column}_kept"].to_numpy()
    conflicts = joined.loc[differs, KEY_COLUMNS].drop_duplicates()
    return kept, int(dup.sum()), conflicts


def _repair_envelope(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Widen high/low to envelope open and close; return the keys that needed it."""
    values = frame[list(PRICE_COLUMNS)].to_numpy(dtype=np.float64)
    top, bottom = values.max(axis=1), values.min(axis=1)
    bad = (frame["high"].to_numpy() < top) | (frame["low"].to_numpy() > bottom)
    if not bad.any():
        return frame, frame.loc[[], KEY_COLUMNS]
    repaired = frame.copy()
    repaired["high"] = top
    repaired["low"] = bottom
    return repaired, frame.loc[bad, KEY_COLUMNS]


def _refuse_early_if_gaps_too_large(
    frame: pd.DataFrame, step: int, max_damage: float, source: str
) -> None:
    """Refuse before filling when gaps alone exceed the limit (e.g. a wrong timeframe)."""
    spans = frame.groupby("symbol")["open_time"].agg(["min", "max", "count"])
    slots = int(((spans["max"] - spans["min"]) // step + 1).sum())
    gaps = slots - int(spans["count"].sum())
    if slots and gaps / slots > max_damage:
        raise CandleDataError(
            f"{source}: refusing candles: {gaps} of {slots} candle slots ({gaps / slots:.1%}) are "
            f"missing, above the {max_damage:.0%} limit. Check the timeframe and that the file "
            "is complete, or pass a higher max_damage to fill the gaps with flat candles."
        )


def _fill_gaps(frame: pd.DataFrame, step: int) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """Insert flat zero-volume candles at the previous close into every missing slot."""
    parts: list[pd.DataFrame] = []
    filled: list[pd.DataFrame] = []
    gap_count = 0
    largest = 0
    for symbol, group in frame.groupby("symbol", sort=True):
        times = group["open_time"].to_numpy(dtype=np.int64)
        full = np.arange(times[0], times[-1] + step, step, dtype=np.int64)
        if full.size == times.size:
            parts.append(group)
            continue
        series = group.set_index("open_time").reindex(full)
        missing = series["close"].isna().to_numpy()
        previous_close = series["close"].ffill()
        for column in PRICE_COLUMNS:
            series.loc[missing, column] = previous_close[missing]
        series.loc[missing, "volume"] = 0.0
        series["symbol"] = symbol
        restored = series.rename_axis("open_time").reset_index()
        parts.append(restored)
        filled.append(restored.loc[missing, KEY_COLUMNS])
        runs = _run_lengths(missing)
        gap_count += runs.size
        largest = max(largest, int(runs.max()))
    keys = pd.concat(filled, ignore_index=True) if filled else frame.loc[[], KEY_COLUMNS]
    return pd.concat(parts, ignore_index=True), keys, gap_count, largest


def _run_lengths(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Lengths of the runs of True in a boolean array."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def _log_report(report: CleaningReport) -> None:
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(report).items()}
    fields["damage_fraction"] = round(report.damage_fraction, 6)
    if report.clean:
        log.info("candles clean: %s", report.summary(), extra=fields)
    else:
        log.warning(
            "candles cleaned with findings: %s (%s)", report.source, report.summary(), extra=fields
        )
