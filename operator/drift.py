"""Has an owned object drifted from what the operator applied?

Server-side apply owns exactly the fields the operator sends, so the check is the same: every
field of the rendered object must hold the rendered value in the live object. Fields the API
server or other controllers add (defaults, status, the Deployment revision) are not ours and
never count as drift.
"""

from __future__ import annotations

from typing import Any


def differences(desired: Any, live: Any, path: str = "") -> list[str]:
    """Paths (``spec.replicas``, ``data.bot.json``, ...) where ``live`` lacks ``desired``."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return [path or "(object)"]
        found: list[str] = []
        for key, value in desired.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in live:
                found.append(where)
            else:
                found.extend(differences(value, live[key], where))
        return found
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return [path]
        found = []
        for index, (want, have) in enumerate(zip(desired, live, strict=True)):
            found.extend(differences(want, have, f"{path}[{index}]"))
        return found
    return [] if desired == live else [path]
