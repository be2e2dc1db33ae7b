"""The Moizvonki emulator over real HTTP: credentials, calls.list paging, roles and side effects."""

from __future__ import annotations

import itertools
import json
import random

import httpx
import pytest

from tariti_mcp.sandbox import Sandbox, generate
from tariti_mcp.sandbox.moizvonki import MoizvonkiEmulator

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(seed=11, calls=1500, days=30) as running:
        yield running


@pytest.fixture
async def client():
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def admin(sandbox):
    return sandbox.env["MOIZVONKI_USER"], sandbox.env["MOIZVONKI_API_KEY"]


@pytest.fixture
def manager(sandbox):
    return sandbox.moizvonki_manager_user, sandbox.moizvonki_manager_key


async def ask(client, sandbox, login, action, **params):
    user_name, api_key = login
    body = {"user_name": user_name, "api_key": api_key, "action": action, **params}
    return await client.post(sandbox.moizvonki_url, json=body)


async def walk(client, sandbox, login, **params):
    """Page calls.list by assigning results_next_offset; return the calls and the answers."""
    calls, answers, offset = [], [], 0
    while True:
        response = await ask(client, sandbox, login, "calls.list", from_offset=offset, **params)
        assert response.status_code == 200
        body = response.json()
        answers.append(body)
        calls += body["results"]
        if not body["results_next_offset"]:
            return calls, answers
        assert body["results_next_offset"] == offset + body["results_count"]
        offset = body["results_next_offset"]


def owner_ids(sandbox, login):
    employee = next(item for item in sandbox.moizvonki.employees.values() if item.email == login)
    return [call.db_call_id for call in sandbox.moizvonki.calls if call.user_id == employee.id]


async def test_env_names_the_admin(sandbox):
    env = sandbox.env
    assert set(env) == {
        "AMOCRM_BASE_URL",
        "AMOCRM_API_KEY",
        "MOIZVONKI_BASE_URL",
        "MOIZVONKI_USER",
        "MOIZVONKI_API_KEY",
    }
    admin = next(item for item in sandbox.moizvonki.employees.values() if item.role == "admin")
    assert env["MOIZVONKI_USER"] == admin.email
    assert env["MOIZVONKI_BASE_URL"].endswith("/api/v1")
    assert len(env["MOIZVONKI_API_KEY"]) >= 32 and len(env["AMOCRM_API_KEY"]) >= 32
    assert sandbox.moizvonki_manager_user != admin.email


@pytest.mark.parametrize(
    "spoil",
    [lambda key: "wrong", lambda key: key + "\n", lambda key: key + " ", lambda key: " " + key],
)
async def test_bad_key_is_403(client, sandbox, admin, spoil):
    response = await ask(client, sandbox, (admin[0], spoil(admin[1])), "calls.list", from_id=0)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Username or password is invalid"


async def test_unknown_user_is_403(client, sandbox, admin):
    response = await ask(client, sandbox, ("nobody@example.com", admin[1]), "calls.list", from_id=0)
    assert response.status_code == 403


