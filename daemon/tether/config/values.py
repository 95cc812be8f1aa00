"""The value converters of the config: each takes (value, key path) and returns the value or
raises a ConfigError whose message starts with the key path; durations among them.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from datetime import UTC, tzinfo
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_KEY_ENV = "OPENAI_API_KEY"

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# Each unit at most once, largest first: "1h30m", "2d", "250ms"; "1m1h" and "5" are invalid.
_DURATION = re.compile("".join(rf"(?:(?P<{unit}>\d+(?:\.\d+)?){unit})?" for unit in _UNITS))
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(Exception):
    """A configuration mistake; str(error) is the complete message, starting with the key path."""


Converter = Callable[[Any, str], Any]


def parse_duration(value: Any, key: str) -> float:
    """Seconds, from a number of seconds or a string such as "250ms", "90s", "1h30m" or "2d"."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if not value or not match:
            raise ConfigError(
                f'{key}: invalid duration {show(value)} (write e.g. "90s", "5m", "1h30m", "2d", or a number of seconds)'
            )
        seconds = sum(float(number) * _UNITS[unit] for unit, number in match.groupdict().items() if number)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigError(f"{key}: expected a duration, got {show(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{key}: expected a duration >= 0, got {show(value)}")
    return seconds


def toml_key(name: str) -> str:
    """A table key as TOML would write it: bare when it can be (o3-pro), quoted otherwise ("gpt-5.2")."""
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def timezone_named(name: str) -> tzinfo:
    """The IANA time zone `name`. "UTC" works even on a system without a time zone database."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        if name == "UTC":
            return UTC
        raise


def show(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, (str, bool, int, float)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)  # TOML dates and times


def as_table(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a table, got {show(value)}")
    return value


def check_known(table: Mapping[str, Any], path: str, known: tuple[str, ...]) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{path + '.' if path else ''}{key}: unknown key (known: {', '.join(known)})")


def converted(value: Any, path: str, converters: Mapping[str, Converter]) -> dict[str, Any]:
    """The table's keys converted; missing keys are left to the dataclass defaults."""
    table = as_table(value, path)
    check_known(table, path, tuple(converters))
    return {key: converters[key](item, f"{path}.{key}") for key, item in table.items()}


def check_name(name: Any, key: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{key}: invalid name {show(name)} (use letters, digits, _, - and .)")
    return name


def string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {show(value)}")
    return value


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {show(value)}")
    return value


def choice(*choices: str) -> Converter:
    def convert(value: Any, key: str) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {show(value)}")
        return value

    return convert


def integer(minimum: int) -> Converter:
    def convert(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{key}: expected an integer >= {minimum}, got {show(value)}")
        return value

    return convert


def number_where(description: str, accept: Callable[[float], bool]) -> Converter:
    def convert(value: Any, key: str) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not accept(value)
        ):
            raise ConfigError(f"{key}: expected {description}, got {show(value)}")
        return float(value)

    return convert


def timezone_name(value: Any, key: str) -> str:
    name = string(value, key)
    try:
        timezone_named(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            f"{key}: unknown timezone {show(name)} (expected an IANA name such as UTC or Europe/Berlin)"
        ) from None
    return name


def fractions(value: Any, key: str) -> tuple[float, ...]:
    """An array of fractions in (0, 1], returned sorted without duplicates."""
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected an array of fractions of the limit in (0, 1], got {show(value)}")
    convert = number_where("a fraction of the limit in (0, 1]", lambda x: 0 < x <= 1)
    return tuple(sorted({convert(item, f"{key}[{number}]") for number, item in enumerate(value, start=1)}))


_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def byte_size(value: Any, key: str) -> int:
    """Bytes, from an integer or a string such as "512KiB", "32MiB" or "1GiB"; at least 1."""
    if isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(match[1]) * _SIZE_UNITS[match[2]]
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        raise ConfigError(f'{key}: expected a size such as "32MiB", "512KiB" or a number of bytes, got {show(value)}')
    if size < 1:
        raise ConfigError(f"{key}: expected a size of at least 1 byte, got {show(value)}")
    return size


def positive_duration(value: Any, key: str) -> float:
    seconds = parse_duration(value, key)
    if seconds == 0:
        raise ConfigError(f"{key}: expected a duration > 0, got {show(value)}")
    return seconds


def duration_at_least(minimum: float) -> Converter:
    def convert(value: Any, key: str) -> float:
        seconds = parse_duration(value, key)
        if seconds < minimum:
            raise ConfigError(f"{key}: expected a duration of at least {minimum:g}s, got {show(value)}")
        return seconds

    return convert


def http_url(value: Any, key: str) -> str:
    url = string(value, key)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{key}: expected an http:// or https:// URL, got {show(url)}")
    parts = urlsplit(url)
    try:
        host, _ = parts.hostname, parts.port  # .port raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"{key}: not a valid URL (its port?): {show(url)}") from None
    if not host:
        raise ConfigError(f"{key}: the URL names no host: {show(url)}")
    return url.rstrip("/")


def store_url(value: Any, key: str) -> str:
    # Not echoed: a PostgreSQL URL may carry a password.
    if not isinstance(value, str) or not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        raise ConfigError(f"{key}: expected a URL starting with sqlite:///, postgresql:// or postgresql+psycopg://")
    try:
        password = urlsplit(value).password
    except ValueError:
        raise ConfigError(f"{key}: not a valid URL") from None
    if password is not None:
        raise ConfigError(
            f"{key}: a password in the URL is a secret in the config file; leave it out and give it "
            "the way PostgreSQL's client reads one: a password file (PGPASSFILE, ~/.pgpass) or PGPASSWORD"
        )
    return value


# A key source that is malformed may be a pasted key, so these messages do not echo the value.
def env_name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise ConfigError(f"{key}: expected the name of an environment variable, such as {DEFAULT_KEY_ENV}")
    return value


def absolute_path(value: Any, key: str) -> str:
    if not isinstance(value, str) or not os.path.isabs(value):
        raise ConfigError(f"{key}: expected an absolute path, such as /etc/tether/openai.key")
    return value


def credential_name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise ConfigError(f"{key}: expected a credential name as given to LoadCredential=, such as openai-api-key")
    return value


def strings(value: Any, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(item, str) and item for item in items):
        raise ConfigError(f"{key}: expected a string or a non-empty array of strings, got {show(value)}")
    return tuple(items)


def string_table(value: Any, key: str) -> Mapping[str, str]:
    table = as_table(value, key)
    for name, item in table.items():
        if not isinstance(item, str):
            raise ConfigError(f"{key}.{name}: expected a string, got {show(item)}")
    return MappingProxyType(dict(table))
