"""Serving the MCP server over streamable HTTP: who may reach it, with what, and the two routes
beside ``/mcp`` (a health check and the Moizvonki webhook)."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import (
    RequestBodyLimitMiddleware,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__
from .config import ConfigError, Settings
from .server import current_state

logger = logging.getLogger(__name__)

MCP_PATH = "/mcp"
HEALTH_PATH = "/healthz"
WEBHOOK_PREFIX = "/webhooks/moizvonki/"
MIN_SECRET_LENGTH = 32
MAKE_SECRET = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    """True for names that only this machine can reach; a hostname other than localhost is not
    trusted to resolve to loopback."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str) -> None:
    """Refuse, with one line saying what to set, a server that others could reach unguarded.

    On loopback only this machine can connect, and the Host check stops DNS rebinding; any other
    bind is reachable from the network, so it needs a token and the names it is reached by.
    """
    token = settings.http_token.get_secret_value()
    if not is_loopback(host):
        if not token:
            also = "" if settings.allowed_hosts else " and TARITI_HTTP_ALLOWED_HOSTS"
            raise ConfigError(
                f"--host {host} is reachable from other machines: set TARITI_HTTP_TOKEN "
                f"(at least {MIN_SECRET_LENGTH} characters, e.g. from {MAKE_SECRET})"
                f"{also}, or bind to 127.0.0.1"
            )
        if not settings.allowed_hosts:
            raise ConfigError(
                f"--host {host} is reachable from other machines: set TARITI_HTTP_ALLOWED_HOSTS "
                "to the names clients use to reach it, e.g. mcp.example.com"
            )
    for variable, secret in (
        ("TARITI_HTTP_TOKEN", token),
        ("TARITI_WEBHOOK_SECRET", settings.webhook_secret.get_secret_value()),
    ):
        if secret and len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"{variable} is shorter than {MIN_SECRET_LENGTH} characters: "
                f"make one with {MAKE_SECRET}"
            )
    for entry in settings.allowed_hosts:
        if "/" in entry or "@" in entry:
            raise ConfigError(
                f"TARITI_HTTP_ALLOWED_HOSTS takes host names, host:port or [ipv6], "
                f"without a scheme or path (got {entry!r})"
            )
    for entry in settings.allowed_origins:
        if not _is_origin(entry):
            raise ConfigError(
                "TARITI_HTTP_ALLOWED_ORIGINS takes origins like https://app.example.com, "
                f"scheme and host with an optional port and no path (got {entry!r})"
            )


def _is_origin(text: str) -> bool:
    scheme, sep, rest = text.partition("://")
    return bool(sep) and scheme in ("http", "https") and bool(rest) and "/" not in rest


def _has_port(host: str) -> bool:
    if host.startswith("["):
        return "]:" in host
    return ":" in host


def transport_security(settings: Settings, host: str, port: int) -> TransportSecuritySettings:
    """The Host and Origin values a request may carry.

    Loopback names with our port are always allowed: a rebinding page arrives under its own
    domain name, never under these. A configured name without a port is allowed on any port,
    since a reverse proxy in front may change it. Browser origins are only those configured,
    plus the loopback ones when bound to loopback.
    """
    hosts = [f"{name}:{port}" for name in LOOPBACK_NAMES]
    for entry in (host.lower() for host in settings.allowed_hosts):
        hosts.extend([entry] if _has_port(entry) else [entry, f"{entry}:*"])
    origins = list(settings.allowed_origins)
    if is_loopback(host):
        origins.extend(f"http://{name}:{port}" for name in LOOPBACK_NAMES)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the app is built so the Host check knows the real port
    (port 0 picks a free one). OSError when the address is taken or not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio disables Nagle's delay only on sockets that say so.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class HostCheck:
    """The SDK's Host/Origin validation, applied to every route rather than to /mcp alone."""

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self.app = app
        self.validator = TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # Host names are case-insensitive (RFC 9110); the SDK's checks, this one and the
            # one inside /mcp, compare them as given: they get the name in lower case.
            headers = [
                (name, value.lower() if name == b"host" else value)
                for name, value in scope["headers"]
            ]
            scope = {**scope, "headers": headers}
            request = Request(scope)
            refusal = await self.validator.validate_request(request)
            if refusal is not None:
                await self._explained(refusal, request)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _explained(refusal: Response, request: Request) -> Response:
        """The SDK's refusal, saying which setting lets the name in: the operator reading it
        is usually the one who put a proxy or a new domain in front."""
        header, setting, verdict = _REFUSALS.get(refusal.status_code, ("", "", ""))
        if not header:
            return refusal
        value = request.headers.get(header, "")[:100]
        logger.info("refused a request with %s %r: not in %s", header, value, setting)
        return PlainTextResponse(
            f"{header.capitalize()} {value!r} {verdict}: add it to {setting}",
            status_code=refusal.status_code,
        )


