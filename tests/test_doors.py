"""The daemon's other doors end to end, through a real `tether run` and its TCP listener,
against the stand-in API: /metrics scraped as Prometheus does, webhooks signed here, the
official openai SDK through the proxy."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import API_KEY, FAST_POLLING, Tether, create, server_record, wait_for
from test_server import free_port, with_server
from test_webhooks import OTHER_KEY, SECRET, event, signed


def scrape(base: str) -> dict[str, list]:
    """Every family's samples, by family name, as Prometheus's own parser reads the text."""
    reply = httpx.get(f"{base}/metrics", timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {family.name: family.samples for family in text_string_to_metric_families(reply.text)}


def test_metrics_are_scraped_without_a_token_and_count_what_ls_shows(tether: Tether, fake):
    port = free_port()
    with_server(tether, f'listen = "127.0.0.1:{port}"\ntoken_env = "TETHER_TEST_TOKEN"\n')
    tether.extra_env["TETHER_TEST_TOKEN"] = "test-token-0123456789abcdef"
    tether.start_daemon()
    base = f"http://127.0.0.1:{port}"
    running = [create(fake, fake_run="600") for _ in range(2)]
    done = create(fake, fake_run="0.1")
    tether.ok("track", *running, done)
    wait_for(lambda: tether.records()[done]["status"] == "completed", timeout=30, what="the short one completed")

    families = wait_for(
        lambda: (f := scrape(base)) and f["tether_polls"][0].value > 0 and f, timeout=30, what="a poll counted"
    )
    active = tether.json("ls", "--active")
    assert sorted(r["id"] for r in active) == sorted(running)
    assert sum(s.value for s in families["tether_responses_active"]) == len(active)
    by_status = {s.labels["status"]: s.value for s in families["tether_responses_active"]}
    assert sum(by_status.values()) == 2 and set(by_status) <= {"queued", "in_progress", "unseen"}

    assert (
        httpx.post(
            f"{base}/api/responses/{running[0]}/cancel",
            json={},
            headers={"Authorization": "Bearer test-token-0123456789abcdef"},
        ).status_code
        == 200
    )
    families = scrape(base)
    cancels = {s.labels["reason"]: s.value for s in families["tether_cancels"] if s.name == "tether_cancels_total"}
    assert cancels["manual"] == 1
    assert sum(s.value for s in families["tether_responses_active"]) == len(tether.json("ls", "--active")) == 1


def test_a_signed_webhook_shows_the_end_within_a_second_and_forged_stale_or_replayed_ones_change_nothing(
    tether: Tether, fake
):
    port = free_port()
    tether.write_config(polling='first = "10m"\nmax_interval = "10m"\n')  # only webhooks can tell the end
    with_server(tether, f'listen = "127.0.0.1:{port}"\n\n[webhooks]\nsecret_env = "TETHER_TEST_WEBHOOK_SECRET"\n')
    tether.extra_env["TETHER_TEST_WEBHOOK_SECRET"] = SECRET
    tether.start_daemon()
    url = f"http://127.0.0.1:{port}/webhooks/openai"
    # `ending` runs long enough to be tracked while in progress on a busy 2-core machine.
    ending, running = create(fake, fake_run="10"), create(fake, fake_run="600")
    tether.ok("track", ending, running)
    assert tether.records()[ending]["status"] == "in_progress"
    wait_for(lambda: server_record(fake, ending)["status"] == "completed", timeout=30, what="the stand-in's end")

    def gets(rid: str) -> list[dict]:
        return [c for c in fake.state.calls() if c["route"] == "get" and c["response_id"] == rid]

    assert len(gets(running)) == 1  # the look `tether track` made
    forged = event(rid=running)
    assert httpx.post(url, content=forged, headers=signed(forged, key=OTHER_KEY)).status_code == 400
    stale = event(rid=running)
    assert httpx.post(url, content=stale, headers=signed(stale, at=time.time() - 360)).status_code == 400

    body = event("response.completed", rid=ending)
    headers = signed(body)
    posted_at = time.time()
    assert httpx.post(url, content=body, headers=headers).status_code == 200
    shown = wait_for(
        lambda: (r := tether.json("show", ending))["status"] == "completed" and r,
        timeout=10,
        what="the completion seen",
    )
    [change] = [e for e in shown["events"] if e["kind"] == "status" and e["to"] == "completed"]
    assert datetime.fromisoformat(change["at"]).timestamp() - posted_at <= 1.0
    looks_at_ending = len(gets(ending))

    assert httpx.post(url, content=body, headers=headers).status_code == 400  # the same message again
    # A look any refused request had set off would come before the one this request sets off.
    late = event("response.in_progress", rid=running)
    assert httpx.post(url, content=late, headers=signed(late)).status_code == 200
    wait_for(lambda: len(gets(running)) == 2, timeout=10, what="the look the valid event asked for")
    assert len(gets(ending)) == looks_at_ending  # the replay made no look
    assert len(gets(running)) == 2  # neither the forged nor the stale event made one
    assert tether.json("show", running)["status"] == "in_progress"


def with_proxy(tether: Tether, policies: str = "", polling: str = FAST_POLLING) -> str:
    """A config whose TCP listener serves the proxy (the caller's key passes through); its base URL."""
    port = free_port()
    tether.write_config(policies=policies, polling=polling)
    with_server(tether, f'listen = "127.0.0.1:{port}"\n\n[proxy]\nenabled = true\n')
    return f"http://127.0.0.1:{port}/v1"


def test_the_sdk_through_the_proxy_is_tracked_at_once_and_cancelled_by_its_policy(tether: Tether, fake):
    import openai

    # The first poll 5 s after tracking: any GET before it would be the tracking's own.
    base_url = with_proxy(
        tether, '[[policy]]\nname = "short"\nmax_runtime = "2s"\n', polling='first = "5s"\nmax_interval = "5s"\n'
    )
    tether.start_daemon()
    client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
    created = client.responses.create(model="o3-pro", input="hi", background=True, metadata={"fake_run": "600"})
    calls = fake.state.calls()
    assert [c["route"] for c in calls] == ["create"]  # tracked from the created object: no GET
    assert tether.records()[created.id]["policy"] == "short"  # and tracked before the SDK returned
    wait_for(lambda: server_record(fake, created.id)["cancels"], timeout=30, what="the policy's cancel")
    assert wait_for(lambda: tether.records()[created.id]["cancel_reason"], timeout=30) == "max_runtime"


def test_the_async_sdk_through_the_proxy_is_tracked_and_a_budget_refusal_is_a_rate_limit_error(tether: Tether, fake):
    import asyncio

    import openai

    budget = '[[budget]]\nname = "team-x"\nmatch = { metadata = { team = "x" } }\nlimit_usd = 1.0\nperiod = "day"\n'
    base_url = with_proxy(tether, budget)
    tether.start_daemon()

    async def create(**metadata: str):
        async with openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0) as client:
            return await client.responses.create(
                model="o3-pro", input="hi", background=True, max_output_tokens=100_000, metadata=metadata
            )

    created = asyncio.run(create(team="y", fake_run="600"))
    assert created.id in tether.records()
    with pytest.raises(openai.RateLimitError) as caught:
        asyncio.run(create(team="x"))
    assert "team-x" in caught.value.message
    assert fake.state.requests.get("create", 0) == 1  # the refused one never went upstream
