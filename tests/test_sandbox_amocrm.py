"""The amoCRM emulator over real HTTP: auth, paging, filters, search, writes and their errors."""

from __future__ import annotations

import httpx
import pytest

from tariti_mcp.sandbox import Sandbox
from tariti_mcp.sandbox.data import digits_only

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def sandbox():
    # These tests burst requests on purpose; the rate limit has its own tests.
    with Sandbox(seed=5, calls=1500, days=30, rate_limit=0) as running:
        yield running


@pytest.fixture
async def amocrm(sandbox):
    headers = {"Authorization": f"Bearer {sandbox.env['AMOCRM_API_KEY']}"}
    async with httpx.AsyncClient(base_url=sandbox.amocrm_url, headers=headers) as client:
        yield client


def phones(contact):
    return [
        value["value"]
        for field in contact["custom_fields_values"] or []
        if field["field_code"] == "PHONE"
        for value in field["values"]
    ]


async def walk(client, path, params):
    """Follow _links.next from the first page; return every item and the pages seen."""
    items, pages = [], 0
    response = await client.get(path, params=params)
    while response.status_code == 200:
        body = response.json()
        pages += 1
        key = next(iter(body["_embedded"]))
        items += body["_embedded"][key]
        if "next" not in body["_links"]:
            break
        response = await client.get(body["_links"]["next"]["href"])
    return items, pages


async def test_bad_token_is_401_problem(sandbox):
    async with httpx.AsyncClient(base_url=sandbox.amocrm_url) as client:
        for headers in ({"Authorization": "Bearer not-the-token"}, {}):
            response = await client.get("/api/v4/leads", headers=headers)
            assert response.status_code == 401
            assert response.headers["content-type"] == "application/problem+json"
            body = response.json()
            assert body["title"] == "Unauthorized"
            assert body["type"] == "https://httpstatus.es/401"
            assert body["status"] == 401 and body["detail"]
            assert response.headers["x-request-id"]


async def test_every_answer_carries_a_request_id(amocrm):
    answers = [
        await amocrm.get("/api/v4/leads"),
        await amocrm.get("/api/v4/leads/1"),
        await amocrm.post("/api/v4/leads", json={"name": "not an array"}),
        await amocrm.get("/api/v4/no/such/method"),
        await amocrm.delete("/api/v4/leads"),
        await amocrm.get("/"),
    ]
    assert [answer.status_code for answer in answers] == [200, 204, 400, 404, 405, 404]
    ids = [answer.headers["x-request-id"] for answer in answers]
    assert all(ids) and len(set(ids)) == len(ids)


async def test_success_is_hal_json(amocrm):
    response = await amocrm.get("/api/v4/leads", params={"limit": 1})
    assert response.headers["content-type"] == "application/hal+json"
    lead = response.json()["_embedded"]["leads"][0]
    assert lead["_links"]["self"]["href"].endswith(f"/api/v4/leads/{lead['id']}")


async def test_limit_above_250_falls_back_to_50(amocrm):
    big = await amocrm.get("/api/v4/leads", params={"limit": 500})
    assert len(big.json()["_embedded"]["leads"]) == 50
    most = await amocrm.get("/api/v4/leads", params={"limit": 250})
    assert len(most.json()["_embedded"]["leads"]) == 250


