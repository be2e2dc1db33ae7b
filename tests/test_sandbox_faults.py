"""The fault proxy in front of both emulators: each outcome as a client and the emulator see it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from tariti_mcp.sandbox import Sandbox
from tariti_mcp.sandbox.faults import FaultProxy, FaultRules, FaultSpecError, parse_fault_spec

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(seed=41, calls=100, days=5) as running:
        yield running


@contextlib.asynccontextmanager
async def proxied(sandbox, service, rules, seed=1):
    """A proxy in this test's event loop in front of one emulator, and a client going through it."""
    target = urlsplit(sandbox.amocrm_url if service == "amocrm" else sandbox.moizvonki_url)
    proxy = FaultProxy(target.hostname, target.port, seed=seed, rules=rules, service=service)
    await proxy.start()
    headers = {"Authorization": f"Bearer {sandbox.amocrm_token}"} if service == "amocrm" else {}
    base = f"http://127.0.0.1:{proxy.port}" + ("/api/v1" if service == "moizvonki" else "")
    try:
        async with httpx.AsyncClient(base_url=base, headers=headers) as http:
            yield proxy, http
    finally:
        await proxy.close()


def moizvonki_body(sandbox, action, **params):
    return {
        "user_name": sandbox.moizvonki_user,
        "api_key": sandbox.moizvonki_key,
        "action": action,
        **params,
    }


def new_lead():
    return [{"name": f"fault probe {uuid.uuid4().hex}"}]


def lead_named(sandbox, name):
    return [lead for lead in sandbox.amocrm.leads.values() if lead["name"] == name]


async def test_pass_through_is_the_emulator_answer(sandbox):
    async with proxied(sandbox, "amocrm", {}) as (proxy, http):
        answer = await http.get("/api/v4/account")
    assert answer.status_code == 200 and answer.json()["id"] == sandbox.data.account["id"]
    assert answer.headers["connection"] == "close" and answer.headers["x-request-id"]
    assert proxy.counts["pass"] == 1 and proxy.outcomes == [("read", "pass")]


@pytest.mark.parametrize(("fault", "status"), [("error_429", 429), ("error_503", 503)])
async def test_refusals_never_reach_the_emulator(sandbox, fault, status):
    seen = len(sandbox.amocrm.requests)
    async with proxied(sandbox, "amocrm", {"read": {fault: 1.0}}) as (proxy, http):
        answer = await http.get("/api/v4/leads")
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("text/plain")
    if status == 429:
        assert answer.headers["retry-after"] == "1"
    assert len(sandbox.amocrm.requests) == seen
    assert proxy.counts[fault] == 1


async def test_slow_answers_late_but_answers(sandbox):
    rules = {"read": {"slow": 1.0}, "slow_seconds": 0.3}
    async with proxied(sandbox, "amocrm", rules) as (proxy, http):
        started = time.monotonic()
        answer = await http.get("/api/v4/account")
        elapsed = time.monotonic() - started
    assert answer.status_code == 200 and elapsed >= 0.3
    assert proxy.counts["slow"] == 1


async def test_drop_before_loses_the_request(sandbox):
    seen = len(sandbox.amocrm.requests)
    lead = new_lead()
    async with proxied(sandbox, "amocrm", {"write": {"drop": 1.0}}) as (proxy, http):
        with pytest.raises(httpx.TransportError):
            await http.post("/api/v4/leads", json=lead)
    assert len(sandbox.amocrm.requests) == seen
    assert lead_named(sandbox, lead[0]["name"]) == []
    assert proxy.counts["drop"] == 1


async def test_drop_after_the_lead_exists_but_the_client_saw_nothing(sandbox):
    lead = new_lead()
    async with proxied(sandbox, "amocrm", {"write": {"drop_after": 1.0}}) as (proxy, http):
        with pytest.raises(httpx.TransportError):
            await http.post("/api/v4/leads", json=lead)
        # Reads are another kind: the client can look, and finds what its write did.
        found = await http.get("/api/v4/leads", params={"query": lead[0]["name"]})
    assert len(lead_named(sandbox, lead[0]["name"])) == 1
    assert found.status_code == 200
    assert proxy.counts["drop_after"] == 1 and proxy.counts["pass"] == 1


async def test_error_after_the_lead_exists_behind_a_gateway_error(sandbox):
    lead = new_lead()
    async with proxied(sandbox, "amocrm", {"write": {"error_after": 1.0}}) as (proxy, http):
        answer = await http.post("/api/v4/leads", json=lead)
    assert answer.status_code in (502, 503)
    assert len(lead_named(sandbox, lead[0]["name"])) == 1
    assert proxy.counts["error_after"] == 1


async def test_moizvonki_drop_after_rings_the_phone_all_the_same(sandbox):
    number = f"7999{uuid.uuid4().int % 10**7:07d}"
    body = moizvonki_body(sandbox, "calls.make_call", to=number)
    async with proxied(sandbox, "moizvonki", {"write": {"drop_after": 1.0}}) as (proxy, http):
        with pytest.raises(httpx.TransportError):
            await http.post("", json=body)
    assert (sandbox.moizvonki_user, number) in sandbox.moizvonki.dialed
    assert proxy.outcomes == [("write", "drop_after")]


