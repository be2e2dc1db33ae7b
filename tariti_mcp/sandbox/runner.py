"""Run both emulators on loopback in one background thread, with credentials derived from the seed.

Nothing here writes to stdout: the MCP server may be speaking over stdio in the same process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import socket
import string
import threading
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import uvicorn

from .amocrm import AmoCrmEmulator
from .data import SandboxData, generate
from .faults import FaultProxy, FaultRules
from .moizvonki import MoizvonkiEmulator
from .oauth import OAuthClient, jwt_shaped

logger = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
REDIRECT_PORTS = (20000, 30000)


def amocrm_token(seed: int, account_id: int, user_id: int) -> str:
    """A long-lived amoCRM token for the sandbox: JWT-shaped like the real ones, never signed."""
    digest = hashlib.sha256(f"tariti-sandbox:{seed}:amocrm-token".encode()).digest()
    claims = {
        "aud": str(uuid.UUID(bytes=digest[:16])),
        "jti": digest[:20].hex(),
        "iat": 1767225600,
        "nbf": 1767225600,
        "exp": 1924992000,
        "sub": str(user_id),
        "grant_type": "",
        "account_id": account_id,
        "scopes": ["crm", "notifications"],
    }
    return jwt_shaped(digest, claims)


def amocrm_oauth_client(seed: int, redirect_uri: str | None = None) -> OAuthClient:
    """The sandbox's OAuth integration: id, 64-character secret and redirect URI from the seed."""
    digest = hashlib.sha512(f"tariti-sandbox:{seed}:amocrm-oauth".encode()).digest()
    alphabet = string.ascii_letters + string.digits
    secret = "".join(alphabet[byte % len(alphabet)] for byte in digest)
    if redirect_uri is None:
        # A fixed port per seed, outside the usual ephemeral range, for a login command to bind.
        port = REDIRECT_PORTS[0] + int.from_bytes(digest[:2], "big") % (
            REDIRECT_PORTS[1] - REDIRECT_PORTS[0]
        )
        redirect_uri = f"http://127.0.0.1:{port}/callback"
    client_id = str(uuid.UUID(bytes=hashlib.sha256(digest).digest()[:16], version=4))
    return OAuthClient(client_id, secret, redirect_uri)


def moizvonki_key(seed: int, login: str) -> str:
    """A 32-character Moizvonki API key for `login`, stable for the seed."""
    digest = hashlib.sha256(f"tariti-sandbox:{seed}:moizvonki:{login}".encode()).digest()
    return base64.b32encode(digest).decode("ascii").lower().rstrip("=")[:32]


