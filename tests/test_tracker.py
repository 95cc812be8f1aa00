"""What makes an observation worth a write: the facts policies are decided from."""

from __future__ import annotations

import pytest

from tether.models import Response
from tether.tracker import facts, facts_after

KNOWN = ("o3-pro", 1000.0, (("team", "search"),))


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        pytest.param({"status": "in_progress"}, KNOWN, id="absent fields change nothing"),
        pytest.param({"model": "o3-pro", "created_at": 1000, "metadata": {"team": "search"}}, KNOWN, id="same facts"),
        pytest.param({"metadata": {"team": "ads"}}, ("o3-pro", 1000.0, (("team", "ads"),)), id="new metadata"),
        pytest.param({"metadata": {}}, ("o3-pro", 1000.0, ()), id="metadata emptied"),
        pytest.param({"model": "o3-pro-2025-06-10"}, ("o3-pro-2025-06-10", 1000.0, (("team", "search"),)), id="model"),
        pytest.param({"created_at": 999}, ("o3-pro", 999.0, (("team", "search"),)), id="created_at"),
        pytest.param({"created_at": True, "model": 7, "metadata": "x"}, KNOWN, id="malformed fields are ignored"),
        pytest.param({"metadata": {"n": 1}}, ("o3-pro", 1000.0, (("n", "1"),)), id="metadata values become strings"),
    ],
)
def test_facts_after_an_observation(observed, expected):
    assert facts_after(observed, KNOWN) == expected


def test_a_row_never_seen_has_facts_that_any_complete_observation_changes():
    row = Response(id="resp_x", account="default", tracked_at=0.0)
    unseen = facts(row)
    assert unseen == (None, None, ())
    assert facts_after({"model": "o3", "created_at": 5, "metadata": {}}, unseen) != unseen
