"""Serving over streamable HTTP: who is refused and why, the routes beside /mcp, one lifespan
for the whole process, and no secret in any answer or log line."""

from __future__ import annotations

import importlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from ports import closed_port
from starlette.testclient import TestClient

from tariti_mcp import server as server_module
from tariti_mcp import web
from tariti_mcp.config import ConfigError, Settings
from tariti_mcp.server import create_server, current_state
from tariti_mcp.store import Store

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t0k-" + "Zq8xW3vLr9Kp2Nm5Hs7Jd4Fg6Bc1Ty0Ue" + "-9wQ"
WEBHOOK_SECRET = "wh-" + "Pf3Lk8Xr2Vn6Qs9Zt4Mb7Hc1Jg5Dy0We" + "-2aR"
PUBLIC_HOST = "mcp.test.example"
APP_ORIGIN = "https://app.test.example"
MAX_BODY = 4096
ACCEPT = "application/json, text/event-stream"
TOOLS = [
    "call_amocrm_api",
    "call_moizvonki_api",
    "forward_lead_to_amocrm",
    "get_moizvonki_analytics",
]
START_WAIT = 90.0


def initialize(request_id: int = 1) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test-http", "version": "1"},
        },
    }


def tools_list(request_id: int = 2) -> dict:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/list"}


