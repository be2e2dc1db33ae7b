"""The amoCRM emulator's rate limit and blocked account: 429 in plain text, then 403 in HTML."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from tariti_mcp.sandbox import Sandbox

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def limited():
    with Sandbox(seed=31, calls=50, days=3, rate_limit=7) as running:
        yield running


async def burst(sandbox, count, path="/api/v4/account"):
    headers = {"Authorization": f"Bearer {sandbox.amocrm_token}"}
    async with httpx.AsyncClient(base_url=sandbox.amocrm_url, headers=headers) as http:
        answers = []

        async def one():
            answers.append(await http.get(path))

        async with anyio.create_task_group() as group:
            for _ in range(count):
                group.start_soon(one)
    return answers


def most_in_one_second(times):
    return max(sum(1 for other in times if moment - 1.0 < other <= moment) for moment in times)


async def test_ten_at_once_get_seven_answers_and_three_429(limited):
    answers = await burst(limited, 10)

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * 7 + [429] * 3
    for refused in (answer for answer in answers if answer.status_code == 429):
        assert refused.headers["content-type"].startswith("text/plain")
        assert refused.headers["retry-after"] == "1"
        with pytest.raises(ValueError):
            json.loads(refused.text)
    assert limited.amocrm.rate_limited == 3
    assert len(limited.amocrm.request_times) == 7
    assert most_in_one_second(limited.amocrm.request_times) <= 7


async def test_the_window_slides(limited):
    await burst(limited, 7)
    assert [a.status_code for a in await burst(limited, 1)] == [429]
    await anyio.sleep(1.05)
    assert sorted(a.status_code for a in await burst(limited, 9)) == [200] * 7 + [429] * 2
    assert most_in_one_second(limited.amocrm.request_times) <= 7


async def test_the_token_endpoint_is_not_counted(limited):
    await burst(limited, 10)
    async with httpx.AsyncClient(base_url=limited.amocrm_url) as http:
        answer = await http.post("/oauth2/access_token", json={"grant_type": "refresh_token"})
    assert answer.status_code == 401
    assert limited.amocrm.rate_limited == 3


async def test_a_blocked_account_answers_403_html_everywhere(limited):
    limited.amocrm.blocked = True
    async with httpx.AsyncClient(base_url=limited.amocrm_url) as http:
        answers = [
            await http.get(
                "/api/v4/leads", headers={"Authorization": f"Bearer {limited.amocrm_token}"}
            ),
            await http.post("/oauth2/access_token", json={"grant_type": "refresh_token"}),
            await http.get("/oauth", params={"client_id": limited.oauth_client.client_id}),
        ]
    for answer in answers:
        assert answer.status_code == 403
        assert answer.headers["content-type"].startswith("text/html")
        assert answer.text.lstrip().startswith("<!DOCTYPE html>")
    limited.amocrm.blocked = False
    assert [a.status_code for a in await burst(limited, 1)] == [200]


async def test_repeated_excess_blocks_the_account():
    with Sandbox(seed=32, calls=50, days=3, rate_limit=2, block_after=3) as strict:
        assert strict.amocrm.blocked is False
        answers = await burst(strict, 5)
        assert sorted(answer.status_code for answer in answers) == [200, 200, 429, 429, 429]
        assert strict.amocrm.blocked is True

        await anyio.sleep(1.05)
        after = await burst(strict, 1)
        assert after[0].status_code == 403
        assert after[0].headers["content-type"].startswith("text/html")


async def test_no_limit_when_off():
    with Sandbox(seed=33, calls=50, days=3, rate_limit=0) as free:
        answers = await burst(free, 20)
    assert {answer.status_code for answer in answers} == {200}
    assert free.amocrm.rate_limited == 0
    assert len(free.amocrm.request_times) == 20
