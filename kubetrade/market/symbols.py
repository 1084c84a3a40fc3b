"""Symbol names in the one form the product uses everywhere: ``BASE/QUOTE`` (ccxt's unified form).

Files and exchanges spell pairs as ``BTCUSDT``, ``btc-usd``, ``ETH_BTC`` or ``BTC/USDT``; a
symbol is part of every message subject and idempotency key, so two spellings of one market
must never reach the bus.
"""

from __future__ import annotations

import re

from kubetrade.errors import InvalidInputError

# Longest first, so BTCUSDT splits as BTC/USDT and not BTCUSD/T.
QUOTE_CURRENCIES: tuple[str, ...] = tuple(
    sorted(
        (
            "USDT",
            "USDC",
            "BUSD",
            "TUSD",
            "FDUSD",
            "USDP",
            "DAI",
            "USD",
            "EUR",
            "GBP",
            "JPY",
            "AUD",
            "CAD",
            "CHF",
            "TRY",
            "BRL",
            "KRW",
            "BTC",
            "ETH",
            "BNB",
        ),
        key=len,
        reverse=True,
    )
)

_SEPARATED = re.compile(r"^([A-Z0-9]+)[/\-_:]([A-Z0-9]+)$")
_JOINED = re.compile(r"^[A-Z0-9]+$")


def normalize_symbol(raw: str) -> str:
    """``BTCUSDT``, ``btc-usd``, ``ETH_BTC`` → ``BTC/USDT``, ``BTC/USD``, ``ETH/BTC``.

    Joined names are split on the longest known quote currency suffix (``QUOTE_CURRENCIES``).
    Raises ValueError when the name cannot be split; write it as ``BASE/QUOTE`` then.
    """
    text = raw.strip().upper()
    separated = _SEPARATED.match(text)
    if separated:
        return f"{separated.group(1)}/{separated.group(2)}"
    if _JOINED.match(text):
        for quote in QUOTE_CURRENCIES:
            if text.endswith(quote) and len(text) > len(quote):
                return f"{text[: -len(quote)]}/{quote}"
    raise InvalidInputError(
        f"cannot split symbol {raw!r} into base and quote currency "
        f"(known quotes: {', '.join(QUOTE_CURRENCIES)}); write it as BASE/QUOTE, e.g. 'BTC/USDT'"
    )


def base_currency(symbol: str) -> str:
    """``BTC/USDT`` → ``BTC`` (the symbol is normalized first)."""
    return normalize_symbol(symbol).split("/", 1)[0]
