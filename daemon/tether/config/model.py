"""The frozen objects a configuration becomes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from tether.config.selectors import Match
from tether.config.values import ConfigError

DEFAULT_OUTPUT_TOKENS_PER_SECOND = 50.0


@dataclass(frozen=True)
class AccountConfig:
    """One API account. It names where its key is; it never holds the key itself."""

    name: str
    base_url: str
    api_key_env: str | None = None
    api_key_file: str | None = None
    api_key_credential: str | None = None
    organization: str | None = None
    project: str | None = None
    max_concurrency: int = 16
    # Deadline looks and cancels have a lane of their own, never queued behind polls; wide, as
    # a deadline's cancel waits for a free place in it (docs/benchmarks.md, "The front door").
    deadline_concurrency: int = 256
    request_timeout: float = 30.0
    max_reply_bytes: int = 8 * 1024 * 1024  # a reply longer than this is an error, not read whole

    def key_source(self) -> str:
        if self.api_key_env:
            return f"env {self.api_key_env}"
        if self.api_key_file:
            return f"file {self.api_key_file}"
        return f"credential {self.api_key_credential}"

    def key_file_warning(self) -> str | None:
        """A warning when api_key_file can be read by its group or by others."""
        if not self.api_key_file:
            return None
        try:
            mode = Path(self.api_key_file).stat().st_mode & 0o777
        except OSError:
            return None  # read_api_key reports a missing file
        if mode & 0o077:
            return (
                f"accounts.{self.name}.api_key_file: {self.api_key_file} is readable by "
                f"{'group and others' if mode & 0o007 and mode & 0o070 else 'others' if mode & 0o007 else 'its group'}"
                f" (mode {mode:04o}); run: chmod 600 {self.api_key_file}"
            )
        return None

    def read_api_key(self, environ: Mapping[str, str] | None = None) -> str:
        """The key from this account's one source, without surrounding whitespace."""
        text, key = _secret_text(
            f"accounts.{self.name}.api_key",
            self.api_key_env,
            self.api_key_file,
            self.api_key_credential,
            os.environ if environ is None else environ,
        )
        return _checked_key(text.strip(), key, self.key_source())


def _secret_text(
    prefix: str, env: str | None, file: str | None, credential: str | None, environ: Mapping[str, str]
) -> tuple[str, str]:
    """The text from the one source given (an environment variable, a file, a systemd
    credential), and the key that named it (`{prefix}_env`, `_file` or `_credential`)."""
    if env:
        key = f"{prefix}_env"
        text = environ.get(env)
        if text is None:
            raise ConfigError(f"{key}: environment variable {env} is not set")
        return text, key
    if file:
        key = f"{prefix}_file"
        return _read_secret(Path(file), key), key
    key = f"{prefix}_credential"
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(
            f"{key}: $CREDENTIALS_DIRECTORY is not set (start the service with LoadCredential={credential}:PATH)"
        )
    return _read_secret(Path(directory) / str(credential), key), key


SECRET_MAX_BYTES = 64 * 1024  # a key file is tiny; /dev/zero or a log file by mistake is not


