"""The dashboard over HTTP on a real daemon's TCP listener, against the stand-in: escaping and
headers, the read-only default, the token's session and the cancel's checks, paging and filters.
(tests/test_dashboard_browser.py drives it in Chromium.)"""

from __future__ import annotations

import re

import httpx

from conftest import Tether, create, server_record, wait_for
from dashboard_support import TOKEN, serve_dashboard

HOSTILE = "<script>alert(1)</script>"
PAGES = ("/", "/responses", "/events", "/budgets")


def test_every_page_escapes_what_it_shows_and_sends_a_content_security_policy(tether: Tether, fake):
    rid = create(fake, fake_run="600", note=HOSTILE)
    tether.ok("track", rid, "--label", f"team={HOSTILE}")
    base = serve_dashboard(tether, token=False)
    for path in (*PAGES, f"/responses/{rid}", f"/events?response_id={rid}"):
        page = httpx.get(base + path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["Content-Type"].startswith("text/html")
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        # One script element, the page's own file; no inline handler or style for the policy to block.
        assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/static/dashboard.js" defer>'], path
        assert not re.search(r"\son\w+=|\sstyle=", page.text), path
        assert "alert(1)</script>" not in page.text, path
    shown = httpx.get(f"{base}/responses/{rid}").text
    assert shown.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2  # its metadata, its label (and events)
    listed = httpx.get(f"{base}/responses").text
    assert "team=&lt;script&gt;alert(1)&lt;/script&gt;" in listed
    assert (
        httpx.get(f"{base}/static/dashboard.js")
        .headers["Content-Type"]
        .startswith(("text/javascript", "application/javascript"))
    )


def test_without_a_token_the_dashboard_is_read_only(tether: Tether, fake):
    rid = create(fake, fake_run="600")
    tether.ok("track", rid)
    base = serve_dashboard(tether, token=False)
    page = httpx.get(f"{base}/responses/{rid}")
    assert page.status_code == 200 and rid in page.text
    assert 'id="cancel"' not in page.text and "read-only" in page.text
    assert httpx.get(f"{base}/responses/{rid}/cancel", params={"reason": "x"}).status_code == 404
    assert httpx.post(f"{base}/responses/{rid}/cancel", data={"reason": "x"}).status_code in (404, 405)
    opened = httpx.get(f"{base}/?token={TOKEN}")
    assert opened.status_code == 404 and "set-cookie" not in opened.headers
    assert server_record(fake, rid)["cancels"] == []


def test_the_token_opens_a_session_whose_cancel_is_a_manual_cancel_with_the_reason(tether: Tether, fake):
    rid = create(fake, fake_run="600")
    tether.ok("track", rid)
    base = serve_dashboard(tether, token=True)

    wrong = httpx.get(f"{base}/responses/{rid}?token=wrong-{TOKEN}")
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert 'id="cancel"' not in httpx.get(f"{base}/responses/{rid}").text  # the token is needed

    opened = httpx.get(f"{base}/responses/{rid}?token={TOKEN}&x=1")
    assert opened.status_code == 303 and opened.headers["Location"] == f"/responses/{rid}?x=1"
    cookie = opened.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    session = opened.cookies["tether_dashboard"]
    # The cookie is the dashboard's only: it opens no control API.
    assert httpx.get(f"{base}/api/responses", headers={"Authorization": f"Bearer {session}"}).status_code == 401

    with httpx.Client(base_url=base, cookies={"tether_dashboard": session}) as browser:
        page = browser.get(f"/responses/{rid}")
        assert 'id="cancel"' in page.text and "operator" in page.text and TOKEN not in page.text
        confirm = browser.get(f"/responses/{rid}/cancel", params={"reason": "runaway <loop>"})
        assert confirm.status_code == 200 and TOKEN not in confirm.text
        assert "runaway &lt;loop&gt;" in confirm.text
        form_key = re.search(r'name="form_key" value="([0-9a-f]+)"', confirm.text)
        assert form_key is not None and server_record(fake, rid)["cancels"] == []  # asking sends nothing

        refusals = [
            ({"reason": "x"}, {}),  # no form key
            ({"reason": "x", "form_key": "0" * 64}, {}),
            ({"reason": "x", "form_key": form_key[1]}, {"Origin": "https://elsewhere.example"}),
            ({"reason": "", "form_key": form_key[1]}, {}),
        ]
        for data, headers in refusals:
            refused = browser.post(f"/responses/{rid}/cancel", data=data, headers=headers)
            assert refused.status_code in (400, 403), (data, headers, refused.status_code)
        # The right form, without the cookie: refused too.
        assert (
            httpx.post(f"{base}/responses/{rid}/cancel", data={"reason": "x", "form_key": form_key[1]}).status_code
            == 403
        )
        assert server_record(fake, rid)["cancels"] == []

        done = browser.post(
            f"/responses/{rid}/cancel",
            data={"reason": "runaway <loop>", "form_key": form_key[1]},
            headers={"Origin": base},
        )
        assert done.status_code == 303 and done.headers["Location"] == f"/responses/{rid}"
    assert len(server_record(fake, rid)["cancels"]) == 1
    shown = tether.json("show", rid)
    assert shown["cancel_reason"] == "manual"
    [requested] = [e for e in shown["events"] if e["kind"] == "cancel_requested"]
    assert requested["reason"] == "manual" and requested["detail"]["note"] == "runaway <loop>"


def test_the_responses_table_is_paged_and_filtered_on_the_server(tether: Tether, fake):
    team_a = [create(fake, fake_run="600") for _ in range(70)]
    team_b = [create(fake, fake_run="600") for _ in range(45)]
    tether.ok("track", *team_a, "--label", "team=a")
    tether.ok("track", *team_b, "--label", "team=b")
    base = serve_dashboard(tether, token=False)

    def ids(**params: str) -> list[str]:
        page = httpx.get(f"{base}/responses", params=params)
        assert page.status_code == 200, page.text
        return re.findall(r'<tr data-id="([^"]+)">', page.text)

    first, second, third = ids(), ids(page="2"), ids(page="3")
    assert (len(first), len(second), len(third)) == (50, 50, 15)
    assert set(first + second + third) == set(team_a + team_b)
    assert "115 responses, page 1 of 3" in httpx.get(f"{base}/responses").text
    assert sorted(ids(label="team=b")) == sorted(team_b)
    assert len(ids(model="o3-pro", page="3")) == 15 and ids(model="gpt-5-nano") == []
    assert ids(q=team_a[3][-12:]) == [team_a[3]]
    assert ids(status="completed") == []
    assert len(ids(status="active", account="default")) == 50
    assert httpx.get(f"{base}/responses", params={"status": "sleeping"}).status_code == 400


def test_the_events_rows_follow_what_is_recorded(tether: Tether, fake):
    base = serve_dashboard(tether, token=False)
    page = httpx.get(f"{base}/events").text
    after = re.search(r'data-after="(\d+)"', page)
    assert after is not None
    rid = create(fake, fake_run="600")
    tether.ok("track", rid)

    def tracked_rows() -> httpx.Response | None:
        rows = httpx.get(f"{base}/events/rows", params={"after": after[1], "kind": "tracked"})
        return rows if rid in rows.text else None

    rows = wait_for(tracked_rows, timeout=20, what="the tracked event's row")
    assert int(rows.headers["X-Last-Event-Id"]) > int(after[1])
    assert httpx.get(f"{base}/events/rows", params={"after": "x"}).status_code == 400
    assert httpx.get(f"{base}/events/rows", params={"after": "0", "kind": "nothing"}).status_code == 400