def rpc_result(response) -> dict:
    """The JSON-RPC message in a JSON or event-stream answer."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])
    return response.json()


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AMOCRM_", "MOIZVONKI_", "TARITI_"))
    }
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    return env


# --- refusing to start -----------------------------------------------------------------------


def test_non_loopback_bind_without_token_refuses_to_start(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "tariti_mcp", "serve", "--transport", "http", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(TARITI_HTTP_ALLOWED_HOSTS=PUBLIC_HOST),
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "TARITI_HTTP_TOKEN" in lines[0]
    assert "secrets.token_urlsafe(32)" in lines[0]


def settings_for(**values) -> Settings:
    return Settings(_env_file=None, db_path=":memory:", **values)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "tariti.lan"])
def test_every_non_loopback_bind_needs_token_and_allowed_hosts(host):
    with pytest.raises(ConfigError, match="TARITI_HTTP_TOKEN"):
        web.check_exposure(settings_for(http_allowed_hosts=PUBLIC_HOST), host)
    with pytest.raises(ConfigError, match="TARITI_HTTP_ALLOWED_HOSTS"):
        web.check_exposure(settings_for(http_token=TOKEN), host)
    web.check_exposure(settings_for(http_token=TOKEN, http_allowed_hosts=PUBLIC_HOST), host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_bind_needs_nothing(host):
    web.check_exposure(settings_for(), host)


def test_short_secrets_are_refused_with_how_to_make_one():
    with pytest.raises(ConfigError, match="TARITI_HTTP_TOKEN is shorter than 32") as short:
        web.check_exposure(settings_for(http_token="x" * 31), "127.0.0.1")
    assert "secrets.token_urlsafe(32)" in str(short.value)
    assert "x" * 31 not in str(short.value)
    with pytest.raises(ConfigError, match="TARITI_WEBHOOK_SECRET is shorter than 32"):
        web.check_exposure(settings_for(webhook_secret="s" * 12), "127.0.0.1")


@pytest.mark.parametrize(
    ("setting", "value", "variable"),
    [
        ("http_allowed_hosts", "https://mcp.example.com", "TARITI_HTTP_ALLOWED_HOSTS"),
        ("http_allowed_hosts", "mcp.example.com/mcp", "TARITI_HTTP_ALLOWED_HOSTS"),
        ("http_allowed_origins", "app.example.com", "TARITI_HTTP_ALLOWED_ORIGINS"),
        ("http_allowed_origins", "https://app.example.com/page", "TARITI_HTTP_ALLOWED_ORIGINS"),
    ],
)
def test_malformed_host_and_origin_lists_name_the_setting(setting, value, variable):
    with pytest.raises(ConfigError, match=variable):
        exposed = {"http_token": TOKEN, "http_allowed_hosts": PUBLIC_HOST, setting: value}
        web.check_exposure(settings_for(**exposed), "0.0.0.0")


def test_allowed_hosts_keep_loopback_with_our_port_and_bare_names_on_any_port():
    settings = settings_for(
        http_allowed_hosts=f"{PUBLIC_HOST}, lan.example:9000", http_allowed_origins=APP_ORIGIN
    )
    exposed = web.transport_security(settings, "0.0.0.0", 8123)
    assert exposed.allowed_hosts == [
        "127.0.0.1:8123",
        "localhost:8123",
        "[::1]:8123",
        PUBLIC_HOST,
        f"{PUBLIC_HOST}:*",
        "lan.example:9000",
    ]
    assert exposed.allowed_origins == [APP_ORIGIN]
    local = web.transport_security(settings_for(), "127.0.0.1", 8123)
    assert local.allowed_origins == [
        "http://127.0.0.1:8123",
        "http://localhost:8123",
        "http://[::1]:8123",
    ]


# --- a real server: the command line, on 0.0.0.0, with the sandbox --------------------------


class Served:
    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.base = f"http://127.0.0.1:{port}"
        self.mcp = self.base + "/mcp"

    def headers(self, token: str | None = TOKEN, **extra: str) -> dict[str, str]:
        headers = {"Host": PUBLIC_HOST, "Accept": ACCEPT}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        headers.update(extra)
        return headers


def _wait_for_port(process: subprocess.Popen, log: Path) -> int:
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        found = re.search(r"serving MCP at http://\S+:(\d+)/mcp", log.read_text())
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError("the server did not start; its log:\n" + log.read_text()[-3000:])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    directory = tmp_path_factory.mktemp("http")
    log = directory / "server.log"
    env = clean_env(
        TARITI_HTTP_TOKEN=TOKEN,
        TARITI_HTTP_ALLOWED_HOSTS=PUBLIC_HOST,
        TARITI_HTTP_ALLOWED_ORIGINS=APP_ORIGIN,
        TARITI_HTTP_MAX_BODY=str(MAX_BODY),
        TARITI_WEBHOOK_SECRET=WEBHOOK_SECRET,
        # The most talkative level: the log is searched for the secrets below.
        TARITI_LOG_LEVEL="DEBUG",
    )
    command = [sys.executable, "-m", "tariti_mcp", "serve", "--transport", "http"]
    command += ["--host", "0.0.0.0", "--port", "0", "--sandbox", "--calls", "300"]
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, cwd=directory, env=env
        )
    try:
        yield Served(process, _wait_for_port(process, log), log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def test_mcp_without_authorization_is_401(served):
    response = httpx.post(served.mcp, json=initialize(), headers=served.headers(token=None))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="tariti-mcp"'
    assert response.json()["error"] == "unauthorized"
    assert "Authorization: Bearer" in response.json()["message"]


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {TOKEN[:-1]}X",
        f"Bearer {TOKEN}{TOKEN}",
        f"Bearer {TOKEN.upper()}",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer",
    ],
)
def test_wrong_token_is_401(served, authorization):
    headers = served.headers(token=None, Authorization=authorization)
    response = httpx.post(served.mcp, json=initialize(), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in response.text
    assert TOKEN[:-1] not in response.text


def test_other_paths_need_the_token_too(served):
    for path in ("/mcp/", "/", "/.well-known/oauth-protected-resource"):
        response = httpx.get(served.base + path, headers=served.headers(token=None))
        assert response.status_code == 401, path


def test_right_token_lists_tools_by_raw_json_rpc(served):
    opened = httpx.post(served.mcp, json=initialize(), headers=served.headers())
    assert opened.status_code == 200
    assert rpc_result(opened)["result"]["serverInfo"]["name"] == "tariti-mcp"
    # Stateless: no session to carry, each request stands alone.
    assert "mcp-session-id" not in opened.headers
    headers = served.headers(**{"Mcp-Protocol-Version": "2025-06-18"})
    listed = httpx.post(served.mcp, json=tools_list(), headers=headers)
    assert listed.status_code == 200
    assert sorted(tool["name"] for tool in rpc_result(listed)["result"]["tools"]) == TOOLS


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_right_token_works_with_the_sdk_client(served, mode):
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    async with (
        http,
        Client(streamable_http_client(served.mcp, http_client=http), mode=mode) as client,
    ):
        tools = await client.list_tools()
        assert sorted(tool.name for tool in tools.tools) == TOOLS
        result = await client.call_tool(
            "call_amocrm_api", {"path": "/api/v4/leads", "query": {"limit": 2}}
        )
        assert result.is_error is False, result
        assert len(result.structured_content["items"]) == 2


def test_forged_host_is_refused(served):
    for path in ("/mcp", "/healthz", f"/webhooks/moizvonki/{WEBHOOK_SECRET}"):
        headers = served.headers(Host="rebind.attacker.example")
        response = httpx.post(served.base + path, json=initialize(), headers=headers)
        assert response.status_code == 421, path
    port_twisted = served.headers(Host=f"127.0.0.1:{served.port + 1}")
    assert httpx.post(served.mcp, json=initialize(), headers=port_twisted).status_code == 421


def test_host_names_match_in_any_case(served):
    """An adversary's find: LOCALHOST and a configured name in capitals were refused (421)."""
    for host in (f"LOCALHOST:{served.port}", f"127.0.0.1:{served.port}", "MCP.Test.Example"):
        response = httpx.post(served.mcp, json=initialize(), headers=served.headers(Host=host))
        assert response.status_code == 200, (host, response.text)


