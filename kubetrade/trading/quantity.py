"""Quantity precision: the one place where order sizes are rounded.

Every quantity the trading core creates passes through :func:`round_quantity`, so a backtest and
a live paper run cannot disagree on the eighth decimal of a size.
"""

from __future__ import annotations

import math

QUANTITY_DECIMALS = 8
_STEPS_PER_UNIT: int = 10**QUANTITY_DECIMALS
# Absorbs binary noise such as 0.3 * 1e8 == 29999999.999999996 so that exact decimal sizes
# are not rounded down by one step.
_EPSILON_STEPS = 1e-6


def round_quantity(quantity: float) -> float:
    """Round a quantity down to 1e-8; never up, so a size never exceeds what was afforded."""
    if quantity <= 0 or not math.isfinite(quantity):
        return 0.0
    steps = math.floor(quantity * _STEPS_PER_UNIT + _EPSILON_STEPS)
    return steps / _STEPS_PER_UNIT
