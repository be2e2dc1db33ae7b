"""The Moizvonki client against respx: body credentials, offsets assigned, text answers, writes."""

import json

import httpx
import pytest
import respx

from tariti_mcp.errors import (
    AccessDenied,
    AuthFailed,
    BadAnswer,
    InvalidArgument,
    OutcomeUnknown,
    Rejected,
    Unavailable,
    WrongHost,
)
from tariti_mcp.http import RetryPolicy
from tariti_mcp.moizvonki.api import check_params
from tariti_mcp.moizvonki.client import MoizvonkiClient

URL = "https://acme.moizvonki.ru/api/v1"
KEY = "mz-key-0123456789abcdef"
USER = "boss@acme.ru"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def client():
    mz = MoizvonkiClient(URL, USER, KEY, retry_policy=RetryPolicy(first_wait=0.01, max_wait=0.05))
    yield mz
    await mz.aclose()


def body_of(request: httpx.Request) -> dict:
    return json.loads(request.content)


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_credentials_travel_in_the_body_only(respx_mock, client):
    route = respx_mock.post(URL).mock(
        return_value=httpx.Response(200, json={"results_count": 0, "results": []})
    )
    await client.call("calls.get_sms_templates")
    request = route.calls.last.request
    assert body_of(request) == {
        "user_name": USER,
        "api_key": KEY,
        "action": "calls.get_sms_templates",
    }
    assert KEY not in str(request.url) and "authorization" not in request.headers


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_next_offset_is_assigned_not_added(respx_mock, client):
    pages = {
        0: {
            "results_next_offset": 2,
            "results_count": 2,
            "results_remains": 3,
            "results": [{"db_call_id": 10}, {"db_call_id": 11}],
        },
        2: {
            "results_next_offset": 4,
            "results_count": 2,
            "results_remains": 1,
            "results": [{"db_call_id": 12}, {"db_call_id": 13}],
        },
        4: {
            "results_next_offset": 0,
            "results_count": 1,
            "results_remains": 0,
            "results": [{"db_call_id": 14}],
        },
    }
    route = respx_mock.post(URL).mock(
        side_effect=lambda request: httpx.Response(200, json=pages[body_of(request)["from_offset"]])
    )
    seen = []
    async for page in client.pages("calls.list", {"from_id": 10, "max_results": 500}, max_pages=10):
        seen.extend(c["db_call_id"] for c in page["results"])
    assert seen == [10, 11, 12, 13, 14]
    sent = [body_of(call.request) for call in route.calls]
    assert [s["from_offset"] for s in sent] == [0, 2, 4]
    assert all(s["max_results"] == 100 for s in sent)  # never above the documented cap


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_paging_stops_when_offset_does_not_advance(respx_mock, client):
    page = {
        "results_next_offset": 0 + 3,
        "results_count": 1,
        "results_remains": 5,
        "results": [{"db_call_id": 1}],
    }
    route = respx_mock.post(URL).mock(return_value=httpx.Response(200, json=page))
    count = 0
    async for _ in client.pages("calls.list", {"from_id": 1, "from_offset": 3}, max_pages=50):
        count += 1
    assert count == 1 and route.call_count == 1


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_plain_text_success(respx_mock, client):
    respx_mock.post(URL).mock(return_value=httpx.Response(200, text="SMS posted"))
    assert await client.call(
        "calls.send_sms", {"to": "+79161234567", "text": "hi"}, login=client.login
    ) == {"message": "SMS posted"}


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_bad_credentials(respx_mock, client):
    respx_mock.post(URL).mock(
        return_value=httpx.Response(403, text="Username or password is invalid")
    )
    with pytest.raises(AuthFailed) as info:
        await client.call("calls.get_sms_templates")
    assert "MOIZVONKI_API_KEY" in str(info.value) and KEY not in str(info.value)


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_not_admin(respx_mock, client):
    respx_mock.post(URL).mock(return_value=httpx.Response(403, text="Access denied"))
    with pytest.raises(AccessDenied, match="administrator"):
        await client.call("company.list_employee")


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_wrong_account_host(respx_mock, client):
    respx_mock.post(URL).mock(return_value=httpx.Response(404, text="<html>404</html>"))
    with pytest.raises(WrongHost, match="MOIZVONKI_BASE_URL"):
        await client.call("calls.get_sms_templates")


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_form_fallback_once_on_4xx(respx_mock, client):
    def answer(request):
        if request.headers["content-type"].startswith("application/json"):
            return httpx.Response(400, text="request_data is required")
        return httpx.Response(200, json={"results_count": 0, "results": []})

    route = respx_mock.post(URL).mock(side_effect=answer)
    await client.call("calls.get_sms_templates")
    await client.call("calls.get_sms_templates")
    kinds = [c.request.headers["content-type"].split(";")[0] for c in route.calls]
    assert kinds == [
        "application/json",
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded",
    ]


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_make_call_not_retried_after_timeout(respx_mock, client):
    route = respx_mock.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(OutcomeUnknown):
        await client.call("calls.make_call", {"to": "+79161234567"}, login=client.login)
    assert route.call_count == 1


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_list_retried_after_timeout(respx_mock, client):
    route = respx_mock.post(URL).mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200, json={"results": []})]
    )
    assert await client.call("calls.list", {"from_id": 1}) == {"results": []}
    assert route.call_count == 2


@pytest.mark.anyio
async def test_reserved_params_refused(client):
    with pytest.raises(InvalidArgument, match="api_key"):
        await client.call("calls.list", {"from_id": 1, "api_key": "x"})


