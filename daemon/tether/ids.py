"""Response ids as the API issues them: checked before any request is made or row is read."""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,256}")


def valid_id(response_id: str) -> bool:
    return ID_PATTERN.fullmatch(response_id) is not None
