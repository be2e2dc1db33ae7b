"""Resources and prompts through the in-memory MCP client, against the sandbox emulators."""

from __future__ import annotations

import json
import logging
import re

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS

from tariti_mcp.config import Settings
from tariti_mcp.sandbox import Sandbox
from tariti_mcp.server import create_server
from tariti_mcp.store import Store

STATIC = [
    "amocrm://account",
    "amocrm://pipelines",
    "amocrm://users",
    "moizvonki://employees",
    "tariti://sync-state",
]
TEMPLATES = [
    "amocrm://custom-fields/{entity}",
    "amocrm://leads/{lead_id}",
    "amocrm://contacts/{contact_id}",
]


@pytest.fixture(params=["legacy", "auto"])
def mode(request):
    return request.param


@pytest.fixture
def store():
    database = Store()
    yield database
    database.close()


@pytest.fixture
async def client(sandbox_settings, store):
    async with Client(create_server(sandbox_settings, store=store)) as connected:
        yield connected


@pytest.fixture(scope="module")
def own_sandbox():
    """A small sandbox of this module's own, for tests that change the emulators' state."""
    with Sandbox(seed=11, calls=40, days=2) as running:
        yield running


def settings_for(sandbox, tmp_path, **overrides) -> Settings:
    env = {key.lower(): value for key, value in sandbox.env.items()}
    env.update(overrides)
    return Settings(_env_file=None, db_path=tmp_path / "tariti.db", **env)


async def read(client, uri):
    # bypass: the client's own response cache must not hide a request from these tests.
    result = await client.read_resource(uri, cache_mode="bypass")
    (content,) = result.contents
    assert content.mime_type == "application/json"
    return json.loads(content.text)


def amocrm_requests(sandbox, path, since=0):
    return [r for r in sandbox.amocrm.requests[since:] if r[1] == path]


# --- listing ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_resources_and_templates_are_listed_in_both_eras(sandbox_settings, store, mode):
    async with Client(create_server(sandbox_settings, store=store), mode=mode) as client:
        resources = (await client.list_resources()).resources
        templates = (await client.list_resource_templates()).resource_templates
        account = await read(client, "amocrm://account")
    assert sorted(str(r.uri) for r in resources) == sorted(STATIC)
    assert sorted(t.uri_template for t in templates) == sorted(TEMPLATES)
    for item in [*resources, *templates]:
        assert item.mime_type == "application/json"
        assert item.title and item.description
    assert account["subdomain"] == "tariti-sandbox"


# --- amoCRM ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_account_shows_the_emulators_account_and_time_zone(client, sandbox):
    account = await read(client, "amocrm://account")
    seeded = sandbox.amocrm.account
    for key in ("id", "name", "subdomain", "currency", "country"):
        assert account[key] == seeded[key]
    assert account["timezone"] == "Europe/Moscow"
    assert "_links" not in account


@pytest.mark.anyio
async def test_pipelines_are_the_emulators_and_a_second_read_sends_nothing(client, sandbox):
    before = len(sandbox.amocrm.requests)
    first = await read(client, "amocrm://pipelines")
    assert len(amocrm_requests(sandbox, "/api/v4/leads/pipelines", before)) == 1

    seeded = sandbox.amocrm.pipelines
    assert {p["id"]: p["name"] for p in first["pipelines"]} == {
        pipeline_id: pipeline["name"] for pipeline_id, pipeline in seeded.items()
    }
    for pipeline in first["pipelines"]:
        statuses = seeded[pipeline["id"]]["_embedded"]["statuses"]
        assert {s["id"]: s["name"] for s in pipeline["statuses"]} == {
            s["id"]: s["name"] for s in statuses
        }
        assert {142, 143} <= {s["id"] for s in pipeline["statuses"]}
        assert pipeline["is_main"] == bool(seeded[pipeline["id"]]["is_main"])
    assert sum(p["is_main"] for p in first["pipelines"]) == 1

    after_first = len(sandbox.amocrm.requests)
    second = await read(client, "amocrm://pipelines")
    assert sandbox.amocrm.requests[after_first:] == []
    assert second["pipelines"] == first["pipelines"]


