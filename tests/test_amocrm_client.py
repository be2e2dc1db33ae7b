"""The amoCRM client and call_amocrm_api's rules, against respx: statuses, paging, paths."""

import json

import httpx
import pytest
import respx

from tariti_mcp.amocrm.api import call_api
from tariti_mcp.amocrm.client import AmoCrmClient, api_path, flatten_query
from tariti_mcp.errors import (
    AccountBlocked,
    AuthFailed,
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    Rejected,
    Unavailable,
    WrongHost,
)
from tariti_mcp.http import RetryPolicy
from tariti_mcp.store import Store

BASE = "https://acme.amocrm.ru"
TOKEN = "secret-token-abcdef-0123456789"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def client():
    amo = AmoCrmClient(BASE, TOKEN, retry_policy=RetryPolicy(first_wait=0.01, max_wait=0.05))
    yield amo
    await amo.aclose()


def hal(entity, items, page=1, next_page=None):
    body = {
        "_page": page,
        "_links": {"self": {"href": f"{BASE}/api/v4/{entity}?page={page}"}},
        "_embedded": {entity: items},
    }
    if next_page:
        body["_links"]["next"] = {"href": f"{BASE}/api/v4/{entity}?limit=2&page={next_page}"}
    return httpx.Response(200, json=body, headers={"X-Request-Id": f"req-{page}"})


def validation_problem(code: str, path: str, detail: str) -> dict:
    """amoCRM's 400 body for one bad field of item 0, in the reference's shape."""
    return {
        "validation-errors": [
            {"request_id": "0", "errors": [{"code": code, "path": path, "detail": detail}]}
        ],
        "title": "Bad Request",
        "status": 400,
        "detail": "Request validation failed",
    }


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/api/v4/leads", "/api/v4/leads"),
        ("leads", "/api/v4/leads"),
        ("/leads/123/", "/api/v4/leads/123"),
        ("api/v4/leads/pipelines", "/api/v4/leads/pipelines"),
    ],
)
def test_api_path_accepted(given, expected):
    assert api_path(given) == expected


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("https://evil.com/api/v4/leads", "not a URL"),
        ("//evil.com/api/v4", "not a URL"),
        ("/api/v4/leads?limit=5", "query"),
        ("/api/v4/../oauth2/access_token", "OAuth"),
        ("/oauth2/access_token", "OAuth"),
        ("/api/v2/leads", "v4"),
        ("/api/v4/leads/../../x", ".."),
        ("/api/v4/leads%2F..", ".."),
        ("", "empty"),
    ],
)
def test_api_path_refused(given, hint):
    with pytest.raises(InvalidArgument, match=hint):
        api_path(given)


def test_query_flattening_keeps_brackets_and_lists():
    pairs = flatten_query(
        {
            "filter[statuses][0][pipeline_id]": 10,
            "filter": {"id": [1, 2]},
            "with": ["contacts", "loss_reason"],
            "order": {"created_at": "desc"},
            "flag": True,
        }
    )
    assert pairs == [
        ("filter[statuses][0][pipeline_id]", "10"),
        ("filter[id][]", "1"),
        ("filter[id][]", "2"),
        ("with", "contacts,loss_reason"),
        ("order[created_at]", "desc"),
        ("flag", "1"),
    ]
    assert flatten_query({"filter": {"statuses": [{"pipeline_id": 1, "status_id": 2}]}}) == [
        ("filter[statuses][0][pipeline_id]", "1"),
        ("filter[statuses][0][status_id]", "2"),
    ]


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_empty_search_is_not_an_error(respx_mock, client):
    respx_mock.get("/api/v4/contacts").mock(return_value=httpx.Response(204))
    result = await call_api(client, None, "GET", "/api/v4/contacts", {"query": "nobody"})
    assert result["status"] == 204
    assert result["items"] == [] and result["count"] == 0 and result["empty"] is True
    assert "not an error" in result["note"]
    assert respx_mock.calls.call_count == 1  # no refresh, no retry


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_short_page_is_not_the_end(respx_mock, client):
    route = respx_mock.get("/api/v4/leads")
    route.side_effect = [
        hal("leads", [{"id": 1, "name": "a"}], page=1, next_page=2),  # short page, next exists
        hal("leads", [{"id": 2, "name": "b"}, {"id": 3, "name": "c"}], page=2, next_page=3),
        httpx.Response(204),
    ]
    store = Store()
    result = await call_api(client, store, "GET", "leads", {"limit": 2}, all_pages=True)
    assert [i["id"] for i in result["items"]] == [1, 2, 3]
    assert result["has_more"] is False and result["pages_fetched"] == 3
    assert route.call_count == 3
    assert [r["id"] for r in store.query("SELECT id FROM amocrm_leads ORDER BY id")] == [1, 2, 3]
    assert "_links" not in result["items"][0]


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_all_pages_stops_at_cap_and_says_so(respx_mock, client):
    respx_mock.get("/api/v4/leads").side_effect = [
        hal("leads", [{"id": n}], page=n, next_page=n + 1) for n in range(1, 4)
    ]
    result = await call_api(client, None, "GET", "/api/v4/leads", all_pages=True, max_pages=2)
    assert result["count"] == 2 and result["stopped_early"] is True
    assert result["next_page"] == 3
    assert any("page=3" in note for note in result["notes"])


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_limit_clamped_to_250(respx_mock, client):
    route = respx_mock.get("/api/v4/leads").mock(return_value=hal("leads", [{"id": 1}]))
    result = await call_api(client, None, "GET", "/api/v4/leads", {"limit": 1000})
    assert route.calls.last.request.url.params["limit"] == "250"
    assert "lowered to 250" in result["notes"][0]


