"""Run both emulators on loopback in one background thread, with credentials derived from the seed.

Nothing here writes to stdout: the MCP server may be speaking over stdio in the same process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import socket
import threading
import uuid
from types import TracebackType
from typing import Any, Self

import uvicorn

from .amocrm import AmoCrmEmulator
from .data import SandboxData, generate
from .moizvonki import MoizvonkiEmulator

logger = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def amocrm_token(seed: int, account_id: int, user_id: int) -> str:
    """A long-lived amoCRM token for the sandbox: JWT-shaped like the real ones, never signed."""
    digest = hashlib.sha256(f"tariti-sandbox:{seed}:amocrm-token".encode()).digest()
    header = {"typ": "JWT", "alg": "RS256", "jti": digest[:20].hex()}
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
    signature = b"".join(hashlib.sha512(digest + bytes([block])).digest() for block in range(4))
    compact = {"separators": (",", ":")}
    return ".".join(
        (
            _b64url(json.dumps(header, **compact).encode()),
            _b64url(json.dumps(claims, **compact).encode()),
            _b64url(signature),
        )
    )


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
    """Both emulators with seeded data; `start()` returns once both accept connections."""

    def __init__(
        self,
        seed: int = 1,
        calls: int = 3000,
        days: int = 60,
        host: str = "127.0.0.1",
        amocrm_port: int = 0,
        moizvonki_port: int = 0,
        now: float | None = None,
    ) -> None:
        self.seed, self.calls, self.days, self.now = seed, calls, days, now
        self.host = host
        self._ports = (amocrm_port, moizvonki_port)
        self.data: SandboxData | None = None
        self.amocrm: AmoCrmEmulator | None = None
        self.moizvonki: MoizvonkiEmulator | None = None
        self.amocrm_url = ""
        self.moizvonki_url = ""
        self.amocrm_token = ""
        self.moizvonki_user = ""
        self.moizvonki_key = ""
        self.moizvonki_manager_user = ""
        self.moizvonki_manager_key = ""
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None

    @property
    def env(self) -> dict[str, str]:
        """The settings a client needs to talk to this sandbox, as the backend names them."""
        if self.data is None:
            raise RuntimeError("the sandbox is not started")
        return {
            "AMOCRM_BASE_URL": self.amocrm_url,
            "AMOCRM_API_KEY": self.amocrm_token,
            "MOIZVONKI_BASE_URL": self.moizvonki_url,
            "MOIZVONKI_USER": self.moizvonki_user,
            "MOIZVONKI_API_KEY": self.moizvonki_key,
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
        ready = threading.Event()
        failures: list[Exception | SystemExit] = []
        self._thread = threading.Thread(
            target=self._run, args=(sockets, ready, failures), name="tariti-sandbox", daemon=True
        )
        self._thread.start()
        ready.wait(START_TIMEOUT)
        if failures or not all(server.started for server in self._servers):
            self.stop()
            for sock in sockets:
                sock.close()
            raise RuntimeError("the sandbox servers did not start") from (
                failures[0] if failures else None
            )

        display_host = f"[{self.host}]" if ":" in self.host else self.host
        amocrm_port, moizvonki_port = (sock.getsockname()[1] for sock in sockets)
        self.amocrm_url = f"http://{display_host}:{amocrm_port}"
        self.moizvonki_url = f"http://{display_host}:{moizvonki_port}/api/v1"
        logger.info(
            "sandbox started: amoCRM on port %d, Moizvonki on port %d, %d calls",
            amocrm_port,
            moizvonki_port,
            len(self.moizvonki.calls),
        )
        return self

    def _issue_credentials(self, data: SandboxData) -> None:
        admin = data.admin
        manager = next(employee for employee in data.employees if employee.role != "admin")
        self.amocrm_token = amocrm_token(self.seed, data.account["id"], admin.amocrm_user_id)
        self.moizvonki_user = admin.email
        self.moizvonki_key = moizvonki_key(self.seed, admin.email)
        self.moizvonki_manager_user = manager.email
        self.moizvonki_manager_key = moizvonki_key(self.seed, manager.email)
        self.amocrm = AmoCrmEmulator(data, self.amocrm_token)
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

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                logger.warning("sandbox thread did not stop within %.0f s", STOP_TIMEOUT)
            self._thread = None
        self._servers = []

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