async def test_from_id_is_inclusive(client, sandbox, admin):
    ids = [call.db_call_id for call in sandbox.moizvonki.calls]
    middle = ids[len(ids) // 2]
    response = await ask(
        client, sandbox, admin, "calls.list", from_id=middle, supervised=1, max_results=5
    )
    assert [call["db_call_id"] for call in response.json()["results"]] == ids[
        len(ids) // 2 : len(ids) // 2 + 5
    ]
    between = await ask(
        client, sandbox, admin, "calls.list", from_id=middle + 1, supervised=1, max_results=1
    )
    assert between.json()["results"][0]["db_call_id"] == ids[len(ids) // 2 + 1]


async def test_walking_pages_yields_every_call_once_in_id_order(client, sandbox, admin):
    calls, answers = await walk(client, sandbox, admin, from_date=0, supervised=1, max_results=100)
    ids = [call["db_call_id"] for call in calls]
    assert ids == sorted(set(ids))
    assert ids == [call.db_call_id for call in sandbox.moizvonki.calls]
    assert len(answers) == -(-len(ids) // 100)
    assert answers[0]["results_remains"] == len(ids) - 100
    assert answers[-1]["results_remains"] == 0 and answers[-1]["results_next_offset"] == 0


async def test_max_results_above_100_is_clamped(client, sandbox, admin):
    response = await ask(
        client, sandbox, admin, "calls.list", from_date=0, supervised=1, max_results=500
    )
    body = response.json()
    assert body["results_count"] == 100 and len(body["results"]) == 100
    assert body["results_next_offset"] == 100
    missing = await ask(client, sandbox, admin, "calls.list", from_date=0, supervised=1)
    assert missing.json()["results_count"] == 100


async def test_supervised_adds_owner_fields_for_everyone(client, sandbox, admin):
    response = await ask(client, sandbox, admin, "calls.list", from_date=0, supervised=1)
    results = response.json()["results"]
    assert all({"user_id", "user_account"} <= set(call) for call in results)
    emails = {employee.email for employee in sandbox.moizvonki.employees.values()}
    assert {call["user_account"] for call in results} <= emails
    assert len({call["user_id"] for call in results}) > 1


async def test_without_supervised_only_own_calls_and_no_owner_fields(client, sandbox, admin):
    calls, _ = await walk(client, sandbox, admin, from_date=0)
    assert calls and all("user_id" not in call and "user_account" not in call for call in calls)
    assert [call["db_call_id"] for call in calls] == owner_ids(sandbox, admin[0])


async def test_manager_sees_only_own_calls_even_supervised(client, sandbox, manager):
    calls, _ = await walk(client, sandbox, manager, from_date=0, supervised=1)
    assert calls
    assert {call["user_account"] for call in calls} == {manager[0]}
    assert [call["db_call_id"] for call in calls] == owner_ids(sandbox, manager[0])


async def test_unknown_parameters_are_ignored(client, sandbox, admin):
    plain = await ask(client, sandbox, admin, "calls.list", from_date=0, supervised=1)
    odd = await ask(
        client,
        sandbox,
        admin,
        "calls.list",
        from_date=0,
        supervised=1,
        results_offset=500,
        date_from=1,
    )
    assert odd.status_code == 200
    assert odd.json() == plain.json()


async def test_a_date_window_is_required(client, sandbox, admin):
    response = await ask(client, sandbox, admin, "calls.list", to_date=2_000_000_000)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")


async def test_date_window_on_start_time_with_inclusive_end(client, sandbox, admin):
    target = sandbox.moizvonki.calls[len(sandbox.moizvonki.calls) // 3]
    response = await ask(
        client,
        sandbox,
        admin,
        "calls.list",
        from_date=target.start_time,
        to_date=target.start_time,
        supervised=1,
    )
    ids = [call["db_call_id"] for call in response.json()["results"]]
    assert target.db_call_id in ids
    assert all(call["start_time"] == target.start_time for call in response.json()["results"])


async def test_call_fields(client, sandbox, admin):
    calls, _ = await walk(client, sandbox, admin, from_date=0, supervised=1)
    for call in calls:
        assert call["direction"] in (0, 1) and call["answered"] in (0, 1)
        assert (call["answer_time"] == 0) == (call["answered"] == 0)
        assert call["recording"] == "" or call["recording"].endswith(f"/{call['db_call_id']}.mp3")
        assert {
            "src_number",
            "src_id",
            "src_slot",
            "event_pbx_call_id",
            "upload_time",
            "client_name",
            "end_time",
        } <= set(call)
    assert any(
        call["direction"] == 1 and not call["answered"] and call["duration"] > 0 for call in calls
    )


async def test_form_request_data_is_accepted(client, sandbox, admin):
    payload = {
        "user_name": admin[0],
        "api_key": admin[1],
        "action": "calls.list",
        "from_date": 0,
        "max_results": 3,
    }
    response = await client.post(sandbox.moizvonki_url, data={"request_data": json.dumps(payload)})
    assert response.status_code == 200
    assert response.json()["results_count"] == 3


async def test_bodies_that_are_neither_json_nor_form_are_400(client, sandbox):
    garbage = await client.post(
        sandbox.moizvonki_url, content=b"action=calls.list", headers={"content-type": "text/plain"}
    )
    assert garbage.status_code == 400
    wrong_form = await client.post(sandbox.moizvonki_url, data={"action": "calls.list"})
    assert wrong_form.status_code == 400


async def test_other_paths_are_404(client, sandbox, admin):
    base = sandbox.moizvonki_url.removesuffix("/api/v1")
    response = await client.post(base + "/api/v2", json={"user_name": admin[0]})
    assert response.status_code == 404


async def test_unknown_action_is_400_text(client, sandbox, admin):
    response = await ask(client, sandbox, admin, "calls.search")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")


async def test_send_sms_and_make_call_use_the_callers_phone(client, sandbox, manager):
    sms = await ask(
        client,
        sandbox,
        manager,
        "calls.send_sms",
        to="+79161234567",
        text="Добрый день! Ваш счёт готов.",
    )
    assert sms.status_code == 200
    assert sms.headers["content-type"].startswith("text/plain")
    assert sms.text == "SMS posted"
    assert sandbox.moizvonki.sms[-1] == (manager[0], "+79161234567", "Добрый день! Ваш счёт готов.")

    dial = await ask(client, sandbox, manager, "calls.make_call", to="89161234567")
    assert dial.status_code == 200
    assert sandbox.moizvonki.dialed[-1] == (manager[0], "89161234567")
    no_target = await ask(client, sandbox, manager, "calls.make_call")
    assert no_target.status_code == 400


async def test_sms_templates(client, sandbox, manager):
    body = (await ask(client, sandbox, manager, "calls.get_sms_templates")).json()
    assert body["results_count"] == 3
    assert set(body["results"][0]) == {"id", "name", "text", "description"}


@pytest.mark.parametrize(
    ("action", "params"),
    [
        ("company.list_employee", {}),
        ("company.list_group", {}),
        ("company.delete_employee", {"employee_id": 1}),
        ("webhook.list", {}),
        ("webhook.subscribe", {"hooks": {"call.finish": "https://example.com/hook"}}),
        ("webhook.unsubscribe", {"hooks": ["call.finish"]}),
    ],
)
async def test_admin_only_actions_refused_for_the_manager(client, sandbox, manager, action, params):
    webhooks = dict(sandbox.moizvonki.webhooks)
    staff = set(sandbox.moizvonki.employees)
    response = await ask(client, sandbox, manager, action, **params)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Access denied"
    assert sandbox.moizvonki.webhooks == webhooks
    assert set(sandbox.moizvonki.employees) == staff


async def test_admin_lists_employees_and_groups(client, sandbox, admin):
    body = (await ask(client, sandbox, admin, "company.list_employee", max_results=4)).json()
    assert body["results_count"] == 4 and body["results_remains"] == 2
    assert body["results_next_offset"] == 4
    rest = (
        await ask(client, sandbox, admin, "company.list_employee", max_results=4, from_offset=4)
    ).json()
    staff = body["results"] + rest["results"]
    assert [employee["role"] for employee in staff].count("admin") == 1
    assert set(staff[0]) == {"id", "display_name", "email", "group_id", "group_name", "role"}
    one = (
        await ask(client, sandbox, admin, "company.list_employee", employee_user_name=admin[0])
    ).json()
    assert [employee["email"] for employee in one["results"]] == [admin[0]]
    groups = (await ask(client, sandbox, admin, "company.list_group")).json()
    assert groups["results_count"] == 2


async def test_webhooks_subscribe_list_unsubscribe(client, sandbox, admin):
    hooks = {"call.finish": "https://example.com/hook/secret", "sms.message": "https://e.x/s"}
    assert (await ask(client, sandbox, admin, "webhook.subscribe", hooks=hooks)).status_code == 200
    listed = await ask(client, sandbox, admin, "webhook.list")
    assert listed.json() == hooks
    await ask(client, sandbox, admin, "webhook.unsubscribe", hooks=["sms.message"])
    assert sandbox.moizvonki.webhooks == {"call.finish": "https://example.com/hook/secret"}
    bad = await ask(client, sandbox, admin, "webhook.subscribe", hooks={"call.nope": "https://x"})
    assert bad.status_code == 400


async def test_late_upload_gets_a_new_id_and_the_cursor_finds_it(client, sandbox, admin):
    newest = sandbox.moizvonki.calls[-1].db_call_id
    call = sandbox.moizvonki.record_call(
        admin[0],
        direction=0,
        client_number="+79160000001",
        start_time=sandbox.moizvonki.calls[0].start_time,
        answered=False,
        duration=0,
        wait=12,
    )
    assert call.db_call_id > newest
    response = await ask(client, sandbox, admin, "calls.list", from_id=newest + 1)
    assert [item["db_call_id"] for item in response.json()["results"]] == [call.db_call_id]
    assert response.json()["results"][0]["duration"] == 0


async def test_delete_employee_removes_their_calls(client):
    with Sandbox(seed=2, calls=300, days=10) as small:
        login = (small.env["MOIZVONKI_USER"], small.env["MOIZVONKI_API_KEY"])
        victim = next(
            item
            for item in small.moizvonki.employees.values()
            if item.role != "admin" and item.email != small.moizvonki_manager_user
        )
        assert any(call.user_id == victim.id for call in small.moizvonki.calls)
        response = await ask(client, small, login, "company.delete_employee", employee_id=victim.id)
        assert response.status_code == 200
        calls, _ = await walk(client, small, login, from_date=0, supervised=1)
        assert calls and all(call["user_id"] != victim.id for call in calls)
        assert victim.id not in small.moizvonki.employees


def test_date_windows_select_by_bisection_what_a_plain_filter_selects():
    data = generate(seed=3, calls=4000, days=40, now=1_790_000_000)
    emulator = MoizvonkiEmulator(data, {})
    admin = data.admin
    manager = next(employee for employee in data.employees if employee.role != "admin")
    rng = random.Random(5)
    starts = [call.start_time for call in emulator.calls]
    for _ in range(200):
        low, high = sorted(rng.sample(range(min(starts) - 100, max(starts) + 100), 2))
        from_date = rng.choice([low, None])
        to_date = rng.choice([high, None]) if from_date is not None else high
        for owner, everyone in ((admin, True), (manager, False)):
            selected, begin = emulator._selection(owner, everyone, None, from_date, to_date)
            plain = [
                call
                for call in emulator.calls
                if (everyone or call.user_id == owner.id)
                and (from_date is None or call.start_time >= from_date)
                and (to_date is None or call.start_time <= to_date)
            ]
            assert begin == 0 and selected == plain
    # A from_id cursor bisects into the same selection.
    middle = emulator.calls[len(emulator.calls) // 2]
    selected, begin = emulator._selection(admin, True, middle.db_call_id, None, None)
    assert selected[begin] == middle


async def test_a_year_of_two_hundred_thousand_calls_pages_by_id_and_by_date():
    with Sandbox(seed=1, calls=200_000, days=365) as big:
        calls = big.moizvonki.calls
        assert len(calls) > 199_000
        ids = [call.db_call_id for call in calls]
        assert ids == sorted(set(ids))
        span = max(call.start_time for call in calls) - min(call.start_time for call in calls)
        assert 363 * 86400 < span < 366 * 86400
        # Late uploads: a newer id than a call that started after them.
        assert any(
            later.start_time < earlier.start_time for earlier, later in itertools.pairwise(calls)
        )
        login = (big.env["MOIZVONKI_USER"], big.env["MOIZVONKI_API_KEY"])
        async with httpx.AsyncClient() as http:
            deep = await ask(
                http, big, login, "calls.list", from_id=ids[150_000], supervised=1, max_results=3
            )
            assert [call["db_call_id"] for call in deep.json()["results"]] == ids[150_000:150_003]
            middle = calls[100_000].start_time
            window = await ask(
                http,
                big,
                login,
                "calls.list",
                from_date=middle,
                to_date=middle + 3 * 86400,
                supervised=1,
                from_offset=100,
            )
            body = window.json()
            expected = [c.db_call_id for c in calls if middle <= c.start_time <= middle + 3 * 86400]
            assert [call["db_call_id"] for call in body["results"]] == expected[100:200]
            assert body["results_remains"] == len(expected) - 200
