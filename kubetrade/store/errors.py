"""Errors the store raises on purpose (database errors surface as ``psycopg.Error``)."""

from __future__ import annotations

from kubetrade.errors import StoreError


class StaleCheckpointError(StoreError):
    """A batch tried to move a bot's checkpoint backwards; nothing of it was written."""

    def __init__(self, bot: str, *, stored: int, offered: int) -> None:
        super().__init__(
            f"executor checkpoint of bot {bot!r} is at stream sequence {stored}; refusing to "
            f"move it back to {offered} (batch not written). Another executor is probably "
            "writing this bot: run one executor per bot, then restart this one so it resumes "
            "from the stored checkpoint"
        )
        self.bot = bot
        self.stored = stored
        self.offered = offered
