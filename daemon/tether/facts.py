"""What the API says about a response, read defensively: its status, the fields a row keeps
of it (`fill_facts`), and the `Facts` policies are decided from, which the daemon keeps for
every active response to notice when an answer changes them."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, TypeGuard

from tether.logs import log
from tether.models import Response
from tether.statuses import API_STATUSES

MAX_TIMESTAMP = 253_402_300_799.0  # 9999-12-31T23:59:59Z: beyond it no date can be rendered
MAX_TOKENS = 2**63 - 1


def known_status(observed: Mapping[str, Any]) -> str | None:
    status = observed.get("status")
    if isinstance(status, str) and status in API_STATUSES:
        return status
    log.warning("api.error", kind="anomaly", response_id=observed.get("id"), error=f"unknown status {status!r}")
    return None


def fill_facts(row: Response, observed: Mapping[str, Any]) -> None:
    """Copy what the API says about the response; missing optional fields keep what we had."""
    wrong = []
    model = observed.get("model")
    if isinstance(model, str):
        row.model = model
    elif model is not None:
        wrong.append("model")
    created = observed.get("created_at")
    if valid_timestamp(created):
        row.created_at = float(created)
    elif created is not None:
        wrong.append("created_at")
    metadata = observed.get("metadata")
    if isinstance(metadata, dict):
        row.meta = {str(k): str(v) for k, v in metadata.items()}
    elif metadata is not None:
        wrong.append("metadata")
    background = observed.get("background")
    if isinstance(background, bool):
        row.background = background
    max_out = observed.get("max_output_tokens")
    if isinstance(max_out, int) and not isinstance(max_out, bool) and 0 <= max_out <= MAX_TOKENS:
        row.max_output_tokens = max_out
    elif max_out is not None:
        wrong.append("max_output_tokens")
    tier = observed.get("service_tier")
    if isinstance(tier, str):
        row.service_tier = tier
    if wrong:
        log.warning(
            "api.error",
            kind="anomaly",
            response_id=row.id,
            error=f"ignored fields of an unexpected type or range: {', '.join(wrong)}",
        )


def valid_timestamp(value: Any) -> TypeGuard[float]:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= MAX_TIMESTAMP
    )


Facts = tuple[str | None, float | None, int]  # model, created_at, the metadata's fingerprint


def row_facts(row: Response) -> Facts:
    return facts_of(row.model, row.created_at, row.meta)


def facts_of(model: str | None, created_at: float | None, metadata: Mapping[str, str]) -> Facts:
    """What policies and deadlines are decided from: model, created_at, metadata.

    The daemon keeps these for every active response only to notice when an answer changes
    them, so the metadata is kept as a fingerprint (a hash of its items, in any order), not
    as its strings: 100,000 responses with metadata of their own would hold ~20 MB of
    them. Two different metadata would need a 64-bit hash collision to look alike."""
    return interned(model), created_at, fingerprint(metadata)


def fingerprint(metadata: Mapping[str, str]) -> int:
    return hash(frozenset(metadata.items()))


def interned(text: str | None) -> str | None:
    return sys.intern(text) if text is not None else None


def facts_after(observed: Mapping[str, Any], known: Facts) -> Facts:
    """`known` updated by an observation as fill_facts would; absent fields change nothing."""
    model, created_at, metadata = known
    if isinstance(observed.get("model"), str):
        model = observed["model"]
    created = observed.get("created_at")
    if valid_timestamp(created):
        created_at = float(created)
    if isinstance(observed.get("metadata"), dict):
        metadata = fingerprint({str(k): str(v) for k, v in observed["metadata"].items()})
    return model, created_at, metadata
