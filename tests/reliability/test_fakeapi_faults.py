"""The stand-in's fault switches added for the reliability suites: the request log, forced
one-shot faults, replies of odd shape, a proxy that echoes the key, per-response overrides."""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import API_KEY
from tether.fakeapi import REMOVE, FakeServer, Faults, RouteFaults
from tether.fakeapi.app import NOT_OBJECTS, ODD_VALUES

AUTH = {"Authorization": f"Bearer {API_KEY}", "OpenAI-Project": "proj_test"}


@pytest.fixture
def client(fake: FakeServer):
    with httpx.Client(base_url=fake.base_url, headers=AUTH, timeout=5) as c:
        yield c


def test_the_request_log_records_every_request_with_its_fault_status_and_sender(fake, client):
    rid = fake.state.create("m", background=True, metadata={"fake_run": "30"}).id
    fake.state.faults.force("get", "server_error")
    assert client.get(f"/responses/{rid}").status_code >= 500
    assert client.get(f"/responses/{rid}").status_code == 200
    assert client.post(f"/responses/{rid}/cancel").status_code == 200
    calls = fake.state.calls()
    assert [(c["route"], c["response_id"], c["project"]) for c in calls] == [
        ("get", rid, "proj_test"),
        ("get", rid, "proj_test"),
        ("cancel", rid, "proj_test"),
    ]
    assert calls[0]["fault"] == "server_error" and calls[0]["status"] >= 500
    assert calls[1]["fault"] is None and calls[1]["status"] == 200
    assert all(c["ended"] >= c["at"] for c in calls)


def test_a_forced_fault_strikes_exactly_the_next_requests_of_its_route(fake, client):
    rid = fake.state.create("m", background=True).id
    fake.state.faults.force("get", "quota", times=2)
    codes = [client.get(f"/responses/{rid}").status_code for _ in range(3)]
    assert codes == [429, 429, 200]
    assert fake.state.fault_counts["quota"] == 2
    with pytest.raises(ValueError):
        fake.state.faults.force("get", "explode")
    with pytest.raises(ValueError):
        fake.state.faults.force("delete", "drop")


def test_forced_faults_can_be_set_over_http(fake, client):
    rid = fake.state.create("m", background=True).id
    reply = httpx.post(f"{fake.url}/_fake/faults", json={"forced": {"get": ["drop"]}})
    assert reply.status_code == 200 and reply.json()["forced"] == {"get": ["drop"]}
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"/responses/{rid}")
    assert client.get(f"/responses/{rid}").status_code == 200


def test_a_held_request_is_in_the_log_while_in_flight_and_takes_no_effect(fake):
    rid = fake.state.create("m", background=True, metadata={"fake_run": "30"}).id
    fake.state.faults = Faults(cancel=RouteFaults(hang=1), hang_seconds=30)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{fake.base_url}/responses/{rid}/cancel", headers=AUTH, timeout=0.3)
    [call] = [c for c in fake.state.calls() if c["route"] == "cancel"]
    assert call["fault"] == "hang"
    assert fake.state.record(rid).cancels == []  # the server never applied it


def test_odd_shapes_are_wrong_types_or_no_object_and_always_json(fake, client):
    rid = fake.state.create("m", background=True).id
    fake.state.faults = Faults(seed=3, get=RouteFaults(odd_shape=1))
    bodies = [client.get(f"/responses/{rid}").json() for _ in range(60)]
    not_objects = [b for b in bodies if not isinstance(b, dict)]
    assert not_objects and all(b in NOT_OBJECTS for b in not_objects)
    for body in (b for b in bodies if isinstance(b, dict)):
        odd = [k for k, values in ODD_VALUES.items() if k in body and body[k] in values and k != "id"]
        assert odd or body.get("id") in ODD_VALUES["id"], body
    assert fake.state.fault_counts["odd_shape"] == 60


def test_echo_key_repeats_the_presented_key_in_every_error(fake, client):
    fake.state.faults = Faults(echo_key=True, get=RouteFaults(server_error=1), seed=2)
    texts = [client.get("/responses/resp_x").text for _ in range(6)]
    assert all(API_KEY in t for t in texts)
    fake.state.faults = Faults(echo_key=True)
    assert API_KEY in client.get("/responses/resp_unknown").json()["error"]["message"]  # a 404 too


def test_overrides_lay_hostile_fields_over_one_response(fake, client):
    record = fake.state.create("m", background=True, metadata={"team": "a"})
    record.overrides.update(created_at="yesterday", status=7, metadata=REMOVE, x=float("nan"))
    text = client.get(f"/responses/{record.id}").text
    body = json.loads(text)
    assert body["created_at"] == "yesterday" and body["status"] == 7 and "metadata" not in body
    assert "NaN" in text