def test_a_refused_host_or_origin_names_the_setting_that_lets_it_in(served):
    """A newcomer behind a new proxy name got a bare 421 and no idea what to change."""
    headers = served.headers(Host="mcp.new-name.example")
    response = httpx.post(served.mcp, json=initialize(), headers=headers)
    assert response.status_code == 421
    assert response.text == (
        "Host 'mcp.new-name.example' is not one this server answers to: add it to "
        "TARITI_HTTP_ALLOWED_HOSTS"
    )
    response = httpx.post(
        served.mcp, json=initialize(), headers=served.headers(Origin="https://evil.example")
    )
    assert response.status_code == 403
    assert (
        "TARITI_HTTP_ALLOWED_ORIGINS" in response.text and "'https://evil.example'" in response.text
    )


def test_missing_token_with_hosts_set_asks_only_for_the_token():
    with pytest.raises(ConfigError) as caught:
        web.check_exposure(settings_for(http_allowed_hosts=PUBLIC_HOST), "0.0.0.0")
    assert "set TARITI_HTTP_TOKEN" in str(caught.value)
    assert "TARITI_HTTP_ALLOWED_HOSTS" not in str(caught.value)


def test_forged_origin_is_refused_and_the_configured_one_passes(served):
    forged = served.headers(Origin="https://evil.example")
    assert httpx.post(served.mcp, json=initialize(), headers=forged).status_code == 403
    # A bind off loopback allows only the configured browser origins, not loopback ones.
    local = served.headers(Origin=f"http://127.0.0.1:{served.port}")
    assert httpx.post(served.mcp, json=initialize(), headers=local).status_code == 403
    allowed = served.headers(Origin=APP_ORIGIN)
    assert httpx.post(served.mcp, json=initialize(), headers=allowed).status_code == 200


def test_oversized_body_is_413(served):
    padded = {**initialize(), "padding": "x" * MAX_BODY}
    response = httpx.post(served.mcp, json=padded, headers=served.headers())
    assert response.status_code == 413

    def chunks():
        for _ in range(8):
            yield b"x" * 1024

    # No Content-Length: the chunks are counted as they come.
    streamed = httpx.post(
        served.mcp, content=chunks(), headers=served.headers(**{"Content-Type": "application/json"})
    )
    assert streamed.status_code == 413
    at_limit = {**initialize(), "padding": "x" * (MAX_BODY - 400)}
    assert len(json.dumps(at_limit)) <= MAX_BODY
    assert httpx.post(served.mcp, json=at_limit, headers=served.headers()).status_code == 200


def test_oversized_body_is_refused_before_it_is_read(served):
    # The request announces 50 MB and sends a few bytes: an answer can only come if the server
    # did not wait for the rest.
    request = (
        f"POST /mcp HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Accept: {ACCEPT}\r\nContent-Type: application/json\r\n"
        "Content-Length: 50000000\r\n\r\n{"
    ).encode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as connection:
        connection.sendall(request)
        head = connection.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 413 ")


def test_healthz_answers_without_token_and_tells_nothing_secret(served):
    response = httpx.get(served.base + "/healthz", headers=served.headers(token=None))
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "version": "0.1.0",
        "amocrm": "configured",
        "moizvonki": "configured",
    }
    for secret in (TOKEN, WEBHOOK_SECRET, "127.0.0.1:", "api_key", "sandbox"):
        assert secret not in response.text