def _listen(host: str, port: int) -> socket.socket:
    # proto must be named: asyncio turns Nagle off only on sockets whose proto is IPPROTO_TCP,
    # and with Nagle on every small answer waits ~40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class Sandbox:
    """Both emulators with seeded data; `start()` returns once both accept connections.

    amoCRM takes the long-lived token and one OAuth integration whose access tokens live
    `token_ttl` seconds; it allows `rate_limit` API requests in any one-second window and blocks
    itself after `block_after` 429s within a minute (None: never). The limit is off (0) unless
    asked for, since tests in one process share a sandbox; the command line asks for amoCRM's 7.

    `faults` puts a fault proxy (see faults.py) in front of each emulator and points `env` at
    the proxies; it is a FaultRules, or its mapping, the same rules for both services, e.g.
    ``{"read": {"error_503": 0.1, "slow": 0.1}, "write": {"drop_after": 0.1},
    "slow_seconds": 2.0}``. Faults: error_429, error_503, slow, drop, drop_after, error_after.
    """

    def __init__(
        self,
        seed: int = 1,
        calls: int = 3000,
        days: int = 60,
        host: str = "127.0.0.1",
        amocrm_port: int = 0,
        moizvonki_port: int = 0,
        now: float | None = None,
        *,
        token_ttl: int = 86400,
        rate_limit: int = 0,
        block_after: int | None = None,
        faults: FaultRules | Mapping[str, Any] | None = None,
        redirect_uri: str | None = None,
    ) -> None:
        self.seed, self.calls, self.days, self.now = seed, calls, days, now
        self.host = host
        self._ports = (amocrm_port, moizvonki_port)
        self.token_ttl, self.rate_limit, self.block_after = token_ttl, rate_limit, block_after
        if faults is not None and not isinstance(faults, FaultRules):
            # Checked now, so a bad spec fails before anything is started.
            faults = FaultRules.from_mapping(faults)
        self.faults: FaultRules | None = faults
        self.oauth_client = amocrm_oauth_client(seed, redirect_uri)
        self.data: SandboxData | None = None
        self.amocrm: AmoCrmEmulator | None = None
        self.moizvonki: MoizvonkiEmulator | None = None
        self.amocrm_proxy: FaultProxy | None = None
        self.moizvonki_proxy: FaultProxy | None = None
        self.amocrm_url = ""
        self.moizvonki_url = ""
        self.amocrm_proxy_url = ""
        self.moizvonki_proxy_url = ""
        self.amocrm_token = ""
        self.moizvonki_user = ""
        self.moizvonki_key = ""
        self.moizvonki_manager_user = ""
        self.moizvonki_manager_key = ""
        self._servers: list[uvicorn.Server] = []
        self._proxies: list[tuple[FaultProxy, socket.socket]] = []
        self._thread: threading.Thread | None = None

    @property
    def env(self) -> dict[str, str]:
        """The settings a client needs to talk to this sandbox, as the backend names them.

        With faults on, the base URLs are the proxies'; `amocrm_url` and `moizvonki_url` stay
        the emulators' own.
        """
        if self.data is None:
            raise RuntimeError("the sandbox is not started")
        return {
            "AMOCRM_BASE_URL": self.amocrm_proxy_url or self.amocrm_url,
            "AMOCRM_API_KEY": self.amocrm_token,
            "MOIZVONKI_BASE_URL": self.moizvonki_proxy_url or self.moizvonki_url,
            "MOIZVONKI_USER": self.moizvonki_user,
            "MOIZVONKI_API_KEY": self.moizvonki_key,
        }

    @property
    def oauth_env(self) -> dict[str, str]:
        """The OAuth settings of the sandbox's integration, with a refresh token issued just now.

        Every read issues a new token pair: keep the dict rather than reading it twice.
        """
        if self.amocrm is None:
            raise RuntimeError("the sandbox is not started")
        return {
            "AMOCRM_CLIENT_ID": self.oauth_client.client_id,
            "AMOCRM_CLIENT_SECRET": self.oauth_client.client_secret,
            "AMOCRM_REDIRECT_URI": self.oauth_client.redirect_uri,
            "AMOCRM_REFRESH_TOKEN": self.amocrm.issue_refresh_token(),
        }

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("the sandbox is already started")
        self.data = generate(self.seed, self.calls, self.days, self.now)
        self._issue_credentials(self.data)
        assert self.amocrm is not None and self.moizvonki is not None

        sockets = [_listen(self.host, port) for port in self._ports]
        apps = (self.amocrm.app, self.moizvonki.app)
        # Logging off entirely: uvicorn's own config would print to stdout.
        self._servers = [
            uvicorn.Server(
                uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", ws="none")
            )
            for app in apps
        ]
        amocrm_port, moizvonki_port = (sock.getsockname()[1] for sock in sockets)
        if self.faults is not None:
            self._plan_proxies(amocrm_port, moizvonki_port)
        ready = threading.Event()
        failures: list[Exception | SystemExit] = []
        self._thread = threading.Thread(
            target=self._run, args=(sockets, ready, failures), name="tariti-sandbox", daemon=True
        )
        self._thread.start()
        ready.wait(START_TIMEOUT)
        if failures or not all(server.started for server in self._servers):
            bound = [*sockets, *(sock for _, sock in self._proxies)]
            self.stop()
            for sock in bound:
                sock.close()
            raise RuntimeError("the sandbox servers did not start") from (
                failures[0] if failures else None
            )

        display_host = f"[{self.host}]" if ":" in self.host else self.host
        self.amocrm_url = f"http://{display_host}:{amocrm_port}"
        self.moizvonki_url = f"http://{display_host}:{moizvonki_port}/api/v1"
        if self.amocrm_proxy is not None and self.moizvonki_proxy is not None:
            self.amocrm_proxy_url = f"http://{display_host}:{self.amocrm_proxy.port}"
            self.moizvonki_proxy_url = f"http://{display_host}:{self.moizvonki_proxy.port}/api/v1"
            logger.info(
                "fault proxies: amoCRM on port %d, Moizvonki on port %d",
                self.amocrm_proxy.port,
                self.moizvonki_proxy.port,
            )
        logger.info(
            "sandbox started: amoCRM on port %d, Moizvonki on port %d, %d calls",
            amocrm_port,
            moizvonki_port,
            len(self.moizvonki.calls),
        )
        return self

    def _plan_proxies(self, amocrm_port: int, moizvonki_port: int) -> None:
        assert self.faults is not None
        # Each proxy binds now, so its port is known before the loop thread starts serving it.
        self.amocrm_proxy, self.moizvonki_proxy = (
            FaultProxy(
                self.host,
                target,
                seed=self.seed,
                rules=self.faults,
                service=service,
                host=self.host,
            )
            for service, target in (("amocrm", amocrm_port), ("moizvonki", moizvonki_port))
        )
        self._proxies = []
        for proxy in (self.amocrm_proxy, self.moizvonki_proxy):
            sock = _listen(self.host, 0)
            proxy.port = sock.getsockname()[1]
            self._proxies.append((proxy, sock))

    def _issue_credentials(self, data: SandboxData) -> None:
        admin = data.admin
        manager = next(employee for employee in data.employees if employee.role != "admin")
        self.amocrm_token = amocrm_token(self.seed, data.account["id"], admin.amocrm_user_id)
        self.moizvonki_user = admin.email
        self.moizvonki_key = moizvonki_key(self.seed, admin.email)
        self.moizvonki_manager_user = manager.email
        self.moizvonki_manager_key = moizvonki_key(self.seed, manager.email)
        self.amocrm = AmoCrmEmulator(
            data,
            self.amocrm_token,
            oauth_client=self.oauth_client,
            token_ttl=self.token_ttl,
            rate_limit=self.rate_limit,
            block_after=self.block_after,
        )
        self.moizvonki = MoizvonkiEmulator(
            data,
            {
                self.moizvonki_user: self.moizvonki_key,
                self.moizvonki_manager_user: self.moizvonki_manager_key,
            },
        )

    def _run(
        self,
        sockets: list[socket.socket],
        ready: threading.Event,
        failures: list[Exception | SystemExit],
    ) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(sockets, ready))
        except (Exception, SystemExit) as exc:  # uvicorn exits when its startup fails
            failures.append(exc)
            logger.exception("sandbox servers stopped")
        finally:
            ready.set()
            loop.close()

    async def _serve(self, sockets: list[socket.socket], ready: threading.Event) -> None:
        try:
            for proxy, sock in self._proxies:
                await proxy.start(sock)
            tasks = [
                asyncio.ensure_future(server.serve(sockets=[sock]))
                for server, sock in zip(self._servers, sockets, strict=True)
            ]
            while not all(server.started for server in self._servers):
                if any(task.done() for task in tasks):
                    break
                await asyncio.sleep(0.005)
            ready.set()
            await asyncio.gather(*tasks)
        finally:
            for proxy, _ in self._proxies:
                await proxy.close()

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                logger.warning("sandbox thread did not stop within %.0f s", STOP_TIMEOUT)
            self._thread = None
        self._servers = []
        self._proxies = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        extra: dict[str, Any] = {"seed": self.seed, "calls": self.calls, "days": self.days}
        return f"Sandbox({state}, {extra}, amocrm={self.amocrm_url!r})"