def test_a_missing_parameter_is_named_as_a_parameter_with_an_example():
    """A newcomer read "calls.make_call needs to" as a sentence cut short."""
    from zoneinfo import ZoneInfo

    with pytest.raises(InvalidArgument) as caught:
        check_params("calls.make_call", {}, ZoneInfo("UTC"))
    assert str(caught.value) == (
        'calls.make_call needs \'to\' in params (e.g. {"to": "+79161234567"})'
    )
    with pytest.raises(InvalidArgument) as caught:
        check_params("calls.send_sms", {"to": "+79161234567"}, ZoneInfo("UTC"))
    assert "needs 'text' in params" in str(caught.value)


def test_calls_list_with_to_date_before_from_date_is_refused_not_answered_empty():
    """A newcomer's find: the reversed range came back as zero calls, like a quiet day."""
    from zoneinfo import ZoneInfo

    with pytest.raises(InvalidArgument) as caught:
        check_params(
            "calls.list",
            {"from_date": "2026-12-03", "to_date": "2026-12-01"},
            ZoneInfo("Europe/Moscow"),
        )
    assert (
        str(caught.value) == "to_date is before from_date, a range with no calls in it: swap them"
    )
    same_day = check_params(
        "calls.list",
        {"from_date": "2026-12-03", "to_date": "2026-12-03"},
        ZoneInfo("Europe/Moscow"),
    )
    assert same_day["to_date"] - same_day["from_date"] == 86399


def test_unknown_parameter_names_refused():
    # Moizvonki ignores unknown names silently and serves the same first page forever.
    from zoneinfo import ZoneInfo

    with pytest.raises(InvalidArgument, match="results_offset"):
        check_params("calls.list", {"from_id": 1, "results_offset": 100}, ZoneInfo("UTC"))
    with pytest.raises(InvalidArgument, match="date_from"):
        check_params("calls.list", {"date_from": 1}, ZoneInfo("UTC"))


def test_iso_dates_become_unix_seconds_in_business_zone():
    from zoneinfo import ZoneInfo

    checked = check_params("calls.list", {"from_date": "2026-12-01"}, ZoneInfo("Europe/Moscow"))
    assert checked["from_date"] == 1796072400  # 2026-12-01 00:00 +03:00
    assert checked["supervised"] == 1


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_send_sms_5xx_is_an_unknown_outcome_not_a_retry(respx_mock, client):
    route = respx_mock.post(URL).mock(return_value=httpx.Response(502, text="Bad Gateway"))
    with pytest.raises(OutcomeUnknown, match="Do not send it again"):
        await client.call(
            "calls.send_sms", {"to": "+79161234567", "text": "hi"}, login=client.login
        )
    assert route.call_count == 1


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_moizvonki_posts_to_the_exact_api_path_without_trailing_slash(respx_mock, client):
    route = respx_mock.post(URL).mock(return_value=httpx.Response(200, json={"results": []}))
    await client.call("calls.get_sms_templates")
    assert route.calls.last.request.url.path == "/api/v1"


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_upstream_echo_of_the_request_does_not_leak_the_key(respx_mock, client):
    def echo(request):
        return httpx.Response(500, text=f"bad request: {request.content.decode()}")

    respx_mock.post(URL).mock(side_effect=echo)
    with pytest.raises(Unavailable) as info:
        await client.call("calls.get_sms_templates")
    assert KEY not in str(info.value)

    respx_mock.post(URL).mock(side_effect=lambda r: httpx.Response(200, text=r.content.decode()))
    answer = await client.call("calls.get_sms_templates")
    assert KEY not in json.dumps(answer)


def test_to_date_as_a_date_covers_that_whole_day():
    from zoneinfo import ZoneInfo

    checked = check_params(
        "calls.list",
        {"from_date": "2026-12-03", "to_date": "2026-12-03"},
        ZoneInfo("Europe/Moscow"),
    )
    assert checked["to_date"] - checked["from_date"] == 86399


def test_credentials_in_params_are_refused_for_the_right_reason():
    from zoneinfo import ZoneInfo

    with pytest.raises(InvalidArgument, match="server adds the login and key"):
        check_params("calls.list", {"from_id": 1, "api_key": "x"}, ZoneInfo("UTC"))


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_key_echoed_near_the_cut_does_not_leak_in_part(respx_mock, client):
    respx_mock.post(URL).mock(return_value=httpx.Response(400, text="x" * 180 + f" key={KEY}"))
    with pytest.raises(Rejected) as info:
        await client.call("calls.get_sms_templates")
    assert KEY[:8] not in str(info.value)


PAGE = "<!DOCTYPE html><html><head><title>Вход</title></head><body>Личный кабинет</body></html>"


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_web_page_answer_to_a_read_is_an_error_without_the_markup(respx_mock, client):
    respx_mock.post(URL).mock(
        return_value=httpx.Response(200, text=PAGE, headers={"content-type": "text/html"})
    )
    with pytest.raises(BadAnswer) as caught:
        await client.call("calls.get_sms_templates")
    message = str(caught.value)
    assert "web page" in message and "MOIZVONKI_BASE_URL" in message
    assert "<" not in message and "кабинет" not in message


@pytest.mark.anyio
@respx.mock(assert_all_called=False)
async def test_web_page_answer_to_make_call_is_an_unknown_outcome(respx_mock, client):
    route = respx_mock.post(URL).mock(return_value=httpx.Response(200, text=PAGE))
    with pytest.raises(OutcomeUnknown) as caught:
        await client.call("calls.make_call", {"to": "+79161234567"}, login=client.login)
    assert "<" not in str(caught.value)
    assert route.call_count == 1  # a write that may have rung a phone is not sent again