def test_webhook_wrong_secret_is_404(served):
    wrong = WEBHOOK_SECRET[:-1] + "Z"
    for path in (f"/webhooks/moizvonki/{wrong}", "/webhooks/moizvonki/", "/webhooks/moizvonki/x"):
        response = httpx.post(served.base + path, content=b"{}", headers=served.headers(token=None))
        assert response.status_code == 404, path
        assert response.text == "Not Found"


def test_webhook_takes_an_event_without_the_bearer_token(served):
    url = f"{served.base}/webhooks/moizvonki/{WEBHOOK_SECRET}"
    headers = served.headers(token=None)
    # A payload the receiver cannot make sense of is still taken, never an error to Moizvonki.
    response = httpx.post(url, content=b"not json at all", headers=headers)
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    too_big = httpx.post(url, content=b"x" * (MAX_BODY + 1), headers=headers)
    assert too_big.status_code == 413


def test_the_secrets_never_appear_in_answers_or_the_log(served):
    answers = []
    attempts = [
        ("POST", "/mcp", served.headers(), initialize()),
        ("POST", "/mcp", served.headers(token=TOKEN[:-1] + "X"), initialize()),
        ("POST", "/mcp", served.headers(Host="rebind.attacker.example"), initialize()),
        ("GET", "/healthz", served.headers(), None),
        ("POST", f"/webhooks/moizvonki/{WEBHOOK_SECRET}", served.headers(), {"webhook": {}}),
        ("POST", f"/webhooks/moizvonki/{WEBHOOK_SECRET}x", served.headers(), {}),
    ]
    for method, path, headers, body in attempts:
        response = httpx.request(method, served.base + path, headers=headers, json=body)
        answers.append(str(response.headers) + response.text)
    log = served.log.read_text()
    assert "serving MCP at" in log  # the log is the server's, and it is being written
    for secret in (TOKEN, WEBHOOK_SECRET):
        assert all(secret not in answer for answer in answers)
        assert secret not in log
        assert secret[4:-4] not in log


