"""Budgets end to end: the real daemon, the stand-in API, figures checked by hand."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from conftest import API_KEY, Tether, wait_for

HAND_COST_O3_PRO = (10_000 * 20.0 + 2_000 * 20.0 + 30_000 * 80.0) / 1e6  # $2.64: 12k in (2k cached), 30k out


def create(fake, *, created_at: float | None = None, model: str = "o3-pro", **metadata: str) -> str:
    if created_at is not None:
        reply = httpx.post(
            f"{fake.url}/_fake/responses",
            json={"model": model, "created_at": created_at, "metadata": metadata, "background": True},
            timeout=30,
        )
    else:
        reply = httpx.post(
            f"{fake.base_url}/responses",
            json={"model": model, "input": "x", "background": True, "metadata": metadata},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )
    reply.raise_for_status()
    return reply.json()["id"]


def budgets(tether: Tether) -> dict[str, dict]:
    return {b["name"]: b for b in tether.json("budget")}


def events(tether: Tether) -> list[dict]:
    return [json.loads(line) for line in tether.cli("log", "--json").stdout.splitlines()]


def test_concurrent_responses_over_a_budget_are_cancelled_newest_first_until_it_fits(tether, fake):
    tether.write_config("""
[[policy]]
name = "reserved"
max_runtime = "1h"
reserve_usd = 0.4

[[budget]]
name = "team"
limit_usd = 1.0
period = "day"
""")
    now = time.time()
    # gpt-5-nano: the cancelled ones' estimated cost (seconds of output at $0.40/1M) stays far below
    # what would force a third cancel.
    ids = [create(fake, created_at=now - 40 + i * 10, model="gpt-5-nano", fake_run="3600") for i in range(4)]
    tether.ok("track", *ids)
    daemon = tether.start_daemon()
    wait_for(
        lambda: sum(r["status"] == "cancelled" for r in tether.records().values()) == 2,
        timeout=45,
        what="two budget cancels",
    )
    records = tether.records()
    assert [records[i]["status"] for i in ids] == ["in_progress", "in_progress", "cancelled", "cancelled"]
    assert {records[i]["cancel_reason"] for i in ids[2:]} == {"budget:team"}
    state = budgets(tether)["team"]
    assert state["committed_usd"] == pytest.approx(0.8)
    assert state["state"] == "ok" and state["active"] == 2
    exceeded = [e for e in events(tether) if e["kind"] == "budget_exceeded"]
    assert len(exceeded) == 1 and exceeded[0]["detail"]["cancelling"] == [ids[3], ids[2]]
    assert exceeded[0]["response_id"] is None and exceeded[0]["detail"]["budget"] == "team"
    assert any(line["event"] == "budget.exceeded" for line in tether.log_lines(daemon))
    assert all(len(fake.state.snapshot()["responses"][i]["cancels"]) == 0 for i in ids[:2])
    assert tether.stop_daemon(daemon) == 0


def test_spend_equals_a_hand_computation_and_a_restart_changes_no_figure(tether, fake):
    tether.write_config("""
[[budget]]
name = "all"
limit_usd = 100.0
period = "month"
timezone = "Europe/Berlin"
warn_at = [0.02]
on_exceed = "warn"
""")
    daemon = tether.start_daemon()
    tokens = dict(
        fake_input_tokens="12000",
        fake_cached_tokens="2000",
        fake_output_tokens="30000",
        fake_reasoning_tokens="25000",
        fake_queue="1",
        fake_run="1",
    )
    ids = [create(fake, **tokens), create(fake, **tokens)]
    tether.ok("track", *ids)
    wait_for(lambda: budgets(tether)["all"]["spent_usd"] > 5, timeout=45, what="both costs counted")
    before = budgets(tether)["all"]
    assert before["spent_usd"] == pytest.approx(2 * HAND_COST_O3_PRO)
    for rid in ids:
        record = tether.records()[rid]
        assert (record["cost_usd"], record["cost_estimated"]) == (pytest.approx(HAND_COST_O3_PRO), False)
    wait_for(lambda: [e for e in events(tether) if e["kind"] == "budget_warn"], timeout=45, what="budget_warn")

    assert tether.stop_daemon(daemon) == 0
    restarted = tether.start_daemon()
    wait_for(lambda: "daemon.started" in restarted.log_path.read_text(), what="restart")
    assert tether.stop_daemon(restarted) == 0
    after = budgets(tether)["all"]
    assert after == before
    assert len([e for e in events(tether) if e["kind"] == "budget_warn"]) == 1  # once per window


def test_a_response_of_an_unknown_model_is_flagged_and_never_costs_a_silent_zero(tether, fake):
    daemon = tether.start_daemon()
    rid = create(fake, model="mystery-model-9", fake_queue="1.5", fake_run="0.5")
    tether.ok("track", rid)
    wait_for(lambda: tether.records()[rid]["status"] == "completed", timeout=45, what="completed")
    record = tether.records()[rid]
    assert record["cost_usd"] is None
    kinds = [e["kind"] for e in tether.json("show", rid)["events"]]
    assert kinds.count("price_unknown") == 1
    assert tether.stop_daemon(daemon) == 0


def test_a_cancelled_response_without_usage_gets_an_estimated_cost(tether, fake):
    tether.write_config('[[policy]]\nname = "short"\nmax_runtime = "3s"\n')
    daemon = tether.start_daemon()
    rid = create(fake, fake_run="600")
    tether.ok("track", rid)
    wait_for(lambda: tether.records()[rid]["status"] == "cancelled", timeout=45, what="cancelled")
    record = tether.records()[rid]
    assert record["usage"] is None
    assert record["cost_estimated"] is True
    assert record["cost_usd"] is not None and 0 < record["cost_usd"] < 0.1  # a few seconds of o3-pro output
    assert tether.stop_daemon(daemon) == 0
