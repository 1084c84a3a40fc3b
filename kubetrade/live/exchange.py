"""The async ccxt exchange a live executor trades through: credentials, sandbox, markets.

One exchange instance per process (ccxt's own rate limiter is per instance). Credentials come
from the bot's credentials Secret (keys ``apiKey`` and ``secret``, which the rendered executor
pod receives as environment variables); they are handed to ccxt and nothing else: never logged,
stored or reported, and :class:`Credentials` never shows them in a ``repr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ccxt.async_support as ccxt_async

from kubetrade.errors import InvalidInputError
from kubetrade.market.exchange import ENV_EXCHANGE_API_BASE, EXCHANGE_OPTIONS, create_exchange
from kubetrade.render import ENV_EXCHANGE_API_KEY, ENV_EXCHANGE_SECRET

# ENV_EXCHANGE_API_BASE is the feed's override too (``market.exchange.exchange_api_base``).
__all__ = [
    "ENV_EXCHANGE_API_BASE",
    "ENV_EXCHANGE_PASSWORD",
    "EXCHANGE_OPTIONS",
    "Credentials",
    "connect_exchange",
]

# Optional third credential some exchanges need (e.g. a passphrase).
ENV_EXCHANGE_PASSWORD = "KUBETRADE_EXCHANGE_PASSWORD"


@dataclass(frozen=True, repr=False)
class Credentials:
    """API credentials; ``repr`` and ``str`` never show them."""

    api_key: str
    secret: str
    password: str | None = field(default=None)

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"

    __str__ = __repr__

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Credentials:
        """The credentials the executor pod gets from the bot's credentials Secret (its keys
        ``apiKey``, ``secret`` and optional ``password`` as environment variables, see
        ``render.CREDENTIAL_KEYS``)."""
        api_key, secret = environ.get(ENV_EXCHANGE_API_KEY), environ.get(ENV_EXCHANGE_SECRET)
        if not api_key or not secret:
            raise InvalidInputError(
                f"live mode needs {ENV_EXCHANGE_API_KEY} and {ENV_EXCHANGE_SECRET} from the "
                "credentials Secret (keys apiKey and secret: kubectl create secret generic "
                "NAME --from-literal=apiKey=... --from-literal=secret=...)"
            )
        return cls(api_key=api_key, secret=secret, password=environ.get(ENV_EXCHANGE_PASSWORD))


def connect_exchange(
    name: str,
    credentials: Credentials,
    *,
    sandbox: bool = False,
    api_base: str | None = None,
    timeout_ms: int = 10_000,
) -> ccxt_async.Exchange:
    """The async ccxt exchange ``name`` signed with ``credentials``.

    ``sandbox`` switches to the exchange's testnet (refused for an exchange without one);
    ``api_base`` sends every request to another host (a local fake in tests). The caller owns
    the instance and must ``await exchange.close()``.
    """
    config: dict[str, Any] = {
        "apiKey": credentials.api_key,
        "secret": credentials.secret,
        "timeout": timeout_ms,
        "options": dict(EXCHANGE_OPTIONS.get(name, {})),
    }
    if credentials.password is not None:
        config["password"] = credentials.password
    return create_exchange(name, config, sandbox=sandbox, api_base=api_base)
