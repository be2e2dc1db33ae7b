"""Writes are deliberate: read-only mode reaches neither emulator, destructive actions need the
flag, and make_call/send_sms act on the phone of the employee named, with that employee's key."""

from __future__ import annotations

import json
import logging
import os
import uuid
from contextlib import closing

import anyio
import pytest
from mcp import Client
from ports import closed_port

from tariti_mcp.amocrm.api import GuardedClient, call_api
from tariti_mcp.amocrm.client import AmoCrmClient
from tariti_mcp.amocrm.leads import prepare
from tariti_mcp.amocrm.outbox import Outbox
from tariti_mcp.cli import main
from tariti_mcp.config import Settings
from tariti_mcp.errors import InvalidArgument, WriteRefused
from tariti_mcp.http import RetryPolicy
from tariti_mcp.moizvonki.client import Login, MoizvonkiClient
from tariti_mcp.sandbox import Sandbox
from tariti_mcp.server import create_server, current_state
from tariti_mcp.store import Store

QUICK = RetryPolicy(attempts=1, first_wait=0.01, max_wait=0.01, total=1.0)
READS = ["calls.list", "calls.get_sms_templates", "webhook.list"]
READS += ["company.list_employee", "company.list_group"]
AMOCRM_WRITES = [
    ("POST", "/api/v4/leads", [{"name": "guarded"}]),
    ("post", "/api/v4/contacts", [{"name": "guarded"}]),
    ("PATCH", "/api/v4/leads/1", {"price": 1}),
    ("PATCH", "/api/v4/leads", [{"id": 1, "price": 1}]),
    ("POST", "/api/v4/leads/1/notes", [{"note_type": "common", "params": {"text": "x"}}]),
    ("POST", "/api/v4/tasks", [{"text": "x", "complete_till": 1900000000}]),
    ("DELETE", "/api/v4/leads/pipelines/1", None),
    ("DELETE", "/api/v4/contacts/1", None),
]


def moizvonki_writes(sandbox) -> list[tuple[str, dict, str]]:
    """Every Moizvonki write action, with parameters it would accept."""
    someone = other_employee(sandbox)
    return [
        ("calls.make_call", {"to": "+79161234567"}, sandbox.moizvonki_user),
        ("calls.send_sms", {"to": "+79161234567", "text": "hi"}, sandbox.moizvonki_user),
        ("webhook.subscribe", {"hooks": {"call.finish": "https://example.ru/hook"}}, ""),
        ("webhook.unsubscribe", {"hooks": ["call.finish"]}, ""),
        ("company.create_employee", {"employee_user_name": "new@example.ru"}, ""),
        ("company.activate_employee", {"employee_user_name": someone.email}, ""),
        ("company.delete_employee", {"employee_user_name": someone.email}, ""),
    ]


def other_employee(sandbox):
    """An employee who is neither the administrator nor the manager the sandbox has a key for."""
    taken = {sandbox.moizvonki_user, sandbox.moizvonki_manager_user}
    return next(e for e in sandbox.moizvonki.employees.values() if e.email not in taken)


def manager(sandbox):
    return next(
        e for e in sandbox.moizvonki.employees.values() if e.email == sandbox.moizvonki_manager_user
    )


def settings_for(sandbox, tmp_path, **changes) -> Settings:
    env = {key.lower(): value for key, value in sandbox.env.items()}
    changes.setdefault("db_path", tmp_path / "tariti.db")
    return Settings(_env_file=None, **{**env, **changes})


def snapshot(sandbox) -> dict:
    """What the emulators have seen and done, to compare before and after."""
    return {
        "amocrm_requests": len(sandbox.amocrm.requests),
        "moizvonki_requests": len(sandbox.moizvonki.requests),
        "dialed": list(sandbox.moizvonki.dialed),
        "sms": list(sandbox.moizvonki.sms),
        "webhooks": dict(sandbox.moizvonki.webhooks),
        "employees": sorted(sandbox.moizvonki.employees),
    }


async def call(client, name, arguments) -> tuple[bool, str, dict | None]:
    result = await client.call_tool(name, arguments)
    return result.is_error, result.content[0].text, result.structured_content


@pytest.fixture
def keys_env(sandbox) -> dict:
    """The manager's own key, so the server may act on the manager's phone."""
    keys = f"{sandbox.moizvonki_manager_user}={sandbox.moizvonki_manager_key}"
    return {"moizvonki_employee_keys": keys}


