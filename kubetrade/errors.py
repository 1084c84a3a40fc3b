"""The errors kubetrade raises on purpose: one root, a few branches by what went wrong.

Every error class of the product derives from :class:`KubetradeError` through one of the
branches below, so a caller handles a kind of failure (``except InvalidInputError``) instead of
a built-in type that third-party code raises too (``except ValueError``). The message of each
is one line saying what is wrong, where, and what to do.

The command line turns them into one line on stderr and an exit code per branch
(:func:`exit_code`); anything else is a bug and keeps its traceback.

=====================  =========  ==================================================
branch                 exit code  raised for
=====================  =========  ==================================================
KubetradeError         1          any other failure of ours (a local run that failed)
InvalidInputError      2          a manifest, candle file, request, message or setting
ModelError             3          a model that is missing or does not match the code
StoreError             4          the database (PostgreSQL) ledger
BusError               5          the message bus (NATS)
ExchangeError          6          a crypto exchange (ccxt)
OutageError            7          NATS or PostgreSQL unreachable past the outage limit
=====================  =========  ==================================================

Exit code 2 is also what click uses for a bad command line, and 130 is an interrupt (Ctrl-C).
"""

from __future__ import annotations

from typing import ClassVar


class KubetradeError(Exception):
    """The root of every error kubetrade raises on purpose."""

    exit_code: ClassVar[int] = 1
    what: ClassVar[str] = "another failure of ours (for example a local run that failed)"


class InvalidInputError(KubetradeError):
    """Input that cannot be used as given: a manifest, candle file, request, message, setting."""

    exit_code: ClassVar[int] = 2
    what: ClassVar[str] = "invalid input: a manifest, candle file, request, message or setting"


class ModelError(KubetradeError):
    """A model that is not in the store, cannot be exported, or does not match this code."""

    exit_code: ClassVar[int] = 3
    what: ClassVar[str] = "a model that is missing or does not match this code"


class StoreError(KubetradeError):
    """The database ledger refused or holds something unusable."""

    exit_code: ClassVar[int] = 4
    what: ClassVar[str] = "the database (PostgreSQL)"


class BusError(KubetradeError):
    """The message bus (NATS) cannot be reached or refused a request."""

    exit_code: ClassVar[int] = 5
    what: ClassVar[str] = "the message bus (NATS)"


class ExchangeError(KubetradeError):
    """A crypto exchange is unknown or answered something unusable."""

    exit_code: ClassVar[int] = 6
    what: ClassVar[str] = "a crypto exchange (ccxt)"


class OutageError(KubetradeError):
    """NATS or PostgreSQL stayed unreachable longer than ``KUBETRADE_OUTAGE_LIMIT_S``.

    Raised by the bus and the store; the worker logs its one-line message and exits with this
    code so that Kubernetes (or ``kubetrade run``) restarts it.
    """

    exit_code: ClassVar[int] = 7
    what: ClassVar[str] = "NATS or PostgreSQL unreachable longer than the outage limit"

    @classmethod
    def past_limit(
        cls, what: str, down_s: float, limit_s: float, cause: BaseException | None = None
    ) -> OutageError:
        """The one-line error for ``what`` failing ``down_s`` seconds, past ``limit_s``."""
        last = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        return cls(
            f"{what} for {down_s:.0f}s, longer than the outage limit of {limit_s:.0f}s "
            f"(KUBETRADE_OUTAGE_LIMIT_S){last}"
        )


BRANCHES: tuple[type[KubetradeError], ...] = (
    InvalidInputError,
    ModelError,
    StoreError,
    BusError,
    ExchangeError,
    OutageError,
)

ROOT_AND_BRANCHES: tuple[type[KubetradeError], ...] = (KubetradeError, *BRANCHES)
"""Every class with an exit code of its own, in exit-code order."""


def exit_code(error: KubetradeError) -> int:
    """The process exit code for ``error``: its branch's (see the module's table)."""
    return error.exit_code