@pytest.mark.anyio
async def test_users_are_the_emulators(client, sandbox):
    users = (await read(client, "amocrm://users"))["users"]
    assert {(u["id"], u["name"], u["email"]) for u in users} == {
        (u["id"], u["name"], u["email"]) for u in sandbox.amocrm.users.values()
    }
    before = len(sandbox.amocrm.requests)
    await read(client, "amocrm://users")
    assert sandbox.amocrm.requests[before:] == []


@pytest.mark.anyio
@pytest.mark.parametrize("entity", ["leads", "contacts", "companies"])
async def test_custom_fields_are_the_emulators_and_kept(client, sandbox, entity):
    path = f"/api/v4/{entity}/custom_fields"
    before = len(sandbox.amocrm.requests)
    answer = await read(client, f"amocrm://custom-fields/{entity}")
    assert len(amocrm_requests(sandbox, path, before)) == 1

    seeded = sandbox.amocrm.custom_fields[entity]
    assert answer["entity"] == entity and answer["count"] == len(seeded)
    for field in answer["fields"]:
        definition = seeded[field["id"]]
        assert (field["name"], field["code"], field["type"]) == (
            definition["name"],
            definition["code"],
            definition["type"],
        )
        wanted = [{"id": e["id"], "value": e["value"]} for e in definition["enums"] or []]
        assert field.get("enums", []) == wanted

    again = len(sandbox.amocrm.requests)
    await read(client, f"amocrm://custom-fields/{entity}")
    assert sandbox.amocrm.requests[again:] == []


@pytest.mark.anyio
async def test_custom_fields_walk_every_page(own_sandbox, tmp_path):
    fields = own_sandbox.amocrm.custom_fields["companies"]
    for number in range(120):
        field_id = 990_000 + number
        fields[field_id] = {
            "id": field_id,
            "name": f"Поле {number}",
            "code": None,
            "type": "text",
            "sort": 1000 + number,
            "enums": None,
            "entity_type": "companies",
        }
    server = create_server(settings_for(own_sandbox, tmp_path), store=Store())
    before = len(own_sandbox.amocrm.requests)
    async with Client(server) as client:
        answer = await read(client, "amocrm://custom-fields/companies")
    assert answer["count"] == len(fields) > 120
    assert {f["id"] for f in answer["fields"]} == set(fields)
    pages = amocrm_requests(own_sandbox, "/api/v4/companies/custom_fields", before)
    assert len(pages) == 3  # 50 a page, whatever the limit asked


@pytest.mark.anyio
async def test_unknown_entity_names_the_valid_ones(client):
    with pytest.raises(MCPError) as caught:
        await read(client, "amocrm://custom-fields/deals")
    assert caught.value.code == INVALID_PARAMS
    message = caught.value.message
    assert "'deals'" in message
    for uri in ("custom-fields/leads", "custom-fields/contacts", "custom-fields/companies"):
        assert uri in message


@pytest.mark.anyio
async def test_lead_comes_fresh_with_its_contacts_and_is_stored(client, sandbox, store):
    lead_id = next(i for i, lead in sandbox.amocrm.leads.items() if lead["_embedded"]["contacts"])
    seeded = sandbox.amocrm.leads[lead_id]
    lead = await read(client, f"amocrm://leads/{lead_id}")
    assert (lead["id"], lead["name"], lead["status_id"]) == (
        lead_id,
        seeded["name"],
        seeded["status_id"],
    )
    contacts = {c["id"] for c in lead["_embedded"]["contacts"]}
    assert contacts == {c["id"] for c in seeded["_embedded"]["contacts"]}
    assert "_links" not in json.dumps(lead)

    (row,) = store.query("SELECT name, contact_id FROM amocrm_leads WHERE id = ?", [lead_id])
    assert row["name"] == seeded["name"] and row["contact_id"] in contacts

    before = len(sandbox.amocrm.requests)
    await read(client, f"amocrm://leads/{lead_id}")
    assert len(amocrm_requests(sandbox, f"/api/v4/leads/{lead_id}", before)) == 1


@pytest.mark.anyio
async def test_contact_comes_fresh_and_is_stored(client, sandbox, store):
    contact_id, seeded = next(iter(sandbox.amocrm.contacts.items()))
    contact = await read(client, f"amocrm://contacts/{contact_id}")
    assert (contact["id"], contact["name"]) == (contact_id, seeded["name"])
    (row,) = store.query("SELECT name FROM amocrm_contacts WHERE id = ?", [contact_id])
    assert row["name"] == seeded["name"]


