"""OAuth 2.0 of the amoCRM emulator: consent codes, single-use refresh tokens, expiring tokens.

Only the state and its rules live here; amocrm.py answers over HTTP in the API's own shapes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

CODE_LIFE = 20 * 60
# Emulator's choice: secondary sources give an unused refresh token about three months.
REFRESH_LIFE = 90 * 86400
GRANTS = ("authorization_code", "refresh_token")
SCOPES = ["crm", "notifications"]

# The useful reason goes in `hint`; `detail` stays as vague as the real token endpoint's.
VAGUE_400 = "The request is missing a parameter or a parameter is not valid"
VAGUE_401 = "Authorization failed"
REVOKED = "Token has been revoked"
# Emulator's choice: the wording of every hint below except REVOKED.
EXPIRED = "Token has expired"
CODE_REVOKED = "Authorization code has been revoked"
CODE_EXPIRED = "Authorization code has expired"
CODE_UNKNOWN = "Cannot decrypt the authorization code"
CLIENT_FAILED = "Client authentication failed: check client_id and client_secret"
REDIRECT_MISMATCH = "redirect_uri does not match the one registered for the integration"

AccessState = Literal["valid", "expired", "unknown"]


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def jwt_shaped(digest: bytes, claims: dict[str, Any]) -> str:
    """A token shaped like amoCRM's RS256 JWTs, never signed: `digest` feeds its id and tail."""
    header = {"typ": "JWT", "alg": "RS256", "jti": digest[:20].hex()}
    signature = b"".join(hashlib.sha512(digest + bytes([block])).digest() for block in range(4))
    compact = {"separators": (",", ":")}
    return ".".join(
        (
            _b64url(json.dumps(header, **compact).encode()),
            _b64url(json.dumps(claims, **compact).encode()),
            _b64url(signature),
        )
    )


@dataclass(frozen=True)
class OAuthClient:
    """The integration as registered in the account: what the token endpoint checks."""

    client_id: str
    client_secret: str
    redirect_uri: str


class OAuthRefusal(Exception):
    """A refused token request: the status, the hint that says why and the vague detail."""

    def __init__(self, status: int, hint: str) -> None:
        super().__init__(hint)
        self.status, self.hint = status, hint
        self.detail = VAGUE_401 if status == 401 else VAGUE_400


class TokenIssuer:
    """Codes and token pairs of one integration; counts every token request for tests."""

    def __init__(
        self,
        client: OAuthClient,
        account_id: int,
        user_id: int,
        token_ttl: int = 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.account_id, self.user_id = account_id, user_id
        self.token_ttl = token_ttl
        self.token_requests: list[tuple[str, str]] = []
        self.refreshes = 0
        self.refused_refreshes = 0
        self._clock = clock
        self._codes: dict[str, float] = {}
        self._spent_codes: set[str] = set()
        self._refresh_tokens: dict[str, float] = {}
        # Expired access tokens stay known, so their refusal can say "expired", not "unknown".
        self._access_tokens: dict[str, float] = {}

    def is_client(self, client_id: Any) -> bool:
        return isinstance(client_id, str) and hmac.compare_digest(
            client_id.encode(), self.client.client_id.encode()
        )

    def issue_code(self) -> str:
        """A code, as if a person had just pressed "Allow" on the consent page."""
        code = "def50200" + secrets.token_hex(96)
        self._codes[code] = self._clock() + CODE_LIFE
        return code

    def issue_refresh_token(self) -> str:
        """A fresh token pair made on the server's side; only its refresh token is returned."""
        return self._issue_pair()["refresh_token"]

    def access_state(self, token: str) -> AccessState:
        expires = self._access_tokens.get(token)
        if expires is None:
            return "unknown"
        return "valid" if self._clock() < expires else "expired"

    def exchange(self, request: Any) -> dict[str, Any]:
        """Answer one token request, or raise OAuthRefusal; every outcome is counted."""
        grant = request.get("grant_type") if isinstance(request, dict) else None
        grant = grant if isinstance(grant, str) else ""
        try:
            answer = self._exchange(request, grant)
        except OAuthRefusal as refusal:
            self.token_requests.append((grant, "refused"))
            if grant == "refresh_token":
                self.refused_refreshes += 1
            logger.debug("sandbox OAuth refused %s: %s", grant or "-", refusal.hint)
            raise
        self.token_requests.append((grant, "ok"))
        if grant == "refresh_token":
            self.refreshes += 1
        logger.debug("sandbox OAuth granted %s", grant)
        return answer

    def _exchange(self, request: Any, grant: str) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise OAuthRefusal(400, "The request body must be a JSON object")
        if grant not in GRANTS:
            raise OAuthRefusal(400, "Unsupported grant_type")
        secret = request.get("client_secret")
        if not self.is_client(request.get("client_id")) or not (
            isinstance(secret, str)
            and hmac.compare_digest(secret.encode(), self.client.client_secret.encode())
        ):
            raise OAuthRefusal(401, CLIENT_FAILED)
        # Exactly the registered redirect_uri, on refresh as well as on the code exchange.
        if request.get("redirect_uri") != self.client.redirect_uri:
            raise OAuthRefusal(400, REDIRECT_MISMATCH)
        if grant == "authorization_code":
            self._spend_code(request.get("code"))
        else:
            self._spend_refresh_token(request.get("refresh_token"))
        return self._issue_pair()

    def _spend_code(self, code: Any) -> None:
        if not isinstance(code, str) or not code:
            raise OAuthRefusal(400, "Check the code parameter")
        if code in self._spent_codes:
            raise OAuthRefusal(400, CODE_REVOKED)
        expires = self._codes.pop(code, None)
        if expires is None:
            raise OAuthRefusal(400, CODE_UNKNOWN)
        self._spent_codes.add(code)
        if self._clock() >= expires:
            raise OAuthRefusal(400, CODE_EXPIRED)

    def _spend_refresh_token(self, token: Any) -> None:
        if not isinstance(token, str) or not token:
            raise OAuthRefusal(400, "Check the refresh_token parameter")
        # A spent token and one never issued are refused alike, as the real endpoint does.
        expires = self._refresh_tokens.pop(token, None)
        if expires is None:
            raise OAuthRefusal(401, REVOKED)
        if self._clock() >= expires:
            # Emulator's choice: an unused refresh token past its life is "expired", not "revoked".
            raise OAuthRefusal(401, EXPIRED)

    def _issue_pair(self) -> dict[str, Any]:
        now = int(self._clock())
        digest = secrets.token_bytes(32)
        claims = {
            "aud": self.client.client_id,
            "jti": digest[:20].hex(),
            "iat": now,
            "nbf": now,
            "exp": now + self.token_ttl,
            "sub": str(self.user_id),
            "grant_type": "",
            "account_id": self.account_id,
            # Emulator's choice: no api_domain claim, so no client is ever sent off loopback.
            "base_domain": "amocrm.ru",
            "version": 2,
            "scopes": SCOPES,
        }
        access_token = jwt_shaped(digest, claims)
        refresh_token = "def50200" + secrets.token_hex(160)
        # Emulator's choice: a rotation leaves the previous access token valid until it expires.
        issued = self._clock()
        self._access_tokens[access_token] = issued + self.token_ttl
        self._refresh_tokens[refresh_token] = issued + REFRESH_LIFE
        return {
            "token_type": "Bearer",
            "expires_in": self.token_ttl,
            "access_token": access_token,
            "refresh_token": refresh_token,
            "server_time": now,
        }