# --- read-only mode: what a client sees -----------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_read_only_lists_only_the_read_surface(sandbox, tmp_path, mode):
    server = create_server(settings_for(sandbox, tmp_path, read_only=True), store=Store())
    async with Client(server, mode=mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        prompts = {prompt.name for prompt in (await client.list_prompts()).prompts}

    assert sorted(tools) == ["call_amocrm_api", "call_moizvonki_api", "get_moizvonki_analytics"]
    # No prompt leads the model to a tool the server does not have.
    assert prompts == {"daily_call_report", "missed_calls_follow_up"}
    for tool in tools.values():
        assert tool.annotations.read_only_hint is True, tool.name
        assert tool.annotations.destructive_hint is False, tool.name
    amocrm = tools["call_amocrm_api"]
    assert amocrm.input_schema["properties"]["method"]["enum"] == ["GET"]
    assert "read-only" in amocrm.description
    moizvonki = tools["call_moizvonki_api"]
    assert moizvonki.input_schema["properties"]["action"]["enum"] == READS
    assert "read-only" in moizvonki.description


@pytest.mark.anyio
async def test_normal_mode_annotations_say_which_tools_write(sandbox, tmp_path):
    server = create_server(settings_for(sandbox, tmp_path), store=Store())
    async with Client(server, mode="legacy") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}

    for name in ("call_amocrm_api", "call_moizvonki_api"):
        assert tools[name].annotations.read_only_hint is False
        assert tools[name].annotations.destructive_hint is True
    forward = tools["forward_lead_to_amocrm"].annotations
    assert forward.read_only_hint is False and forward.destructive_hint is False
    assert tools["get_moizvonki_analytics"].annotations.read_only_hint is True
    # The destructive actions stay listed, and the description says they are refused.
    moizvonki = tools["call_moizvonki_api"]
    offered = moizvonki.input_schema["properties"]["action"]
    assert "company.delete_employee" in offered["enum"] and "webhook.subscribe" in offered["enum"]
    assert "Refused unless the operator allows destructive actions" in offered["description"]
    method = tools["call_amocrm_api"].input_schema["properties"]["method"]
    assert method["enum"] == ["GET", "POST", "PATCH", "DELETE"]
    assert "DELETE is refused" in tools["call_amocrm_api"].description


# --- read-only mode: nothing reaches a service -----------------------------------------------


@pytest.mark.anyio
async def test_read_only_amocrm_writes_never_leave_the_server(sandbox, tmp_path):
    settings = settings_for(sandbox, tmp_path, read_only=True, allow_destructive=True)
    before = snapshot(sandbox)
    async with Client(create_server(settings, store=Store()), mode="legacy") as client:
        for method, path, body in AMOCRM_WRITES:
            arguments = {"method": method, "path": path, "body": body}
            error, text, _ = await call(client, "call_amocrm_api", arguments)
            assert error, (method, path)
            assert "read-only (TARITI_READ_ONLY=true)" in text, text
            assert f"{method.upper()} {path}" in text
        after_writes = len(sandbox.amocrm.requests)
        error, text, result = await call(
            client, "call_amocrm_api", {"path": "/api/v4/leads", "query": {"limit": 2}}
        )

    assert after_writes == before["amocrm_requests"]
    assert not error, text
    assert result["count"] == 2  # reads still work
    assert [r[0] for r in sandbox.amocrm.requests[before["amocrm_requests"] :]] == ["GET"]


@pytest.mark.anyio
async def test_read_only_moizvonki_writes_never_leave_the_server(sandbox, tmp_path, keys_env):
    settings = settings_for(sandbox, tmp_path, read_only=True, allow_destructive=True, **keys_env)
    before = snapshot(sandbox)
    async with Client(create_server(settings, store=Store()), mode="legacy") as client:
        for action, params, employee in moizvonki_writes(sandbox):
            arguments = {"action": action, "params": params, "employee": employee}
            error, text, _ = await call(client, "call_moizvonki_api", arguments)
            assert error and "read-only (TARITI_READ_ONLY=true)" in text, (action, text)
            assert action in text
        error, text, result = await call(
            client, "call_moizvonki_api", {"action": "calls.get_sms_templates"}
        )

    assert not error, text
    assert result["answer"]["results_count"] == len(sandbox.moizvonki.sms_templates)
    after = snapshot(sandbox)
    assert sandbox.moizvonki.requests[before["moizvonki_requests"] :] == [
        ("calls.get_sms_templates", 200)
    ]
    for what in ("dialed", "sms", "webhooks", "employees"):
        assert after[what] == before[what], what


