"""Behind a proxy that fails 30 % of requests: no read is lost, no write is repeated, the rate
holds, and a blocked account gets no further traffic."""

from __future__ import annotations

import bisect
import datetime as dt
import json
import logging
from zoneinfo import ZoneInfo

import anyio
import pytest
from mcp import Client

from tariti_mcp.config import Settings
from tariti_mcp.sandbox import Sandbox
from tariti_mcp.server import create_server
from tariti_mcp.store import Store

MOSCOW = ZoneInfo("Europe/Moscow")
READ_FAULTS = {"error_429": 0.1, "error_503": 0.1, "slow": 0.05, "drop": 0.05}
WRITE_FAULTS = {"drop_after": 0.15, "error_after": 0.1, "drop": 0.05}


def settings_for(sandbox: Sandbox, tmp_path, **extra) -> Settings:
    env = {key.lower(): value for key, value in sandbox.env.items()}
    return Settings(_env_file=None, db_path=tmp_path / "t.db", **env, **extra)


def busiest_second(times: list[float]) -> int:
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered)), default=0)


@pytest.fixture(scope="module")
def faulty():
    faults = {"read": READ_FAULTS, "write": WRITE_FAULTS, "slow_seconds": 2.5}
    with Sandbox(seed=31, calls=1200, days=20, rate_limit=7, faults=faults) as sandbox:
        yield sandbox


@pytest.mark.anyio
async def test_every_read_survives_a_thirty_percent_fault_rate(faulty, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    # A 1 s timeout turns the proxy's 2.5 s slow answers into timeouts.
    settings = settings_for(faulty, tmp_path, http_timeout=1.0)
    reads = [
        ("call_amocrm_api", {"path": path, "query": {"limit": 50}})
        for path in (
            "/api/v4/leads",
            "/api/v4/contacts",
            "/api/v4/companies",
            "/api/v4/users",
            "/api/v4/leads/pipelines",
        )
    ] * 4
    reads += [
        ("call_amocrm_api", {"path": "/api/v4/leads", "query": {"limit": 100}, "all_pages": True})
    ]
    today = dt.datetime.fromtimestamp(faulty.data.now, MOSCOW).date()
    reads += [
        ("get_moizvonki_analytics", {"date_from": (today - dt.timedelta(days=6)).isoformat()}),
        (
            "call_moizvonki_api",
            {
                "action": "calls.list",
                "params": {"from_id": 0, "max_results": 100},
                "all_pages": True,
                "max_pages": 5,
            },
        ),
    ]
    answers = []
    async with Client(create_server(settings, store=Store()), mode="legacy") as client:
        for name, arguments in reads:
            result = await client.call_tool(name, arguments)
            assert not result.is_error, (name, arguments, result.content[0].text)
            answers.append(result.content[0].text)
    for secret in (faulty.env["AMOCRM_API_KEY"], faulty.env["MOIZVONKI_API_KEY"]):
        assert secret not in caplog.text and not any(secret in a for a in answers)
    faults = sum(n for outcome, n in faulty.amocrm_proxy.counts.items() if outcome != "pass")
    assert faults >= 5  # the proxy really did fail requests
    assert busiest_second(faulty.amocrm.request_times) <= 7
    assert faulty.amocrm.rate_limited == 0


async def wait_for_outbox(store: Store, seconds: float = 60.0) -> list[dict]:
    """Let the server's background delivery run until nothing is left to do."""
    with anyio.move_on_after(seconds):
        while store.pending_leads():
            await anyio.sleep(0.1)
    return store.pending_leads()


@pytest.mark.anyio
async def test_no_write_is_repeated_when_answers_are_lost(faulty, tmp_path):
    settings = settings_for(
        faulty,
        tmp_path,
        outbox_check_delay=0.3,
        outbox_max_backoff=1.0,
        outbox_interval=0.2,
    )
    store = Store()
    outcomes = []
    async with Client(create_server(settings, store=store), mode="legacy") as client:
        for number in range(30):
            arguments = {
                "name": f"Фаулт {number}",
                "phone": f"+7 999 700 {number:04d}",
                "external_id": f"fault-{number}",
                "lead_name": f"fault lead {number}",
            }
            for _ in range(2):  # a model that retries every forwarding once
                result = await client.call_tool("forward_lead_to_amocrm", arguments)
                assert not result.is_error, result.content[0].text
                outcomes.append((number, json.loads(result.content[0].text)))
        left = await wait_for_outbox(store)
    assert left == []
    for number in range(30):
        created = [
            lead for lead in faulty.amocrm.leads.values() if lead["name"] == f"fault lead {number}"
        ]
        row = store.forwarding_by_external_id(f"fault-{number}")
        assert [lead["id"] for lead in created] == [row["lead_id"]], (number, row)
        for answer in (a for n, a in outcomes if n == number):
            assert answer["status"] in ("delivered", "queued")
            if answer["status"] == "delivered":
                assert answer["lead_id"] == row["lead_id"]
    assert any(a["status"] == "queued" for _, a in outcomes)  # the faults did bite
    assert sum(1 for _, a in outcomes if a["status"] == "delivered") >= 10


@pytest.mark.anyio
async def test_blocked_account_stops_all_traffic(tmp_path):
    with Sandbox(seed=32, calls=100) as sandbox:
        settings = settings_for(sandbox, tmp_path)
        async with Client(create_server(settings, store=Store()), mode="legacy") as client:
            sandbox.amocrm.blocked = True
            first = await client.call_tool("call_amocrm_api", {"path": "/api/v4/leads"})
            assert first.is_error and "blocked" in first.content[0].text
            assert "Only amoCRM support can lift" in first.content[0].text
            seen = len(sandbox.amocrm.requests)
            sandbox.amocrm.blocked = False
            for arguments in ({"path": "/api/v4/account"}, {"path": "/api/v4/contacts"}):
                again = await client.call_tool("call_amocrm_api", arguments)
                assert again.is_error and "blocked" in again.content[0].text
            forwarded = await client.call_tool(
                "forward_lead_to_amocrm", {"name": "X", "phone": "+7 999 000 11 22"}
            )
            # Not lost: kept in the outbox until the block is lifted and the server restarted.
            answer = json.loads(forwarded.content[0].text)
            assert not forwarded.is_error and answer["status"] == "queued"
            assert "blocked" in answer["reason"]
            assert len(sandbox.amocrm.requests) == seen