@pytest.mark.anyio
async def test_missing_lead_is_not_found(client, sandbox):
    missing = max(sandbox.amocrm.leads) + 1000
    with pytest.raises(MCPError) as caught:
        await read(client, f"amocrm://leads/{missing}")
    assert caught.value.code == INVALID_PARAMS  # what the SDK sends for ResourceNotFoundError
    assert caught.value.message == f"amoCRM has no lead with id {missing}"


@pytest.mark.anyio
@pytest.mark.parametrize("given", ["abc", "0", "12a", "1e5"])
async def test_an_id_that_is_not_a_number_is_a_clear_error(client, given):
    with pytest.raises(MCPError) as caught:
        await read(client, f"amocrm://contacts/{given}")
    assert caught.value.code == INVALID_PARAMS
    assert "contact id must be a positive whole number" in caught.value.message
    assert repr(given) in caught.value.message


@pytest.mark.anyio
async def test_stored_lists_serve_the_next_session_until_the_ttl(sandbox, tmp_path):
    settings = settings_for(sandbox, tmp_path)  # a file database, shared by both sessions
    async with Client(create_server(settings)) as client:
        await read(client, "amocrm://pipelines")
    before = len(sandbox.amocrm.requests)
    async with Client(create_server(settings)) as client:
        answer = await read(client, "amocrm://pipelines")
    assert sandbox.amocrm.requests[before:] == []
    assert len(answer["pipelines"]) == len(sandbox.amocrm.pipelines)

    expired = settings_for(sandbox, tmp_path, catalog_ttl=0)
    async with Client(create_server(expired)) as client:
        await read(client, "amocrm://pipelines")
    assert len(amocrm_requests(sandbox, "/api/v4/leads/pipelines", before)) == 1


@pytest.mark.anyio
async def test_a_blocked_account_serves_the_stored_copy_or_a_clear_error(own_sandbox, tmp_path):
    store = Store()
    expired = settings_for(own_sandbox, tmp_path, catalog_ttl=0)
    try:
        async with Client(create_server(expired, store=store)) as client:
            await read(client, "amocrm://pipelines")
            own_sandbox.amocrm.blocked = True
            stale = await read(client, "amocrm://pipelines")
            with pytest.raises(MCPError) as caught:
                await read(client, "amocrm://users")
    finally:
        own_sandbox.amocrm.blocked = False
        store.close()
    assert len(stale["pipelines"]) == len(own_sandbox.amocrm.pipelines)
    assert "could not be read now (the account is blocked)" in stale["notes"][0]
    message = caught.value.message
    assert caught.value.code == INTERNAL_ERROR
    assert "blocked" in message and "amoCRM support" in message
    assert "<" not in message  # the HTML page stays out


# --- Moizvonki ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_employees_come_from_moizvonki_then_from_the_store(client, sandbox):
    before = len(sandbox.moizvonki.requests)
    answer = await read(client, "moizvonki://employees")
    listed = [r for r in sandbox.moizvonki.requests[before:] if r[0] == "company.list_employee"]
    assert listed and all(status == 200 for _, status in listed)
    assert {(e["id"], e["display_name"], e["email"]) for e in answer["employees"]} == {
        (e.id, e.display_name, e.email) for e in sandbox.moizvonki.employees.values()
    }
    assert answer["count"] == len(sandbox.moizvonki.employees)
    assert "warnings" not in answer

    again = len(sandbox.moizvonki.requests)
    await read(client, "moizvonki://employees")
    assert sandbox.moizvonki.requests[again:] == []


@pytest.mark.anyio
async def test_employees_say_when_the_key_is_not_an_administrators(sandbox, tmp_path):
    settings = settings_for(
        sandbox,
        tmp_path,
        moizvonki_user=sandbox.moizvonki_manager_user,
        moizvonki_api_key=sandbox.moizvonki_manager_key,
    )
    async with Client(create_server(settings, store=Store())) as client:
        answer = await read(client, "moizvonki://employees")
    assert answer["employees"] == []
    (warning,) = answer["warnings"]
    assert "not an administrator's" in warning and sandbox.moizvonki_manager_user in warning


