"""The Moizvonki API client: one POST per action, credentials in the body, offset paging."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import (
    MOIZVONKI,
    AuthFailed,
    BadAnswer,
    InvalidArgument,
    OutcomeUnknown,
    destructive_refusal,
    looks_like_html,
    moizvonki_error,
    read_only_refusal,
    scrub,
)
from ..http import DEFAULT_RETRY, RetryPolicy, WaitCallback, build_client, send

logger = logging.getLogger(__name__)

# action -> whether it only reads. Writes are never retried once they may have reached the server.
ACTIONS: dict[str, bool] = {
    "calls.list": True,
    "calls.get_sms_templates": True,
    "calls.make_call": False,
    "calls.send_sms": False,
    "webhook.list": True,
    "webhook.subscribe": False,
    "webhook.unsubscribe": False,
    "company.list_employee": True,
    "company.list_group": True,
    "company.create_employee": False,
    "company.activate_employee": False,
    "company.delete_employee": False,
}
PAGED_ACTIONS = ("calls.list", "company.list_employee", "company.list_group")
RESERVED = ("user_name", "api_key", "action")
MAX_RESULTS = 100
# Actions that use one employee's own phone: the request must carry that employee's login.
PHONE_ACTIONS = ("calls.make_call", "calls.send_sms")
# Irreversible or account-wide actions, sent only when the operator allowed them, and why not.
DESTRUCTIVE: dict[str, str] = {
    "company.delete_employee": "it deletes the employee's login and every call of theirs, "
    "irreversibly",
    "company.create_employee": "it adds a login to the company's Moizvonki account",
    "company.activate_employee": "it changes who may use the company's Moizvonki account",
    "webhook.subscribe": "each event has one URL for the whole account, so subscribing replaces "
    "the URL another integration (amoCRM's, say) may be receiving events at",
    "webhook.unsubscribe": "it stops account-wide events that another integration may rely on",
}


@dataclass(frozen=True)
class Login:
    """One employee's login and key: whose calls a request reads, whose phone it uses."""

    user: str
    key: str = field(repr=False)


