"""Worker configuration, read from the environment of the rendered pod.

``kubetrade/render.py`` writes these variables into every container; ``kubetrade run`` passes the
same variables to local processes. Keeping the names here, in one place, is what stops the two
paths from drifting apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kubetrade.errors import InvalidInputError
from kubetrade.spec import TradingBot

ENV_SPEC = "KUBETRADE_SPEC"
ENV_NATS_URL = "KUBETRADE_NATS_URL"
ENV_DATABASE_URL = "KUBETRADE_DATABASE_URL"
ENV_HTTP_PORT = "KUBETRADE_HTTP_PORT"
ENV_HTTP_HOST = "KUBETRADE_HTTP_HOST"
ENV_COMPONENT = "KUBETRADE_COMPONENT"
ENV_DATA_FILE = "KUBETRADE_DATA_FILE"
ENV_LOG_LEVEL = "KUBETRADE_LOG_LEVEL"
ENV_TRACE_FILE = "KUBETRADE_TRACE_FILE"
# The feed replays a file's candles opening from REPLAY_FROM (ms) on and before REPLAY_TO:
# kubetrade run sets them so that an out-of-sample run replays what the backtest does
# (kubetrade.backtest.SamplePlan).
ENV_REPLAY_FROM = "KUBETRADE_REPLAY_FROM"
ENV_REPLAY_TO = "KUBETRADE_REPLAY_TO"
# How long a worker rides out a NATS or PostgreSQL outage (reconnecting with backoff) before it
# exits non-zero with the reason, so Kubernetes restarts it and the pod shows why.
ENV_OUTAGE_LIMIT_S = "KUBETRADE_OUTAGE_LIMIT_S"
DEFAULT_OUTAGE_LIMIT_S = 300.0

# Every process the product starts sets these: BentoML otherwise looks up its usage-tracking
# host at start-up and onnxruntime tries to send telemetry; this network is closed.
QUIET_ENV: dict[str, str] = {
    "BENTOML_DO_NOT_TRACK": "true",
    "ORT_DISABLE_TELEMETRY": "1",
}

# A model image (spec.model.image; kubetrade/modelstore/modelcar.py): it holds the model under
# MODEL_IMAGE_DIR, the inference pod's init container copies that into POD_MODELS_DIR (an
# emptyDir) and inference imports what it finds there at start.
ENV_MODEL_IMPORT_DIR = "KUBETRADE_MODEL_IMPORT_DIR"
MODEL_IMAGE_DIR = "/models"
POD_MODELS_DIR = "/var/run/kubetrade/models"

COMPONENTS = ("feed", "inference", "executor")
DEFAULT_HTTP_PORTS = {"feed": 8080, "inference": 3000, "executor": 8080}


def quiet_environment() -> None:
    """Apply QUIET_ENV to this process (call before importing bentoml or onnxruntime)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


class SettingsError(InvalidInputError):
    """A worker was started without the configuration it needs."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Everything a worker process needs to know, parsed and validated."""

    component: str
    bot: TradingBot
    nats_url: str
    database_url: str | None
    http_host: str
    http_port: int
    data_file: str | None
    log_level: str
    trace_file: str | None
    outage_limit_s: float = DEFAULT_OUTAGE_LIMIT_S
    replay_from: int | None = None
    replay_to: int | None = None

    @classmethod
    def from_env(cls, component: str, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read the settings of ``component`` from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        if component not in COMPONENTS:
            raise SettingsError(f"unknown component {component!r}; use one of {COMPONENTS}")
        raw = env.get(ENV_SPEC)
        if not raw:
            raise SettingsError(
                f"{ENV_SPEC} is not set: the {component} worker needs the bot's spec as JSON "
                "(render puts it there from the bot's ConfigMap; kubetrade run sets it locally)"
            )
        bot = TradingBot.model_validate_json(raw)
        nats_url = env.get(ENV_NATS_URL)
        if not nats_url:
            raise SettingsError(f"{ENV_NATS_URL} is not set: the {component} worker needs NATS")
        port = env.get(ENV_HTTP_PORT, str(DEFAULT_HTTP_PORTS[component]))
        if not port.isdigit():
            raise SettingsError(f"{ENV_HTTP_PORT}={port!r} is not a port number")
        outage = env.get(ENV_OUTAGE_LIMIT_S, str(DEFAULT_OUTAGE_LIMIT_S))
        try:
            outage_limit_s = float(outage)
        except ValueError:
            outage_limit_s = -1.0
        if not 0 < outage_limit_s < float("inf"):
            raise SettingsError(
                f"{ENV_OUTAGE_LIMIT_S}={outage!r} is not a positive number of seconds"
            )
        replay = {name: env.get(name) or None for name in (ENV_REPLAY_FROM, ENV_REPLAY_TO)}
        for name, value in replay.items():
            if value is not None and not value.lstrip("-").isdigit():
                raise SettingsError(f"{name}={value!r} is not a time in ms")
        replay_from, replay_to = replay[ENV_REPLAY_FROM], replay[ENV_REPLAY_TO]
        return cls(
            component=component,
            bot=bot,
            nats_url=nats_url,
            database_url=env.get(ENV_DATABASE_URL) or None,
            http_host=env.get(ENV_HTTP_HOST, "0.0.0.0"),
            http_port=int(port),
            data_file=env.get(ENV_DATA_FILE) or None,
            log_level=env.get(ENV_LOG_LEVEL, "INFO"),
            trace_file=env.get(ENV_TRACE_FILE) or None,
            outage_limit_s=outage_limit_s,
            replay_from=None if replay_from is None else int(replay_from),
            replay_to=None if replay_to is None else int(replay_to),
        )
