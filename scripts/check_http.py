"""Check a running tariti-mcp HTTP server from outside: it refuses requests without the token,
with a wrong token or under a forged Host name, lists its four tools for the right token, and its
health check tells nothing secret.

    python scripts/check_http.py http://127.0.0.1:8000 --token-env TARITI_HTTP_TOKEN

Prints PASS or FAIL for each check; exits 1 when any failed, 2 when it could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

TOOLS = {
    "call_amocrm_api",
    "call_moizvonki_api",
    "forward_lead_to_amocrm",
    "get_moizvonki_analytics",
}
HEALTH_KEYS = {"status", "version", "amocrm", "moizvonki"}
ACCEPT = "application/json, text/event-stream"
PROTOCOL = "2025-06-18"


class Check(Exception):
    """A check's failure, with what was seen instead."""


def rpc(
    client: httpx.Client, url: str, token: str, message: dict, session: str = ""
) -> httpx.Response:
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {token}"}
    if session:
        headers["Mcp-Session-Id"] = session
    if message.get("method") != "initialize":
        headers["Mcp-Protocol-Version"] = PROTOCOL
    return client.post(url, json=message, headers=headers)


def result_of(response: httpx.Response) -> dict:
    """The JSON-RPC result from a JSON or an event-stream answer."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if "result" in message or "error" in message:
                    return message.get("result") or {"error": message.get("error")}
        raise Check("the event stream held no result")
    return response.json().get("result") or {"error": response.json().get("error")}


def expect_401(response: httpx.Response) -> None:
    challenge = response.headers.get("www-authenticate", "")
    if response.status_code != 401 or not challenge.lower().startswith("bearer"):
        raise Check(f"got {response.status_code}, WWW-Authenticate {challenge!r}")


def check_no_token(client: httpx.Client, mcp: str, token: str) -> None:
    expect_401(client.post(mcp, json=initialize(), headers={"Accept": ACCEPT}))


def check_wrong_token(client: httpx.Client, mcp: str, token: str) -> None:
    expect_401(rpc(client, mcp, secrets.token_urlsafe(32), initialize()))
    # One character off, the length unchanged.
    twisted = token[:-1] + ("A" if token[-1:] != "A" else "B")
    expect_401(rpc(client, mcp, twisted, initialize()))


def check_forged_host(client: httpx.Client, mcp: str, token: str) -> None:
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {token}", "Host": "rebind.invalid"}
    response = client.post(mcp, json=initialize(), headers=headers)
    if response.status_code not in (403, 421):
        raise Check(f"a request for Host rebind.invalid got {response.status_code}")


def check_tools(client: httpx.Client, mcp: str, token: str) -> None:
    opened = rpc(client, mcp, token, initialize())
    if opened.status_code != 200:
        raise Check(f"initialize got {opened.status_code}")
    session = opened.headers.get("mcp-session-id", "")
    result_of(opened)
    notice = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    rpc(client, mcp, token, notice, session)
    listed = rpc(client, mcp, token, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session)
    names = {tool.get("name") for tool in result_of(listed).get("tools", [])}
    if names != TOOLS:
        raise Check(f"tools/list gave {sorted(n for n in names if n)}")
    if session:
        client.delete(mcp, headers={"Authorization": f"Bearer {token}", "Mcp-Session-Id": session})


def check_health(client: httpx.Client, base: str, token: str) -> None:
    response = client.get(base + "/healthz")
    if response.status_code != 200:
        raise Check(f"got {response.status_code}")
    body = response.json()
    if set(body) != HEALTH_KEYS or body.get("status") != "ok":
        raise Check(f"unexpected fields {sorted(body)}")
    if token in response.text:
        raise Check("the answer holds the token")
    for key, value in body.items():
        if key in ("amocrm", "moizvonki") and value not in ("configured", "not configured"):
            raise Check(f"{key} says {value!r}")


def initialize() -> dict:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "check_http", "version": "1"},
        },
    }


class Recording(httpx.Client):
    """An httpx client that keeps every answer, to look for the token in all of them."""

    def __init__(self, **options) -> None:
        super().__init__(event_hooks={"response": [self._keep]}, **options)
        self.answers: list[str] = []

    def _keep(self, response: httpx.Response) -> None:
        response.read()
        self.answers.append(str(response.headers) + response.text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--token-env",
        default="TARITI_HTTP_TOKEN",
        metavar="NAME",
        help="environment variable holding the token (default TARITI_HTTP_TOKEN)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = parser.parse_args(argv)

    token = os.environ.get(args.token_env, "").strip()
    parts = urlsplit(args.url)
    if len(token) < 32:
        # The server takes no shorter token, and a short one would be "found" in any answer.
        print(
            f"check_http: set {args.token_env} to the server's token (32 characters or more)",
            file=sys.stderr,
        )
        return 2
    if parts.scheme not in ("http", "https") or not parts.netloc:
        print("check_http: the URL must look like http://host:port", file=sys.stderr)
        return 2
    base = f"{parts.scheme}://{parts.netloc}"
    mcp = base + "/mcp"

    try:
        httpx.get(base + "/healthz", timeout=args.timeout)
    except httpx.TransportError as exc:
        print(
            f"check_http: nothing answers at {base} ({type(exc).__name__}): start the server "
            "with `tariti-mcp serve --transport http` first",
            file=sys.stderr,
        )
        return 2

    failures = 0
    with Recording(timeout=args.timeout, follow_redirects=False) as client:
        checks: list[tuple[str, Callable[[], None]]] = [
            ("no token is refused with 401", lambda: check_no_token(client, mcp, token)),
            ("a wrong token is refused with 401", lambda: check_wrong_token(client, mcp, token)),
            ("a forged Host is refused", lambda: check_forged_host(client, mcp, token)),
            ("the right token lists the four tools", lambda: check_tools(client, mcp, token)),
            (
                "/healthz answers and tells nothing secret",
                lambda: check_health(client, base, token),
            ),
        ]
        for title, check in checks:
            try:
                check()
            except Check as exc:
                failures += 1
                print(f"FAIL {title}: {exc}")
            except (httpx.HTTPError, ValueError) as exc:
                failures += 1
                print(f"FAIL {title}: {type(exc).__name__}")
            else:
                print(f"PASS {title}")
        leaked = any(token in answer for answer in client.answers)
    if leaked:
        failures += 1
        print("FAIL no answer repeats the token")
    else:
        print("PASS no answer repeats the token")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