@pytest.mark.anyio
async def test_read_only_hides_forwarding_and_sends_no_lead(sandbox, tmp_path):
    before = snapshot(sandbox)
    server = create_server(settings_for(sandbox, tmp_path, read_only=True), store=Store())
    async with Client(server, mode="legacy") as client:
        error, text, _ = await call(
            client, "forward_lead_to_amocrm", {"name": "Тест", "phone": "+7 916 123-45-67"}
        )
        state = current_state(server)
        assert state is not None and state.outbox is None
        with pytest.raises(WriteRefused, match="TARITI_READ_ONLY"):
            state.require_outbox()

    assert error and "Unknown tool" in text
    assert len(sandbox.amocrm.requests) == before["amocrm_requests"]


@pytest.mark.anyio
async def test_read_only_clients_refuse_writes_from_any_path(sandbox):
    """Defence in depth: the clients themselves refuse, whoever calls them."""
    before = snapshot(sandbox)
    amocrm = GuardedClient(sandbox.amocrm_url, sandbox.amocrm_token, read_only=True)
    moizvonki = MoizvonkiClient(
        sandbox.moizvonki_url, sandbox.moizvonki_user, sandbox.moizvonki_key, read_only=True
    )
    try:
        for method in ("POST", "PATCH", "DELETE"):
            with pytest.raises(WriteRefused, match="read-only"):
                await amocrm.request(method, "/api/v4/leads", body=[{"name": "x"}])
        with pytest.raises(WriteRefused, match="read-only"):
            await call_api(amocrm, None, "PATCH", "/api/v4/leads/1", body={"price": 1})
        # call_api refuses on its own too, even on a client without the guard.
        plain = AmoCrmClient(sandbox.amocrm_url, sandbox.amocrm_token)
        try:
            with pytest.raises(WriteRefused, match="read-only"):
                await call_api(
                    plain, None, "POST", "/api/v4/leads", body=[{"name": "x"}], read_only=True
                )
        finally:
            await plain.aclose()
        for action in ("calls.make_call", "webhook.subscribe", "company.delete_employee"):
            with pytest.raises(WriteRefused, match="read-only"):
                await moizvonki.call(action, {"to": "+79161234567"}, login=moizvonki.login)
        answer = await amocrm.request("GET", "/api/v4/account")
        assert answer.status == 200
    finally:
        await amocrm.aclose()
        await moizvonki.aclose()

    assert sandbox.amocrm.requests[before["amocrm_requests"] :][0][:2] == ("GET", "/api/v4/account")
    assert len(sandbox.amocrm.requests) == before["amocrm_requests"] + 1
    assert len(sandbox.moizvonki.requests) == before["moizvonki_requests"]
    assert sandbox.moizvonki.dialed == before["dialed"]


# --- read-only mode: the outbox ---------------------------------------------------------------


def queue_lead(db: str) -> dict:
    """A forwarded lead waiting in the outbox, due now: amoCRM could not be reached when it came."""
    tag = uuid.uuid4().hex[:8]
    lead = prepare(
        region="RU",
        name=f"Читатель {tag}",
        email=f"reader-{tag}@example.ru",
        source="write guards test",
        external_id=f"write-guards-{tag}",
        lead_name=f"write guards {tag}",
    )

    async def submit() -> dict:
        client = AmoCrmClient(f"http://127.0.0.1:{closed_port()}", "no-token", retry_policy=QUICK)
        store = Store(db)
        try:
            return await Outbox(client, store, policy=QUICK).submit(lead)
        finally:
            store.close()
            await client.aclose()

    answer = anyio.run(submit)
    assert answer["status"] == "queued", answer
    with closing(Store(db)) as store:
        store.update_forwarding(answer["forwarding_id"], next_attempt_at=0)
        return store.forwarding(answer["forwarding_id"])


def deals_named(sandbox, title: str) -> list[int]:
    return [lead["id"] for lead in list(sandbox.amocrm.leads.values()) if lead["name"] == title]


