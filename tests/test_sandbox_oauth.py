"""The amoCRM emulator's OAuth: codes work once, refresh tokens rotate, access tokens expire."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest

from tariti_mcp.sandbox import Sandbox

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(seed=21, calls=100, days=5) as running:
        yield running


@pytest.fixture
async def http(sandbox):
    async with httpx.AsyncClient(base_url=sandbox.amocrm_url) as client:
        yield client


def grant(sandbox, grant_type, **fields):
    client = sandbox.oauth_client
    return {
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "grant_type": grant_type,
        "redirect_uri": client.redirect_uri,
        **fields,
    }


async def exchange(http, sandbox, code):
    body = grant(sandbox, "authorization_code", code=code)
    return await http.post("/oauth2/access_token", json=body)


async def refresh(http, sandbox, token, **overrides):
    body = {**grant(sandbox, "refresh_token", refresh_token=token), **overrides}
    return await http.post("/oauth2/access_token", json=body)


def problem(response, status):
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


async def account(http, access_token):
    return await http.get("/api/v4/account", headers={"Authorization": f"Bearer {access_token}"})


async def test_a_code_is_exchanged_once(http, sandbox):
    code = sandbox.amocrm.issue_code()
    before = len(sandbox.amocrm.token_requests)

    first = await exchange(http, sandbox, code)
    assert first.status_code == 200
    pair = first.json()
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 86400
    assert isinstance(pair["server_time"], int)
    assert pair["access_token"].count(".") == 2 and pair["refresh_token"]
    assert (await account(http, pair["access_token"])).status_code == 200

    again = problem(await exchange(http, sandbox, code), 400)
    assert again["hint"] == "Authorization code has been revoked"
    assert sandbox.amocrm.token_requests[before:] == [
        ("authorization_code", "ok"),
        ("authorization_code", "refused"),
    ]


async def test_refresh_rotates_and_the_spent_token_is_revoked(http, sandbox):
    seeded = sandbox.amocrm.issue_refresh_token()
    refreshes, refused = sandbox.amocrm.refreshes, sandbox.amocrm.refused_refreshes

    rotated = await refresh(http, sandbox, seeded)
    assert rotated.status_code == 200
    pair = rotated.json()
    assert pair["refresh_token"] != seeded
    assert (await account(http, pair["access_token"])).status_code == 200
    assert sandbox.amocrm.refreshes == refreshes + 1

    spent = problem(await refresh(http, sandbox, seeded), 401)
    assert spent["hint"] == "Token has been revoked"
    assert "revoked" not in spent["detail"]  # the reason is in hint only, as on the real API
    assert sandbox.amocrm.refused_refreshes == refused + 1

    following = await refresh(http, sandbox, pair["refresh_token"])
    assert following.status_code == 200
    assert following.json()["access_token"] != pair["access_token"]
    assert sandbox.amocrm.token_requests[-3:] == [
        ("refresh_token", "ok"),
        ("refresh_token", "refused"),
        ("refresh_token", "ok"),
    ]


async def test_unknown_refresh_token_is_revoked_too(http, sandbox):
    refused = problem(await refresh(http, sandbox, "def50200never-issued"), 401)
    assert refused["hint"] == "Token has been revoked"


async def test_wrong_client_is_401_and_spends_nothing(http, sandbox):
    token = sandbox.amocrm.issue_refresh_token()
    for wrong in ({"client_secret": "x" * 64}, {"client_id": "00000000-0000-4000-8000-0000"}):
        body = problem(await refresh(http, sandbox, token, **wrong), 401)
        assert "client" in body["hint"].lower()
    assert (await refresh(http, sandbox, token)).status_code == 200


async def test_redirect_uri_must_match_on_both_grants(http, sandbox):
    token = sandbox.amocrm.issue_refresh_token()
    other = "http://127.0.0.1:1/elsewhere"
    refused = problem(await refresh(http, sandbox, token, redirect_uri=other), 400)
    assert "redirect_uri" in refused["hint"]
    code_body = grant(sandbox, "authorization_code", code=sandbox.amocrm.issue_code())
    mismatch = await http.post("/oauth2/access_token", json={**code_body, "redirect_uri": other})
    problem(mismatch, 400)
    # A refused request spends neither the refresh token nor the code.
    assert (await refresh(http, sandbox, token)).status_code == 200
    assert (await http.post("/oauth2/access_token", json=code_body)).status_code == 200


async def test_every_access_token_is_unique(http, sandbox):
    tokens = set()
    for _ in range(5):
        answer = await exchange(http, sandbox, sandbox.amocrm.issue_code())
        tokens.add(answer.json()["access_token"])
    assert len(tokens) == 5


async def test_access_token_expires_while_the_long_lived_token_works():
    with Sandbox(seed=22, calls=50, days=3, token_ttl=1) as short:
        async with httpx.AsyncClient(base_url=short.amocrm_url) as http:
            answer = await exchange(http, short, short.amocrm.issue_code())
            pair = answer.json()
            assert pair["expires_in"] == 1
            assert (await account(http, pair["access_token"])).status_code == 200

            await anyio.sleep(1.2)
            expired = problem(await account(http, pair["access_token"]), 401)
            assert expired["hint"] == "Token has expired"
            assert (await account(http, short.amocrm_token)).status_code == 200
            unknown = problem(await account(http, "not-a-token"), 401)
            assert "hint" not in unknown
            # The refresh token outlives the access token.
            assert (await refresh(http, short, pair["refresh_token"])).status_code == 200


async def test_consent_page_redirects_with_code_and_state(http, sandbox):
    client = sandbox.oauth_client
    for query in (
        {"client_id": client.client_id, "state": "s-1"},
        {
            "client_id": client.client_id,
            "state": "s-2",
            "redirect_uri": client.redirect_uri,
            "response_type": "code",
        },
    ):
        answer = await http.get("/oauth", params=query)
        assert answer.status_code == 302
        location = urlsplit(answer.headers["location"])
        assert location._replace(query="").geturl() == client.redirect_uri
        params = {key: values[0] for key, values in parse_qs(location.query).items()}
        assert params["state"] == query["state"]
        assert params["referer"] == urlsplit(sandbox.amocrm_url).netloc
        assert (await exchange(http, sandbox, params["code"])).status_code == 200


async def test_consent_page_refuses_an_unknown_client(http, sandbox):
    answer = await http.get("/oauth", params={"client_id": "nobody", "state": "x"})
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/html")
    mismatch = await http.get(
        "/oauth",
        params={"client_id": sandbox.oauth_client.client_id, "redirect_uri": "http://evil/"},
    )
    assert mismatch.status_code == 400 and "location" not in mismatch.headers


async def test_oauth_env_seeds_a_working_refresh_token(http, sandbox):
    env = sandbox.oauth_env
    assert env["AMOCRM_CLIENT_ID"] == sandbox.oauth_client.client_id
    assert len(env["AMOCRM_CLIENT_SECRET"]) >= 32
    assert env["AMOCRM_REDIRECT_URI"].startswith("http://127.0.0.1:")
    assert sandbox.oauth_env["AMOCRM_REFRESH_TOKEN"] != env["AMOCRM_REFRESH_TOKEN"]
    assert (await refresh(http, sandbox, env["AMOCRM_REFRESH_TOKEN"])).status_code == 200


def test_credentials_follow_the_seed():
    first, again, other = Sandbox(seed=3), Sandbox(seed=3), Sandbox(seed=4)
    assert first.oauth_client == again.oauth_client
    assert first.oauth_client.client_secret != other.oauth_client.client_secret