async def test_walking_next_returns_every_lead_once(sandbox, amocrm):
    leads, pages = await walk(amocrm, "/api/v4/leads", {"limit": 37})
    ids = [lead["id"] for lead in leads]
    assert len(ids) == len(set(ids)) == len(sandbox.amocrm.leads)
    assert set(ids) == set(sandbox.amocrm.leads)
    assert pages == -(-len(ids) // 37)


async def test_next_link_is_absolute_and_keeps_the_filters(sandbox, amocrm):
    main = next(pid for pid, pipeline in sandbox.amocrm.pipelines.items() if pipeline["is_main"])
    response = await amocrm.get(
        "/api/v4/leads",
        params={"limit": 10, "filter[pipeline_id]": main, "order[created_at]": "desc"},
    )
    next_href = response.json()["_links"]["next"]["href"]
    assert next_href.startswith(sandbox.amocrm_url + "/api/v4/leads?")
    assert "page=2" in next_href and "limit=10" in next_href
    leads, _ = await walk(
        amocrm,
        "/api/v4/leads",
        {"limit": 10, "filter[pipeline_id]": main, "order[created_at]": "desc"},
    )
    expected = [lead for lead in sandbox.amocrm.leads.values() if lead["pipeline_id"] == main]
    assert len(leads) == len(expected)
    assert all(lead["pipeline_id"] == main for lead in leads)
    created = [lead["created_at"] for lead in leads]
    assert created == sorted(created, reverse=True)


async def test_page_past_the_end_is_204_empty(amocrm):
    response = await amocrm.get("/api/v4/leads", params={"limit": 250, "page": 50})
    assert response.status_code == 204
    assert response.content == b""


async def test_empty_search_and_missing_id_are_204(amocrm):
    search = await amocrm.get("/api/v4/contacts", params={"query": "Несуществующий Клиент"})
    assert search.status_code == 204 and search.content == b""
    missing = await amocrm.get("/api/v4/leads/1")
    assert missing.status_code == 204 and missing.content == b""
    assert (await amocrm.get("/api/v4/leads/unsorted")).status_code == 204


async def test_filter_status_id_is_ignored(sandbox, amocrm):
    leads, _ = await walk(amocrm, "/api/v4/leads", {"limit": 250, "filter[status_id]": 142})
    assert len(leads) == len(sandbox.amocrm.leads)
    assert {lead["status_id"] for lead in leads} - {142}


async def test_filter_statuses_pairs_are_honoured(sandbox, amocrm):
    pipelines = list(sandbox.amocrm.pipelines)
    params = {
        "limit": 250,
        "filter[statuses][0][pipeline_id]": pipelines[0],
        "filter[statuses][0][status_id]": 142,
        "filter[statuses][1][pipeline_id]": pipelines[1],
        "filter[statuses][1][status_id]": 143,
    }
    leads, _ = await walk(amocrm, "/api/v4/leads", params)
    expected = {
        lead["id"]
        for lead in sandbox.amocrm.leads.values()
        if (lead["pipeline_id"], lead["status_id"]) in {(pipelines[0], 142), (pipelines[1], 143)}
    }
    assert expected and {lead["id"] for lead in leads} == expected


async def test_filter_id_list_and_created_range(sandbox, amocrm):
    some = sorted(sandbox.amocrm.leads)[:3]
    response = await amocrm.get(
        "/api/v4/leads?" + "&".join(f"filter[id][]={lead_id}" for lead_id in some)
    )
    assert [lead["id"] for lead in response.json()["_embedded"]["leads"]] == some
    single = await amocrm.get("/api/v4/leads", params={"filter[id]": some[1]})
    assert [lead["id"] for lead in single.json()["_embedded"]["leads"]] == [some[1]]

    middle = sorted(lead["created_at"] for lead in sandbox.amocrm.leads.values())[200]
    leads, _ = await walk(
        amocrm, "/api/v4/leads", {"limit": 250, "filter[created_at][from]": middle}
    )
    assert leads and all(lead["created_at"] >= middle for lead in leads)
    assert len(leads) == sum(lead["created_at"] >= middle for lead in sandbox.amocrm.leads.values())


async def test_digits_query_finds_plus7_and_8_formats(sandbox, amocrm):
    contacts = list(sandbox.amocrm.contacts.values())
    for prefix in ("+7 (", "8 ", "8("):
        contact = next(
            contact
            for contact in contacts
            if any(phone.startswith(prefix) for phone in phones(contact))
        )
        phone = next(phone for phone in phones(contact) if phone.startswith(prefix))
        response = await amocrm.get("/api/v4/contacts", params={"query": digits_only(phone)[-10:]})
        assert response.status_code == 200
        assert contact["id"] in [item["id"] for item in response.json()["_embedded"]["contacts"]]


async def test_digits_query_also_hits_an_unrelated_comment(sandbox, amocrm):
    contacts = list(sandbox.amocrm.contacts.values())
    for owner in contacts:
        tail = digits_only(phones(owner)[0])[-10:]
        commenters = [
            contact
            for contact in contacts
            if contact is not owner
            and any(
                tail in digits_only(value["value"])
                for field in contact["custom_fields_values"]
                if field["field_code"] is None
                for value in field["values"]
            )
        ]
        if commenters:
            break
    else:
        pytest.fail("the seed has no comment quoting another contact's number")
    response = await amocrm.get("/api/v4/contacts", params={"query": tail})
    found = {item["id"] for item in response.json()["_embedded"]["contacts"]}
    assert owner["id"] in found
    assert {contact["id"] for contact in commenters} <= found


async def test_text_query_is_case_blind(sandbox, amocrm):
    contact = next(iter(sandbox.amocrm.contacts.values()))
    response = await amocrm.get("/api/v4/contacts", params={"query": contact["last_name"].upper()})
    assert contact["id"] in [item["id"] for item in response.json()["_embedded"]["contacts"]]


async def test_with_contacts_embeds_lead_contacts(sandbox, amocrm):
    plain = await amocrm.get("/api/v4/leads", params={"limit": 5})
    assert all("contacts" not in lead["_embedded"] for lead in plain.json()["_embedded"]["leads"])
    rich = await amocrm.get("/api/v4/leads", params={"limit": 5, "with": "contacts"})
    for lead in rich.json()["_embedded"]["leads"]:
        links = lead["_embedded"]["contacts"]
        assert links and sum(link["is_main"] for link in links) == 1
        assert links[0]["id"] in sandbox.amocrm.contacts


async def test_complex_answers_a_bare_array_and_links_the_contact(sandbox, amocrm):
    body = [
        {
            "name": "Заявка с сайта",
            "price": 45000,
            "_embedded": {
                "contacts": [
                    {
                        "first_name": "Пётр",
                        "last_name": "Лаптев",
                        "custom_fields_values": [
                            {
                                "field_code": "PHONE",
                                "values": [{"value": "+7 985 000-11-22", "enum_code": "MOB"}],
                            }
                        ],
                    }
                ],
                "tags": [{"name": "Сайт"}],
            },
        },
        {
            "name": "Заявка от компании",
            "request_id": "form-17",
            "_embedded": {
                "contacts": [{"name": "Ирина Белова"}],
                "companies": [{"name": "ООО «Песочница»"}],
            },
        },
    ]
    response = await amocrm.post("/api/v4/leads/complex", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert isinstance(answer, list) and len(answer) == 2
    assert set(answer[0]) == {"id", "contact_id", "company_id", "request_id", "merged"}
    assert answer[0]["request_id"] == ["0"] and answer[0]["merged"] is False
    assert answer[0]["company_id"] is None
    assert answer[1]["request_id"] == ["form-17"] and isinstance(answer[1]["company_id"], int)

    lead = (
        await amocrm.get(f"/api/v4/leads/{answer[0]['id']}", params={"with": "contacts"})
    ).json()
    assert lead["_embedded"]["contacts"][0]["id"] == answer[0]["contact_id"]
    assert [tag["name"] for tag in lead["_embedded"]["tags"]] == ["Сайт"]
    contact = sandbox.amocrm.contacts[answer[0]["contact_id"]]
    assert contact["name"] == "Пётр Лаптев"
    assert phones(contact) == ["+7 985 000-11-22"]
    company = sandbox.amocrm.companies[answer[1]["company_id"]]
    assert {"id": answer[1]["id"]} in company["_embedded"]["leads"]


async def test_complex_refuses_two_new_contacts(amocrm):
    response = await amocrm.post(
        "/api/v4/leads/complex",
        json=[{"name": "x", "_embedded": {"contacts": [{"name": "a"}, {"name": "b"}]}}],
    )
    assert response.status_code == 400
    errors = response.json()["validation-errors"][0]["errors"]
    assert errors[0]["path"] == "_embedded.contacts"


async def test_validation_error_shape(sandbox, amocrm):
    pipelines = list(sandbox.amocrm.pipelines.values())
    other_status = pipelines[1]["_embedded"]["statuses"][1]["id"]
    contact_field = next(iter(sandbox.amocrm.custom_fields["contacts"]))
    before = len(sandbox.amocrm.leads)
    response = await amocrm.post(
        "/api/v4/leads",
        json=[
            {"name": "ok", "price": 1000},
            {
                "name": "bad",
                "pipeline_id": pipelines[0]["id"],
                "status_id": other_status,
                "custom_fields_values": [{"field_id": contact_field, "values": [{"value": "x"}]}],
            },
        ],
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["title"] == "Bad Request" and body["status"] == 400
    assert body["type"] == "https://httpstatus.es/400"
    assert body["detail"] == "Request validation failed"
    assert body["validation-errors"] == [
        {
            "request_id": "1",
            "errors": [
                {
                    "code": "NotSupportedChoice",
                    "path": "status_id",
                    "detail": "The value you selected is not a valid choice.",
                },
                {
                    "code": "NotSupportedChoice",
                    "path": "custom_fields_values.0.field_id",
                    "detail": "The value you selected is not a valid choice.",
                },
            ],
        }
    ]
    assert len(sandbox.amocrm.leads) == before


@pytest.mark.parametrize(
    ("item", "code", "path"),
    [
        ({"name": "x", "pipeline_id": 999}, "NotSupportedChoice", "pipeline_id"),
        ({"name": "x", "price": "1000"}, "InvalidType", "price"),
        ({"name": "x", "price": 10.5}, "InvalidType", "price"),
        ({"name": "x", "created_by": 0}, "FieldNotExpected", "created_by"),
        ({"name": "x", "account_id": 31000001}, "FieldNotExpected", "account_id"),
        ({"name": "x", "_links": {}}, "FieldNotExpected", "_links"),
        (
            {
                "name": "x",
                "custom_fields_values": [
                    {"field_id": 243001, "field_name": "utm_source", "values": [{"value": "x"}]}
                ],
            },
            "FieldNotExpected",
            "custom_fields_values.0.field_name",
        ),
        (
            {
                "name": "x",
                "custom_fields_values": [
                    {"field_id": 243001, "field_type": "text", "values": [{"value": "x"}]}
                ],
            },
            "FieldNotExpected",
            "custom_fields_values.0.field_type",
        ),
    ],
)
async def test_validation_errors_by_case(sandbox, amocrm, item, code, path):
    response = await amocrm.post("/api/v4/leads", json=[item])
    assert response.status_code == 400
    errors = response.json()["validation-errors"][0]["errors"]
    assert {"code": code, "path": path} in [
        {"code": error["code"], "path": error["path"]} for error in errors
    ]


async def test_body_must_be_an_array(amocrm):
    response = await amocrm.post("/api/v4/leads", json={"name": "single"})
    assert response.status_code == 400
    body = response.json()
    assert body["detail"] == "Request validation failed"
    assert body["validation-errors"][0]["request_id"] == "0"


async def test_create_and_update_a_lead(sandbox, amocrm):
    contact_id = next(iter(sandbox.amocrm.contacts))
    response = await amocrm.post(
        "/api/v4/leads",
        json=[
            {
                "name": "Тестовая сделка",
                "price": 120000,
                "request_id": "mine",
                "custom_fields_values": [
                    {"field_code": "UTM_SOURCE", "values": [{"value": "yandex"}]}
                ],
                "_embedded": {"contacts": [{"id": contact_id}], "tags": [{"name": "Песочница"}]},
            }
        ],
    )
    assert response.status_code == 200
    created = response.json()["_embedded"]["leads"][0]
    assert created["request_id"] == "mine"
    lead = sandbox.amocrm.leads[created["id"]]
    assert isinstance(lead["created_at"], int) and lead["created_at"] == lead["updated_at"]
    assert lead["closed_at"] is None and lead["price"] == 120000
    assert lead["_embedded"]["contacts"] == [{"id": contact_id, "is_main": True}]
    assert {"id": created["id"]} in sandbox.amocrm.contacts[contact_id]["_embedded"]["leads"]
    assert lead["custom_fields_values"][0]["field_name"] == "utm_source"
    assert max(sandbox.amocrm.leads) == created["id"]

    won = await amocrm.patch(f"/api/v4/leads/{created['id']}", json={"status_id": 142})
    assert won.status_code == 200 and won.json()["id"] == created["id"]
    assert lead["status_id"] == 142 and isinstance(lead["closed_at"], int)

    batch = await amocrm.patch("/api/v4/leads", json=[{"id": created["id"], "price": 99000}])
    assert batch.json()["_embedded"]["leads"][0]["id"] == created["id"]
    assert lead["price"] == 99000

    events = await amocrm.get("/api/v4/events", params={"filter[type]": "lead_status_changed"})
    assert created["id"] in [event["entity_id"] for event in events.json()["_embedded"]["events"]]


async def test_create_contact_with_phone_and_email(sandbox, amocrm):
    response = await amocrm.post(
        "/api/v4/contacts",
        json=[
            {
                "first_name": "Лев",
                "last_name": "Гуров",
                "custom_fields_values": [
                    {
                        "field_code": "PHONE",
                        "values": [{"value": "89850001234", "enum_code": "WORK"}],
                    },
                    {
                        "field_code": "EMAIL",
                        "values": [{"value": "lev@example.org", "enum_code": "PRIV"}],
                    },
                ],
            }
        ],
    )
    contact_id = response.json()["_embedded"]["contacts"][0]["id"]
    contact = sandbox.amocrm.contacts[contact_id]
    assert contact["name"] == "Лев Гуров"
    email = next(
        field for field in contact["custom_fields_values"] if field["field_code"] == "EMAIL"
    )
    assert email["values"][0]["enum_code"] == "PRIV"
    found = await amocrm.get("/api/v4/contacts", params={"query": "9850001234"})
    assert contact_id in [item["id"] for item in found.json()["_embedded"]["contacts"]]

    wrong = await amocrm.post(
        "/api/v4/contacts",
        json=[
            {
                "name": "x",
                "custom_fields_values": [
                    {"field_code": "PHONE", "values": [{"value": "1", "enum_code": "MOBILE"}]}
                ],
            }
        ],
    )
    assert (
        wrong.json()["validation-errors"][0]["errors"][0]["path"]
        == "custom_fields_values.0.values.0.enum_code"
    )


async def test_links_and_notes(sandbox, amocrm):
    lead_id = next(iter(sandbox.amocrm.leads))
    contact_id = list(sandbox.amocrm.contacts)[-1]
    linked = await amocrm.post(
        f"/api/v4/leads/{lead_id}/link",
        json=[{"to_entity_id": contact_id, "to_entity_type": "contacts"}],
    )
    assert linked.status_code == 200
    links = (await amocrm.get(f"/api/v4/leads/{lead_id}/links")).json()["_embedded"]["links"]
    assert {"to_entity_id": contact_id, "to_entity_type": "contacts"} in [
        {"to_entity_id": link["to_entity_id"], "to_entity_type": link["to_entity_type"]}
        for link in links
    ]

    created = await amocrm.post(
        f"/api/v4/leads/{lead_id}/notes",
        json=[{"note_type": "common", "params": {"text": "Позвонить завтра"}}],
    )
    note_id = created.json()["_embedded"]["notes"][0]["id"]
    assert sandbox.amocrm.notes[note_id]["entity_id"] == lead_id
    notes = await amocrm.get(f"/api/v4/leads/{lead_id}/notes")
    assert note_id in [note["id"] for note in notes.json()["_embedded"]["notes"]]
    bad = await amocrm.post(
        f"/api/v4/leads/{lead_id}/notes", json=[{"note_type": "nope", "params": {}}]
    )
    assert bad.status_code == 400


async def test_tasks_round_trip(sandbox, amocrm):
    lead_id = next(iter(sandbox.amocrm.leads))
    created = await amocrm.post(
        "/api/v4/tasks",
        json=[
            {
                "text": "Перезвонить",
                "complete_till": 1_900_000_000,
                "entity_id": lead_id,
                "entity_type": "leads",
            }
        ],
    )
    task_id = created.json()["_embedded"]["tasks"][0]["id"]
    listed = await amocrm.get("/api/v4/tasks", params={"filter[entity_id]": lead_id})
    assert task_id in [task["id"] for task in listed.json()["_embedded"]["tasks"]]
    missing = await amocrm.post("/api/v4/tasks", json=[{"text": "без срока"}])
    assert missing.json()["validation-errors"][0]["errors"][0]["path"] == "complete_till"


async def test_pipelines_account_users_and_fields(sandbox, amocrm):
    pipelines = (await amocrm.get("/api/v4/leads/pipelines")).json()["_embedded"]["pipelines"]
    assert len(pipelines) == 3
    for pipeline in pipelines:
        ids = [status["id"] for status in pipeline["_embedded"]["statuses"]]
        assert 142 in ids and 143 in ids
    one = await amocrm.get(f"/api/v4/leads/pipelines/{pipelines[1]['id']}/statuses")
    assert len(one.json()["_embedded"]["statuses"]) == len(pipelines[1]["_embedded"]["statuses"])

    account = (await amocrm.get("/api/v4/account", params={"with": "datetime_settings"})).json()
    assert account["_embedded"]["datetime_settings"]["timezone"] == "Europe/Moscow"
    users = (await amocrm.get("/api/v4/users")).json()["_embedded"]["users"]
    assert len(users) == 6 and sum(user["rights"]["is_admin"] for user in users) == 1

    fields, pages = await walk(amocrm, "/api/v4/contacts/custom_fields", {"limit": 2})
    assert pages == 2 and {field["code"] for field in fields} >= {"PHONE", "EMAIL"}
    capped = await amocrm.get("/api/v4/leads/custom_fields", params={"limit": 250})
    assert len(capped.json()["_embedded"]["custom_fields"]) == len(
        sandbox.amocrm.custom_fields["leads"]
    )


async def test_wrong_paths(amocrm):
    outside = await amocrm.get("/")
    assert outside.status_code == 404
    assert outside.headers["content-type"].startswith("text/html")
    assert "<html" in outside.text
    inside = await amocrm.get("/api/v4/widgets/nothing")
    assert inside.status_code == 404
    assert inside.headers["content-type"] == "application/problem+json"
    wrong_method = await amocrm.put("/api/v4/leads", json=[])
    assert wrong_method.status_code == 405
    assert wrong_method.json()["status"] == 405


async def test_request_log_never_holds_the_token(sandbox, amocrm):
    await amocrm.get("/api/v4/leads", params={"limit": 3})
    method, path, query, status = sandbox.amocrm.requests[-1]
    assert (method, path, query, status) == ("GET", "/api/v4/leads", "limit=3", 200)
    token = sandbox.env["AMOCRM_API_KEY"]
    assert all(token not in repr(entry) for entry in sandbox.amocrm.requests)
