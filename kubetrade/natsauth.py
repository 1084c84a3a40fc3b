"""NATS authentication, TLS and subject permissions: one user per bot, the operator apart.

A bot's pods authenticate as the bot's own NATS user — a password, an NKey seed or a ``.creds``
file (JWT plus NKey seed) from the bot's Secret — and may publish only on the bot's subjects and
its stream's JetStream API, never on its control subject; only the operator's user may publish
control commands, and it may read every bot's status. :func:`bot_permissions` and
:func:`operator_permissions` are those rules as nats-server ``permissions`` blocks;
:func:`server_config` writes them into a server configuration (``kubetrade run`` starts its
embedded server with one, see ``kubetrade/embedded.py``). For a cluster's own nats-server,
the same blocks go into its ``authorization { users = [...] }`` (or an account's users), one
per bot, as in ``k8s/nats-auth.md``.

The workers read their credentials from the environment render writes (references to the
Secret only, never a URL with a password): :meth:`NatsSecurity.from_env`. Each bot uses its own
inbox prefix, so a bot's user may subscribe to its replies without seeing another bot's.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kubetrade.errors import InvalidInputError
from kubetrade.subjects import Subjects

ENV_NATS_USER = "KUBETRADE_NATS_USER"
ENV_NATS_PASSWORD = "KUBETRADE_NATS_PASSWORD"
ENV_NATS_NKEY = "KUBETRADE_NATS_NKEY"
"""Path of a file holding the user's NKey seed (``SU...``)."""
ENV_NATS_CREDS = "KUBETRADE_NATS_CREDS"
"""Path of a ``.creds`` file (user JWT and NKey seed, decentralised auth)."""
ENV_NATS_INBOX = "KUBETRADE_NATS_INBOX"
"""Inbox prefix of the bot's connections; its user may subscribe below it only."""
ENV_NATS_TLS_CA = "KUBETRADE_NATS_TLS_CA"
ENV_NATS_TLS_CERT = "KUBETRADE_NATS_TLS_CERT"
ENV_NATS_TLS_KEY = "KUBETRADE_NATS_TLS_KEY"

OPERATOR_USER = "kubetrade-operator"
OPERATOR_INBOX = "_INBOX.kubetrade-operator"


class NatsConfigError(InvalidInputError):
    """NATS security settings that cannot work; the message names the setting."""


def check_url(url: str, where: str) -> None:
    """Refuse a NATS URL that carries credentials: they belong in a Secret."""
    for server in url.split(","):
        parts = urlsplit(server.strip())
        if parts.username or parts.password:
            raise NatsConfigError(
                f"{where}: the NATS URL carries credentials ({parts.scheme}://***@"
                f"{parts.hostname}): put them in the bot's NATS Secret instead "
                "(Platform.nats_auth) so no pod spec holds a password"
            )


def bot_inbox(subjects: Subjects) -> str:
    """The inbox prefix of a bot's connections: ``_INBOX.<namespace>.<bot>``."""
    return f"_INBOX.{subjects.namespace}.{subjects.bot}"


def bot_user(subjects: Subjects) -> str:
    """The NATS user name of a bot: ``<namespace>.<bot>``-like, one token."""
    return f"{subjects.namespace}-{subjects.bot}"


def bot_permissions(subjects: Subjects) -> dict[str, Any]:
    """What a bot's pods may do: its own subjects and stream, never its control subject.

    JetStream's API is reached by publishing requests on ``$JS.API.<...>.<stream>[.<...>]``;
    only the bot's stream appears there, and deleting, purging or re-configuring it (which
    could make it capture another bot's subjects) is refused.
    """
    stream = subjects.stream
    return {
        "publish": {
            "allow": [
                f"{subjects.prefix}.>",
                "$JS.API.INFO",
                f"$JS.API.*.*.{stream}",
                f"$JS.API.*.*.{stream}.>",
                f"$JS.API.*.*.*.{stream}",
                f"$JS.API.*.*.*.{stream}.>",
                f"$JS.ACK.{stream}.>",
                f"$JS.FC.{stream}.>",
            ],
            "deny": [
                subjects.control,
                f"$JS.API.STREAM.DELETE.{stream}",
                f"$JS.API.STREAM.UPDATE.{stream}",
                f"$JS.API.STREAM.PURGE.{stream}",
                f"$JS.API.STREAM.MSG.DELETE.{stream}",
            ],
        },
        "subscribe": {"allow": [f"{subjects.prefix}.>", f"{bot_inbox(subjects)}.>"]},
    }


def operator_permissions() -> dict[str, Any]:
    """What the operator may do: read every bot's status, send every bot control commands."""
    return {
        "publish": {"allow": ["kubetrade.*.*.control"]},
        "subscribe": {"allow": ["kubetrade.*.*.status", f"{OPERATOR_INBOX}.>"]},
    }


@dataclass(frozen=True, slots=True)
class NatsUser:
    """One user of a generated server configuration."""

    name: str
    password: str
    permissions: dict[str, Any]


