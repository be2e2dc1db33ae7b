"""``tariti-mcp amocrm login``: authorize the integration once and store its first OAuth pair.

The person opens the consent page; the code comes back to a one-shot listener when the
redirect URI is on this machine, or is pasted. The pair is stored, then ``GET /account`` proves
it works.
"""

from __future__ import annotations

import http.server
import ipaddress
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio

from ..config import Settings
from ..errors import TaritiError
from ..http import Gate
from ..store import Store
from .client import AmoCrmClient
from .tokens import oauth_tokens

CONSENT_HOSTS = {
    ".amocrm.ru": "www.amocrm.ru",
    ".amocrm.com": "www.amocrm.com",
    ".kommo.com": "www.kommo.com",
}


class LoginError(Exception):
    """One line for the person at the terminal."""


@dataclass
class Callback:
    code: str = ""
    error: str = ""


def consent_url(settings: Settings, state: str) -> str:
    base = urlsplit(settings.amocrm_base_url)
    host = base.hostname or ""
    query = urlencode({"client_id": settings.amocrm_client_id, "state": state})
    for suffix, consent_host in CONSENT_HOSTS.items():
        if host.endswith(suffix):
            return f"https://{consent_host}/oauth?{query}"
    # The sandbox serves its own consent page.
    return f"{settings.amocrm_base_url}/oauth?{query}"


def _loopback_redirect(redirect_uri: str) -> tuple[str, int, str] | None:
    parts = urlsplit(redirect_uri)
    host = parts.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if not local or parts.scheme != "http":
        return None
    return host, parts.port or 80, parts.path or "/"


def _code_from(text: str, state: str) -> str:
    """A pasted code, or the code inside a pasted redirect address."""
    text = text.strip()
    if "code=" not in text:
        return text
    params = parse_qs(urlsplit(text).query or text)
    if params.get("state", [state])[0] != state:
        raise LoginError("the pasted address carries another state: start the login again")
    return params.get("code", [""])[0]


def wait_for_callback(redirect_uri: str, state: str, timeout: float) -> str:
    """Serve one request on the redirect URI and return its code."""
    host, port, path = _loopback_redirect(redirect_uri) or ("", 0, "")
    result = Callback()
    arrived = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            parts = urlsplit(self.path)
            params = parse_qs(parts.query)
            if parts.path != path or not ({"code", "error"} & params.keys()):
                self.send_error(404)
                return
            if "error" in params:
                result.error = f"amoCRM did not grant access ({params['error'][0][:100]})"
            elif params.get("state", [""])[0] != state:
                result.error = "the redirect carried another state: start the login again"
            else:
                result.code = params["code"][0]
            arrived.set()
            page = "Authorized. You can close this tab." if result.code else result.error
            body = f"<html><body><p>{page}</p></body></html>".encode()
            self.send_response(200 if result.code else 400)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # the query string holds the code: never logged

    try:
        server = http.server.ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise LoginError(
            f"cannot listen on {host}:{port} for the redirect: {exc.strerror}"
        ) from None
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
    )
    thread.start()
    try:
        arrived.wait(timeout)
    finally:
        server.shutdown()
        server.server_close()
    if result.error:
        raise LoginError(result.error)
    if not result.code:
        raise LoginError(f"no redirect arrived within {timeout:.0f} seconds")
    return result.code


async def login(
    settings: Settings,
    store: Store,
    *,
    code: str = "",
    listen: bool = True,
    timeout: float = 300.0,
    say: Callable[[str], None],
    ask: Callable[[str], str],
    on_consent_url: Callable[[str], None] | None = None,
) -> str:
    """Run the whole login; return a line describing the authorized account."""
    missing = [
        name
        for name, value in (
            ("AMOCRM_BASE_URL", settings.amocrm_base_url),
            ("AMOCRM_CLIENT_ID", settings.amocrm_client_id),
            ("AMOCRM_CLIENT_SECRET", settings.amocrm_client_secret.get_secret_value()),
            ("AMOCRM_REDIRECT_URI", settings.amocrm_redirect_uri),
        )
        if not value
    ]
    if missing:
        raise LoginError(f"set {', '.join(missing)} first (the integration's settings in amoCRM)")

    state = secrets.token_urlsafe(16)
    if not code:
        url = consent_url(settings, state)
        say(f"Open this address, sign in to amoCRM and allow access:\n\n  {url}\n")
        if on_consent_url is not None:
            on_consent_url(url)
        if listen and _loopback_redirect(settings.amocrm_redirect_uri):
            say(f"Waiting for amoCRM to send the browser to {settings.amocrm_redirect_uri} ...")
            code = await anyio.to_thread.run_sync(
                wait_for_callback, settings.amocrm_redirect_uri, state, timeout
            )
        else:
            code = _code_from(
                ask("Paste the code (or the whole address you were sent to): "), state
            )
    if not code:
        raise LoginError("no code was given")

    gate = Gate(settings.amocrm_rate_limit)
    tokens = oauth_tokens(settings, store, gate)
    client = AmoCrmClient(
        settings.amocrm_base_url, tokens, timeout=settings.http_timeout, gate=gate
    )
    try:
        await tokens.exchange_code(code)
        account = (await client.request("GET", "/api/v4/account")).body or {}
    except TaritiError as exc:
        raise LoginError(" ".join(str(exc).split())) from None
    finally:
        await client.aclose()
        await tokens.aclose()
    return (
        f"Authorized: amoCRM account {account.get('name', '?')!r} "
        f"(id {account.get('id', '?')}); the tokens are stored in {store.path}"
    )
