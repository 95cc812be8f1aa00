"""What a response costs, in USD: usage × the model's price × the service tier's multiplier.

Pure: no clock, no store, no HTTP. The built-in prices live in `prices.toml` next to this
module (copyable blocks of the same shape as a config's `[prices."MODEL"]`); a config's
`[prices.*]` and `[service_tiers]` are laid over them key by key.

A model without a price has an unknown cost (None), never a cost of zero.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from types import MappingProxyType
from typing import Any

from tether.config import Config, ConfigError, Price, parse_prices, parse_service_tiers

_SNAPSHOT = re.compile(r"(?P<base>.+)-\d{4}-\d{2}-\d{2}")
_PER_TOKENS = 1e6  # prices are per 1M tokens


@cache
def _builtin() -> tuple[str, str, Mapping[str, Price], Mapping[str, float]]:
    name = "prices.toml"
    try:
        data = tomllib.loads(files("tether").joinpath(name).read_text(encoding="utf-8"))
        unknown = set(data) - {"as_of", "source", "service_tiers", "prices"}
        if unknown:
            raise ConfigError(f"{', '.join(sorted(unknown))}: unknown key")
        return (
            str(data["as_of"]),
            str(data["source"]),
            parse_prices(data["prices"], "prices"),
            parse_service_tiers(data["service_tiers"], "service_tiers"),
        )
    except (OSError, KeyError, tomllib.TOMLDecodeError, ConfigError) as error:
        # A packaging or editing mistake in tether itself, not the operator's.
        raise RuntimeError(f"tether's built-in {name} is broken: {error!r}") from error


PRICES_AS_OF: str = _builtin()[0]
PRICES_SOURCE: str = _builtin()[1]


def builtin_prices() -> Mapping[str, Price]:
    """The built-in price table (USD per 1M tokens), read-only."""
    return _builtin()[2]


def builtin_tiers() -> Mapping[str, float]:
    """The built-in service tier multipliers, read-only."""
    return _builtin()[3]


def resolve_model(model: str, table: Mapping[str, Price]) -> str | None:
    """The key of `table` that prices `model`: the model itself, else for a dated snapshot
    ("o3-2025-04-16") its base model ("o3"), else None. Never a looser prefix match: "o3-pro"
    is not "o3", and "gpt-5-pro" is not "gpt-5"."""
    if model in table:
        return model
    snapshot = _SNAPSHOT.fullmatch(model)
    if snapshot and snapshot["base"] in table:
        return snapshot["base"]
    return None


class Pricing:
    """Costs from complete tables: `prices` by model, `tiers` by service tier name.

    `from_config` builds the usual one, the built-in tables overlaid by the config's.
    """

    def __init__(
        self, prices: Mapping[str, Price], tiers: Mapping[str, float], output_tokens_per_second: float
    ) -> None:
        self._prices = MappingProxyType(dict(prices))
        self._tiers = MappingProxyType(dict(tiers))
        self._output_tokens_per_second = float(output_tokens_per_second)

    @classmethod
    def from_config(cls, config: Config) -> Pricing:
        return cls(
            {**builtin_prices(), **config.prices},
            {**builtin_tiers(), **config.service_tiers},
            config.output_tokens_per_second,
        )

    @property
    def prices(self) -> Mapping[str, Price]:
        return self._prices

    @property
    def tiers(self) -> Mapping[str, float]:
        return self._tiers

    @property
    def output_tokens_per_second(self) -> float:
        return self._output_tokens_per_second

    def price(self, model: str | None) -> Price | None:
        if not isinstance(model, str):
            return None
        key = resolve_model(model, self._prices)
        return self._prices[key] if key is not None else None

    def multiplier(self, service_tier: str | None) -> float:
        """The reported tier's multiplier; 1.0 for a missing or unknown tier."""
        if not isinstance(service_tier, str):
            return 1.0
        return self._tiers.get(service_tier, 1.0)

    def cost(self, model: str | None, usage: Mapping[str, Any] | None, service_tier: str | None) -> float | None:
        """USD for a response's `usage`, or None when the price is unknown or usage is missing
        or malformed. `input_tokens` includes the cached ones, `output_tokens` the reasoning ones
        (billed as output, so not added again). A missing or null count is 0, but usage with
        neither input_tokens nor output_tokens is no usage at all (None)."""
        price = self.price(model)
        counts = _usage_counts(usage)
        if price is None or counts is None:
            return None
        input_tokens, cached_tokens, output_tokens = counts
        dollars = (
            (input_tokens - cached_tokens) * price.input
            + cached_tokens * price.cached_input
            + output_tokens * price.output
        ) / _PER_TOKENS
        return dollars * self.multiplier(service_tier)

    def reservation(
        self,
        model: str | None,
        max_output_tokens: int | None,
        reserve_usd: float | None,
        service_tier: str | None,
    ) -> float | None:
        """What an active response commits to a budget (docs/configuration.md, "Budgets"): max_output_tokens × the output
        price × the tier multiplier when the response states a limit and its model has a price,
        else the policy's reserve_usd (taken as is), else None."""
        price = self.price(model)
        limit = _token_count(max_output_tokens)
        if price is not None and limit is not None:
            return limit * price.output / _PER_TOKENS * self.multiplier(service_tier)
        return reserve_usd

    def estimate(
        self,
        model: str | None,
        service_tier: str | None,
        ran_seconds: float,
        max_output_tokens: int | None,
    ) -> float | None:
        """The cost of a finished response that reports no usage (typical after a cancel):
        `ran_seconds` (the time it was in progress) × output_tokens_per_second output tokens,
        capped at max_output_tokens when stated, × the output price × the tier multiplier.
        0.0 when it never ran; None when the model has no price. Input tokens are unknown and
        not counted, so this is a lower bound for short runs with long prompts."""
        price = self.price(model)
        if price is None:
            return None
        seconds = ran_seconds if isinstance(ran_seconds, (int, float)) and ran_seconds > 0 else 0.0  # also NaN
        tokens = seconds * self._output_tokens_per_second
        limit = _token_count(max_output_tokens)
        if limit is not None:
            tokens = min(tokens, float(limit))
        return tokens * price.output / _PER_TOKENS * self.multiplier(service_tier)


def _token_count(value: Any) -> int | float | None:
    """A usable token count (a finite number >= 0), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def _usage_counts(usage: Any) -> tuple[float, float, float] | None:
    """(input, cached, output) tokens from a usage object, or None when it is missing or malformed."""
    if not isinstance(usage, Mapping):
        return None
    if usage.get("input_tokens") is None and usage.get("output_tokens") is None:
        return None
    details = usage.get("input_tokens_details")
    if details is not None and not isinstance(details, Mapping):
        return None
    raw = (usage.get("input_tokens"), (details or {}).get("cached_tokens"), usage.get("output_tokens"))
    input_tokens, cached_tokens, output_tokens = (0 if value is None else _token_count(value) for value in raw)
    if input_tokens is None or cached_tokens is None or output_tokens is None:
        return None
    if cached_tokens > input_tokens:  # cached tokens are a part of the input: inconsistent
        return None
    return input_tokens, cached_tokens, output_tokens