async def test_moizvonki_reads_and_writes_are_told_apart(sandbox):
    rules = {"read": {"503": 1.0}}
    async with proxied(sandbox, "moizvonki", rules) as (proxy, http):
        listing = await http.post(
            "", json=moizvonki_body(sandbox, "calls.list", from_id=0, max_results=1)
        )
        form = await http.post(
            "", data={"request_data": json.dumps(moizvonki_body(sandbox, "webhook.list"))}
        )
        sms = await http.post(
            "", json=moizvonki_body(sandbox, "calls.send_sms", to="79990000000", text="Hi")
        )
    assert [listing.status_code, form.status_code, sms.status_code] == [503, 503, 200]
    assert sms.text == "SMS posted"
    assert proxy.outcomes == [("read", "error_503"), ("read", "error_503"), ("write", "pass")]


async def outcomes_of(sandbox, seed, rules, writes_between=False):
    async with proxied(sandbox, "amocrm", rules, seed=seed) as (proxy, http):
        for _ in range(40):
            await http.get("/api/v4/account")
            if writes_between:
                await http.post("/api/v4/no/such/thing", json=[])
    return [outcome for kind, outcome in proxy.outcomes if kind == "read"]


async def test_the_same_seed_gives_the_same_faults(sandbox):
    rules = {"read": {"429": 0.3, "503": 0.3}, "write": {"503": 0.5}}
    first = await outcomes_of(sandbox, 7, rules)
    assert set(first) == {"pass", "error_429", "error_503"}
    assert await outcomes_of(sandbox, 7, rules) == first
    assert await outcomes_of(sandbox, 7, rules, writes_between=True) == first
    assert await outcomes_of(sandbox, 8, rules) != first


async def test_a_sandbox_with_faults_points_its_env_at_the_proxies():
    faults = {"all": {"error_503": 0.5}, "slow_seconds": 0}
    with Sandbox(seed=42, calls=50, days=3, faults=faults) as faulty:
        env = faulty.env
        assert env["AMOCRM_BASE_URL"] == faulty.amocrm_proxy_url != faulty.amocrm_url
        assert env["MOIZVONKI_BASE_URL"] == faulty.moizvonki_proxy_url != faulty.moizvonki_url
        assert env["MOIZVONKI_BASE_URL"].endswith("/api/v1")
        headers = {"Authorization": f"Bearer {env['AMOCRM_API_KEY']}"}
        async with httpx.AsyncClient(base_url=env["AMOCRM_BASE_URL"], headers=headers) as http:
            statuses = {(await http.get("/api/v4/account")).status_code for _ in range(20)}
            direct = await http.get(faulty.amocrm_url + "/api/v4/account")
    assert statuses == {200, 503} and direct.status_code == 200
    counts = faulty.amocrm_proxy.counts
    assert counts["pass"] + counts["error_503"] == 20


def test_no_proxies_without_faults(sandbox):
    assert sandbox.amocrm_proxy_url == "" and sandbox.env["AMOCRM_BASE_URL"] == sandbox.amocrm_url


def test_the_compact_spec_and_json_mean_the_same():
    compact = parse_fault_spec(
        "read:503=0.1,slow=0.1,drop=0.05;write:drop_after=0.1;slow_seconds=1"
    )
    as_json = parse_fault_spec(
        '{"read": {"error_503": 0.1, "slow": 0.1, "drop": 0.05},'
        ' "write": {"drop_after": 0.1}, "slow_seconds": 1}'
    )
    assert compact == as_json
    assert compact.read == {"error_503": 0.1, "slow": 0.1, "drop": 0.05}
    assert parse_fault_spec("all:429=0.2;write:429=0.1").write == {"error_429": pytest.approx(0.3)}


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "read:teapot=0.1",
        "read:503=0.7,429=0.4",
        "read:503=lots",
        "read:503=-0.1",
        "reads:503=0.1",
        "read:503",
        "slow_seconds=-1",
        '{"read": [1]}',
        '{"read": {"503": 0.1}',
    ],
)
def test_bad_specs_say_why(spec):
    with pytest.raises(FaultSpecError) as info:
        parse_fault_spec(spec)
    assert str(info.value)


def test_rules_built_by_hand_are_checked():
    with pytest.raises(FaultSpecError):
        FaultRules(read={"drop": 2.0})
    with pytest.raises(FaultSpecError):
        Sandbox(faults={"sometimes": {"drop": 0.1}})


def test_the_command_line_refuses_a_bad_spec_with_one_argparse_error():
    done = subprocess.run(
        [sys.executable, "-m", "tariti_mcp", "sandbox", "--faults", "read:503=0.9,drop=0.2"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "error: argument --faults: read: the probabilities add up to more than 1" in done.stderr
