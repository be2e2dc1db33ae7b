"""The amoCRM API v4 client: one request, HAL lists, and the rules for safe paths and queries."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx

from ..errors import (
    AMOCRM,
    AccountBlocked,
    AuthFailed,
    BadAnswer,
    InvalidArgument,
    amocrm_error,
)
from ..http import DEFAULT_RETRY, Gate, RetryPolicy, WaitCallback, build_client, send
from .tokens import Credentials, LongLivedToken

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v4/"
MAX_LIMIT = 250
METHODS = ("GET", "POST", "PATCH", "DELETE")

_SAFE_PATH = re.compile(r"^/api/v4/[A-Za-z0-9_\-/]*$")


@dataclass
class Answer:
    """One amoCRM response: status, parsed body (None when empty) and the request id."""

    status: int
    body: Any
    request_id: str | None


def api_path(path: str) -> str:
    """Return ``/api/v4/...`` for a path the model gave, or raise InvalidArgument.

    ``leads`` and ``/leads`` are read as ``/api/v4/leads``. Absolute URLs, other API versions,
    the OAuth endpoints, ``..`` and query strings are refused.
    """
    text = (path or "").strip()
    if not text:
        raise InvalidArgument("path is empty: give an API path such as /api/v4/leads")
    if len(text) > MAX_PATH:
        raise InvalidArgument(f"path is longer than {MAX_PATH} characters")
    if "://" in text or text.startswith("//") or "\\" in text:
        raise InvalidArgument(
            "path must be a path on the configured account such as /api/v4/leads, "
            "not a URL: the host is fixed by the server's settings"
        )
    if "?" in text or "#" in text:
        raise InvalidArgument(
            "path must not contain a query string: put parameters in `query`, "
            'e.g. path="/api/v4/leads", query={"limit": 50}'
        )
    if not text.startswith("/"):
        text = "/" + text
    lowered = text.lower()
    if lowered.startswith("/oauth") or "/oauth2" in lowered:
        raise InvalidArgument("the OAuth endpoints are not available through this tool")
    if not lowered.startswith("/api/"):
        text = "/api/v4" + text
    elif not lowered.startswith(API_PREFIX) and lowered != API_PREFIX.rstrip("/"):
        raise InvalidArgument("only amoCRM API v4 is available: path must start with /api/v4/")
    if ".." in text or "%" in text:
        raise InvalidArgument("path must not contain '..' or percent-escapes")
    text = re.sub(r"/{2,}", "/", text).rstrip("/")
    if not _SAFE_PATH.match(text + "/"):
        raise InvalidArgument(
            "path may contain only letters, digits, '_', '-' and '/', like /api/v4/leads/123"
        )
    return text


DEFAULT_ZONE = ZoneInfo("Europe/Moscow")
MAX_PATH = 1_000
MAX_QUERY = 8_000  # characters once encoded; real filters are far shorter


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument("query values must be finite numbers")
        if value.is_integer():
            value = int(value)
    try:
        text = str(value)
    except ValueError:  # an integer of thousands of digits
        raise InvalidArgument("a number in query is too large") from None
    if len(text) > MAX_QUERY:
        raise InvalidArgument(f"a query value is longer than {MAX_QUERY} characters")
    return text


def flatten_query(query: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Encode a query the way amoCRM reads it.

    Lists of scalars become ``key[]=a&key[]=b`` (``with`` becomes ``a,b``), lists of objects
    become indexed (``filter[statuses][0][pipeline_id]``), nested objects become brackets.
    Keys already in bracket form pass through unchanged.
    """
    pairs: list[tuple[str, str]] = []

    def walk(key: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, Mapping):
            for sub_key, sub_value in value.items():
                walk(f"{key}[{sub_key}]", sub_value)
        elif isinstance(value, list | tuple):
            if key == "with":
                pairs.append((key, ",".join(_scalar(v) for v in value)))
            elif any(isinstance(v, Mapping | list | tuple) for v in value):
                for index, item in enumerate(value):
                    walk(f"{key}[{index}]", item)
            else:
                name = key if key.endswith("[]") else key + "[]"
                pairs.extend((name, _scalar(v)) for v in value)
        else:
            pairs.append((key, _scalar(value)))

    for key, value in query.items():
        walk(str(key), value)
    return pairs


