"""amoCRM credentials: a long-lived token, or an OAuth pair kept in the store and rotated safely.

amoCRM's refresh token is single-use, so the newest pair is written to the store before it is
used, one process at a time refreshes (a file lock beside the database), and a process that
loses the race adopts the pair the winner stored instead of spending a dead token.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
import httpx
from filelock import AsyncFileLock

from ..config import Settings
from ..errors import (
    AMOCRM,
    AccountBlocked,
    AuthFailed,
    BadAnswer,
    Rejected,
    ServiceError,
    Unavailable,
    amocrm_error,
)
from ..http import Gate, build_client
from ..store import Store

logger = logging.getLogger(__name__)

# Refresh this long before the access token expires, so a request never carries a dying one.
EXPIRY_MARGIN = 60
LOGIN_ADVICE = "Run `tariti-mcp amocrm login` to authorize the integration again."


class Credentials(Protocol):
    """Where the amoCRM client gets its bearer token."""

    advice: str  # what the operator does when amoCRM refuses these credentials

    async def token(self) -> str: ...

    async def refresh(self, stale: str) -> str | None:
        """A new token after ``stale`` was refused, or None when there is no other."""
        ...

    @property
    def secrets(self) -> tuple[str, ...]: ...

    async def aclose(self) -> None: ...


class LongLivedToken:
    """``AMOCRM_API_KEY``: one token made by an admin; it cannot be refreshed."""

    advice = (
        "The operator must check AMOCRM_API_KEY: a long-lived token expires (after 1 day to "
        "5 years) or is revoked in the integration's settings; issue a new one and restart."
    )

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    async def refresh(self, stale: str) -> str | None:
        return None

    async def aclose(self) -> None:
        return None

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self._token,)


@dataclass(frozen=True)
class OAuthApp:
    """The integration's registration: ``AMOCRM_CLIENT_ID``, ``_SECRET`` and ``_REDIRECT_URI``."""

    client_id: str
    client_secret: str
    redirect_uri: str


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_at: int
    issued_at: int = 0

    def expiring(self, now: float | None = None) -> bool:
        # A minute early for day-long tokens; a quarter of the life for short ones, longer than
        # a request can wait for its place in the rate limit (see http.Gate).
        margin = min(EXPIRY_MARGIN, max(self.expires_at - self.issued_at, 0) / 4)
        return self.expires_at - (now if now is not None else time.time()) < margin


def digest(secret: str) -> str:
    """A fingerprint that tells whether a seed was used, without keeping the seed itself."""
    return hashlib.sha256(secret.encode()).hexdigest()