def check_script(url: str, token: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """scripts/check_http.py against ``url``, with ``token`` and none of this machine's settings."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_http.py"), url],
        capture_output=True,
        text=True,
        env={**clean_env(), "TARITI_HTTP_TOKEN": token},
        timeout=timeout,
    )


def test_check_script_passes_against_the_server(served):
    run = check_script(served.base, TOKEN)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 6
    assert all(line.startswith("PASS ") for line in lines), run.stdout
    assert TOKEN not in run.stdout + run.stderr


# --- in this process: lifespan, webhook plumbing, a server with no token ---------------------


@pytest.fixture
def store():
    database = Store()
    yield database
    database.close()


class Threaded:
    """A uvicorn server for an app in a background thread, on a loopback port of its own."""

    def __init__(self, build) -> None:
        self.sock = web.listen("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.app = build(self.port)
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="on", ws="none"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> Threaded:
        self.thread.start()
        deadline = time.monotonic() + START_WAIT
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.mark.parametrize("stateless", [True, False])
def test_lifespan_runs_once_for_all_requests(sandbox_settings, store, monkeypatch, stateless):
    outboxes = []
    original = server_module.outbox_for

    def counting_outbox_for(*args, **kwargs):
        outboxes.append(original(*args, **kwargs))
        return outboxes[-1]

    monkeypatch.setattr(server_module, "outbox_for", counting_outbox_for)
    server = create_server(sandbox_settings, store=store)
    build = lambda port: web.build_app(  # noqa: E731
        server, sandbox_settings, port=port, stateless=stateless
    )
    with Threaded(build) as running, httpx.Client(timeout=60) as http:
        state = current_state(server)
        assert state is not None and state.store is store
        url = f"http://127.0.0.1:{running.port}/mcp"
        for number in range(4):
            headers = {"Accept": ACCEPT}
            opened = http.post(url, json=initialize(number * 10), headers=headers)
            assert opened.status_code == 200
            if "mcp-session-id" in opened.headers:
                headers["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
            headers["Mcp-Protocol-Version"] = "2025-06-18"
            notice = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            http.post(url, json=notice, headers=headers)
            listed = http.post(url, json=tools_list(number * 10 + 1), headers=headers)
            assert sorted(t["name"] for t in rpc_result(listed)["result"]["tools"]) == TOOLS
            assert current_state(server) is state
        assert ("mcp-session-id" in opened.headers) is not stateless
    assert len(outboxes) == 1
    assert current_state(server) is None


@pytest.fixture
def received(monkeypatch):
    """Webhook bodies the route handed to the receiver, which is replaced by a recorder."""
    calls = []

    def receive(store, body, *, zone):
        calls.append((store, body, zone))
        return {"ok": True, "action": "call.finish"}

    name = "tariti_mcp.moizvonki.webhooks"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError:
        module = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(module, "receive", receive, raising=False)
    return calls


def local_client(server, settings) -> TestClient:
    app = web.build_app(server, settings, port=8000)
    return TestClient(app, base_url="http://127.0.0.1:8000")


def test_webhook_hands_the_body_to_the_receiver(store, received):
    settings = settings_for(webhook_secret=WEBHOOK_SECRET, http_max_body=2048)
    server = create_server(settings, store=store)
    body = json.dumps({"webhook": {"action": "call.finish"}, "event": {}}).encode()
    with local_client(server, settings) as client:
        answer = client.post(f"/webhooks/moizvonki/{WEBHOOK_SECRET}", content=body)
        wrong = client.post(f"/webhooks/moizvonki/{WEBHOOK_SECRET[:-1]}", content=body)
        too_big = client.post(f"/webhooks/moizvonki/{WEBHOOK_SECRET}", content=b"x" * 2049)
        get = client.get(f"/webhooks/moizvonki/{WEBHOOK_SECRET}")
    assert answer.status_code == 200 and answer.json() == {"ok": True}
    assert wrong.status_code == 404
    assert too_big.status_code == 413
    assert get.status_code == 404  # only POST, and a GET learns nothing about the secret
    assert len(received) == 1
    assert received[0][0] is store
    assert received[0][1] == body
    assert received[0][2] == settings.zone


def test_webhook_route_does_not_exist_without_its_secret(store, received):
    settings = settings_for()
    with local_client(create_server(settings, store=store), settings) as client:
        response = client.post("/webhooks/moizvonki/anything", content=b"{}")
    assert response.status_code == 404
    assert received == []


def test_webhook_that_cannot_be_kept_is_not_acknowledged(store, monkeypatch, received):
    module = sys.modules["tariti_mcp.moizvonki.webhooks"]
    monkeypatch.setattr(module, "receive", lambda *a, **k: {"ok": False, "outcome": "failed"})
    settings = settings_for(webhook_secret=WEBHOOK_SECRET)
    with local_client(create_server(settings, store=store), settings) as client:
        response = client.post(f"/webhooks/moizvonki/{WEBHOOK_SECRET}", content=b"{}")
    assert response.status_code == 500
    assert response.json() == {"ok": False}


def test_loopback_server_with_a_token_still_asks_for_it(store):
    settings = settings_for(http_token=TOKEN)
    with local_client(create_server(settings, store=store), settings) as client:
        refused = client.post("/mcp", json=initialize(), headers={"Accept": ACCEPT})
        allowed = client.post(
            "/mcp",
            json=initialize(),
            headers={"Accept": ACCEPT, "Authorization": f"bearer {TOKEN}"},
        )
        health = client.get("/healthz")
    assert refused.status_code == 401
    assert allowed.status_code == 200
    assert health.json()["amocrm"] == "not configured"


def test_check_script_fails_against_a_server_without_token(store):
    settings = settings_for()
    server = create_server(settings, store=store)
    with Threaded(lambda port: web.build_app(server, settings, port=port)) as running:
        run = check_script(f"http://127.0.0.1:{running.port}", TOKEN)
    assert run.returncode == 1
    assert "FAIL no token is refused with 401" in run.stdout
    assert "FAIL a wrong token is refused with 401" in run.stdout
    assert "PASS a forged Host is refused" in run.stdout
    assert "PASS the right token lists the four tools" in run.stdout


def test_check_script_refuses_a_short_token():
    run = check_script("http://127.0.0.1:9", "short")
    assert run.returncode == 2
    assert run.stdout == ""
    assert "TARITI_HTTP_TOKEN" in run.stderr


def test_check_script_says_when_nothing_listens():
    """A newcomer ran the script before the server and read six FAIL lines as six bugs."""
    run = check_script(f"http://127.0.0.1:{closed_port()}", TOKEN)
    assert run.returncode == 2
    assert run.stdout == ""
    assert "nothing answers at http://127.0.0.1:" in run.stderr
    assert TOKEN not in run.stderr