# Time filters take Unix seconds; amoCRM ignores anything else without a word.
_TIME_FILTER = re.compile(r"^filter\[\w+_(at|till)\](\[(from|to)\])?(\[\])?$")


def _filter_seconds(key: str, value: str, zone: ZoneInfo) -> str | None:
    """Unix seconds for an ISO date or datetime in a time filter; None if it is not one.

    A bare date means its first second for ``[from]`` and its last second for ``[to]``.
    """
    if not re.match(r"^\d{4}-\d{2}-\d{2}", value):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(
            f"{key} must be Unix seconds or an ISO date like 2026-12-01 (got {value[:40]!r})"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    if key.endswith("[to]") and len(value) == 10:
        moment += dt.timedelta(days=1, seconds=-1)
    if not 2000 <= moment.year < 2100:
        raise InvalidArgument(f"{key}: give a date between 2000 and 2100 (got {value[:40]!r})")
    return str(int(moment.timestamp()))


def check_query(
    path: str, pairs: list[tuple[str, str]], zone: ZoneInfo = DEFAULT_ZONE
) -> tuple[list[tuple[str, str]], list[str]]:
    """Clamp ``limit``, turn ISO dates in time filters into Unix seconds, and refuse filters
    amoCRM silently ignores. Returns the pairs to send and notes for the model."""
    notes = []
    checked = []
    if len(urlencode(pairs)) > MAX_QUERY:
        raise InvalidArgument(
            f"the query is longer than {MAX_QUERY} characters once encoded: narrow it, or split "
            "a long id list over several calls"
        )
    for key, value in pairs:
        if key == "limit":
            try:
                limit = int(value)
            except ValueError:
                raise InvalidArgument(f"limit must be a whole number (got {value!r})") from None
            if limit > MAX_LIMIT:
                # amoCRM answers a larger limit with 50 items per page, silently.
                notes.append(f"limit {limit} was lowered to {MAX_LIMIT}, amoCRM's maximum")
                value = str(MAX_LIMIT)
            elif limit < 1:
                raise InvalidArgument("limit must be between 1 and 250")
        if _TIME_FILTER.match(key):
            seconds = _filter_seconds(key, value, zone)
            if seconds is not None:
                notes.append(f"{key}={value} was sent as Unix seconds {seconds} ({zone.key})")
                value = seconds
        if path.rstrip("/") == "/api/v4/leads" and key.startswith("filter[status_id]"):
            raise InvalidArgument(
                "filter[status_id] is not a lead filter: amoCRM ignores it and returns leads of "
                'every status. Use query {"filter[statuses][0][pipeline_id]": P, '
                '"filter[statuses][0][status_id]": S} (one pair per index).'
            )
        checked.append((key, value))
    return checked, notes


# Endpoints whose body is an array of objects; a single object sent there is wrapped.
_ARRAY_BODIES = re.compile(
    r"^/api/v4/(?:(?:leads|contacts|companies|customers|tasks|calls)"
    r"|leads/complex|leads/unsorted/(?:forms|sip)|leads/pipelines"
    r"|leads/pipelines/\d+/statuses"
    r"|(?:leads|contacts|companies|customers)(?:/\d+)?/(?:notes|tags|link|unlink)"
    r"|(?:leads|contacts|companies|customers)/custom_fields)$"
)


def wants_array(path: str) -> bool:
    return bool(_ARRAY_BODIES.match(path))


def list_items(body: Any) -> tuple[str, list[Any]] | None:
    """For a HAL list answer, its entity name and items; None for a single entity."""
    if not isinstance(body, dict) or "id" in body:
        return None
    embedded = body.get("_embedded")
    if not isinstance(embedded, dict):
        return None
    for name, items in embedded.items():
        if isinstance(items, list):
            return name, items
    return None


def next_link(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    href = ((body.get("_links") or {}).get("next") or {}).get("href")
    return href if isinstance(href, str) and href else None


class AmoCrmClient:
    """Requests to one amoCRM account, all through one rate limit.

    After amoCRM's blocked-account page (403 HTML) the client sends nothing more: every further
    request would prolong the block, which only amoCRM support can lift.
    """

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | str,
        *,
        timeout: float = 30.0,
        rate_limit: float = 7.0,
        gate: Gate | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_policy: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._policy = retry_policy
        self.base_url = base_url.rstrip("/")
        if isinstance(credentials, str):
            credentials = LongLivedToken(credentials)
        self.credentials = credentials
        self.http = build_client(
            self.base_url, timeout, {"Accept": "application/hal+json"}, transport=transport
        )
        # One gate for all amoCRM traffic of the process, the token endpoint included.
        self.gate = gate or Gate(rate_limit)

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        *,
        on_wait: WaitCallback | None = None,
        policy: RetryPolicy | None = None,
    ) -> Answer:
        """Send one request; raise a ServiceError for anything but 2xx.

        ``policy`` replaces the client's retry policy for this request (the outbox gives up
        sooner than a tool call, since it comes back anyway)."""
        self.gate.check()
        method = method.upper()
        content = None
        if body is not None:
            try:
                content = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
            except (TypeError, ValueError):
                raise InvalidArgument(
                    "body holds a value that cannot be sent as JSON (a number too large?)"
                ) from None
        try:
            return await self._authorized(method, path, query, content, on_wait, policy)
        except AccountBlocked as exc:
            if self.gate.stopped is None:
                logger.warning("amoCRM blocked this account; no more requests until restart")
            self.gate.stopped = exc
            raise

    async def _authorized(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None,
        content: bytes | None,
        on_wait: WaitCallback | None,
        policy: RetryPolicy | None = None,
    ) -> Answer:
        used: list[str] = []

        async def build() -> httpx.Request:
            token = await self.credentials.token()
            used.append(token)
            headers = {"Authorization": f"Bearer {token}"}
            if content is not None:
                headers["Content-Type"] = "application/json"
            return self.http.build_request(
                method, path, params=query or None, content=content, headers=headers
            )

        response = await self._send(method, build, on_wait, policy)
        if response.status_code == 401:
            # A 401 means nothing was done, so even a write may go again with a fresh token.
            fresh = await self.credentials.refresh(used[-1])
            if fresh is not None:
                response = await self._send(method, build, on_wait, policy)
        request_id = response.headers.get("x-request-id")
        logger.debug("amoCRM %s %s -> %d (%s)", method, path, response.status_code, request_id)
        if response.status_code >= 300:
            error = amocrm_error(response, write=method != "GET", secrets=self.credentials.secrets)
            if isinstance(error, AuthFailed):
                error = AuthFailed(
                    AMOCRM,
                    error.summary,
                    status=error.status,
                    request_id=error.request_id,
                    advice=self.credentials.advice,
                )
            raise error
        if response.status_code == 204 or not response.content.strip():
            return Answer(response.status_code, None, request_id)
        try:
            parsed = response.json()
        except ValueError:
            if response.status_code == 202:
                return Answer(response.status_code, None, request_id)
            raise BadAnswer(
                AMOCRM,
                "the answer is not JSON",
                status=response.status_code,
                request_id=request_id,
            ) from None
        return Answer(response.status_code, parsed, request_id)

    async def _send(
        self,
        method: str,
        build: Callable[[], Awaitable[httpx.Request]],
        on_wait: WaitCallback | None,
        policy: RetryPolicy | None = None,
    ) -> httpx.Response:
        return await send(
            self.http,
            build,
            service=AMOCRM,
            idempotent=method == "GET",
            gate=self.gate,
            on_wait=on_wait,
            policy=policy or self._policy,
        )

    async def walk(
        self,
        path: str,
        query: list[tuple[str, str]],
        max_pages: int,
        *,
        policy: RetryPolicy | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Every item of a list over its ``_links.next`` pages, and whether pages were left."""
        items: list[dict[str, Any]] = []
        target: tuple[str, list[tuple[str, str]]] | None = (path, query)
        for _ in range(max_pages):
            answer = await self.request("GET", target[0], target[1], policy=policy)
            listing = list_items(answer.body)
            if listing is None:
                return items, False  # 204: nothing (more) matched
            items.extend(item for item in listing[1] if isinstance(item, dict))
            href = next_link(answer.body)
            target = self.follow(href) if href else None
            if target is None:
                return items, False
        return items, True

    def follow(self, href: str) -> tuple[str, list[tuple[str, str]]] | None:
        """Path and query of a ``_links.next`` href, if it stays on this account's host."""
        parts = urlsplit(href)
        if parts.netloc and parts.netloc != self.host:
            logger.warning("amoCRM next link points to another host; paging stopped")
            return None
        try:
            path = api_path(parts.path)
        except InvalidArgument:
            return None
        return path, parse_qsl(parts.query, keep_blank_values=True)
