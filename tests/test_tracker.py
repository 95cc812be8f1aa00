"""What makes an observation worth a write: the facts policies are decided from."""

from __future__ import annotations

import pytest

from tether.facts import facts_after, facts_of, row_facts
from tether.models import Response

KNOWN = facts_of("o3-pro", 1000.0, {"team": "search"})


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        pytest.param({"status": "in_progress"}, KNOWN, id="absent fields change nothing"),
        pytest.param({"model": "o3-pro", "created_at": 1000, "metadata": {"team": "search"}}, KNOWN, id="same facts"),
        pytest.param({"metadata": {"team": "ads"}}, facts_of("o3-pro", 1000.0, {"team": "ads"}), id="new metadata"),
        pytest.param({"metadata": {}}, facts_of("o3-pro", 1000.0, {}), id="metadata emptied"),
        pytest.param(
            {"model": "o3-pro-2025-06-10"}, facts_of("o3-pro-2025-06-10", 1000.0, {"team": "search"}), id="model"
        ),
        pytest.param({"created_at": 999}, facts_of("o3-pro", 999.0, {"team": "search"}), id="created_at"),
        pytest.param({"created_at": True, "model": 7, "metadata": "x"}, KNOWN, id="malformed fields are ignored"),
        pytest.param(
            {"metadata": {"n": 1}}, facts_of("o3-pro", 1000.0, {"n": "1"}), id="metadata values become strings"
        ),
    ],
)
def test_facts_after_an_observation(observed, expected):
    assert facts_after(observed, KNOWN) == expected


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({"team": "search", "run": "7"}, id="another key"),
        pytest.param({"team": "Search"}, id="another value"),
        pytest.param({"search": "team"}, id="key and value swapped"),
        pytest.param({"team": "search "}, id="a trailing space"),
    ],
)
def test_any_change_of_metadata_changes_the_facts(metadata):
    assert facts_after({"metadata": metadata}, KNOWN) != KNOWN


def test_the_order_of_metadata_keys_does_not_change_the_facts():
    known = facts_of("o3-pro", 1000.0, {"team": "search", "run": "7"})
    assert facts_after({"metadata": {"run": "7", "team": "search"}}, known) == known


def test_a_row_never_seen_has_facts_that_any_complete_observation_changes():
    row = Response(id="resp_x", account="default", tracked_at=0.0)
    unseen = row_facts(row)
    assert unseen == facts_of(None, None, {})
    assert facts_after({"model": "o3", "created_at": 5, "metadata": {}}, unseen) != unseen


@pytest.mark.parametrize(
    ("stored", "answer", "asked_at", "kept"),
    [
        pytest.param(
            "cancelled", "completed", 110.0, "completed", id="a late completion asked after the cancel is taken"
        ),
        pytest.param("cancelled", "completed", 90.0, "cancelled", id="an answer asked before the stored one is stale"),
        pytest.param(
            "completed", "cancelled", 90.0, "completed", id="a slow cancel's answer does not undo a completion"
        ),
        pytest.param("completed", "cancelled", None, "cancelled", id="without a time, the transition table decides"),
    ],
)
def test_a_terminal_status_is_replaced_only_by_an_answer_asked_after_it_was_recorded(
    tmp_path, stored, answer, asked_at, kept
):
    from tether.config import parse_config
    from tether.pricing import Pricing
    from tether.store import Store
    from tether.tracker import observe, recording

    config = parse_config({}, environ={})
    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    store.migrate()
    with store.writing() as session:
        session.add(Response(id="resp_a", account="default", tracked_at=0.0, status=stored, finished_at=100.0))
    with recording(store, "cli", 120.0) as rec:
        row = rec.session.get(Response, "resp_a")
        changed = observe(
            rec,
            row,
            {"id": "resp_a", "status": answer},
            config,
            Pricing.from_config(config),
            reason="cancel",
            asked_at=asked_at,
        )
    with store.reading() as session:
        assert session.get(Response, "resp_a").status == kept
    assert changed is (kept != stored)
