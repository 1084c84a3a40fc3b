"""Operator commands to a running engine: pause, resume, kill, reset.

- ``pause``: no new entries (pending entries are cancelled); exits and risk keep running.
- ``resume``: entries allowed again (breakers and a kill halt still apply).
- ``kill``: the kill switch. Cancels pending entries, flattens every open position with a market
  order at each symbol's next open, and halts new entries until ``reset``.
- ``reset``: clears the kill halt and every circuit breaker: the loss streak and its cooldown are
  forgotten, and the drawdown peak and the day's starting equity are re-based to current equity
  (a person has looked at the losses and accepted them). It does not resume a paused bot.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kubetrade.domain import HaltCause


class ControlAction(StrEnum):
    """The four things an operator can ask for."""

    PAUSE = "pause"
    RESUME = "resume"
    KILL = "kill"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """An operator command with an optional reason (shown in notices and the halt reason).

    ``cause`` says who engaged a ``kill``: the operator's kill-switch annotation, or anyone
    else (``manual``); the other actions ignore it.
    """

    action: ControlAction
    reason: str | None = None
    cause: HaltCause = HaltCause.MANUAL

    @classmethod
    def parse(
        cls, action: str, reason: str | None = None, cause: HaltCause = HaltCause.MANUAL
    ) -> ControlCommand:
        """Build a command from its text form, e.g. from a NATS control message."""
        try:
            return cls(ControlAction(action.strip().lower()), reason, cause)
        except ValueError:
            known = ", ".join(a.value for a in ControlAction)
            raise ValueError(f"unknown control action {action!r}; use one of {known}") from None
