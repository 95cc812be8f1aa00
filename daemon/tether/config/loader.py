"""Where the config file is found, and how its TOML becomes a Config (every key checked)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tether.config.model import (
    DEFAULT_OUTPUT_TOKENS_PER_SECOND,
    AccountConfig,
    BudgetConfig,
    ClusterConfig,
    Config,
    LogConfig,
    PolicyConfig,
    PollingConfig,
    Price,
    ProxyConfig,
    ServerConfig,
    StoreConfig,
    WebhooksConfig,
)
from tether.config.selectors import Match, parse_match
from tether.config.values import (
    DEFAULT_KEY_ENV,
    ConfigError,
    absolute_path,
    as_table,
    boolean,
    byte_size,
    check_known,
    check_name,
    choice,
    converted,
    credential_name,
    duration_at_least,
    env_name,
    fractions,
    http_url,
    integer,
    number_where,
    parse_duration,
    positive_duration,
    show,
    store_url,
    string,
    timezone_name,
    toml_key,
)

OPENAI_BASE_URL = "https://api.openai.com/v1"
SYSTEM_CONFIG = Path("/etc/tether/tether.toml")
_KEY_SOURCES = ("api_key_env", "api_key_file", "api_key_credential")
_SECRET_SOURCES = ("secret_credential", "secret_env", "secret_file")
# A shorter takeover mistakes a busy daemon for a frozen one (docs/cluster.md, "Timing").
MIN_TAKEOVER = 2.0


def default_store_url(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    # systemd sets STATE_DIRECTORY to a ":"-separated list when StateDirectory= names several.
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    directory = Path(state) if state else _xdg_dir(environ, "XDG_STATE_HOME", ".local/state") / "tether"
    return f"sqlite:///{directory.absolute() / 'tether.db'}"


def find_config_path(
    cli_path: str | None, environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Path | None:
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    for given, origin in ((cli_path, ""), (environ.get("TETHER_CONFIG"), " (named by $TETHER_CONFIG)")):
        if given:
            path = cwd / given
            if not path.exists():
                raise ConfigError(f"config file {given} does not exist{origin}")
            return path
    candidates = (
        cwd / "tether.toml",
        _xdg_dir(environ, "XDG_CONFIG_HOME", ".config") / "tether" / "tether.toml",
        SYSTEM_CONFIG,
    )
    return next((path for path in candidates if path.exists()), None)


def load_config(
    cli_path: str | None = None, environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Config:
    environ = os.environ if environ is None else environ
    path = find_config_path(cli_path, environ, cwd)
    data = _read_toml(path) if path else {}
    return parse_config(data, path=path, environ=environ)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None


def _xdg_dir(environ: Mapping[str, str], variable: str, fallback: str) -> Path:
    value = environ.get(variable, "")
    # The XDG spec says a relative value is invalid and must be ignored.
    if os.path.isabs(value):
        return Path(value)
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    return home / fallback


def parse_config(
    data: Mapping[str, Any], *, path: Path | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    environ = os.environ if environ is None else environ
    check_known(
        data,
        "",
        (
            "store",
            "log",
            "accounts",
            "polling",
            "policy",
            "prices",
            "service_tiers",
            "estimate",
            "budget",
            "server",
            "proxy",
            "webhooks",
            "cluster",
        ),
    )
    accounts = _parse_accounts(data.get("accounts"), environ)
    estimate = converted(data.get("estimate", {}), "estimate", _ESTIMATE_FIELDS)
    config = Config(
        path=path,
        store=_parse_store(data.get("store", {}), environ),
        log=LogConfig(**converted(data.get("log", {}), "log", _LOG_FIELDS)),
        accounts=accounts,
        polling=_parse_polling(data.get("polling", {})),
        policies=_parse_policies(data.get("policy", []), accounts),
        prices=parse_prices(data.get("prices", {}), "prices"),
        service_tiers=parse_service_tiers(data.get("service_tiers", {}), "service_tiers"),
        output_tokens_per_second=estimate.get("output_tokens_per_second", DEFAULT_OUTPUT_TOKENS_PER_SECOND),
        budgets=_parse_budgets(data.get("budget", []), accounts),
        proxy=_parse_proxy(data.get("proxy", {}), accounts),
        server=_parse_server(data.get("server", {}), environ),
        webhooks=_parse_webhooks(data["webhooks"]) if "webhooks" in data else None,
        cluster=ClusterConfig(**converted(data.get("cluster", {}), "cluster", _CLUSTER_FIELDS)),
    )
    _check_doors(config)
    return config


def _check_doors(config: Config) -> None:
    """What the daemon's doors need of each other's tables."""
    server = config.server
    if config.webhooks is not None and server.listen is None:
        raise ConfigError(
            "webhooks: needs [server] listen, the TCP listener that serves POST /webhooks/openai "
            "(without it no event arrives, while polling slows to webhooks.safety_poll)"
        )
    if config.proxy.enabled and server.listen is None:
        raise ConfigError("proxy.enabled: needs [server] listen, the TCP listener that serves /v1/*")
    if config.proxy.enabled and config.proxy.key == "account" and not server.has_token:
        raise ConfigError(
            'proxy.key: "account" needs a server token (server.token_file, token_env or token_credential): '
            "callers present it instead of an API key"
        )


def _parse_store(value: Any, environ: Mapping[str, str]) -> StoreConfig:
    fields = converted(value, "store", {"url": store_url})
    return StoreConfig(url=fields["url"] if "url" in fields else default_store_url(environ))


def _parse_accounts(value: Any, environ: Mapping[str, str]) -> Mapping[str, AccountConfig]:
    table = {"default": {}} if value is None else as_table(value, "accounts")
    if not table:
        raise ConfigError("accounts: no account defined; add [accounts.NAME] or remove the empty table")
    return MappingProxyType({name: _parse_account(name, item, environ) for name, item in table.items()})


def _parse_account(name: str, value: Any, environ: Mapping[str, str]) -> AccountConfig:
    path = f"accounts.{name}"
    check_name(name, path)
    _reject_inline_keys(as_table(value, path), path)
    fields = converted(value, path, _ACCOUNT_FIELDS)
    sources = [key for key in _KEY_SOURCES if key in fields]
    if len(sources) > 1:
        raise ConfigError(f"{path}: give only one of {', '.join(_KEY_SOURCES)} (found {', '.join(sources)})")
    if not sources:
        fields["api_key_env"] = DEFAULT_KEY_ENV
    if "base_url" not in fields:
        env_url = environ.get("OPENAI_BASE_URL")
        fields["base_url"] = http_url(env_url, "$OPENAI_BASE_URL") if env_url else OPENAI_BASE_URL
    return AccountConfig(name=name, **fields)


def _reject_inline_keys(table: Mapping[str, Any], path: str) -> None:
    advice = "API keys never go in the config file; use api_key_env, api_key_file or api_key_credential"
    for key, value in table.items():
        if key == "api_key":
            raise ConfigError(f"{path}.api_key: {advice}")
        if isinstance(value, str) and value.startswith("sk-"):
            raise ConfigError(f"{path}.{key}: this looks like an API key; {advice}")


def _parse_webhooks(value: Any) -> WebhooksConfig:
    table = as_table(value, "webhooks")
    if "secret" in table:
        raise ConfigError(
            "webhooks.secret: the signing secret never goes in the config file;"
            " use secret_credential, secret_env or secret_file"
        )
    fields = converted(table, "webhooks", _WEBHOOKS_FIELDS)
    sources = [key for key in _SECRET_SOURCES if key in fields]
    if len(sources) != 1:
        found = f" (found {', '.join(sources)})" if sources else ""
        raise ConfigError(f"webhooks: give exactly one of {', '.join(_SECRET_SOURCES)}{found}")
    return WebhooksConfig(**fields)


def _parse_polling(value: Any) -> PollingConfig:
    polling = PollingConfig(**converted(value, "polling", _POLLING_FIELDS))
    if polling.first > polling.max_interval:
        raise ConfigError(
            f"polling.first: must not exceed polling.max_interval ({polling.first:g}s > {polling.max_interval:g}s)"
        )
    return polling


def _parse_policies(value: Any, accounts: Mapping[str, AccountConfig]) -> tuple[PolicyConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"policy: expected an array of tables ([[policy]]), got {show(value)}")
    policies: list[PolicyConfig] = []
    for number, item in enumerate(value, start=1):
        path = f"policy[{number}]"
        fields = converted(item, path, _POLICY_FIELDS)
        if "name" not in fields:
            raise ConfigError(f"{path}.name: missing; every [[policy]] needs a name")
        if any(policy.name == fields["name"] for policy in policies):
            raise ConfigError(f"{path}.name: duplicate policy name {show(fields['name'])}")
        policy = PolicyConfig(**fields)
        _check_accounts(policy.match, path, accounts)
        policies.append(policy)
    return tuple(policies)


def _check_accounts(match: Match, path: str, accounts: Mapping[str, AccountConfig]) -> None:
    for account in match.account:
        if account not in accounts:
            raise ConfigError(
                f"{path}.match.account: unknown account {show(account)} (accounts: {', '.join(accounts)})"
            )


def _parse_budgets(value: Any, accounts: Mapping[str, AccountConfig]) -> tuple[BudgetConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"budget: expected an array of tables ([[budget]]), got {show(value)}")
    budgets: list[BudgetConfig] = []
    for number, item in enumerate(value, start=1):
        path = f"budget[{number}]"
        fields = converted(item, path, _BUDGET_FIELDS)
        for key in ("name", "limit_usd"):
            if key not in fields:
                raise ConfigError(f"{path}.{key}: missing; every [[budget]] needs a name and a limit_usd")
        if any(budget.name == fields["name"] for budget in budgets):
            raise ConfigError(f"{path}.name: duplicate budget name {show(fields['name'])}")
        if "period" in fields and "window" in fields:
            raise ConfigError(f"{path}: give either period or window, not both")
        if "period" not in fields and "window" not in fields:
            raise ConfigError(f'{path}: needs a period (hour, day, week, month) or a rolling window (such as "24h")')
        budget = BudgetConfig(**fields)
        _check_accounts(budget.match, path, accounts)
        budgets.append(budget)
    return tuple(budgets)


def _parse_proxy(value: Any, accounts: Mapping[str, AccountConfig]) -> ProxyConfig:
    fields = converted(value, "proxy", _PROXY_FIELDS)
    # Unset, it is the default account: the one called "default", else the first.
    fields.setdefault("account", "default" if "default" in accounts else next(iter(accounts)))
    if fields["account"] not in accounts:
        raise ConfigError(f"proxy.account: unknown account {show(fields['account'])} (accounts: {', '.join(accounts)})")
    return ProxyConfig(**fields)


# ---- [server] -------------------------------------------------------------------

_TOKEN_SOURCES = ("token_env", "token_file", "token_credential")


def default_socket(environ: Mapping[str, str]) -> str | None:
    """$RUNTIME_DIRECTORY/tether.sock under systemd, else $XDG_RUNTIME_DIR/tether/tether.sock, else none."""
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if os.path.isabs(runtime):
        return str(Path(runtime) / "tether.sock")
    xdg = environ.get("XDG_RUNTIME_DIR", "")
    return str(Path(xdg) / "tether" / "tether.sock") if os.path.isabs(xdg) else None


def _socket_path(value: Any, key: str) -> str | None:
    if value == "":
        return None  # no socket
    if not isinstance(value, str) or not os.path.isabs(value):
        raise ConfigError(f'{key}: expected an absolute path, such as /run/tether/tether.sock, or "" for none')
    if len(os.fsencode(value)) > 107:  # sun_path holds 108 bytes with the terminating NUL
        raise ConfigError(f"{key}: {value} is longer than a Unix socket path may be (107 bytes)")
    return value


def _listen_address(value: Any, key: str) -> tuple[str, int]:
    text = string(value, key)
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'{key}: expected HOST:PORT, such as "127.0.0.1:8787" or "[::1]:8787", got {show(text)}')
    return host, int(port)


def _parse_server(value: Any, environ: Mapping[str, str]) -> ServerConfig:
    fields = converted(value, "server", _SERVER_FIELDS)
    sources = [key for key in _TOKEN_SOURCES if key in fields]
    if len(sources) > 1:
        raise ConfigError(f"server: give only one of {', '.join(_TOKEN_SOURCES)} (found {', '.join(sources)})")
    if "socket" not in fields:
        fields["socket"] = default_socket(environ)
    return ServerConfig(**fields)


def parse_prices(value: Any, path: str) -> Mapping[str, Price]:
    """A table of `[MODEL]` tables of USD per 1M tokens (also reads the built-in prices.toml)."""
    prices = {}
    for model, item in as_table(value, path).items():
        key = f"{path}.{toml_key(model)}"
        fields = converted(item, key, _PRICE_FIELDS)
        for name in ("input", "output"):
            if name not in fields:
                raise ConfigError(
                    f"{key}.{name}: missing; every price needs input and output (cached_input is optional)"
                )
        fields.setdefault("cached_input", fields["input"])
        prices[model] = Price(**fields)
    return MappingProxyType(prices)


def parse_service_tiers(value: Any, path: str) -> Mapping[str, float]:
    """A table of service tier name -> price multiplier (>= 0)."""
    convert = number_where("a number >= 0", lambda x: x >= 0)
    return MappingProxyType(
        {tier: convert(item, f"{path}.{toml_key(tier)}") for tier, item in as_table(value, path).items()}
    )


_LOG_FIELDS = {
    "format": choice("auto", "json", "console"),
    "level": choice("debug", "info", "warning", "error"),
    "stats_interval": parse_duration,
}
_ACCOUNT_FIELDS = {
    "base_url": http_url,
    "api_key_env": env_name,
    "api_key_file": absolute_path,
    "api_key_credential": credential_name,
    "organization": string,
    "project": string,
    "max_concurrency": integer(1),
    "deadline_concurrency": integer(1),
    "request_timeout": positive_duration,
    "max_reply_bytes": integer(1024),
}
_POLLING_FIELDS = {
    "first": parse_duration,
    "max_interval": positive_duration,
    "backoff": number_where("a number >= 1", lambda x: x >= 1),
    "jitter": number_where("a number >= 0 and < 1", lambda x: 0 <= x < 1),
    "confirm_window": parse_duration,
    "lost_after": integer(1),
}
_CLUSTER_FIELDS = {"takeover": duration_at_least(MIN_TAKEOVER)}
_WEBHOOKS_FIELDS = {
    "secret_credential": credential_name,
    "secret_env": env_name,
    "secret_file": absolute_path,
    "safety_poll": positive_duration,
}
_POLICY_FIELDS = {
    "name": check_name,
    "match": parse_match,
    "max_queued": parse_duration,
    "max_runtime": parse_duration,
    "action": choice("cancel", "warn"),
    "reserve_usd": number_where("a number >= 0", lambda x: x >= 0),
}
_PRICE_FIELDS = {
    "input": number_where("a number >= 0", lambda x: x >= 0),
    "cached_input": number_where("a number >= 0", lambda x: x >= 0),
    "output": number_where("a number >= 0", lambda x: x >= 0),
}
_SERVER_FIELDS = {
    "socket": _socket_path,
    "listen": _listen_address,
    "token_env": env_name,
    "token_file": absolute_path,
    "token_credential": credential_name,
}
_ESTIMATE_FIELDS = {"output_tokens_per_second": number_where("a number > 0", lambda x: x > 0)}
_BUDGET_FIELDS = {
    "name": check_name,
    "match": parse_match,
    "limit_usd": number_where("a number > 0", lambda x: x > 0),
    "period": choice("hour", "day", "week", "month"),
    "window": positive_duration,
    "timezone": timezone_name,
    "warn_at": fractions,
    "on_exceed": choice("cancel", "warn"),
}
_PROXY_FIELDS = {
    "enabled": boolean,
    "account": check_name,
    "key": choice("client", "account"),
    "max_body": byte_size,
}
