"""Seeded synthetic markets: the product's offline default candle source.

Each symbol follows a Markov-switching log-price process whose regimes differ in drift, mean
reversion, volatility and jump intensity (``REGIMES``): quiet ranges, bull and bear trends and
turbulent phases, with fat-tailed (Student-t) shocks and occasional jumps. Intrabar highs and
lows are drawn from the Brownian-bridge extremes of each bar, so OHLC is valid by construction;
volume follows the size of the move, the regime's activity and a UTC time-of-day cycle, with
persistent noise.

Determinism: a path depends only on (seed, normalized symbol, timeframe, start), never on the
other symbols or on ``n``: random numbers are drawn in fixed chunks of ``CHUNK`` candles, so a
longer run extends a shorter one, and the iterator yields exactly the candles of ``generate``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from kubetrade.domain import Candle, timeframe_ms
from kubetrade.errors import InvalidInputError
from kubetrade.market.frame import empty_frame, sort_frame
from kubetrade.market.symbols import base_currency, normalize_symbol

CHUNK = 1024
DEFAULT_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
_HOUR_MS = 3_600_000
_ANCHOR_HALF_LIFE_HOURS = 72.0
_VOLUME_PERSISTENCE = 0.85
_VOLUME_NOISE = 0.35
_T_DOF = 5.0
# Plausible levels for familiar bases so dashboards look like markets; others are drawn.
_KNOWN_PRICES = {"BTC": 40_000.0, "ETH": 2_500.0, "SOL": 100.0, "BNB": 300.0}


@dataclass(frozen=True, slots=True)
class Regime:
    """One market state. Rates are per hour and scaled to the timeframe."""

    name: str
    drift: float
    volatility: float
    reversion: float
    jump_rate: float
    jump_scale: float
    mean_hours: float
    activity: float


REGIMES: tuple[Regime, ...] = (
    Regime("range", 0.0, 0.0035, 0.03, 0.002, 0.012, 120.0, 0.7),
    Regime("bull", 0.0006, 0.006, 0.0, 0.003, 0.02, 96.0, 1.1),
    Regime("bear", -0.0008, 0.009, 0.0, 0.005, 0.025, 72.0, 1.4),
    Regime("turbulent", 0.0, 0.018, 0.01, 0.02, 0.035, 30.0, 2.2),
)


@dataclass(frozen=True, slots=True)
class SyntheticPath:
    """One symbol's candles and the regime (index into ``REGIMES``) of every candle."""

    frame: pd.DataFrame
    regimes: npt.NDArray[np.int8]


def simulate(
    symbol: str,
    timeframe: str,
    n: int,
    seed: int,
    *,
    start_ms: int = DEFAULT_START_MS,
    start_price: float | None = None,
) -> SyntheticPath:
    """``n`` candles of one symbol with their regime labels (for research and tests)."""
    _check_count(n)
    stream = _SymbolStream(symbol, timeframe, seed, start_ms, start_price)
    chunks = [stream.next_chunk() for _ in range(math.ceil(n / CHUNK))]
    if not chunks:
        return SyntheticPath(empty_frame(), np.zeros(0, dtype=np.int8))
    columns = {k: np.concatenate([c[k] for c in chunks])[:n] for k in chunks[0]}
    regimes = columns.pop("regime").astype(np.int8)
    frame = pd.DataFrame(columns).assign(symbol=stream.symbol)
    return SyntheticPath(sort_frame(frame), regimes)