# The SDK's refusals by status: the header at fault, the setting, what the answer says.
_REFUSALS = {
    421: ("host", "TARITI_HTTP_ALLOWED_HOSTS", "is not one this server answers to"),
    403: ("origin", "TARITI_HTTP_ALLOWED_ORIGINS", "may not call this server"),
}


# A middleware rather than the SDK's token_verifier: the SDK's bearer auth is built for OAuth
# (it wants an issuer and resource-metadata URLs and advertises them), while this server has
# one static token shared with its clients.
class BearerCheck:
    """Every request outside the public routes must carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str, public: Callable[[str], bool]) -> None:
        self.app = app
        self.token = token.encode()
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.public(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = _bearer(Headers(scope=scope).get("authorization", ""))
        if given is None:
            await _unauthorized("missing")(scope, receive, send)
        elif not hmac.compare_digest(given, self.token):
            await _unauthorized("wrong")(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _bearer(header: str) -> bytes | None:
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    # Headers arrive as latin-1; the raw bytes are compared, whatever they hold.
    return credentials.strip().encode("latin-1")


def _unauthorized(kind: str) -> Response:
    challenge = 'Bearer realm="tariti-mcp"'
    if kind == "wrong":
        challenge += ', error="invalid_token"'
    message = (
        "this server needs the header Authorization: Bearer <token>, the token being the "
        "server's TARITI_HTTP_TOKEN"
        if kind == "missing"
        else "the bearer token is not this server's TARITI_HTTP_TOKEN"
    )
    return JSONResponse(
        {"error": "unauthorized", "message": message},
        status_code=401,
        headers={"WWW-Authenticate": challenge},
    )


def _is_public(path: str) -> bool:
    """Routes open without the bearer token: health for monitors, the webhook for Moizvonki
    (it cannot send a token; the secret in its URL stands in)."""
    return path == HEALTH_PATH or path.startswith(WEBHOOK_PREFIX)


def _not_found() -> Response:
    # The same answer the router gives for a path it does not know.
    return PlainTextResponse("Not Found", status_code=404)


def _health(settings: Settings) -> Callable[[Request], Any]:
    async def healthz(_: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "amocrm": "configured" if settings.amocrm_configured else "not configured",
                "moizvonki": "configured" if settings.moizvonki_configured else "not configured",
            }
        )

    return healthz


def _webhook(server: MCPServer, secret: str) -> Callable[[Request], Any]:
    # Imported when the route is mounted, so a broken module stops the start, not an event.
    from .moizvonki import webhooks

    expected = secret.encode()

    async def moizvonki_webhook(request: Request) -> Response:
        given = request.path_params["secret"].encode()
        if not hmac.compare_digest(given, expected):
            return _not_found()
        state = current_state(server)
        if state is None:
            return JSONResponse({"ok": False, "error": "the server is starting"}, status_code=503)
        body = await request.body()
        try:
            summary = webhooks.receive(state.store, body, zone=state.settings.zone)
        except Exception:
            # The event is lost unless Moizvonki sends it again: say so, and keep serving.
            logger.exception("a Moizvonki webhook event could not be stored")
            return JSONResponse({"ok": False}, status_code=500)
        logger.debug("Moizvonki webhook event: %s", json.dumps(summary, default=str))
        if isinstance(summary, dict) and summary.get("ok") is False:
            # Not even kept for the record: a failure status may make Moizvonki send it again.
            return JSONResponse({"ok": False}, status_code=500)
        return JSONResponse({"ok": True})

    return moizvonki_webhook


def build_app(
    server: MCPServer,
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    stateless: bool = True,
) -> Starlette:
    """The ASGI app: MCP at /mcp, /healthz, and the webhook when TARITI_WEBHOOK_SECRET is set.

    Checks run outermost first: Host and Origin on every route, then the bearer token (when
    one is configured) outside the public routes, then the body size, before any route reads.
    """
    security = transport_security(settings, host, port)
    mcp_app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=stateless,
        max_request_body_size=settings.http_max_body,
        transport_security=security,
        host=host,
    )
    routes: list[Route | Mount] = [Route(HEALTH_PATH, _health(settings), methods=["GET"])]
    secret = settings.webhook_secret.get_secret_value()
    if secret:
        routes.append(
            Route(WEBHOOK_PREFIX + "{secret}", _webhook(server, secret), methods=["POST"])
        )
    routes.append(Mount("", app=mcp_app))

    middleware = [Middleware(HostCheck, security=security)]
    token = settings.http_token.get_secret_value()
    if token:
        middleware.append(Middleware(BearerCheck, token=token, public=_is_public))
    middleware.append(Middleware(RequestBodyLimitMiddleware, max_body_size=settings.http_max_body))

    # The SDK's session manager enters the server's lifespan once for the whole process, so the
    # store and the outbox task are shared by every request.
    return Starlette(
        routes=routes, middleware=middleware, lifespan=lambda _: server.session_manager.run()
    )
