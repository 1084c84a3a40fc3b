"""Waiting in tests: poll an observable condition until it holds, with a deadline.

The one polling helper of the test suite (the operator, control-plane and serving tests use
it). A test waits for something it can see (a status written, an object back, a counter
moved), never for a fixed time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

T = TypeVar("T")


def _not_yet(value: object) -> bool:
    return not value


def wait_for(
    check: Callable[[], T | None], what: str, timeout: float = 20.0, *, interval: float = 0.2
) -> T:
    """Call ``check`` every ``interval`` seconds until it returns something truthy; return it.

    An AssertionError from ``check`` counts as "not yet". After ``timeout`` seconds, fail with
    an AssertionError naming ``what`` and the last value or error seen.
    """
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(_not_yet) | retry_if_exception_type(AssertionError),
    )
    try:
        value = retrying(check)
    except RetryError as error:
        outcome = error.last_attempt
        last = outcome.exception() if outcome.failed else outcome.result()
        raise AssertionError(
            f"timed out after {timeout:g}s waiting for {what}; last: {last!r}"
        ) from None
    assert value is not None  # tenacity retried every falsy value
    return value
