"""The Moizvonki API client: one POST per action, credentials in the body, offset paging."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..errors import MOIZVONKI, InvalidArgument, moizvonki_error, scrub
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


class MoizvonkiClient:
    """Requests to one Moizvonki account as one user (``user_name`` decides whose calls)."""

    def __init__(
        self,
        api_url: str,
        user: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_policy: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._policy = retry_policy
        self.api_url = api_url
        self.user = user
        self._key = api_key
        # No base_url: httpx would add a trailing slash, and the endpoint is exactly /api/v1.
        self._http = build_client("", timeout, transport=transport)
        self._form = False  # switched on once if the account only reads the form encoding

    async def aclose(self) -> None:
        await self._http.aclose()

    def _request(self, action: str, params: dict[str, Any], form: bool) -> httpx.Request:
        payload = {**params, "user_name": self.user, "api_key": self._key, "action": action}
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
    ) -> Any:
        """Run one action; return the parsed JSON answer, or ``{"message": text}`` for text."""
        if action not in ACTIONS:
            raise InvalidArgument(
                f"unknown Moizvonki action {action!r}; known actions: {', '.join(ACTIONS)}"
            )
        params = dict(params or {})
        for key in RESERVED:
            if key in params:
                raise InvalidArgument(f"params must not contain {key!r}: the server adds it")
        read_only = ACTIONS[action]

        response = await send(
            self._http,
            self._request(action, params, self._form),
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
                self._request(action, params, True),
                service=MOIZVONKI,
                idempotent=read_only,
                on_wait=on_wait,
                policy=self._policy,
            )
            if retry.status_code == 200:
                self._form = True
                response = retry
        logger.debug("Moizvonki %s -> %d", action, response.status_code)
        if response.status_code != 200:
            raise moizvonki_error(
                response, action, write=not read_only, secrets=(self._key, self.user)
            )
        return parse_answer(response, secrets=(self._key,))

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