# --- the store and settings -------------------------------------------------------------------


@pytest.mark.anyio
async def test_sync_state_lists_streams_and_row_counts(client, sandbox):
    await read(client, "amocrm://pipelines")
    await read(client, "moizvonki://employees")
    state = await read(client, "tariti://sync-state")
    streams = {s["name"]: s for s in state["streams"]}
    assert {"amocrm.pipelines", "moizvonki.employees"} <= set(streams)
    assert streams["amocrm.pipelines"]["last_synced_at"] <= state["now"]
    assert streams["amocrm.pipelines"]["last_error"] is None
    rows = state["rows"]
    assert rows["amocrm_pipelines"] == len(sandbox.amocrm.pipelines)
    assert rows["amocrm_statuses"] == sum(
        len(p["_embedded"]["statuses"]) for p in sandbox.amocrm.pipelines.values()
    )
    assert rows["moizvonki_employees"] == len(sandbox.moizvonki.employees)
    assert not any("token" in table for table in rows)


@pytest.mark.anyio
async def test_a_service_not_configured_names_the_settings_to_set(tmp_path):
    settings = Settings(_env_file=None, db_path=tmp_path / "tariti.db")
    async with Client(create_server(settings, store=Store())) as client:
        with pytest.raises(MCPError) as amocrm:
            await read(client, "amocrm://pipelines")
        with pytest.raises(MCPError) as lead:
            await read(client, "amocrm://leads/1")
        with pytest.raises(MCPError) as moizvonki:
            await read(client, "moizvonki://employees")
        state = await read(client, "tariti://sync-state")
    assert "amoCRM is not configured" in amocrm.value.message
    assert "AMOCRM_BASE_URL" in amocrm.value.message
    assert "amoCRM is not configured" in lead.value.message
    assert "Moizvonki is not configured" in moizvonki.value.message
    assert "MOIZVONKI_API_KEY" in moizvonki.value.message
    assert state["rows"]["moizvonki_calls"] == 0


@pytest.mark.anyio
async def test_no_secret_in_any_resource(sandbox_settings, store, sandbox, mode):
    secrets = [sandbox.amocrm_token, sandbox.moizvonki_key]
    lead_id = next(iter(sandbox.amocrm.leads))
    contact_id = next(iter(sandbox.amocrm.contacts))
    uris = [
        *STATIC,
        "amocrm://custom-fields/leads",
        f"amocrm://leads/{lead_id}",
        f"amocrm://contacts/{contact_id}",
        "amocrm://leads/abc",
        "amocrm://custom-fields/nope",
    ]
    texts = []
    async with Client(create_server(sandbox_settings, store=store), mode=mode) as client:
        for uri in uris:
            try:
                texts.append((await client.read_resource(uri)).contents[0].text)
            except MCPError as exc:
                texts.append(exc.message)
    assert len(texts) == len(uris)
    for text in texts:
        for secret in secrets:
            assert secret not in text


# --- prompts -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_prompts_are_listed_with_their_arguments(sandbox_settings, store, mode):
    async with Client(create_server(sandbox_settings, store=store), mode=mode) as client:
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
    assert set(prompts) == {
        "daily_call_report",
        "missed_calls_follow_up",
        "forward_lead_from_message",
    }
    arguments = {
        name: {(a.name, bool(a.required)) for a in prompt.arguments}
        for name, prompt in prompts.items()
    }
    assert arguments == {
        "daily_call_report": {("date", False), ("employee", False)},
        "missed_calls_follow_up": {("period", False)},
        "forward_lead_from_message": {("message", True), ("source", False)},
    }
    assert all(p.description and p.title for p in prompts.values())
    assert all(a.description for p in prompts.values() for a in p.arguments)


async def render(client, name, arguments):
    result = await client.get_prompt(name, arguments)
    (message,) = result.messages
    assert message.role == "user"
    return message.content.text


@pytest.mark.anyio
async def test_daily_call_report_names_the_day_and_the_breakdowns(client):
    text = await render(client, "daily_call_report", {"date": "2026-05-14", "employee": "Анна"})
    assert 'date_from="2026-05-14" and date_to="2026-05-14"' in text
    assert 'employee="Анна"' in text
    assert '"by_employee", "by_hour"' in text and 'compare_to="previous_period"' in text
    today = await render(client, "daily_call_report", {})
    assert 'period="today"' in today and "employee=" not in today