def generate(
    symbols: Sequence[str],
    timeframe: str,
    n: int,
    seed: int,
    *,
    start_ms: int = DEFAULT_START_MS,
    start_price: float | Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """A candle frame of ``n`` candles per symbol, in stream order (time, then symbol).

    ``start_price`` is one price for all symbols, a mapping per symbol, or None for a
    per-symbol default.
    """
    names = _check_symbols(symbols)
    paths = [
        simulate(s, timeframe, n, seed, start_ms=start_ms, start_price=_price_for(s, start_price))
        for s in names
    ]
    return sort_frame(pd.concat([p.frame for p in paths], ignore_index=True))


def iter_candles(
    symbols: Sequence[str],
    timeframe: str,
    seed: int,
    *,
    n: int | None = None,
    start_ms: int = DEFAULT_START_MS,
    start_price: float | Mapping[str, float] | None = None,
) -> Iterator[Candle]:
    """Candles of all symbols in time order, then in the given symbol order; endless if n is None.

    Yields the same candles as ``generate`` (``n`` per symbol), generated lazily chunk by chunk.
    """
    if n is not None:
        _check_count(n)
    names = _check_symbols(symbols)
    streams = [
        _SymbolStream(s, timeframe, seed, start_ms, _price_for(s, start_price)) for s in names
    ]
    produced = 0
    while n is None or produced < n:
        chunks = [stream.next_candles() for stream in streams]
        take = CHUNK if n is None else min(CHUNK, n - produced)
        for i in range(take):
            for candles in chunks:
                yield candles[i]
        produced += take


def symbol_seed(seed: int, symbol: str) -> np.random.SeedSequence:
    """The random stream of one symbol: the seed plus a stable hash of its normalized name.

    (Python's ``hash`` is salted per process, so sha256 is used to stay reproducible.)
    """
    digest = hashlib.sha256(normalize_symbol(symbol).encode()).digest()
    return np.random.SeedSequence([seed, int.from_bytes(digest[:8], "big")])


class _SymbolStream:
    """The state of one symbol's path, advanced CHUNK candles at a time."""

    def __init__(
        self, symbol: str, timeframe: str, seed: int, start_ms: int, start_price: float | None
    ) -> None:
        step = timeframe_ms(timeframe)
        if seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, got {seed}")
        if start_ms < 0 or start_ms % step:
            raise InvalidInputError(
                f"start_ms {start_ms} is not a {timeframe} boundary of UTC; "
                f"use a multiple of {step}"
            )
        self.symbol = normalize_symbol(symbol)
        self.timeframe = timeframe
        self.step = step
        self.dt = step / _HOUR_MS
        self.rng = np.random.default_rng(symbol_seed(seed, self.symbol))
        price = start_price or _KNOWN_PRICES.get(base_currency(self.symbol))
        if price is None:
            price = float(10 ** self.rng.uniform(-1.0, 3.0))
        if not price > 0:
            raise InvalidInputError(f"start price of {self.symbol} must be positive, got {price}")
        # Typical traded value per hour, in quote currency; volume is this over the price.
        self.notional = float(10 ** self.rng.uniform(5.5, 7.5))
        self.price = float(price)
        self.log_price = math.log(price)
        self.anchor = self.log_price
        self.regime = int(self.rng.integers(len(REGIMES)))
        self.activity_noise = 0.0
        self.next_time = start_ms
        self._leave = np.array([-math.expm1(-self.dt / r.mean_hours) for r in REGIMES])
        self._pull = np.array([-math.expm1(-r.reversion * self.dt) for r in REGIMES])
        self._anchor_pull = -math.expm1(-self.dt * math.log(2) / _ANCHOR_HALF_LIFE_HOURS)

    def next_chunk(self) -> dict[str, npt.NDArray[np.generic]]:
        """The next CHUNK candles as column arrays (plus ``regime``)."""
        rng, dt = self.rng, self.dt
        # The draw order below is part of the output's definition: changing it changes paths.
        stay_draws, pick_draws = rng.random(CHUNK), rng.random(CHUNK)
        shocks = rng.standard_t(_T_DOF, CHUNK) * math.sqrt((_T_DOF - 2) / _T_DOF)
        jump_normals = rng.standard_normal(CHUNK)
        high_draws, low_draws = rng.random(CHUNK), rng.random(CHUNK)
        volume_normals = rng.standard_normal(CHUNK)

        regimes = self._regime_path(stay_draws, pick_draws)
        drift = np.array([r.drift for r in REGIMES])[regimes] * dt
        sigma = np.array([r.volatility for r in REGIMES])[regimes] * math.sqrt(dt)
        jump_rate = np.array([r.jump_rate for r in REGIMES])[regimes] * dt
        jump_scale = np.array([r.jump_scale for r in REGIMES])[regimes]
        jump_counts = rng.poisson(jump_rate)
        # Jumps skew down a little, as crypto crashes are sharper than rallies.
        jumps = jump_counts * (-0.3 * jump_scale) + np.sqrt(jump_counts) * jump_scale * jump_normals
        pull = self._pull[regimes]

        closes_log = np.empty(CHUNK)
        activity = np.empty(CHUNK)
        x, anchor, noise = self.log_price, self.anchor, self.activity_noise
        innovation = math.sqrt(1 - _VOLUME_PERSISTENCE**2) * _VOLUME_NOISE
        for i in range(CHUNK):
            x = x + drift[i] - pull[i] * (x - anchor) + sigma[i] * shocks[i] + jumps[i]
            anchor += self._anchor_pull * (x - anchor)
            noise = _VOLUME_PERSISTENCE * noise + innovation * volume_normals[i]
            closes_log[i] = x
            activity[i] = noise
        opens_log = np.concatenate(([self.log_price], closes_log[:-1]))
        self.log_price, self.anchor, self.activity_noise = x, anchor, noise

        moves = closes_log - opens_log
        # Extremes of a Brownian bridge from 0 to `moves` with variance sigma²: exact draws.
        spread = np.sqrt(moves**2 - 2 * sigma**2 * np.log(high_draws))
        up = (moves + spread) / 2
        spread = np.sqrt(moves**2 - 2 * sigma**2 * np.log(low_draws))
        down = (moves - spread) / 2
        # Each open is the previous close exactly (crypto trades around the clock).
        closes = np.exp(closes_log)
        opens = np.concatenate(([self.price], closes[:-1]))
        self.price = float(closes[-1])
        highs = np.maximum(opens * np.exp(up), np.maximum(opens, closes))
        lows = np.minimum(opens * np.exp(down), np.minimum(opens, closes))

        times = self.next_time + self.step * np.arange(CHUNK, dtype=np.int64)
        self.next_time = int(times[-1]) + self.step
        hours = (times // _HOUR_MS) % 24
        season = 1 + 0.35 * np.cos(2 * np.pi * (hours - 15) / 24)
        regime_activity = np.array([r.activity for r in REGIMES])[regimes]
        surprise = np.abs(moves) / sigma
        notional = self.notional * dt * regime_activity * season * (0.5 + 0.5 * surprise)
        volumes = notional * np.exp(activity) / closes
        return {
            "open_time": times,
            "open": opens,
            "high": highs,
            "low": lows,
            "close": closes,
            "volume": volumes,
            "regime": regimes.astype(np.int8),
        }

    def next_candles(self) -> list[Candle]:
        """The next CHUNK candles as domain Candles."""
        chunk = self.next_chunk()
        rows = zip(
            *(chunk[k].tolist() for k in ("open_time", "open", "high", "low", "close", "volume")),
            strict=True,
        )
        return [
            Candle(self.symbol, self.timeframe, t, o, h, lo, c, v) for t, o, h, lo, c, v in rows
        ]

    def _regime_path(
        self, stay_draws: npt.NDArray[np.float64], pick_draws: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.int64]:
        """Markov chain: leave the regime with its exit probability, to any other uniformly."""
        path = np.empty(CHUNK, dtype=np.int64)
        regime, others = self.regime, len(REGIMES) - 1
        leave = self._leave.tolist()
        for i, (stay, pick) in enumerate(
            zip(stay_draws.tolist(), pick_draws.tolist(), strict=True)
        ):
            if stay < leave[regime]:
                regime = (regime + 1 + int(pick * others)) % len(REGIMES)
            path[i] = regime
        self.regime = regime
        return path


def _check_count(n: int) -> None:
    if n < 0:
        raise InvalidInputError(f"number of candles must not be negative, got {n}")


def _check_symbols(symbols: Sequence[str]) -> list[str]:
    if isinstance(symbols, str):
        raise InvalidInputError(f"symbols must be a list of names, got the string {symbols!r}")
    names = [normalize_symbol(s) for s in symbols]
    if not names:
        raise InvalidInputError("give at least one symbol to generate")
    if len(set(names)) != len(names):
        raise InvalidInputError(f"symbols repeat after normalization: {names}")
    return names


def _price_for(symbol: str, start_price: float | Mapping[str, float] | None) -> float | None:
    if start_price is None or isinstance(start_price, int | float):
        return None if start_price is None else float(start_price)
    prices = {normalize_symbol(k): float(v) for k, v in start_price.items()}
    return prices.get(normalize_symbol(symbol))