class MoizvonkiClient:
    """Requests to one Moizvonki account as one user (``user_name`` decides whose calls).

    ``read_only`` refuses every action that is not a read, and ``allow_destructive`` must be set
    for the actions in DESTRUCTIVE: the client is where every request goes out, so no caller
    can slip past the server's settings.
    """

    def __init__(
        self,
        api_url: str,
        user: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_policy: RetryPolicy = DEFAULT_RETRY,
        read_only: bool = False,
        allow_destructive: bool = False,
    ) -> None:
        self._policy = retry_policy
        self.api_url = api_url
        self.user = user
        self._key = api_key
        self.read_only = read_only
        self.allow_destructive = allow_destructive
        # No base_url: httpx would add a trailing slash, and the endpoint is exactly /api/v1.
        self._http = build_client("", timeout, transport=transport)
        self._form = False  # switched on once if the account only reads the form encoding

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def login(self) -> Login:
        """The configured user (MOIZVONKI_USER and its key)."""
        return Login(self.user, self._key)

    def check_allowed(self, action: str) -> None:
        """Refuse an action the server's settings forbid, before anything is sent."""
        if action in ACTIONS and not ACTIONS[action] and self.read_only:
            raise read_only_refusal(MOIZVONKI, action)
        if action in DESTRUCTIVE and not self.allow_destructive:
            raise destructive_refusal(action, DESTRUCTIVE[action])

    def _request(
        self, action: str, params: dict[str, Any], form: bool, login: Login
    ) -> httpx.Request:
        payload = {**params, "user_name": login.user, "api_key": login.key, "action": action}
        try:
            text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            raise InvalidArgument(
                "params hold a value that cannot be sent as JSON (a number too large?)"
            ) from None
        if form:
            return self._http.build_request("POST", self.api_url, data={"request_data": text})
        return self._http.build_request(
            "POST",
            self.api_url,
            content=text.encode(),
            headers={"Content-Type": "application/json"},
        )

    async def call(
        self,
        action: str,
        params: dict[str, Any] | None = None,
        *,
        on_wait: WaitCallback | None = None,
        login: Login | None = None,
    ) -> Any:
        """Run one action; return the parsed JSON answer, or ``{"message": text}`` for text.

        ``login`` sends this one request as another employee. make_call and send_sms need it
        named, even for the configured user: a default would ring the administrator's phone.
        """
        if action not in ACTIONS:
            raise InvalidArgument(
                f"unknown Moizvonki action {action!r}; known actions: {', '.join(ACTIONS)}"
            )
        self.check_allowed(action)
        if action in PHONE_ACTIONS and login is None:
            raise InvalidArgument(
                f"{action} uses an employee's own phone: name the employee whose phone acts"
            )
        login = login or self.login
        params = dict(params or {})
        for key in RESERVED:
            if key in params:
                raise InvalidArgument(f"params must not contain {key!r}: the server adds it")
        read_only = ACTIONS[action]

        response = await send(
            self._http,
            self._request(action, params, self._form, login),
            service=MOIZVONKI,
            idempotent=read_only,
            on_wait=on_wait,
            policy=self._policy,
        )
        if response.status_code in (400, 415, 422) and not self._form:
            # Some accounts read only the documented form field; a 4xx means nothing was done.
            logger.info(
                "Moizvonki %s refused JSON (%d); trying the form encoding",
                action,
                response.status_code,
            )
            retry = await send(
                self._http,
                self._request(action, params, True, login),
                service=MOIZVONKI,
                idempotent=read_only,
                on_wait=on_wait,
                policy=self._policy,
            )
            if retry.status_code == 200:
                self._form = True
                response = retry
        logger.debug("Moizvonki %s -> %d", action, response.status_code)
        secrets = (self._key, self.user, login.key, login.user)
        if response.status_code != 200:
            error = moizvonki_error(response, action, write=not read_only, secrets=secrets)
            if isinstance(error, AuthFailed) and login.user != self.user:
                error = AuthFailed(
                    MOIZVONKI,
                    "the employee's login or API key was refused",
                    advice="The operator must check this employee's entry in "
                    "MOIZVONKI_EMPLOYEE_KEYS (login=key, the key from the employee's own "
                    "Moizvonki settings).",
                    status=error.status,
                )
            raise error
        if looks_like_html(response):
            # A web page where the API's answer should be: a login or maintenance page, or a
            # base URL pointing at the cabinet. Its markup is no answer to show the model.
            cause = OutcomeUnknown if not read_only else BadAnswer
            raise cause(
                MOIZVONKI,
                f"{action} got a web page instead of the API's answer; check that "
                "MOIZVONKI_BASE_URL ends with /api/v1",
                status=response.status_code,
            )
        return parse_answer(response, secrets=(self._key, login.key))

    async def pages(
        self,
        action: str,
        params: dict[str, Any],
        *,
        max_pages: int,
        on_wait: WaitCallback | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the answers of a paged action, one per page, following ``results_next_offset``.

        The next offset is assigned, never added: it is an absolute index into the selection.
        Stops when it is 0, when a page is empty, when it does not advance, or at ``max_pages``.
        """
        params = dict(params)
        params["max_results"] = min(int(params.get("max_results") or MAX_RESULTS), MAX_RESULTS)
        offset = int(params.get("from_offset") or 0)
        for _ in range(max_pages):
            answer = await self.call(action, {**params, "from_offset": offset}, on_wait=on_wait)
            if not isinstance(answer, dict):
                return
            yield answer
            following = int(answer.get("results_next_offset") or 0)
            if not answer.get("results") or following <= offset or following == 0:
                return
            offset = following


def parse_answer(response: httpx.Response, secrets: tuple[str, ...] = ()) -> Any:
    text = response.text.strip()
    if any(secret and secret in text for secret in secrets):
        # Something upstream echoed the request; the key must not reach the model.
        text = scrub(text, secrets)
    if not text:
        return {"message": ""}
    try:
        return json.loads(text)
    except ValueError:
        # Some successes are plain text, e.g. "SMS posted".
        return {"message": text[:500]}
