"""Forwarding when amoCRM's answer is lost: the lead is never sent twice blindly."""

import time

import anyio
import httpx
import pytest
import respx

from tariti_mcp.amocrm import leads
from tariti_mcp.amocrm.client import AmoCrmClient
from tariti_mcp.errors import InvalidArgument, OutcomeUnknown, Rejected
from tariti_mcp.http import RetryPolicy
from tariti_mcp.store import Store

BASE = "https://acme.amocrm.ru"


@pytest.fixture
async def client():
    amo = AmoCrmClient(BASE, "token-0123456789", retry_policy=RetryPolicy(first_wait=0.01))
    yield amo
    await amo.aclose()


def lead(**overrides):
    arguments = dict(
        name="Анна",
        phone="8 916 555-44-33",
        email="",
        message="",
        source="site",
        external_id="form-77",
        price=0,
        pipeline_id=0,
        status_id=0,
        tags=[],
        lead_name="",
        region="RU",
    )
    arguments.update(overrides)
    return leads.prepare(**arguments)


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_timed_out_create_is_not_repeated(respx_mock, client):
    respx_mock.get("/api/v4/contacts").mock(return_value=httpx.Response(204))
    create = respx_mock.post("/api/v4/leads/complex").mock(side_effect=httpx.ReadTimeout("slow"))
    store = Store()
    with pytest.raises(OutcomeUnknown, match="same external_id"):
        await leads.forward(client, store, lead())
    assert create.call_count == 1
    assert store.forwarding_by_external_id("form-77")["status"] == "unknown"

    # amoCRM did create it: the repeat finds the deal by time and title and creates nothing.
    found = {
        "_page": 1,
        "_embedded": {
            "leads": [
                {
                    "id": 555,
                    "name": "site: Анна",
                    "created_at": int(time.time()),
                    "_embedded": {"contacts": [{"id": 66, "is_main": True}]},
                }
            ]
        },
    }
    search = respx_mock.get("/api/v4/leads").mock(return_value=httpx.Response(200, json=found))
    # The repeat may carry other details; the deal is looked for by what was sent.
    result = await leads.forward(client, store, lead(name="Анна Петрова"))
    assert (result["lead_id"], result["contact_id"], result["duplicate"]) == (555, 66, True)
    assert create.call_count == 1 and search.call_count == 1
    assert store.forwarding_by_external_id("form-77")["status"] == "delivered"


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_unknown_outcome_not_found_in_amocrm_is_sent_once_more(respx_mock, client):
    respx_mock.get("/api/v4/contacts").mock(return_value=httpx.Response(204))
    create = respx_mock.post("/api/v4/leads/complex").mock(
        side_effect=[
            httpx.ReadTimeout("slow"),
            httpx.Response(200, json=[{"id": 9, "contact_id": 8, "request_id": ["0"]}]),
        ]
    )
    respx_mock.post("/api/v4/leads/9/notes").mock(return_value=httpx.Response(200, json={}))
    respx_mock.get("/api/v4/leads").mock(return_value=httpx.Response(204))
    store = Store()
    with pytest.raises(OutcomeUnknown):
        await leads.forward(client, store, lead())
    result = await leads.forward(client, store, lead())
    assert (result["lead_id"], result["duplicate"]) == (9, False)
    assert create.call_count == 2


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_rejected_forwarding_is_failed_and_may_be_corrected(respx_mock, client):
    respx_mock.get("/api/v4/contacts").mock(return_value=httpx.Response(204))
    problem = {
        "validation-errors": [
            {
                "request_id": "0",
                "errors": [{"code": "NotSupportedChoice", "path": "status_id", "detail": "bad"}],
            }
        ],
        "title": "Bad Request",
        "status": 400,
        "detail": "Request validation failed",
    }
    create = respx_mock.post("/api/v4/leads/complex")
    create.side_effect = [
        httpx.Response(400, json=problem),
        httpx.Response(200, json=[{"id": 9, "contact_id": 8, "request_id": ["0"]}]),
    ]
    respx_mock.post("/api/v4/leads/9/notes").mock(return_value=httpx.Response(200, json={}))
    store = Store()
    with pytest.raises(Rejected, match="field status_id"):
        await leads.forward(client, store, lead(status_id=5))
    assert store.forwarding_by_external_id("form-77")["status"] == "failed"

    result = await leads.forward(client, store, lead())
    assert (result["lead_id"], result["contact_id"], result["duplicate"]) == (9, 8, False)
    assert store.forwarding_by_external_id("form-77")["attempts"] == 2


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_lost_note_does_not_undo_or_repeat_the_lead(respx_mock, client):
    respx_mock.get("/api/v4/contacts").mock(return_value=httpx.Response(204))
    respx_mock.post("/api/v4/leads/complex").mock(
        return_value=httpx.Response(200, json=[{"id": 9, "contact_id": 8, "request_id": ["0"]}])
    )
    note = respx_mock.post("/api/v4/leads/9/notes").mock(side_effect=httpx.ReadTimeout("slow"))
    result = await leads.forward(client, Store(), lead(message="Перезвоните"))
    assert result["status"] == "delivered" and result["note_added"] is False
    assert note.call_count == 1


def test_prepare_explains_bad_arguments():
    with pytest.raises(InvalidArgument, match="phone or email"):
        lead(phone="", email="")
    with pytest.raises(InvalidArgument, match="not a valid e-mail"):
        lead(phone="", email="anna@")
    assert lead(email=" Anna@Example.RU ").email == "anna@example.ru"


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_contact_search_reads_every_page(respx_mock, client):
    def contact(contact_id, phone):
        return {
            "id": contact_id,
            "updated_at": 1,
            "custom_fields_values": [{"field_code": "PHONE", "values": [{"value": phone}]}],
        }

    decoys = [
        {
            "id": n,
            "custom_fields_values": [
                {"field_code": "COMMENT", "values": [{"value": "9165554433"}]}
            ],
        }
        for n in range(1, 251)
    ]
    first = {
        "_page": 1,
        "_embedded": {"contacts": decoys},
        "_links": {"next": {"href": f"{BASE}/api/v4/contacts?query=9165554433&page=2"}},
    }
    second = {"_page": 2, "_embedded": {"contacts": [contact(999, "+7 916 555 44 33")]}}
    respx_mock.get("/api/v4/contacts").mock(
        side_effect=[httpx.Response(200, json=first), httpx.Response(200, json=second)]
    )
    found = await leads.find_contacts(client, None, lead())
    assert [c["id"] for c in found] == [999]


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_cancelled_before_sending_can_be_forwarded_again(respx_mock, client):
    async def slow_search(request):
        await anyio.sleep(1)
        return httpx.Response(204)

    search = respx_mock.get("/api/v4/contacts").mock(side_effect=slow_search)
    create = respx_mock.post("/api/v4/leads/complex").mock(
        return_value=httpx.Response(200, json=[{"id": 9, "contact_id": 8, "request_id": ["0"]}])
    )
    respx_mock.post("/api/v4/leads/9/notes").mock(return_value=httpx.Response(200, json={}))
    store = Store()
    with anyio.move_on_after(0.05):
        await leads.forward(client, store, lead())
    assert create.call_count == 0
    assert store.forwarding_by_external_id("form-77")["status"] == "failed"

    search.side_effect = None
    search.return_value = httpx.Response(204)
    result = await leads.forward(client, store, lead())
    assert result["lead_id"] == 9 and create.call_count == 1