@pytest.mark.anyio
async def test_missed_calls_follow_up_warns_about_make_call(client):
    text = await render(client, "missed_calls_follow_up", {"period": "yesterday"})
    assert 'period="yesterday"' in text and '"waiting_clients"' in text
    assert "calls.list" not in text  # its answer is cut: the model cannot rebuild the list from it
    assert "employee=" in text and "Never repeat a make_call" in text


def _names(value, prefix=""):
    """Every key of an answer, bare and as a dotted path, through lists of entries."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield f"{prefix}{key}"
            yield from _names(item, f"{prefix}{key}.")
    elif isinstance(value, list):
        for item in value:
            yield from _names(item, prefix)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("prompt", "arguments"),
    [("daily_call_report", {}), ("missed_calls_follow_up", {"period": "last_7_days"})],
)
async def test_every_answer_field_a_prompt_names_is_in_the_answer(client, prompt, arguments):
    """A newcomer's find: the daily report prompt pointed at `period.zone`, which no answer
    has (it is `period.timezone`)."""
    text = await render(client, prompt, arguments)
    include = json.loads(re.search(r"include=(\[[^\]]*\])", text).group(1))
    period = arguments.get("period", "today")
    result = await client.call_tool(
        "get_moizvonki_analytics",
        {"period": period, "include": include, "compare_to": "previous_period"},
    )
    assert not result.is_error, result.content[0].text
    names = set(_names(result.structured_content))
    # Present only when there is something to say.
    names |= {"warnings", "cut"}
    mentioned = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)?)`", text))
    assert mentioned, text
    assert mentioned <= names, mentioned - names


@pytest.mark.anyio
async def test_forward_lead_prompt_carries_the_message_and_dry_run_first(client):
    pasted = "Здравствуйте! Иван Петров, +7 916 123-45-67, хотим КП. utm_source=yandex"
    text = await render(
        client, "forward_lead_from_message", {"message": pasted, "source": "Telegram"}
    )
    assert pasted in text and "Source: Telegram" in text
    assert text.index("dry_run=true") < text.index("dry_run=false")
    assert "external_id" in text and "Never invent" in text


@pytest.mark.anyio
async def test_an_unknown_prompt_is_invalid_params_naming_the_prompts(
    sandbox_settings, store, caplog
):
    """A newcomer's find: an unknown prompt name came back as "Internal server error", with a
    traceback in the server's log. In read-only mode the forwarding prompt is such a name."""
    read_only = sandbox_settings.model_copy(update={"read_only": True})
    with caplog.at_level(logging.DEBUG):
        async with Client(create_server(read_only, store=store)) as client:
            with pytest.raises(MCPError) as caught:
                await client.get_prompt("daily_report", {})
            assert caught.value.code == INVALID_PARAMS
            assert caught.value.message == (
                "unknown prompt 'daily_report'; the prompts are: daily_call_report, "
                "missed_calls_follow_up"
            )
            with pytest.raises(MCPError) as caught:
                await client.get_prompt("forward_lead_from_message", {"message": "x"})
            assert caught.value.code == INVALID_PARAMS
            assert caught.value.message == (
                "forward_lead_from_message is not offered: this server is read-only "
                "(TARITI_READ_ONLY=true) and forwards no leads"
            )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("daily_call_report", {"date": "14.05.2026"}, "date must be an ISO date"),
        ("missed_calls_follow_up", {"period": "week"}, "period must be one of today"),
        ("forward_lead_from_message", {}, "needs the argument 'message'"),
        ("forward_lead_from_message", {"message": "  "}, "needs the argument 'message'"),
        # An adversary's finds: an unknown argument was an internal error with a traceback,
        # and a message of megabytes was echoed whole.
        ("daily_call_report", {"bogus": "1"}, "daily_call_report does not take 'bogus'"),
        ("forward_lead_from_message", {"message": "x" * 20_001}, "at most 20000"),
    ],
)
async def test_bad_prompt_arguments_are_clear_errors(client, name, arguments, expected):
    with pytest.raises(MCPError) as caught:
        await client.get_prompt(name, arguments)
    assert expected in caught.value.message
