"""The dashboard's store reads (tether.dashboard.queries) on each kind of store: the filters are
SQL (a label is read from the JSON column), so each must hold on SQLite and on PostgreSQL."""

from __future__ import annotations

import time

from tether.config import parse_config
from tether.dashboard import queries
from tether.models import Event, Response
from tether.pricing import Pricing
from tether.store import Store

CONFIG = {
    "policy": [{"name": "batch", "max_runtime": "1h", "reserve_usd": 0.5}],
    "budget": [{"name": "team", "limit_usd": 10.0, "period": "day"}],
}


def test_the_pages_reads_filter_page_and_count_in_sql(store_url):
    store = Store(store_url)
    store.migrate()
    config = parse_config(CONFIG, environ={})
    pricing = Pricing.from_config(config)
    now = time.time()
    with store.writing() as session:
        for i in range(60):
            status = ("in_progress", "queued", None)[i % 3]
            session.add(
                Response(
                    id=f"resp_{i:03d}",
                    account="default",
                    status=status,
                    model="o3-pro",
                    policy="batch",
                    labels={"team": "a" if i < 40 else "b"},
                    tracked_at=now - 100 + i,
                    deadline_at=now + 3600,
                )
            )
        session.add(
            Response(
                id="resp_done",
                account="default",
                status="completed",
                model="o3-pro",
                policy="batch",
                tracked_at=now - 200,
                finished_at=now - 10,
                cost_usd=1.25,
            )
        )
        session.add(Event(at=now - 30, response_id="resp_000", kind="cancel_requested", reason="max_runtime"))
        session.add(Event(at=now - 7200, response_id="resp_001", kind="cancel_requested", reason="manual"))
        session.add(Event(at=now - 5, response_id="resp_002", kind="tracked"))

    overview = queries.overview(store, now)
    assert overview["active_total"] == 60
    assert dict(overview["active"]) == {"in_progress": 20, "queued": 20, "unseen": 20}
    assert overview["cancels"] == [("manual", 0, 1), ("max_runtime", 1, 1)]

    def ids(page: int = 1, **filters: str) -> list[str]:
        return [r["id"] for r in queries.responses(store, config, pricing, queries.Filters(**filters), page).rows]

    first = queries.responses(store, config, pricing, queries.Filters(), 1)
    assert (first.total, first.pages, len(first.rows)) == (61, 2, 50)
    assert first.rows[0]["id"] == "resp_059" and first.rows[0]["reserved_usd"] == 0.5
    assert ids(2)[-1] == "resp_done" and len(ids(2)) == 11
    assert ids(9) == ids(2)  # past the last page: the last page
    assert sorted(ids(label="team=b")) == [f"resp_{i:03d}" for i in range(40, 60)]
    assert ids(label="team=c") == []
    assert len(ids(status="active")) == 50 and len(ids(2, status="active")) == 10
    assert ids(status="unseen")[0] == "resp_059"
    assert ids(status="completed") == ["resp_done"]
    assert ids(q="_01") == [f"resp_01{i}" for i in range(9, -1, -1)]
    assert ids(q="%") == []  # a LIKE wildcard is a character here
    assert ids(model="o3-pro", policy="batch", account="default", status="completed") == ["resp_done"]

    assert [e["kind"] for e in queries.events(store, response_id="", kind="", after=0)] == [
        "tracked",
        "cancel_requested",
        "cancel_requested",
    ]
    latest = queries.latest_event_id(store)
    assert queries.events(store, response_id="", kind="", after=latest) == []
    assert [e["reason"] for e in queries.events(store, response_id="resp_000", kind="cancel_requested", after=0)] == [
        "max_runtime"
    ]

    [team] = queries.budgets(store, config, pricing, now)
    assert team["spent_usd"] == 1.25 and team["committed_usd"] == 30.0
    assert team["points"][1] == (now - 10, 1.25) and team["points"][-1] == (now, 1.25)
