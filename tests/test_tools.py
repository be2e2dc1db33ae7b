"""Every tool through the in-memory MCP client, in both protocol eras, against the sandbox."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from zoneinfo import ZoneInfo

import anyio
import call_stats
import httpx
import pytest
from mcp import Client

from tariti_mcp import phones
from tariti_mcp.config import Settings
from tariti_mcp.sandbox import Sandbox
from tariti_mcp.server import create_server
from tariti_mcp.store import Store, field_values

MOSCOW = ZoneInfo("Europe/Moscow")


@pytest.fixture(params=["legacy", "auto"])
def mode(request):
    return request.param


@pytest.fixture
def store():
    database = Store()
    yield database
    database.close()


@pytest.fixture
async def client(sandbox_settings, store, mode):
    async with Client(create_server(sandbox_settings, store=store), mode=mode) as connected:
        yield connected


async def call(client, name, arguments):
    result = await client.call_tool(name, arguments)
    text = result.content[0].text
    if result.is_error:
        return True, text
    assert json.loads(text) == result.structured_content  # the text form is complete
    return False, result.structured_content


@pytest.mark.anyio
async def test_exactly_four_tools(client):
    tools = (await client.list_tools()).tools
    assert sorted(t.name for t in tools) == [
        "call_amocrm_api",
        "call_moizvonki_api",
        "forward_lead_to_amocrm",
        "get_moizvonki_analytics",
    ]
    assert all(t.title and t.description and t.annotations for t in tools)
    analytics = next(t for t in tools if t.name == "get_moizvonki_analytics")
    assert analytics.annotations.read_only_hint is True


@pytest.mark.anyio
async def test_get_leads_page_matches_emulator(client, sandbox, store):
    error, result = await call(
        client,
        "call_amocrm_api",
        {"method": "GET", "path": "/api/v4/leads", "query": {"limit": 25}},
    )
    assert not error, result
    assert result["status"] == 200 and result["entity"] == "leads" and result["count"] == 25
    assert result["has_more"] is True and result["next_page"] == 2
    for item in result["items"]:
        assert sandbox.amocrm.leads[item["id"]]["name"] == item["name"]
    cached = {row["id"] for row in store.query("SELECT id FROM amocrm_leads")}
    assert cached == {item["id"] for item in result["items"]}


@pytest.mark.anyio
async def test_all_pages_of_contacts(client, sandbox, store):
    """A model following `resume` (or `next_page`) sees every contact once, in few calls."""
    arguments = {
        "path": "/api/v4/contacts",
        "query": {"limit": 100},
        "all_pages": True,
        "max_pages": 50,
    }
    seen, calls = [], 0
    while True:
        error, result = await call(client, "call_amocrm_api", arguments)
        calls += 1
        assert not error, result
        seen.extend(item["id"] for item in result["items"])
        if not result["has_more"]:
            break
        if "resume" in result:
            resume = result["resume"]
            arguments = {**arguments, "query": resume["query"], "skip": resume["skip"]}
        else:
            arguments = {
                **arguments,
                "query": {"limit": 100, "page": result["next_page"]},
                "skip": 0,
            }
    assert sorted(seen) == sorted(sandbox.amocrm.contacts)
    assert calls <= 12
    ids = [row["id"] for row in store.query("SELECT id FROM amocrm_contacts")]
    assert len(ids) == len(set(ids)) == len(sandbox.amocrm.contacts)


@pytest.mark.anyio
async def test_cut_answer_resumes_exactly_after_the_last_item_shown(client, sandbox):
    arguments = {"path": "/api/v4/leads", "query": {"limit": 250}}
    error, first = await call(client, "call_amocrm_api", arguments)
    assert not error, first
    assert first["truncated"] is True and first["count"] < first["fetched"] == 250
    resume = first["resume"]
    assert resume["query"]["limit"] == 250  # no shrinking to tiny pages
    error, second = await call(
        client,
        "call_amocrm_api",
        {"path": "/api/v4/leads", "query": resume["query"], "skip": resume["skip"]},
    )
    assert not error, second
    everything = sorted(sandbox.amocrm.leads)
    shown = [item["id"] for item in first["items"]]
    assert shown == everything[: len(shown)]
    assert second["items"][0]["id"] == everything[len(shown)]


@pytest.mark.anyio
async def test_single_object_post_to_a_collection_is_wrapped(client, sandbox):
    error, result = await call(
        client,
        "call_amocrm_api",
        {"method": "POST", "path": "/api/v4/leads", "body": {"name": "Одиночная сделка"}},
    )
    assert not error, result
    created = (
        result["data"]["_embedded"]["leads"][0]["id"]
        if "data" in result
        else result["items"][0]["id"]
    )
    assert sandbox.amocrm.leads[created]["name"] == "Одиночная сделка"
    assert any("one-item array" in note for note in result["notes"])


@pytest.mark.anyio
async def test_iso_dates_in_time_filters_become_unix_seconds(client, sandbox):
    day = dt.datetime.fromtimestamp(sandbox.data.now, MOSCOW).date() - dt.timedelta(days=30)
    error, result = await call(
        client,
        "call_amocrm_api",
        {
            "path": "/api/v4/leads",
            "query": {"filter[created_at][from]": day.isoformat(), "limit": 250},
            "all_pages": True,
        },
    )
    assert not error, result
    start = int(dt.datetime.combine(day, dt.time(), MOSCOW).timestamp())
    expected = {i for i, lead in sandbox.amocrm.leads.items() if lead["created_at"] >= start}
    assert 0 < result.get("fetched", result["count"]) == len(expected)
    assert any("Unix seconds" in note for note in result["notes"])


@pytest.mark.anyio
async def test_pipelines_with_statuses_are_cached(client, sandbox, store):
    error, result = await call(client, "call_amocrm_api", {"path": "/api/v4/leads/pipelines"})
    assert not error, result
    assert {p["id"] for p in result["items"]} == set(sandbox.amocrm.pipelines)
    won = list(store.query("SELECT pipeline_id FROM amocrm_statuses WHERE id = 142"))
    assert len(won) == len(sandbox.amocrm.pipelines)


@pytest.mark.anyio
async def test_empty_search_is_an_empty_result(client):
    error, result = await call(
        client,
        "call_amocrm_api",
        {"path": "/api/v4/contacts", "query": {"query": "Несуществующий Человек Zzyzx"}},
    )
    assert not error, result
    assert result["status"] == 204 and result["items"] == []


@pytest.mark.anyio
async def test_lead_status_filter(client, sandbox):
    pipeline = next(iter(sandbox.amocrm.pipelines.values()))
    query = {
        "filter": {"statuses": [{"pipeline_id": pipeline["id"], "status_id": 142}]},
        "limit": 250,
    }
    error, result = await call(
        client, "call_amocrm_api", {"path": "/api/v4/leads", "query": query, "all_pages": True}
    )
    assert not error, result
    expected = {
        lead["id"]
        for lead in sandbox.amocrm.leads.values()
        if lead["pipeline_id"] == pipeline["id"] and lead["status_id"] == 142
    }
    assert {item["id"] for item in result.get("items", [])} == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"path": "https://evil.com/api/v4/leads"}, "not a URL"),
        ({"path": "/api/v4/leads?limit=5"}, "query string"),
        ({"path": "/oauth2/access_token", "method": "POST", "body": {}}, "OAuth"),
        ({"path": "/api/v4/leads", "query": {"filter[status_id]": 142}}, "filter[statuses]"),
        ({"path": "/api/v4/leads", "method": "POST"}, "needs a body"),
        ({"path": "/api/v4/nothing/here"}, "404"),
    ],
)
async def test_bad_amocrm_requests_explain_the_fix(client, arguments, expected):
    error, text = await call(client, "call_amocrm_api", arguments)
    assert error and expected in text


@pytest.mark.anyio
async def test_validation_errors_reach_the_model(client):
    error, text = await call(
        client,
        "call_amocrm_api",
        {
            "method": "POST",
            "path": "/api/v4/leads",
            "body": [{"name": "x", "pipeline_id": 1, "status_id": 2}],
        },
    )
    assert error and "item 0" in text and "request id" in text


def unused_phone(sandbox, start: int) -> str:
    taken = {
        phones.last10(v) for c in sandbox.amocrm.contacts.values() for v in field_values(c, "PHONE")
    }
    number = start
    while str(number) in taken:
        number += 1
    return str(number)


@pytest.mark.anyio
async def test_forward_new_contact_creates_lead_contact_and_note(client, sandbox, mode, store):
    national = unused_phone(sandbox, 9990001000 if mode == "legacy" else 9990002000)
    leads_before = len(sandbox.amocrm.leads)
    error, result = await call(
        client,
        "forward_lead_to_amocrm",
        {
            "name": "Пётр Сидоров",
            "phone": f"8 ({national[:3]}) {national[3:6]}-{national[6:]}",
            "email": "",
            "message": "Хочу узнать цену",
            "source": "site form",
            "price": 15000,
            "tags": ["web"],
            "external_id": f"form-{mode}-1",
        },
    )
    assert not error, result
    assert result["contact_existed"] is False and result["duplicate"] is False
    assert len(sandbox.amocrm.leads) == leads_before + 1
    lead = sandbox.amocrm.leads[result["lead_id"]]
    assert lead["price"] == 15000
    contact = sandbox.amocrm.contacts[result["contact_id"]]
    assert field_values(contact, "PHONE") == ["+7" + national]
    assert result["lead_url"].endswith(f"/leads/detail/{result['lead_id']}")
    notes = [n for n in sandbox.amocrm.notes.values() if n.get("entity_id") == result["lead_id"]]
    assert any("Хочу узнать цену" in json.dumps(n, ensure_ascii=False) for n in notes)
    row = store.forwarding(result["forwarding_id"])
    assert row["status"] == "delivered" and row["lead_id"] == result["lead_id"]

    again = await call(
        client,
        "forward_lead_to_amocrm",
        {"name": "Пётр Сидоров", "phone": "+7" + national, "external_id": f"form-{mode}-1"},
    )
    assert again[1]["duplicate"] is True and again[1]["lead_id"] == result["lead_id"]
    assert len(sandbox.amocrm.leads) == leads_before + 1


@pytest.mark.anyio
async def test_forward_reuses_contact_whatever_the_phone_format(client, sandbox):
    contact = next(c for c in sandbox.amocrm.contacts.values() if field_values(c, "PHONE"))
    national = phones.last10(field_values(contact, "PHONE")[0])
    contacts_before = len(sandbox.amocrm.contacts)
    for form in (f"8 {national}", f"+7 ({national[:3]}) {national[3:]}"):
        error, result = await call(
            client, "forward_lead_to_amocrm", {"name": "Другое Имя", "phone": form}
        )
        assert not error, result
        assert result["contact_existed"] is True
        owners = {
            c["id"]
            for c in sandbox.amocrm.contacts.values()
            if any(phones.last10(v) == national for v in field_values(c, "PHONE"))
        }
        assert result["contact_id"] in owners
    assert len(sandbox.amocrm.contacts) == contacts_before
    assert sandbox.amocrm.contacts[contact["id"]]["name"] == contact["name"]  # never overwritten


@pytest.mark.anyio
async def test_search_hit_through_another_field_is_not_a_match(client, sandbox):
    def texts(c):
        return [
            str(v.get("value"))
            for f in c.get("custom_fields_values") or []
            if f.get("field_code") not in ("PHONE", "EMAIL")
            for v in f.get("values") or []
        ]

    owners = {
        phones.last10(v): c["id"]
        for c in sandbox.amocrm.contacts.values()
        for v in field_values(c, "PHONE")
    }
    decoy = None
    for candidate in sandbox.amocrm.contacts.values():
        for text in texts(candidate):
            for tail, owner in owners.items():
                if tail and tail in phones.digits(text) and owner != candidate["id"]:
                    decoy = (candidate["id"], tail, owner)
    assert decoy is not None, "the sandbox must seed a number inside an unrelated field"
    decoy_id, tail, owner = decoy
    error, result = await call(client, "forward_lead_to_amocrm", {"name": "X", "phone": "8" + tail})
    assert not error, result
    assert result["contact_id"] != decoy_id
    assert result["contact_existed"] is True


@pytest.mark.anyio
async def test_forward_needs_phone_or_email(client):
    error, text = await call(client, "forward_lead_to_amocrm", {"name": "Без контактов"})
    assert error and "phone or email" in text
    error, text = await call(client, "forward_lead_to_amocrm", {"phone": "12"})
    assert error and "not a valid phone number" in text


async def raw_calls(sandbox, params):
    """Every call of a calls.list walk, read straight from the emulator over HTTP."""
    env = sandbox.env
    found, offset = [], 0
    async with httpx.AsyncClient() as http:
        while True:
            body = {
                "user_name": env["MOIZVONKI_USER"],
                "api_key": env["MOIZVONKI_API_KEY"],
                "action": "calls.list",
                "supervised": 1,
                "max_results": 100,
                "from_offset": offset,
                **params,
            }
            page = (await http.post(env["MOIZVONKI_BASE_URL"], json=body)).json()
            found.extend(page["results"])
            if not page["results"] or not page["results_next_offset"]:
                return found
            offset = page["results_next_offset"]


@pytest.mark.anyio
async def test_calls_list_matches_emulator_and_is_cached(client, sandbox, store):
    since = int(sandbox.data.now) - 3 * 86400
    error, result = await call(
        client,
        "call_moizvonki_api",
        {
            "action": "calls.list",
            "params": {"from_date": since},
            "all_pages": True,
            "max_pages": 100,
        },
    )
    assert not error, result
    expected = await raw_calls(sandbox, {"from_date": since})
    expected_ids = [c["db_call_id"] for c in expected]
    shown = [c["db_call_id"] for c in result["results"]]
    assert result.get("fetched", result["count"]) == len(expected)
    if result.get("truncated"):  # a long answer is cut for the model, never for the store
        assert shown == expected_ids[: len(shown)] and "cut to" in result["notes"][-1]
        assert result["next_offset"] == len(shown) and result["has_more"] is True
    else:
        assert shown == expected_ids
    assert result["results"][0]["user_account"]  # supervised=1 brings the owner fields
    cached = [r["db_call_id"] for r in store.query("SELECT db_call_id FROM moizvonki_calls")]
    assert sorted(cached) == sorted(expected_ids)


@pytest.mark.anyio
async def test_moizvonki_text_answer_and_unknown_param(client, sandbox):
    error, result = await call(
        client,
        "call_moizvonki_api",
        {
            "action": "calls.send_sms",
            "params": {"to": "+79161234567", "text": "Здравствуйте"},
            "employee": sandbox.moizvonki_user,
        },
    )
    assert not error, result
    assert result["answer"] == {"message": "SMS posted"}
    error, text = await call(
        client,
        "call_moizvonki_api",
        {"action": "calls.list", "params": {"from_id": 1, "results_offset": 100}},
    )
    assert error and "results_offset" in text and "from_offset" in text


def expected_totals(calls, first: dt.date, last: dt.date):
    def day(call):
        return dt.datetime.fromtimestamp(int(call["start_time"]), MOSCOW).date()

    inside = [c for c in calls if first <= day(c) <= last]
    answered = [c for c in inside if int(c["answered"]) == 1]
    return {
        "total_calls": len(inside),
        "incoming": sum(1 for c in inside if int(c["direction"]) == 0),
        "outgoing": sum(1 for c in inside if int(c["direction"]) == 1),
        "answered": len(answered),
        "missed": len(inside) - len(answered),
        "total_duration_seconds": sum(int(c["duration"]) for c in answered),
    }


@pytest.mark.anyio
async def test_analytics_equal_an_independent_count(client, sandbox):
    today = dt.datetime.fromtimestamp(sandbox.data.now, MOSCOW).date()
    first, last = today - dt.timedelta(days=9), today - dt.timedelta(days=1)
    error, result = await call(
        client,
        "get_moizvonki_analytics",
        {"date_from": first.isoformat(), "date_to": last.isoformat()},
    )
    assert not error, result
    since = int(dt.datetime.combine(first, dt.time(), MOSCOW).timestamp())
    calls = await raw_calls(sandbox, {"from_date": since - 86400})
    expected = expected_totals(calls, first, last)
    assert expected["total_calls"] > 50
    assert {key: result[key] for key in expected} == expected
    assert len(result["by_day"]) == 9
    assert sum(d["total_calls"] for d in result["by_day"].values()) == expected["total_calls"]
    assert sum(e["total_calls"] for e in result["by_employee"]) == expected["total_calls"]
    assert result["period"]["timezone"] == "Europe/Moscow" and result["synced_at"]


EVERY_BREAKDOWN = ["by_day", "by_hour", "by_weekday", "by_month", "by_employee", "top_clients"]


@pytest.mark.anyio
async def test_every_analytics_figure_equals_the_raw_calls(client, sandbox):
    """Several periods and filters; each figure recomputed from calls.list pages by the plain
    definitions (tests/call_stats.py), in the business time zone."""
    now = sandbox.data.now
    today = dt.datetime.fromtimestamp(now, MOSCOW).date()
    raw = await raw_calls(sandbox, {"from_date": int(now) - 45 * 86400})
    recent = [c for c in raw if c["start_time"] >= now - 30 * 86400 and c["client_number"]]
    frequent = Counter(phones.last10(c["client_number"]) for c in recent).most_common(1)[0][0]
    person = sandbox.data.employees[2]
    cases = [
        ({"period": "last_7_days", "include": EVERY_BREAKDOWN}, {}),
        ({"period": "last_week", "compare_to": "previous_period"}, {}),
        (
            {
                "date_from": (today - dt.timedelta(days=20)).isoformat(),
                "date_to": (today - dt.timedelta(days=10)).isoformat(),
                "employee": person.display_name,
                "include": EVERY_BREAKDOWN,
            },
            {"accounts": {person.email}},
        ),
        (
            {
                "date_from": f"{today - dt.timedelta(days=3)}T09:30",
                "date_to": f"{today - dt.timedelta(days=1)}T18:00",
                "direction": "incoming",
                "include": ["by_day", "by_hour", "by_employee"],
                "callback_window_hours": 2,
            },
            {"direction": 0, "window_hours": 2},
        ),
        (
            {
                "period": "last_30_days",
                "client": f"8 ({frequent[:3]}) {frequent[3:6]}-{frequent[6:8]}-{frequent[8:]}",
                "include": EVERY_BREAKDOWN,
            },
            {"client": frequent},
        ),
    ]
    for arguments, options in cases:
        error, result = await call(client, "get_moizvonki_analytics", arguments)
        assert not error, (arguments, result)
        period = result["period"]
        start = int(dt.datetime.fromisoformat(period["start"]).timestamp())
        end = int(dt.datetime.fromisoformat(period["end"]).timestamp())
        wanted = call_stats.expected(raw, start, end, MOSCOW, **options)
        assert wanted["total_calls"] > 0, arguments
        for key, value in wanted.items():
            if key == "by_employee":
                shown = {e["user_account"] or "": e for e in result["by_employee"]}
                assert set(shown) == set(value)
                for account, entry in value.items():
                    assert {k: shown[account][k] for k in entry} == entry, account
            elif key in result:
                assert result[key] == value, (arguments, key)
        if "compare_to" in arguments:
            before = result["previous_period"]
            earlier = int(dt.datetime.fromisoformat(before["period"]["start"]).timestamp())
            previous = call_stats.expected(raw, earlier, start, MOSCOW, **options)
            assert {k: before[k] for k in ("total_calls", "not_called_back", "unique_clients")} == {
                k: previous[k] for k in ("total_calls", "not_called_back", "unique_clients")
            }


@pytest.mark.anyio
async def test_analytics_default_is_today_and_resync_is_incremental(client, sandbox):
    error, result = await call(client, "get_moizvonki_analytics", {})
    assert not error, result
    today = dt.datetime.fromtimestamp(sandbox.data.now, MOSCOW).date().isoformat()
    assert result["period"]["date_from"] == result["period"]["date_to"] == today


@pytest.mark.anyio
async def test_analytics_bad_dates(client):
    error, text = await call(client, "get_moizvonki_analytics", {"date_from": "yesterday"})
    assert error and "ISO date" in text


@pytest.mark.anyio
async def test_concurrent_forwards_of_one_new_person_make_one_contact(client, sandbox, mode):
    national = unused_phone(sandbox, 9990005000 if mode == "legacy" else 9990006000)
    forms = [f"+7 {national}", f"8 ({national[:3]}) {national[3:]}", national]
    results = []

    async def forward(phone, name):
        results.append(await call(client, "forward_lead_to_amocrm", {"name": name, "phone": phone}))

    # Three different requests (names differ), so three deals, but one person: one contact.
    async with anyio.create_task_group() as group:
        for phone, name in zip(forms, ("Ольга", "Ольга П.", "Ольга Петрова"), strict=True):
            group.start_soon(forward, phone, name)
    assert all(not error for error, _ in results), results
    assert sum(not r["contact_existed"] for _, r in results) == 1
    assert len({r["contact_id"] for _, r in results}) == 1
    assert len({r["lead_id"] for _, r in results}) == 3
    holders = [
        c
        for c in sandbox.amocrm.contacts.values()
        if any(phones.last10(v) == national for v in field_values(c, "PHONE"))
    ]
    assert len(holders) == 1


@pytest.mark.anyio
async def test_deleted_employee_calls_leave_the_analytics(tmp_path):
    with Sandbox(seed=11, calls=600, days=10) as own:
        env = {key.lower(): value for key, value in own.env.items()}
        settings = Settings(
            _env_file=None, db_path=tmp_path / "t.db", allow_destructive=True, **env
        )
        async with Client(create_server(settings, store=Store()), mode="legacy") as client:
            first = dt.datetime.fromtimestamp(own.data.now, MOSCOW).date() - dt.timedelta(days=5)
            period = {"date_from": first.isoformat()}
            error, before = await call(client, "get_moizvonki_analytics", period)
            assert not error, before
            manager = own.moizvonki_manager_user
            error, deleted = await call(
                client,
                "call_moizvonki_api",
                {"action": "company.delete_employee", "params": {"employee_user_name": manager}},
            )
            assert not error, deleted
            assert deleted["calls_removed_from_store"] > 0
            error, after = await call(client, "get_moizvonki_analytics", period)
            assert not error, after
            since = int(dt.datetime.combine(first, dt.time(), MOSCOW).timestamp())
            expected = expected_totals(
                await raw_calls(own, {"from_date": since}),
                first,
                dt.datetime.fromtimestamp(own.data.now, MOSCOW).date(),
            )
            assert after["total_calls"] == expected["total_calls"] < before["total_calls"]


@pytest.mark.anyio
async def test_sms_to_a_bad_number_is_refused_before_sending(client, sandbox):
    sent = len(sandbox.moizvonki.sms)
    error, text = await call(
        client,
        "call_moizvonki_api",
        {"action": "calls.send_sms", "params": {"to": "+7916", "text": "hi"}},
    )
    assert error and "not a valid phone number" in text
    assert len(sandbox.moizvonki.sms) == sent


@pytest.mark.anyio
async def test_progress_values_only_increase(sandbox_settings, store):
    seen = []

    async def on_progress(progress, total, message):
        seen.append(progress)

    async with Client(create_server(sandbox_settings, store=store), mode="legacy") as client:
        result = await client.call_tool(
            "call_amocrm_api",
            {"path": "/api/v4/contacts", "query": {"limit": 10}, "all_pages": True, "max_pages": 5},
            progress_callback=on_progress,
        )
    assert not result.is_error
    assert len(seen) >= 2 and seen == sorted(set(seen))


@pytest.mark.anyio
async def test_retry_waits_and_pages_never_send_a_smaller_progress():
    from tariti_mcp.server import _progress

    sent = []

    class FakeContext:
        async def report_progress(self, progress, total, message):
            sent.append((progress, total))

    report = _progress(FakeContext())
    await report(0, None, "waiting")  # a retry wait
    await report(0, None, "waiting again")
    await report(1, 10, "page 1")
    await report(5, 10, "page 5")
    await report(0, None, "waiting")
    assert [p for p, _ in sent] == [0, 1, 2, 5, 6]


@pytest.mark.anyio
async def test_wrong_argument_types_read_as_what_to_fix_not_as_pydantic_output(client):
    """A newcomer's find: a wrong type came back as pydantic's multi-line report with a
    documentation URL; the model needs the argument, the problem and what it sent."""
    error, text = await call(
        client,
        "get_moizvonki_analytics",
        {"include": ["by_day", "per_week"], "top_clients_limit": "x"},
    )
    assert error
    assert text.startswith("invalid arguments for get_moizvonki_analytics: ")
    assert "include.1: Input should be 'by_day'" in text and '(got "per_week")' in text
    assert "top_clients_limit: " in text and '(got "x")' in text
    assert "https://" not in text and "\n" not in text and "type=" not in text
    error, text = await call(client, "call_amocrm_api", {})
    assert error and text == (
        "invalid arguments for call_amocrm_api: path: Field required. Fix them and call again."
    )


@pytest.mark.anyio
async def test_an_unknown_amocrm_path_lists_the_paths_there_are(client):
    """A newcomer's find: a mistyped path got "No such API method. Check the path and the id"
    and nothing to pick from."""
    error, text = await call(client, "call_amocrm_api", {"path": "/api/v4/leadz"})
    assert error and "404" in text
    assert "/api/v4/leads, /api/v4/leads/{id}, /api/v4/contacts" in text