def _read_secret(file: Path, key: str) -> str:
    try:
        with file.open("rb") as handle:
            data = handle.read(SECRET_MAX_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {file}: {error.strerror or error}") from None
    if len(data) > SECRET_MAX_BYTES:
        raise ConfigError(f"{key}: {file} is larger than {SECRET_MAX_BYTES // 1024} KiB: not a key file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {file} is not UTF-8 text") from None


def _checked_key(text: str, key: str, source: str) -> str:
    # The messages describe the key, never quote it.
    if not text:
        raise ConfigError(f"{key}: the API key from {source} is empty")
    if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise ConfigError(f"{key}: the API key from {source} contains whitespace or control characters")
    return text


@dataclass(frozen=True)
class WebhooksConfig:
    """`[webhooks]`: where the signing secret of `POST /webhooks/openai` is (exactly one
    source; it is read by the daemon, never held here), and how often an active response is
    still polled while its end is expected from a webhook."""

    secret_env: str | None = None
    secret_file: str | None = None
    secret_credential: str | None = None
    safety_poll: float = 600.0

    def secret_source(self) -> str:
        if self.secret_env:
            return f"env {self.secret_env}"
        if self.secret_file:
            return f"file {self.secret_file}"
        return f"credential {self.secret_credential}"

    def read_secret(self, environ: Mapping[str, str] | None = None) -> str:
        """The signing secret (`whsec_` and base64, as the OpenAI dashboard shows it), checked
        to be one that Standard Webhooks signatures can be verified with."""
        text, key = _secret_text(
            "webhooks.secret",
            self.secret_env,
            self.secret_file,
            self.secret_credential,
            os.environ if environ is None else environ,
        )
        secret = text.strip()
        if not secret:
            raise ConfigError(f"{key}: the secret from {self.secret_source()} is empty")
        from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook  # only where webhooks are on

        try:
            Webhook(secret)
        except (ValueError, EmptyWebhookSecretError):  # binascii.Error is a ValueError
            raise ConfigError(
                f"{key}: the secret from {self.secret_source()} is not a webhook signing secret"
                " (expected whsec_ followed by base64, as the OpenAI dashboard shows it)"
            ) from None
        return secret


@dataclass(frozen=True)
class PollingConfig:
    """How often responses are polled.

    Two keys are tether's own: `confirm_window` keeps polling a response this long after a
    cancel reported a terminal status (a cancelled response has been seen to end `completed`),
    and `lost_after` is the number of consecutive 404s that end a response as `lost`.
    """

    first: float = 1.0
    max_interval: float = 60.0
    backoff: float = 1.5
    jitter: float = 0.1
    confirm_window: float = 60.0
    lost_after: int = 3


@dataclass(frozen=True)
class PolicyConfig:
    """A timeout policy. With neither limit set it only tracks (never acts)."""

    name: str
    match: Match = field(default_factory=Match)
    max_queued: float | None = None
    max_runtime: float | None = None
    action: Literal["cancel", "warn"] = "cancel"
    reserve_usd: float | None = None


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens. `input` applies to uncached input tokens, `cached_input` to cached ones."""

    input: float
    cached_input: float
    output: float


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    """A spending limit over a calendar `period` in `timezone`, or over a rolling `window`
    (seconds); exactly one of the two is set. `warn_at` is sorted and unique. Unlike a
    policy, a response counts toward every budget whose match fits."""

    name: str
    match: Match = field(default_factory=Match)
    limit_usd: float
    period: Literal["hour", "day", "week", "month"] | None = None
    window: float | None = None
    timezone: str = "UTC"
    warn_at: tuple[float, ...] = ()
    on_exceed: Literal["cancel", "warn"] = "cancel"


@dataclass(frozen=True)
class StoreConfig:
    url: str


@dataclass(frozen=True)
class ClusterConfig:
    """Several daemons on one PostgreSQL store (docs/cluster.md): a daemon that dies or freezes
    loses its share within `takeover`, and the others take it over."""

    takeover: float = 10.0


@dataclass(frozen=True)
class LogConfig:
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"
    stats_interval: float = 60.0  # tether extension: a `daemon.stats` line this often; 0 = never


DEFAULT_MAX_BODY = 32 * 1024 * 1024


@dataclass(frozen=True)
class ProxyConfig:
    """The OpenAI-compatible proxy (`/v1/...` on the daemon's TCP listener): the one upstream is
    `account`'s base_url; `key` says whose key goes upstream ("client": the caller's
    Authorization passes through; "account": callers present the server token, tether sends
    the account's key)."""

    enabled: bool = False
    account: str = "default"  # the loader puts the default account here when the file names none
    key: Literal["client", "account"] = "client"
    max_body: int = DEFAULT_MAX_BODY  # bytes; a longer request body is refused with 413


@dataclass(frozen=True)
class ServerConfig:
    """The daemon's HTTP doors: a Unix socket (control API, guarded by its file modes) and an
    optional TCP listener whose control API needs the bearer token named here (never the token
    itself)."""

    socket: str | None = None  # an absolute path, or None: no socket
    listen: tuple[str, int] | None = None  # (host, port)
    token_env: str | None = None
    token_file: str | None = None
    token_credential: str | None = None

    @property
    def has_token(self) -> bool:
        return bool(self.token_env or self.token_file or self.token_credential)

    def read_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The bearer token from its one source (None when none is configured)."""
        environ = os.environ if environ is None else environ
        if self.token_env:
            key, text = "server.token_env", environ.get(self.token_env)
            if text is None:
                raise ConfigError(f"{key}: environment variable {self.token_env} is not set")
        elif self.token_file:
            key, text = "server.token_file", _read_secret(Path(self.token_file), "server.token_file")
        elif self.token_credential:
            key = "server.token_credential"
            directory = environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(
                    f"{key}: $CREDENTIALS_DIRECTORY is not set"
                    f" (start the service with LoadCredential={self.token_credential}:PATH)"
                )
            text = _read_secret(Path(directory) / self.token_credential, key)
        else:
            return None
        token = text.strip()
        if len(token) < 16 or not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
            raise ConfigError(f"{key}: the token must be at least 16 printable characters without spaces")
        return token


@dataclass(frozen=True)
class Config:
    path: Path | None
    store: StoreConfig
    log: LogConfig
    accounts: Mapping[str, AccountConfig]
    polling: PollingConfig
    policies: tuple[PolicyConfig, ...]
    # Only what the file says; tether.pricing merges these over the built-in tables.
    prices: Mapping[str, Price] = field(default_factory=lambda: MappingProxyType({}))
    service_tiers: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    output_tokens_per_second: float = DEFAULT_OUTPUT_TOKENS_PER_SECOND
    budgets: tuple[BudgetConfig, ...] = ()
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    webhooks: WebhooksConfig | None = None  # None: no [webhooks] table, the route is not served
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def default_account(self) -> str:
        return "default" if "default" in self.accounts else next(iter(self.accounts))

    def policy_named(self, name: str) -> PolicyConfig | None:
        return next((policy for policy in self.policies if policy.name == name), None)

    def budget_named(self, name: str) -> BudgetConfig | None:
        return next((budget for budget in self.budgets if budget.name == name), None)

    def select_policy(
        self,
        *,
        named: str | None,
        model: str | None,
        metadata: Mapping[str, str] | None,
        account: str,
        labels: Mapping[str, str] | None,
    ) -> PolicyConfig | None:
        """The policy named at track time, else the one named by metadata `tether_policy`, else
        the first whose match fits, else None. A name that no longer exists (say, removed by a
        reload) is skipped, so the response falls back to matching instead of losing its limits."""
        for name in (named, (metadata or {}).get("tether_policy")):
            if name and (policy := self.policy_named(name)):
                return policy
        return next(
            (
                policy
                for policy in self.policies
                if policy.match.fits(model=model, metadata=metadata, account=account, labels=labels)
            ),
            None,
        )
