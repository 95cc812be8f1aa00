"""Selectors: which responses a policy or a budget applies to (`[policy.match]`, `[budget.match]`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

from tether.config.values import converted, string_table, strings


@dataclass(frozen=True)
class Match:
    """Selectors of a policy; an omitted (empty) selector matches anything."""

    model: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    account: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def fits(
        self,
        *,
        model: str | None,
        metadata: Mapping[str, str] | None,
        account: str,
        labels: Mapping[str, str] | None,
    ) -> bool:
        return (
            (not self.model or (model is not None and any(fnmatchcase(model, g) for g in self.model)))
            and (not self.account or account in self.account)
            and _contains(metadata, self.metadata)
            and _contains(labels, self.labels)
        )


def _contains(actual: Mapping[str, str] | None, wanted: Mapping[str, str]) -> bool:
    actual = actual or {}
    return all(actual.get(key) == value for key, value in wanted.items())


MATCH_FIELDS = {"model": strings, "metadata": string_table, "account": strings, "labels": string_table}


def parse_match(value: Any, key: str) -> Match:
    return Match(**converted(value, key, MATCH_FIELDS))
