"""What the reconciler and the status loop share, wired in one place.

Both work on the same bots, observations and heartbeats; each talks to the API server through
its own client (status writes have a connection pool of their own, see ``app.Operator``) and
posts Events with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kubetrade.operator.bots import Bots
from kubetrade.operator.config import OperatorConfig
from kubetrade.operator.events import EventPoster
from kubetrade.operator.heartbeats import Heartbeats
from kubetrade.operator.kubeapi import KubeApi
from kubetrade.operator.observations import Observations


@dataclass(frozen=True)
class Collaborators:
    """The configuration, API client, bookkeeping and heartbeats one part of the operator uses."""

    config: OperatorConfig
    api: KubeApi
    bots: Bots
    observations: Observations
    heartbeats: Heartbeats
    events: EventPoster

    @classmethod
    def create(cls, config: OperatorConfig, api: KubeApi) -> Collaborators:
        """Fresh bookkeeping and heartbeats (not yet connected) around ``api``."""
        observations = Observations()
        return cls(
            config=config,
            api=api,
            bots=Bots(),
            observations=observations,
            heartbeats=Heartbeats(config.nats_url, observations),
            events=EventPoster(api),
        )

    def through(self, api: KubeApi) -> Collaborators:
        """The same bookkeeping and heartbeats, writing and posting Events through ``api``."""
        return replace(self, api=api, events=EventPoster(api))