@pytest.mark.anyio
async def test_status_id_filter_refused_with_the_right_form(client):
    with pytest.raises(InvalidArgument, match=r"filter\[statuses\]\[0\]\[pipeline_id\]"):
        await call_api(client, None, "GET", "/api/v4/leads", {"filter[status_id]": 142})


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_validation_errors_are_readable(respx_mock, client):
    problem = validation_problem(
        "NotSupportedChoice",
        "custom_fields_values.0.field_id",
        "The value you selected is not a valid choice.",
    )
    respx_mock.post("/api/v4/leads").mock(
        return_value=httpx.Response(
            400,
            json=problem,
            headers={"X-Request-Id": "abc123", "Content-Type": "application/problem+json"},
        )
    )
    with pytest.raises(Rejected) as info:
        await call_api(client, None, "POST", "/api/v4/leads", body=[{"name": "x"}])
    message = str(info.value)
    assert "item 0, field custom_fields_values.0.field_id: The value you selected" in message
    assert "NotSupportedChoice" in message and "abc123" in message
    assert info.value.status == 400


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_html_403_means_account_blocked(respx_mock, client):
    respx_mock.get("/api/v4/account").mock(
        return_value=httpx.Response(
            403,
            text="<!DOCTYPE html><html><body>Blocked</body></html>",
            headers={"Content-Type": "text/html"},
        )
    )
    with pytest.raises(AccountBlocked, match="Only amoCRM support can lift"):
        await client.request("GET", "/api/v4/account")


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_html_404_means_wrong_host(respx_mock, client):
    respx_mock.get("/api/v4/account").mock(
        return_value=httpx.Response(
            404, text="<html>not here</html>", headers={"Content-Type": "text/html"}
        )
    )
    with pytest.raises(WrongHost):
        await client.request("GET", "/api/v4/account")


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_problem_404_is_not_found(respx_mock, client):
    respx_mock.get("/api/v4/nothing").mock(
        return_value=httpx.Response(
            404, json={"title": "Not Found", "status": 404, "detail": "No such path"}
        )
    )
    with pytest.raises(NotFound, match="No such path"):
        await client.request("GET", "/api/v4/nothing")


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_revoked_token_reads_hint(respx_mock, client):
    respx_mock.get("/api/v4/account").mock(
        return_value=httpx.Response(
            401,
            json={
                "title": "Unauthorized",
                "status": 401,
                "detail": "",
                "hint": "Token has been revoked",
            },
        )
    )
    with pytest.raises(AuthFailed, match="revoked"):
        await client.request("GET", "/api/v4/account")


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_redirect_is_not_followed(respx_mock, client):
    respx_mock.get("/api/v4/account").mock(
        return_value=httpx.Response(301, headers={"Location": "https://evil.example/steal"})
    )
    other = respx_mock.get("https://evil.example/steal")
    with pytest.raises(WrongHost, match="redirect"):
        await client.request("GET", "/api/v4/account")
    assert not other.called


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_read_retries_server_errors(respx_mock, client):
    route = respx_mock.get("/api/v4/users").mock(
        side_effect=[
            httpx.Response(503),
            httpx.Response(429, headers={"Retry-After": "0"}),
            hal("users", [{"id": 7, "name": "Анна"}]),
        ]
    )
    answer = await client.request("GET", "/api/v4/users")
    assert answer.body["_embedded"]["users"][0]["id"] == 7
    assert route.call_count == 3


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_post_is_not_retried_after_a_timeout(respx_mock, client):
    route = respx_mock.post("/api/v4/leads").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(OutcomeUnknown, match="Do not send it again"):
        await client.request("POST", "/api/v4/leads", body=[{"name": "x"}])
    assert route.call_count == 1


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_post_is_not_retried_on_503(respx_mock, client):
    route = respx_mock.post("/api/v4/leads").mock(return_value=httpx.Response(503))
    with pytest.raises(OutcomeUnknown, match="may have been carried out"):
        await client.request("POST", "/api/v4/leads", body=[{"name": "x"}])
    assert route.call_count == 1


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_post_retried_when_connection_never_made(respx_mock, client):
    route = respx_mock.post("/api/v4/leads").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(200, json={"_embedded": {"leads": [{"id": 5, "request_id": "0"}]}}),
        ]
    )
    answer = await client.request("POST", "/api/v4/leads", body=[{"name": "x"}])
    assert answer.body["_embedded"]["leads"][0]["id"] == 5
    assert route.call_count == 2


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_errors_hold_no_secret_or_url(respx_mock, client):
    respx_mock.get("/api/v4/leads").mock(side_effect=httpx.ConnectError(f"{BASE}?token={TOKEN}"))
    with pytest.raises(Unavailable) as info:
        await client.request("GET", "/api/v4/leads", [("query", "Иванов")])
    assert TOKEN not in str(info.value) and BASE not in str(info.value)


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_complex_answer_is_a_bare_array(respx_mock, client):
    respx_mock.post("/api/v4/leads/complex").mock(
        return_value=httpx.Response(
            200,
            json=[
                {
                    "id": 11,
                    "contact_id": 22,
                    "company_id": None,
                    "request_id": ["0"],
                    "merged": False,
                }
            ],
        )
    )
    result = await call_api(
        client, None, "POST", "/api/v4/leads/complex", body=json.loads('[{"name": "x"}]')
    )
    assert result["data"][0]["id"] == 11 and result["data"][0]["contact_id"] == 22


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_next_link_to_another_host_is_not_followed(respx_mock, client):
    body = {
        "_page": 1,
        "_links": {"next": {"href": "https://evil.example/api/v4/leads?page=2"}},
        "_embedded": {"leads": [{"id": 1}]},
    }
    respx_mock.get("/api/v4/leads").mock(return_value=httpx.Response(200, json=body))
    evil = respx_mock.get("https://evil.example/api/v4/leads")
    result = await call_api(client, None, "GET", "/api/v4/leads", all_pages=True)
    assert not evil.called
    assert any("left the account's host" in n for n in result["notes"])


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_whole_read_object_sent_back_gets_the_minimal_shape_hint(respx_mock, client):
    problem = validation_problem(
        "FieldNotExpected", "custom_fields_values.0.field_name", "This field was not expected."
    )
    respx_mock.patch("/api/v4/leads").mock(return_value=httpx.Response(400, json=problem))
    with pytest.raises(Rejected) as info:
        await client.request("PATCH", "/api/v4/leads", body=[{"id": 1}])
    assert "drop read-only keys" in str(info.value)


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_field_id_of_another_entity_points_to_custom_fields(respx_mock, client):
    problem = validation_problem(
        "NotSupportedChoice",
        "custom_fields_values.0.field_id",
        "The value you selected is not a valid choice.",
    )
    respx_mock.post("/api/v4/leads").mock(return_value=httpx.Response(400, json=problem))
    with pytest.raises(Rejected, match="custom_fields"):
        await client.request("POST", "/api/v4/leads", body=[{"name": "x"}])


@pytest.mark.anyio
@respx.mock(base_url=BASE, assert_all_called=False)
async def test_expired_long_lived_token_names_the_setting(respx_mock, client):
    respx_mock.get("/api/v4/account").mock(
        return_value=httpx.Response(
            401, json={"title": "Unauthorized", "status": 401, "detail": "Unauthorized"}
        )
    )
    with pytest.raises(AuthFailed, match="AMOCRM_API_KEY"):
        await client.request("GET", "/api/v4/account")


def test_timestamps_are_sent_as_whole_seconds_not_floats():
    pairs = flatten_query({"filter[created_at][from]": 1796072400.0})
    assert pairs == [("filter[created_at][from]", "1796072400")]