def test_read_only_outbox_keeps_a_queued_lead_queued(sandbox, tmp_path, caplog):
    db = str(tmp_path / "outbox.db")
    row = queue_lead(db)
    title = json.loads(row["request"])["lead"]["lead_name"]
    writes_before = sum(1 for r in sandbox.amocrm.requests if r[0] != "GET")
    caplog.set_level(logging.INFO, logger="tariti_mcp.server")

    async def serve(read_only: bool, until_delivered: bool) -> None:
        settings = settings_for(
            sandbox,
            tmp_path,
            db_path=db,
            read_only=read_only,
            outbox_interval=0.05,
            outbox_check_delay=0,
        )
        with closing(Store(db)) as store:
            async with Client(create_server(settings, store=store), mode="legacy") as client:
                await client.list_tools()
                with anyio.move_on_after(30 if until_delivered else 0.5):
                    while store.forwarding(row["id"])["status"] != "delivered":
                        await anyio.sleep(0.05)

    anyio.run(serve, True, False)
    with closing(Store(db)) as store:
        kept = store.forwarding(row["id"])
    assert kept["status"] == "queued" and kept["attempts"] == row["attempts"]
    assert sum(1 for r in sandbox.amocrm.requests if r[0] != "GET") == writes_before
    assert deals_named(sandbox, title) == []
    assert "read-only mode: the outbox is not delivered; 1 forwarded leads" in caplog.text

    # The same lead and server without read-only mode: the background loop delivers it.
    anyio.run(serve, False, True)
    with closing(Store(db)) as store:
        delivered = store.forwarding(row["id"])
    assert delivered["status"] == "delivered"
    assert deals_named(sandbox, title) == [delivered["lead_id"]]


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    """No setting of the machine running the tests, and the logging the CLI replaces put back."""
    for key in list(os.environ):
        if key.startswith(("AMOCRM_", "MOIZVONKI_", "TARITI_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_outbox_retry_refused_in_read_only_mode(sandbox, tmp_path, capsys, clean_environment):
    db = str(tmp_path / "retry.db")
    row = queue_lead(db)
    env_file = tmp_path / "read-only.env"
    env = {**sandbox.env, "TARITI_READ_ONLY": "true", "TARITI_OUTBOX_CHECK_DELAY": "0"}
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    before = len(sandbox.amocrm.requests)
    capsys.readouterr()

    code = main(["outbox", "retry", "--env-file", str(env_file), "--db", db])

    out, err = capsys.readouterr()
    assert code == 2
    assert "TARITI_READ_ONLY=true" in err and "nothing was sent" in err
    assert len(sandbox.amocrm.requests) == before
    with closing(Store(db)) as store:
        kept = store.forwarding(row["id"])
    assert kept["status"] == "queued" and kept["attempts"] == row["attempts"]
    assert sandbox.env["AMOCRM_API_KEY"] not in out + err


# --- destructive actions -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_destructive_actions_refused_without_the_flag(sandbox, tmp_path):
    before = snapshot(sandbox)
    why = {
        "company.delete_employee": "every call of theirs",
        "company.create_employee": "adds a login",
        "company.activate_employee": "who may use",
        "webhook.subscribe": "replaces the URL another integration",
        "webhook.unsubscribe": "another integration may rely on",
    }
    async with Client(create_server(settings_for(sandbox, tmp_path), store=Store())) as client:
        for action, params, _ in moizvonki_writes(sandbox):
            if action not in why:
                continue
            error, text, _ = await call(
                client, "call_moizvonki_api", {"action": action, "params": params}
            )
            assert error and "TARITI_ALLOW_DESTRUCTIVE=true" in text, (action, text)
            assert why[action] in text and action in text
        error, text, _ = await call(
            client, "call_amocrm_api", {"method": "DELETE", "path": "/api/v4/leads/pipelines/1"}
        )
        assert error and "TARITI_ALLOW_DESTRUCTIVE=true" in text and "DELETE" in text, text

    assert snapshot(sandbox) == before


@pytest.mark.anyio
async def test_destructive_actions_run_with_the_flag(sandbox, tmp_path):
    settings = settings_for(sandbox, tmp_path, allow_destructive=True)
    login = f"new-{uuid.uuid4().hex[:8]}@example.ru"
    hook = {"sms.message": f"https://example.ru/{uuid.uuid4().hex}"}
    amocrm_before = len(sandbox.amocrm.requests)
    async with Client(create_server(settings, store=Store()), mode="legacy") as client:

        async def run(action: str, params: dict) -> dict:
            error, text, result = await call(
                client, "call_moizvonki_api", {"action": action, "params": params}
            )
            assert not error, (action, text)
            return result

        await run("webhook.subscribe", {"hooks": hook})
        assert sandbox.moizvonki.webhooks["sms.message"] == hook["sms.message"]
        await run("webhook.unsubscribe", {"hooks": ["sms.message"]})
        assert "sms.message" not in sandbox.moizvonki.webhooks

        created = (await run("company.create_employee", {"employee_user_name": login}))["answer"]
        assert sandbox.moizvonki.employees[created["id"]].is_active is False
        await run("company.activate_employee", {"employee_user_name": login})
        assert sandbox.moizvonki.employees[created["id"]].is_active is True
        await run("company.delete_employee", {"employee_user_name": login})
        assert created["id"] not in sandbox.moizvonki.employees

        await call(client, "call_amocrm_api", {"method": "DELETE", "path": "/api/v4/leads/tags"})

    sent = [r[:2] for r in sandbox.amocrm.requests[amocrm_before:]]
    assert ("DELETE", "/api/v4/leads/tags") in sent


# --- make_call and send_sms: whose phone ---------------------------------------------------------


@pytest.mark.anyio
async def test_make_call_without_employee_is_refused(sandbox, tmp_path, keys_env):
    before = snapshot(sandbox)
    store = Store()
    store.upsert_employees([{"id": 1, "display_name": "Иван Тестов", "email": "i.t@example.ru"}])
    settings = settings_for(sandbox, tmp_path, **keys_env)
    async with Client(create_server(settings, store=store), mode="legacy") as client:
        for action, params in (
            ("calls.make_call", {"to": "+79161234567"}),
            ("calls.send_sms", {"to": "+79161234567", "text": "hi"}),
        ):
            error, text, _ = await call(
                client, "call_moizvonki_api", {"action": action, "params": params}
            )
            assert error and "say whose, with employee=" in text, text
            assert sandbox.moizvonki_user in text and sandbox.moizvonki_manager_user in text
            assert "Иван Тестов <i.t@example.ru> (id 1)" in text

    assert snapshot(sandbox) == before


@pytest.mark.anyio
async def test_make_call_rings_the_named_employee_not_the_admin(sandbox, tmp_path, keys_env):
    the_manager = manager(sandbox)
    settings = settings_for(
        sandbox,
        tmp_path,
        moizvonki_user_map=f"{the_manager.amocrm_user_id}={the_manager.email}",
        **keys_env,
    )
    dialed_before = len(sandbox.moizvonki.dialed)
    sms_before = len(sandbox.moizvonki.sms)
    async with Client(create_server(settings, store=Store()), mode="legacy") as client:
        # By login, by Moizvonki employee id, and by amoCRM user id through the map.
        for employee in (the_manager.email, str(the_manager.id), str(the_manager.amocrm_user_id)):
            error, text, result = await call(
                client,
                "call_moizvonki_api",
                {
                    "action": "calls.make_call",
                    "params": {"to": "8 (916) 123-45-67"},
                    "employee": employee,
                },
            )
            assert not error, text
            assert result["employee"] == the_manager.email
        error, text, result = await call(
            client,
            "call_moizvonki_api",
            {
                "action": "calls.send_sms",
                "params": {"to": "+79161234567", "text": "Здравствуйте"},
                "employee": the_manager.email,
            },
        )
        assert not error, text

    assert sandbox.moizvonki.dialed[dialed_before:] == [(the_manager.email, "+79161234567")] * 3
    assert sandbox.moizvonki.sms[sms_before:] == [
        (the_manager.email, "+79161234567", "Здравствуйте")
    ]


@pytest.mark.anyio
async def test_employee_without_a_key_is_refused(sandbox, tmp_path, keys_env):
    before = snapshot(sandbox)
    nobody = other_employee(sandbox)
    async with Client(
        create_server(settings_for(sandbox, tmp_path, **keys_env), store=Store())
    ) as c:
        error, text, _ = await call(
            c,
            "call_moizvonki_api",
            {
                "action": "calls.make_call",
                "params": {"to": "+79161234567"},
                "employee": nobody.email,
            },
        )
        assert error and "MOIZVONKI_EMPLOYEE_KEYS" in text and nobody.email in text, text
        error, text, _ = await call(
            c,
            "call_moizvonki_api",
            {"action": "calls.make_call", "params": {"to": "+79161234567"}, "employee": "Иванов"},
        )
        assert error and "login e-mail or employee id" in text, text
        error, text, _ = await call(
            c,
            "call_moizvonki_api",
            {
                "action": "calls.list",
                "params": {"from_id": 1},
                "employee": sandbox.moizvonki_manager_user,
            },
        )
        assert error and "employee is only for calls.make_call and calls.send_sms" in text

    assert snapshot(sandbox) == before


@pytest.mark.anyio
async def test_phone_actions_need_a_login_at_the_client(sandbox):
    """Whatever calls the client, make_call never goes out as the administrator by default."""
    before = snapshot(sandbox)
    client = MoizvonkiClient(sandbox.moizvonki_url, sandbox.moizvonki_user, sandbox.moizvonki_key)
    try:
        with pytest.raises(InvalidArgument, match="name the employee"):
            await client.call("calls.make_call", {"to": "+79161234567"})
        with pytest.raises(InvalidArgument, match="name the employee"):
            await client.call("calls.send_sms", {"to": "+79161234567", "text": "hi"})
        manager_login = Login(sandbox.moizvonki_manager_user, sandbox.moizvonki_manager_key)
        await client.call("calls.make_call", {"to": "+79161234567"}, login=manager_login)
    finally:
        await client.aclose()

    assert sandbox.moizvonki.dialed[len(before["dialed"]) :] == [
        (sandbox.moizvonki_manager_user, "+79161234567")
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("action", "params", "effects"),
    [
        ("calls.make_call", {"to": "+79161234567"}, "dialed"),
        ("calls.send_sms", {"to": "+79161234567", "text": "hi"}, "sms"),
    ],
)
async def test_phone_action_not_retried_after_unknown_outcome(tmp_path, action, params, effects):
    """Failure pattern 13: the answer is lost after Moizvonki acted; the client is rung once."""
    with Sandbox(seed=5, calls=50, days=3, faults={"write": {"drop_after": 1.0}}) as own:
        settings = settings_for(own, tmp_path)
        async with Client(create_server(settings, store=Store()), mode="legacy") as client:
            error, text, _ = await call(
                client,
                "call_moizvonki_api",
                {"action": action, "params": params, "employee": own.moizvonki_user},
            )
        assert error and "Do not send it again" in text, text
        assert len(getattr(own.moizvonki, effects)) == 1
        assert [r for r in own.moizvonki.requests if r[0] == action] == [(action, 200)]


@pytest.mark.anyio
async def test_no_key_in_any_answer_or_log(sandbox, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    wrong_key = "wrong-employee-key-0123456789"
    nobody = other_employee(sandbox)
    keys = f"{sandbox.moizvonki_manager_user}={wrong_key}"
    settings = settings_for(sandbox, tmp_path, moizvonki_employee_keys=keys)
    to = {"to": "+79161234567"}
    calls = [
        {"action": "calls.make_call", "params": to},
        {"action": "calls.make_call", "params": to, "employee": sandbox.moizvonki_user},
        {"action": "calls.make_call", "params": to, "employee": sandbox.moizvonki_manager_user},
        {"action": "calls.make_call", "params": to, "employee": nobody.email},
        {"action": "company.delete_employee", "params": {"employee_id": nobody.id}},
    ]
    seen = []
    async with Client(create_server(settings, store=Store()), mode="legacy") as client:
        for arguments in calls:
            result = await client.call_tool("call_moizvonki_api", arguments)
            seen.append(result.model_dump_json())
    async with Client(
        create_server(settings_for(sandbox, tmp_path, read_only=True), store=Store())
    ) as client:
        result = await client.call_tool(
            "call_moizvonki_api", {"action": "calls.make_call", "params": to}
        )
        seen.append(result.model_dump_json())

    refused = json.loads(seen[2])["content"][0]["text"]
    assert "MOIZVONKI_EMPLOYEE_KEYS" in refused and "refused" in refused
    logged = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    for secret in (sandbox.moizvonki_key, sandbox.moizvonki_manager_key, wrong_key):
        assert all(secret not in text for text in seen)
        assert secret not in logged