class OAuthTokens:
    """The OAuth pair of one account, shared through the store by every process using it."""

    advice = LOGIN_ADVICE

    def __init__(
        self,
        store: Store,
        base_url: str,
        app: OAuthApp,
        *,
        lock_path: str,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        gate: Gate | None = None,
    ) -> None:
        self._store = store
        self._gate = gate
        self._http = build_client(base_url, timeout, transport=transport)
        self.account = urlsplit(base_url).netloc
        self._app = app
        self._local = anyio.Lock()
        self._file_lock = AsyncFileLock(lock_path, timeout=60)
        self._seen: set[str] = set()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def secrets(self) -> tuple[str, ...]:
        pair = self._store.token_pair(self.account)
        values = [self._app.client_secret, *self._seen]
        if pair is not None:
            values += [pair["access_token"], pair["refresh_token"]]
        return tuple(v for v in values if v)

    def _stored(self) -> TokenPair | None:
        row = self._store.token_pair(self.account)
        if row is None or row.get("state") != "valid":
            return None
        return TokenPair(
            row["access_token"],
            row["refresh_token"],
            int(row["expires_at"]),
            int(row.get("updated_at") or 0),
        )

    async def token(self) -> str:
        pair = self._stored()
        if pair is None:
            raise self._no_tokens()
        if not pair.expiring():
            return pair.access_token
        fresh = await self._refresh_from()
        return fresh.access_token

    async def refresh(self, stale: str) -> str | None:
        """After a 401 for ``stale``: a newer token if another process stored one, else refresh."""
        fresh = await self._refresh_from(refused=stale)
        return fresh.access_token if fresh.access_token != stale else None

    async def _refresh_from(self, refused: str | None = None) -> TokenPair:
        async with self._local, self._file_lock:
            # Another process, or another task here, may have rotated the pair meanwhile.
            current = self._stored()
            if current is None:
                raise self._no_tokens()
            if not current.expiring() and current.access_token != refused:
                return current
            return await self._rotate(current)

    async def _rotate(self, current: TokenPair) -> TokenPair:
        """Spend ``current.refresh_token`` once. Called with both locks held."""
        try:
            pair = await self._grant("refresh_token", current.refresh_token)
        except (AuthFailed, Rejected) as exc:
            # A refused refresh token is dead for good; maybe someone stored a newer one.
            latest = self._stored()
            if latest is not None and latest.refresh_token != current.refresh_token:
                logger.info("amoCRM refresh refused but a newer pair is stored; adopting it")
                return latest
            self._store.mark_tokens_refused(self.account, exc.summary)
            logger.warning("amoCRM refused the refresh token; the integration needs a new login")
            raise AuthFailed(
                AMOCRM,
                f"the OAuth refresh was refused ({exc.summary})",
                status=exc.status,
                request_id=exc.request_id,
                advice=LOGIN_ADVICE,
            ) from None
        logger.info(
            "amoCRM tokens rotated; the new pair is valid for %d s",
            pair.expires_at - int(time.time()),
        )
        return pair

    async def exchange_code(self, code: str) -> TokenPair:
        """Trade an authorization code (single-use, about 20 minutes) for the first pair."""
        async with self._local, self._file_lock:
            return await self._grant("authorization_code", code)

    def seed(self, refresh_token: str) -> bool:
        """Adopt ``AMOCRM_REFRESH_TOKEN`` once. A restart must not spend it again: it is dead
        after its first use, and the store holds its successors."""
        fingerprint = digest(refresh_token)
        if self._store.seed_used(self.account, fingerprint):
            return False
        self._store.save_token_pair(
            self.account,
            access_token="",
            refresh_token=refresh_token,
            expires_at=0,
            seed_digest=fingerprint,
        )
        logger.info("amoCRM refresh token taken from the environment into the store")
        return True

    async def _grant(self, grant_type: str, value: str) -> TokenPair:
        body: dict[str, Any] = {
            "client_id": self._app.client_id,
            "client_secret": self._app.client_secret,
            "grant_type": grant_type,
            "redirect_uri": self._app.redirect_uri,
            "refresh_token" if grant_type == "refresh_token" else "code": value,
        }
        # Never retried: a lost answer may have spent the refresh token already.
        if self._gate is not None:
            # Counts against the same limit, but takes no in-flight place: requests holding
            # those places may be waiting for this very refresh.
            await self._gate.turn()
        try:
            response = await self._http.post("/oauth2/access_token", json=body)
        except httpx.TransportError:
            raise ServiceError(
                AMOCRM,
                "the token request got no answer",
                advice="The pair may have been rotated without us seeing it. " + LOGIN_ADVICE,
            ) from None
        if response.status_code != 200:
            error = amocrm_error(response, secrets=(value, self._app.client_secret))
            if isinstance(error, AccountBlocked) and self._gate is not None:
                self._gate.stopped = error
            if response.status_code >= 500:
                raise Unavailable(
                    AMOCRM,
                    f"amoCRM's token endpoint failed ({response.status_code})",
                    status=response.status_code,
                    request_id=error.request_id,
                    advice="Try again in a minute; if amoCRM rotated the tokens anyway, the next "
                    "try will say to log in again.",
                ) from None
            raise error
        try:
            answer = response.json()
            now = int(time.time())
            pair = TokenPair(
                str(answer["access_token"]),
                str(answer["refresh_token"]),
                now + int(answer.get("expires_in") or 86400),
                now,
            )
        except (ValueError, KeyError, TypeError):
            raise BadAnswer(AMOCRM, "the token answer could not be read") from None
        # Stored before anyone uses it: the old refresh token is already dead.
        self._store.save_token_pair(
            self.account,
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            expires_at=pair.expires_at,
        )
        self._seen.update((pair.access_token, pair.refresh_token))
        return pair

    def _no_tokens(self) -> AuthFailed:
        row = self._store.token_pair(self.account)
        reason = (row or {}).get("last_error") or "no OAuth tokens are stored for this account"
        return AuthFailed(AMOCRM, reason, advice=LOGIN_ADVICE)


def lock_path_for(store: Store) -> str:
    """The cross-process refresh lock sits beside the database all processes share."""
    if store.path == ":memory:":
        return os.path.join(tempfile.gettempdir(), f"tariti-mcp-{os.getpid()}.amocrm.lock")
    return store.path + ".amocrm.lock"


def oauth_tokens(settings: Settings, store: Store, gate: Gate | None = None) -> OAuthTokens:
    """The OAuth pair of the configured account, as every process sharing ``store`` sees it."""
    app = OAuthApp(
        settings.amocrm_client_id,
        settings.amocrm_client_secret.get_secret_value(),
        settings.amocrm_redirect_uri,
    )
    return OAuthTokens(
        store,
        settings.amocrm_base_url,
        app,
        lock_path=lock_path_for(store),
        timeout=settings.http_timeout,
        gate=gate,
    )


async def amocrm_credentials(
    settings: Settings, store: Store, gate: Gate | None = None
) -> Credentials:
    """The credentials the settings ask for; OAuth seeds go into the store once."""
    if settings.amocrm_api_key.get_secret_value():
        return LongLivedToken(settings.amocrm_api_key.get_secret_value())
    tokens = oauth_tokens(settings, store, gate)
    refresh_token = settings.amocrm_refresh_token.get_secret_value()
    if refresh_token:
        tokens.seed(refresh_token)
    code = settings.amocrm_auth_code.get_secret_value()
    if code and not store.seed_used(tokens.account, digest(code)):
        # An authorization code works once: remember it was tried, whatever the outcome.
        store.remember_seed(tokens.account, digest(code))
        try:
            await tokens.exchange_code(code)
            logger.info("amoCRM authorization code exchanged for tokens")
        except ServiceError as exc:
            logger.warning("amoCRM authorization code was refused: %s", exc.summary)
    return tokens
