"""OAuth tokens: stored before use, one refresh per expiry across processes, none reused."""

import itertools
import json
import time

import anyio
import httpx
import pytest
import respx

from tariti_mcp.amocrm.client import AmoCrmClient
from tariti_mcp.amocrm.tokens import OAuthApp, OAuthTokens
from tariti_mcp.errors import AuthFailed
from tariti_mcp.store import Store

BASE = "https://acme.amocrm.ru"
APP = OAuthApp("client-1", "client-secret-0123456789abcdef", "https://example.com/cb")


class TokenServer:
    """amoCRM's token endpoint as the reference describes it: refresh tokens are single-use."""

    def __init__(self, ttl=86400):
        self.ttl = ttl
        self.counter = itertools.count(1)
        self.live_refresh: set[str] = set()
        self.valid_access: dict[str, float] = {}
        self.refreshes = 0
        self.refused = 0

    def issue(self):
        n = next(self.counter)
        access, refresh = f"access-{n}-0123456789", f"refresh-{n}-0123456789"
        self.live_refresh.add(refresh)
        self.valid_access[access] = time.time() + self.ttl
        return {
            "token_type": "Bearer",
            "expires_in": self.ttl,
            "access_token": access,
            "refresh_token": refresh,
        }

    async def token_endpoint(self, request):
        await anyio.sleep(0.05)  # a real round trip, so concurrent refreshes can interleave
        body = json.loads(request.content)
        assert body["redirect_uri"] == APP.redirect_uri
        if body["grant_type"] == "refresh_token":
            if body["refresh_token"] not in self.live_refresh:
                self.refused += 1
                return httpx.Response(
                    401,
                    json={
                        "title": "Unauthorized",
                        "status": 401,
                        "detail": "",
                        "hint": "Token has been revoked",
                    },
                )
            self.live_refresh.discard(body["refresh_token"])
            self.refreshes += 1
        return httpx.Response(200, json=self.issue())

    def api(self, request):
        token = request.headers["authorization"].removeprefix("Bearer ")
        if self.valid_access.get(token, 0) < time.time():
            return httpx.Response(401, json={"title": "Unauthorized", "status": 401})
        return httpx.Response(200, json={"id": 1, "name": "Acme"})


@pytest.fixture
def server():
    fake = TokenServer()
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.post("/oauth2/access_token").mock(side_effect=fake.token_endpoint)
        mock.get("/api/v4/account").mock(side_effect=fake.api)
        yield fake


def tokens_for(store, tmp_path):
    return OAuthTokens(store, BASE, APP, lock_path=str(tmp_path / "db.amocrm.lock"))


@pytest.mark.anyio
async def test_restart_never_reuses_a_spent_refresh_token(server, tmp_path):
    store = Store(tmp_path / "t.db")
    seed = server.issue()["refresh_token"]
    first = tokens_for(store, tmp_path)
    assert first.seed(seed) is True
    await first.token()  # spends the seed, stores its successor
    assert server.refreshes == 1

    restarted = tokens_for(Store(tmp_path / "t.db"), tmp_path)
    assert restarted.seed(seed) is False  # same AMOCRM_REFRESH_TOKEN in the environment
    assert (await restarted.token()).startswith("access-")
    assert server.refused == 0


@pytest.mark.anyio
async def test_pair_is_stored_before_it_is_used(server, tmp_path):
    store = Store(tmp_path / "t.db")
    tokens = tokens_for(store, tmp_path)
    tokens.seed(server.issue()["refresh_token"])
    access = await tokens.token()
    row = store.token_pair(tokens.account)
    assert row["access_token"] == access and row["refresh_token"] in server.live_refresh
    assert row["expires_at"] > time.time() + 80000


@pytest.mark.anyio
async def test_two_processes_refresh_once_per_expiry(server, tmp_path):
    path = tmp_path / "shared.db"
    seed_store = Store(path)
    tokens_for(seed_store, tmp_path).seed(server.issue()["refresh_token"])
    # Two processes: their own connection, their own lock object, one lock file.
    processes = [tokens_for(Store(path), tmp_path) for _ in range(2)]
    got = []

    async def use(tokens):
        got.append(await tokens.token())

    async with anyio.create_task_group() as group:
        for tokens in processes * 10:
            group.start_soon(use, tokens)
    assert server.refreshes == 1 and server.refused == 0
    assert len(set(got)) == 1


@pytest.mark.anyio
async def test_refused_refresh_adopts_a_pair_another_process_stored(server, tmp_path):
    path = tmp_path / "shared.db"
    store = Store(path)
    mine = tokens_for(store, tmp_path)
    mine.seed(server.issue()["refresh_token"])
    await mine.token()
    stale_row = store.token_pair(mine.account)
    # Another process rotates; then this one is handed the old pair as if it read it earlier.
    other = tokens_for(Store(path), tmp_path)
    await other.refresh(stale_row["access_token"])
    newest = store.token_pair(mine.account)["access_token"]
    assert await mine.refresh(stale_row["access_token"]) == newest
    assert server.refused == 0


@pytest.mark.anyio
async def test_dead_refresh_token_asks_for_login_and_quotes_hint(server, tmp_path):
    store = Store(tmp_path / "t.db")
    tokens = tokens_for(store, tmp_path)
    tokens.seed("refresh-never-issued-0123456789")
    with pytest.raises(AuthFailed) as info:
        await tokens.token()
    assert "tariti-mcp amocrm login" in str(info.value)
    assert "Token has been revoked" in str(info.value)
    assert "refresh-never-issued" not in str(info.value)
    calls = server.refused
    with pytest.raises(AuthFailed, match="amocrm login"):
        await tokens.token()
    assert server.refused == calls  # a dead pair is not sent again


@pytest.mark.anyio
async def test_401_refreshes_once_then_the_request_goes_through(server, tmp_path):
    store = Store(tmp_path / "t.db")
    tokens = tokens_for(store, tmp_path)
    tokens.seed(server.issue()["refresh_token"])
    first = await tokens.token()
    server.valid_access[first] = 0  # revoked early by amoCRM
    client = AmoCrmClient(BASE, tokens)
    answer = await client.request("GET", "/api/v4/account")
    assert answer.body["name"] == "Acme"
    assert server.refreshes == 2
    await client.aclose()


@pytest.mark.anyio
async def test_token_request_is_never_retried(tmp_path):
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        route = mock.post("/oauth2/access_token").mock(side_effect=httpx.ReadTimeout("slow"))
        tokens = tokens_for(Store(tmp_path / "t.db"), tmp_path)
        tokens.seed("refresh-1-0123456789")
        with pytest.raises(Exception, match="no answer"):
            await tokens.token()
        assert route.call_count == 1