def server_config(users: list[NatsUser], tls: Mapping[str, str | bool] | None = None) -> str:
    """The ``authorization`` (and ``tls``) of a nats-server configuration: exactly these users.

    JSON is valid nats-server configuration syntax, and quoting every value keeps a
    password or path from being read as anything else. ``tls`` takes nats-server's keys
    (``cert_file``, ``key_file``, ``ca_file``, ``verify``).
    """
    config: dict[str, Any] = {}
    if users:
        config["authorization"] = {
            "users": [
                {"user": u.name, "password": u.password, "permissions": u.permissions}
                for u in users
            ]
        }
    if tls:
        config["tls"] = dict(tls)
    return json.dumps(config, indent=2)


@dataclass(frozen=True, slots=True)
class NatsSecurity:
    """How a process authenticates to NATS and checks its server: nats-py connect options."""

    user: str | None = None
    password: str | None = None
    nkey_file: str | None = None
    creds_file: str | None = None
    inbox: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NatsSecurity:
        """Read the settings render writes into every pod (all optional)."""
        env = os.environ if env is None else env
        return cls(
            user=env.get(ENV_NATS_USER) or None,
            password=env.get(ENV_NATS_PASSWORD) or None,
            nkey_file=env.get(ENV_NATS_NKEY) or None,
            creds_file=env.get(ENV_NATS_CREDS) or None,
            inbox=env.get(ENV_NATS_INBOX) or None,
            tls_ca=env.get(ENV_NATS_TLS_CA) or None,
            tls_cert=env.get(ENV_NATS_TLS_CERT) or None,
            tls_key=env.get(ENV_NATS_TLS_KEY) or None,
        )

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``; files are checked to exist, by name."""
        options: dict[str, Any] = {}
        if self.user:
            options["user"], options["password"] = self.user, self.password or ""
        for variable, path, key in (
            (ENV_NATS_NKEY, self.nkey_file, "nkeys_seed"),
            (ENV_NATS_CREDS, self.creds_file, "user_credentials"),
        ):
            if path:
                _require_file(variable, path)
                options[key] = path
        if self.inbox:
            options["inbox_prefix"] = self.inbox
        if self.tls_ca or self.tls_cert:
            options["tls"] = self.tls_context()
        return options

    def tls_context(self) -> ssl.SSLContext:
        """A client TLS context: the CA to trust, and a client certificate when given."""
        if self.tls_ca:
            _require_file(ENV_NATS_TLS_CA, self.tls_ca)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca)
        # A mounted Secret without a client certificate is a server-auth-only setup.
        if self.tls_cert and os.path.exists(self.tls_cert):
            if not self.tls_key:
                raise NatsConfigError(f"{ENV_NATS_TLS_CERT} is set but {ENV_NATS_TLS_KEY} is not")
            _require_file(ENV_NATS_TLS_KEY, self.tls_key)
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


def _require_file(variable: str, path: str) -> None:
    if not os.path.isfile(path):
        raise NatsConfigError(
            f"{variable}={path}: no such file; mount the bot's NATS Secret there "
            "(render does) or unset the variable"
        )


@dataclass(frozen=True, slots=True)
class LocalAuth:
    """The users of ``kubetrade run``'s embedded server: the bot's and the operator's.

    The bot's credentials reach its processes the way they reach pods: render references the
    Secret ``secret`` and the runner resolves it from :attr:`secrets`; the runner itself
    (standing in for the operator) connects as the operator.
    """

    bot: NatsUser
    operator: NatsUser
    secret: str

    @classmethod
    def generate(cls, subjects: Subjects, secret: str) -> LocalAuth:
        """Fresh random passwords for one run."""
        return cls(
            bot=NatsUser(bot_user(subjects), secrets.token_urlsafe(24), bot_permissions(subjects)),
            operator=NatsUser(OPERATOR_USER, secrets.token_urlsafe(24), operator_permissions()),
            secret=secret,
        )

    @property
    def users(self) -> list[NatsUser]:
        """Every user the server admits."""
        return [self.bot, self.operator]

    @property
    def secrets(self) -> dict[str, dict[str, str]]:
        """The bot's NATS Secret as the runner resolves it: ``{name: {key: value}}``."""
        return {self.secret: {"user": self.bot.name, "password": self.bot.password}}

    @property
    def operator_security(self) -> NatsSecurity:
        """How the runner connects: as the operator."""
        return NatsSecurity(self.operator.name, self.operator.password, inbox=OPERATOR_INBOX)


@contextlib.contextmanager
def process_credentials(security: NatsSecurity) -> Iterator[None]:
    """This process's NATS connections use ``security`` (through the environment
    :meth:`NatsSecurity.from_env` reads) until the block ends; the previous values come back."""
    values = {
        ENV_NATS_USER: security.user,
        ENV_NATS_PASSWORD: security.password,
        ENV_NATS_INBOX: security.inbox,
    }
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
