"""Local emulator of the amoCRM API v4, following reference/amocrm.md, for the sandbox and tests.

It keeps its state in plain dicts so tests can look at what a client really wrote.
"""

from __future__ import annotations

import copy
import hmac
import json
import logging
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .data import LOST_STATUS_ID, WON_STATUS_ID, SandboxData, digits_only, field_value
from .oauth import EXPIRED, OAuthClient, OAuthRefusal, TokenIssuer

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v4"
TOKEN_PATH = "/oauth2/access_token"
CONSENT_PATH = "/oauth"
# Requests per second per integration, the official figure.
RATE_LIMIT = 7
RATE_WINDOW = 1.0
BLOCK_WINDOW = 60.0
ENTITIES = ("leads", "contacts", "companies")
MAX_LIMIT = 250
DEFAULT_LIMIT = 50
CUSTOM_FIELDS_LIMIT = 50
EVENTS_LIMIT = 100
BATCH_LIMIT = 250
COMPLEX_LIMIT = 50
COMPLEX_FIELDS_LIMIT = 40
NOTE_TYPES = (
    "common",
    "call_in",
    "call_out",
    "service_message",
    "extended_service_message",
    "message_cashier",
    "geolocation",
    "sms_in",
    "sms_out",
    "attachment",
)
TASK_TYPES = (
    {"id": 1, "name": "Связаться", "color": None, "icon_id": None, "code": "FOLLOW_UP"},
    {"id": 2, "name": "Встреча", "color": None, "icon_id": None, "code": "MEETING"},
)
EVENT_ENTITY = {"leads": "lead", "contacts": "contact", "companies": "company"}

NOT_SUPPORTED = ("NotSupportedChoice", "The value you selected is not a valid choice.")
NOT_EXPECTED = ("FieldNotExpected", "This field was not expected.")
NOT_BLANK = ("NotBlank", "This value should not be blank.")
# Emulator's choice: the codes below are not in the reference; Symfony-like names are used.
WRONG_TYPE = ("InvalidType", "This value should be of type {}.")
TOO_MANY = ("TooManyElements", "This collection should contain {} elements or less.")
UNKNOWN_ID = ("NotFound", "No entity with this id.")

# Keys a client may write; read-only keys of the read shape (account_id, _links, created_by,
# field_name...) and anything unknown are refused with FieldNotExpected.
WRITABLE = {
    "leads": {
        "name",
        "price",
        "status_id",
        "pipeline_id",
        "responsible_user_id",
        "created_at",
        "updated_at",
        "closed_at",
        "loss_reason_id",
        "updated_by",
        "custom_fields_values",
        "tags_to_add",
        "tags_to_delete",
        "_embedded",
        "request_id",
    },
    "contacts": {
        "name",
        "first_name",
        "last_name",
        "responsible_user_id",
        "created_at",
        "updated_at",
        "updated_by",
        "custom_fields_values",
        "tags_to_add",
        "tags_to_delete",
        "_embedded",
        "request_id",
    },
    "companies": {
        "name",
        "responsible_user_id",
        "created_at",
        "updated_at",
        "updated_by",
        "custom_fields_values",
        "tags_to_add",
        "tags_to_delete",
        "_embedded",
        "request_id",
    },
}
EMBEDDABLE = {
    "leads": {"contacts", "companies", "tags"},
    "contacts": {"companies", "tags"},
    "companies": {"tags"},
}
TASK_WRITABLE = {
    "text",
    "complete_till",
    "entity_id",
    "entity_type",
    "task_type_id",
    "responsible_user_id",
    "is_completed",
    "duration",
    "result",
    "created_at",
    "updated_at",
    "request_id",
}
NOTE_WRITABLE = {
    "note_type",
    "params",
    "entity_id",
    "created_by",
    "created_at",
    "responsible_user_id",
    "request_id",
    "is_need_to_trigger_digital_pipeline",
}
KEY_PATTERN = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


class _Problem(Exception):
    """An error answer in amoCRM's problem+json shape."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


class _Invalid(_Problem):
    """A 400 listing validation errors per batch item."""

    def __init__(self, failures: list[dict[str, Any]]) -> None:
        super().__init__(
            400, "Bad Request", "Request validation failed", **{"validation-errors": failures}
        )


def _error(kind: tuple[str, str], path: str, *detail_args: Any) -> dict[str, str]:
    code, detail = kind
    return {"code": code, "path": path, "detail": detail.format(*detail_args)}


def _whole_body_error(kind: tuple[str, str], *detail_args: Any) -> _Invalid:
    return _Invalid([{"request_id": "0", "errors": [_error(kind, "", *detail_args)]}])


def _problem_response(problem: _Problem) -> Response:
    body = {
        "title": problem.title,
        "type": f"https://httpstatus.es/{problem.status}",
        "status": problem.status,
        "detail": problem.detail,
        **problem.extra,
    }
    return Response(
        json.dumps(body, ensure_ascii=False),
        status_code=problem.status,
        media_type="application/problem+json",
    )


def _html(status: int, title: str, text: str) -> Response:
    return Response(
        f"<!DOCTYPE html><html><head><title>{title}</title></head>"
        f"<body><h1>{text}</h1></body></html>",
        status_code=status,
        media_type="text/html",
    )


def _hal(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False), status_code=status, media_type="application/hal+json"
    )


def _too_many_requests() -> Response:
    # The real 429 body is not JSON; emulator's choice: this text and Retry-After of 1 s.
    return Response(
        "Too Many Requests", status_code=429, media_type="text/plain", headers={"Retry-After": "1"}
    )


def _is_api(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def _no_content() -> Response:
    return Response(status_code=204)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_query(raw: str) -> dict[str, Any]:
    """Parse PHP-style bracket parameters: `filter[id][]=1`, `filter[statuses][0][status_id]=2`."""
    tree: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        match = KEY_PATTERN.match(key)
        if match is None:
            continue
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        append = parts[-1] == "" and len(parts) > 1
        if append:
            parts.pop()
        if "" in parts:
            # Emulator's choice: `[]` anywhere but at the end is not understood and is dropped.
            continue
        node: Any = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        leaf = parts[-1]
        existing = node.get(leaf)
        if append:
            if isinstance(existing, list):
                existing.append(value)
            else:
                node[leaf] = [value]
        elif isinstance(existing, list):
            existing.append(value)
        else:
            # As in PHP, a repeated plain key keeps the last value.
            node[leaf] = value
    return tree


def _as_list(node: Any) -> list[Any]:
    if node is None:
        return []
    if isinstance(node, list):
        return node
    if isinstance(node, dict):
        return [
            node[key]
            for key in sorted(
                node, key=lambda key: (not key.isdigit(), int(key) if key.isdigit() else 0, key)
            )
        ]
    return [node]


def _ints(node: Any) -> list[int]:
    numbers = []
    for item in _as_list(node):
        if isinstance(item, str) and re.fullmatch(r"-?\d+", item.strip()):
            numbers.append(int(item))
    return numbers


def _int_param(text: str | None, default: int) -> int:
    if text is None or not re.fullmatch(r"\d+", text.strip()):
        return default
    return int(text)


def _split_with(request: Request) -> set[str]:
    return {
        part.strip() for part in request.query_params.get("with", "").split(",") if part.strip()
    }


class AmoCrmEmulator:
    """An amoCRM account on loopback: one long-lived token, seeded entities, real API quirks.

    Besides the long-lived token it runs one OAuth integration (`oauth`), a sliding-window
    rate limit on /api/v4 (`rate_limit` per second, 0 for none) and the blocked state the real
    service falls into (`blocked`, set by hand or by `block_after` 429s within a minute).
    """

    def __init__(
        self,
        data: SandboxData,
        token: str,
        *,
        oauth_client: OAuthClient | None = None,
        token_ttl: int = 86400,
        rate_limit: int = RATE_LIMIT,
        block_after: int | None = None,
    ) -> None:
        self._token = token
        if oauth_client is None:
            # Without a registered integration nobody knows the secret: every exchange fails.
            oauth_client = OAuthClient(
                str(uuid.uuid4()), secrets.token_urlsafe(48), "http://127.0.0.1/callback"
            )
        self.oauth = TokenIssuer(
            oauth_client, data.account["id"], data.account["current_user_id"], token_ttl
        )
        self.rate_limit = rate_limit
        self.block_after = block_after
        self.blocked = False
        self.request_times: list[float] = []
        self.rate_limited = 0
        self._window: deque[float] = deque()
        self._refusal_times: deque[float] = deque()
        self.account = copy.deepcopy(data.account)
        self.users = {user["id"]: copy.deepcopy(user) for user in data.users}
        self.pipelines = {pipeline["id"]: copy.deepcopy(pipeline) for pipeline in data.pipelines}
        self.custom_fields = {
            entity: {definition["id"]: copy.deepcopy(definition) for definition in definitions}
            for entity, definitions in data.custom_fields.items()
        }
        self.tags = {
            entity: {tag["id"]: dict(tag) for tag in tags} for entity, tags in data.tags.items()
        }
        self.leads = {lead["id"]: copy.deepcopy(lead) for lead in data.leads}
        self.contacts = {contact["id"]: copy.deepcopy(contact) for contact in data.contacts}
        self.companies = {company["id"]: copy.deepcopy(company) for company in data.companies}
        self.notes = {note["id"]: copy.deepcopy(note) for note in data.notes}
        self.tasks = {task["id"]: copy.deepcopy(task) for task in data.tasks}
        self.events: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, str, int]] = []
        self._current_user_id = data.account["current_user_id"]
        self._next_ids = {
            "leads": max(self.leads) + 1,
            "contacts": max(self.contacts) + 1,
            "companies": max(self.companies) + 1,
            "notes": max(self.notes) + 1,
            "tasks": max(self.tasks) + 1,
            "tags": max(tag_id for tags in self.tags.values() for tag_id in tags) + 1,
        }
        self._routes = self._route_table()
        self.app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._serve,
                    methods=["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"],
                )
            ]
        )

    def records(self, entity: str) -> dict[int, dict[str, Any]]:
        return {"leads": self.leads, "contacts": self.contacts, "companies": self.companies}[entity]

    # ---- OAuth, for tests and seeding ---------------------------------------------------

    def issue_code(self) -> str:
        """An authorization code, as if a person had consented on the consent page."""
        return self.oauth.issue_code()

    def issue_refresh_token(self) -> str:
        """A refresh token of a pair made on the server's side, to seed a client's store."""
        return self.oauth.issue_refresh_token()

    @property
    def token_requests(self) -> list[tuple[str, str]]:
        """Every token request as (grant_type, "ok" or "refused"), in order."""
        return self.oauth.token_requests

    @property
    def refreshes(self) -> int:
        return self.oauth.refreshes

    @property
    def refused_refreshes(self) -> int:
        return self.oauth.refused_refreshes

    # ---- dispatch -----------------------------------------------------------------------

    def _route_table(self) -> list[tuple[str, re.Pattern[str], Callable[..., Awaitable[Response]]]]:
        entity = r"(?P<entity>leads|contacts|companies)"
        table = [
            ("GET", r"/account", self._get_account),
            ("GET", r"/users", self._list_users),
            ("GET", r"/users/(?P<id>\d+)", self._get_user),
            ("GET", r"/leads/pipelines", self._list_pipelines),
            ("GET", r"/leads/pipelines/(?P<id>\d+)", self._get_pipeline),
            ("GET", r"/leads/pipelines/(?P<id>\d+)/statuses", self._list_statuses),
            ("GET", r"/leads/pipelines/(?P<id>\d+)/statuses/(?P<status_id>\d+)", self._get_status),
            ("GET", r"/leads/unsorted", self._list_unsorted),
            ("POST", r"/leads/complex", self._create_complex),
            ("GET", rf"/{entity}/custom_fields", self._list_custom_fields),
            ("GET", rf"/{entity}/custom_fields/(?P<id>\d+)", self._get_custom_field),
            ("GET", rf"/{entity}/tags", self._list_tags),
            ("POST", rf"/{entity}/tags", self._create_tags),
            ("GET", rf"/{entity}/notes", self._list_notes),
            ("POST", rf"/{entity}/notes", self._create_notes),
            ("GET", rf"/{entity}/(?P<id>\d+)/notes", self._list_notes),
            ("POST", rf"/{entity}/(?P<id>\d+)/notes", self._create_notes),
            ("GET", rf"/{entity}/(?P<id>\d+)/links", self._list_links),
            ("POST", rf"/{entity}/(?P<id>\d+)/link", self._link_entities),
            ("POST", rf"/{entity}/(?P<id>\d+)/unlink", self._unlink_entities),
            ("GET", rf"/{entity}", self._list_entities),
            ("POST", rf"/{entity}", self._create_entities),
            ("PATCH", rf"/{entity}", self._update_entities),
            ("GET", rf"/{entity}/(?P<id>\d+)", self._get_entity),
            ("PATCH", rf"/{entity}/(?P<id>\d+)", self._update_entity),
            ("GET", r"/events", self._list_events),
            ("GET", r"/tasks", self._list_tasks),
            ("POST", r"/tasks", self._create_tasks),
            ("PATCH", r"/tasks", self._update_tasks),
            ("GET", r"/tasks/(?P<id>\d+)", self._get_task),
            ("PATCH", r"/tasks/(?P<id>\d+)", self._update_task),
        ]
        return [(method, re.compile(pattern), handler) for method, pattern, handler in table]

    async def _serve(self, request: Request) -> Response:
        path = request.url.path
        try:
            if self.blocked:
                # A blocked account answers everything, the token endpoint too, with an HTML page;
                # emulator's choice: the page's wording.
                response = _html(403, "403 Forbidden", "Доступ к аккаунту заблокирован")
            elif _is_api(path) and not self._admit():
                # Emulator's choice: the limit is checked before the token, so bad tokens count.
                response = _too_many_requests()
            else:
                response = await self._dispatch(request, path)
        except _Problem as problem:
            response = _problem_response(problem)
        except Exception:
            logger.exception("sandbox amoCRM failed on %s %s", request.method, path)
            response = _problem_response(
                _Problem(500, "Internal Server Error", "The sandbox failed on this request")
            )
        response.headers["X-Request-Id"] = uuid.uuid4().hex
        self.requests.append((request.method, path, request.url.query, response.status_code))
        logger.debug("amoCRM sandbox %s %s -> %d", request.method, path, response.status_code)
        return response

    async def _dispatch(self, request: Request, path: str) -> Response:
        if path == TOKEN_PATH:
            return await self._token_endpoint(request)
        if path.rstrip("/") == CONSENT_PATH and request.method == "GET":
            return self._consent(request)
        if not _is_api(path):
            # The common host answers a wrong path with an HTML page, not problem JSON.
            return _html(404, "404 Not Found", "Страница не найдена")
        self._authorize(request)

        # Emulator's choice: one trailing slash is tolerated.
        route = path[len(API_PREFIX) :].rstrip("/") or "/"
        allowed = []
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(route)
            if match is None:
                continue
            if method == request.method:
                return await handler(request, **match.groupdict())
            allowed.append(method)
        if allowed:
            raise _Problem(
                405,
                "Method Not Allowed",
                f"Method {request.method} is not allowed here",
                allowed=sorted(set(allowed)),
            )
        raise _Problem(404, "Not Found", "No such API method")

    def _authorize(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        expected = f"Bearer {self._token}"
        if hmac.compare_digest(header.encode(), expected.encode()):
            return
        state = self.oauth.access_state(header.removeprefix("Bearer "))
        if state == "valid":
            return
        extra = {"hint": EXPIRED} if state == "expired" else {}
        raise _Problem(
            401, "Unauthorized", "The access token is missing, expired or revoked", **extra
        )

    def _admit(self) -> bool:
        """Count one /api/v4 request against the sliding window; False means answer 429."""
        now = time.monotonic()
        while self._window and self._window[0] <= now - RATE_WINDOW:
            self._window.popleft()
        # Times are kept with the limit off as well, so a test can check a client's own pacing.
        if self.rate_limit <= 0 or len(self._window) < self.rate_limit:
            self._window.append(now)
            self.request_times.append(now)
            return True

        self.rate_limited += 1
        if self.block_after is not None:
            while self._refusal_times and self._refusal_times[0] <= now - BLOCK_WINDOW:
                self._refusal_times.popleft()
            self._refusal_times.append(now)
            if len(self._refusal_times) >= self.block_after:
                self.blocked = True
                logger.warning(
                    "sandbox amoCRM account blocked after %d refusals within %.0f s",
                    len(self._refusal_times),
                    BLOCK_WINDOW,
                )
        return False

    # ---- OAuth over HTTP ------------------------------------------------------------------

    async def _token_endpoint(self, request: Request) -> Response:
        if request.method != "POST":
            raise _Problem(
                405,
                "Method Not Allowed",
                f"Method {request.method} is not allowed here",
                allowed=["POST"],
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/x-www-form-urlencoded":
            # Emulator's choice: a form body is accepted as well as JSON, as OAuth servers do.
            async with request.form() as form:
                body: Any = {key: value for key, value in form.items() if isinstance(value, str)}
        else:
            try:
                body = json.loads(await request.body())
            except ValueError:
                body = None
        try:
            answer = self.oauth.exchange(body)
        except OAuthRefusal as refusal:
            title = "Unauthorized" if refusal.status == 401 else "Bad Request"
            raise _Problem(refusal.status, title, refusal.detail, hint=refusal.hint) from None
        return Response(json.dumps(answer), media_type="application/json")

    def _consent(self, request: Request) -> Response:
        """The consent page, consenting at once: straight back to the integration with a code."""
        params = request.query_params
        client = self.oauth.client
        if not self.oauth.is_client(params.get("client_id")):
            # Emulator's choice: an unknown integration gets an HTML error page, no redirect.
            return _html(400, "400 Bad Request", "Интеграция не найдена")
        asked = params.get("redirect_uri")
        if asked is not None and asked != client.redirect_uri:
            return _html(400, "400 Bad Request", "redirect_uri не совпадает с указанным")
        if params.get("response_type", "code") != "code":
            return _html(400, "400 Bad Request", "Поддерживается только response_type=code")

        answer = {"code": self.oauth.issue_code()}
        if "state" in params:
            answer["state"] = params["state"]
        answer["referer"] = request.url.netloc
        separator = "&" if urlsplit(client.redirect_uri).query else "?"
        location = f"{client.redirect_uri}{separator}{urlencode(answer)}"
        return Response(status_code=302, headers={"Location": location})

    # ---- shared helpers -----------------------------------------------------------------

    def _base(self, request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def _href(self, request: Request, path: str) -> dict[str, dict[str, str]]:
        return {"self": {"href": f"{self._base(request)}{API_PREFIX}{path}"}}

    def _page_href(self, request: Request, page: int) -> str:
        pairs = [
            (key, value)
            for key, value in parse_qsl(request.url.query, keep_blank_values=True)
            if key != "page"
        ]
        pairs.append(("page", str(page)))
        return f"{self._base(request)}{request.url.path}?{urlencode(pairs, safe='[]')}"

    def _paging(self, request: Request, cap: int = MAX_LIMIT) -> tuple[int, int]:
        # Emulator's choice: a page below 1 or not a number reads as page 1.
        page = max(1, _int_param(request.query_params.get("page"), 1))
        limit = _int_param(request.query_params.get("limit"), DEFAULT_LIMIT)
        if cap == MAX_LIMIT:
            # amoCRM silently falls back to 50 above 250; emulator's choice: 0 does too.
            if not 1 <= limit <= MAX_LIMIT:
                limit = DEFAULT_LIMIT
        else:
            # Emulator's choice: the lower caps (custom fields, events) clamp to the cap.
            limit = min(limit, cap) if limit >= 1 else min(DEFAULT_LIMIT, cap)
        return page, limit

    def _page(
        self,
        request: Request,
        key: str,
        items: list[Any],
        present: Callable[[Any], dict[str, Any]],
        cap: int = MAX_LIMIT,
    ) -> Response:
        page, limit = self._paging(request, cap)
        start = (page - 1) * limit
        chunk = items[start : start + limit]
        if not chunk:
            return _no_content()
        links = {"self": {"href": self._page_href(request, page)}}
        if start + limit < len(items):
            links["next"] = {"href": self._page_href(request, page + 1)}
        if page > 1:
            links["first"] = {"href": self._page_href(request, 1)}
            links["prev"] = {"href": self._page_href(request, page - 1)}
        return _hal(
            {"_page": page, "_links": links, "_embedded": {key: [present(item) for item in chunk]}}
        )

    async def _json(self, request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except ValueError:
            raise _Problem(400, "Bad Request", "The request body is not valid JSON") from None

    async def _json_array(self, request: Request, limit: int) -> list[Any]:
        body = await self._json(request)
        if not isinstance(body, list):
            raise _whole_body_error(WRONG_TYPE, "array")
        if len(body) > limit:
            raise _whole_body_error(TOO_MANY, limit)
        if not body:
            raise _whole_body_error(NOT_BLANK)
        return body

    def _next_id(self, kind: str) -> int:
        value = self._next_ids[kind]
        self._next_ids[kind] = value + 1
        return value

    def _record_event(
        self,
        kind: str,
        entity: str,
        entity_id: int,
        after: list[Any],
        before: list[Any] | None = None,
    ) -> None:
        # Emulator's choice: only creations and lead status changes make events.
        self.events.append(
            {
                "id": f"{len(self.events) + 1:024x}",
                "type": kind,
                "entity_id": entity_id,
                "entity_type": EVENT_ENTITY[entity],
                "created_by": self._current_user_id,
                "created_at": int(time.time()),
                "value_after": after,
                "value_before": before or [],
                "account_id": self.account["id"],
            }
        )

    # ---- account, users, pipelines, custom fields -----------------------------------------

    async def _get_account(self, request: Request) -> Response:
        extras = _split_with(request)
        body = {**self.account, "_links": self._href(request, "/account")}
        embedded: dict[str, Any] = {}
        if "datetime_settings" in extras:
            embedded["datetime_settings"] = {
                "date_pattern": "d.m.Y H:i",
                "short_date_pattern": "d.m.Y",
                "short_time_pattern": "H:i",
                "date_format": "d.m.Y",
                "time_format": "H:i",
                "timezone": "Europe/Moscow",
                "timezone_offset": "+03:00",
            }
        if "users_groups" in extras:
            embedded["users_groups"] = [{"id": 0, "name": "Отдел продаж", "uuid": None}]
        if "task_types" in extras:
            embedded["task_types"] = [dict(kind) for kind in TASK_TYPES]
        if "version" in extras:
            body["version"] = 2
        if "amojo_id" in extras:
            body["amojo_id"] = "5d2e7a1c-0f4b-4c8e-9a51-3b7f0c2d9e61"
        if embedded:
            body["_embedded"] = embedded
        return _hal(body)

    def _present_user(self, request: Request, user: dict[str, Any]) -> dict[str, Any]:
        return {**user, "_links": self._href(request, f"/users/{user['id']}")}

    async def _list_users(self, request: Request) -> Response:
        users = sorted(self.users.values(), key=lambda user: user["id"])
        return self._page(request, "users", users, lambda user: self._present_user(request, user))

    async def _get_user(self, request: Request, id: str) -> Response:
        user = self.users.get(int(id))
        return _hal(self._present_user(request, user)) if user else _no_content()

    def _present_pipeline(self, request: Request, pipeline: dict[str, Any]) -> dict[str, Any]:
        statuses = [
            self._present_status(request, status) for status in pipeline["_embedded"]["statuses"]
        ]
        return {
            **pipeline,
            "_links": self._href(request, f"/leads/pipelines/{pipeline['id']}"),
            "_embedded": {"statuses": statuses},
        }

    def _present_status(self, request: Request, status: dict[str, Any]) -> dict[str, Any]:
        path = f"/leads/pipelines/{status['pipeline_id']}/statuses/{status['id']}"
        return {**status, "_links": self._href(request, path)}

    async def _list_pipelines(self, request: Request) -> Response:
        pipelines = [
            self._present_pipeline(request, pipeline) for pipeline in self.pipelines.values()
        ]
        return _hal(
            {
                "_total_items": len(pipelines),
                "_links": self._href(request, "/leads/pipelines"),
                "_embedded": {"pipelines": pipelines},
            }
        )

    async def _get_pipeline(self, request: Request, id: str) -> Response:
        # Emulator's choice: a missing pipeline is 204, like any entity by id.
        pipeline = self.pipelines.get(int(id))
        return _hal(self._present_pipeline(request, pipeline)) if pipeline else _no_content()

    async def _list_statuses(self, request: Request, id: str) -> Response:
        pipeline = self.pipelines.get(int(id))
        if pipeline is None:
            return _no_content()
        statuses = [
            self._present_status(request, status) for status in pipeline["_embedded"]["statuses"]
        ]
        return _hal(
            {
                "_total_items": len(statuses),
                "_links": self._href(request, f"/leads/pipelines/{id}/statuses"),
                "_embedded": {"statuses": statuses},
            }
        )

    async def _get_status(self, request: Request, id: str, status_id: str) -> Response:
        pipeline = self.pipelines.get(int(id))
        for status in pipeline["_embedded"]["statuses"] if pipeline else []:
            if status["id"] == int(status_id):
                return _hal(self._present_status(request, status))
        return _no_content()

    async def _list_unsorted(self, request: Request) -> Response:
        # Emulator's choice: the sandbox account has no unsorted incoming leads.
        return _no_content()

    async def _list_custom_fields(self, request: Request, entity: str) -> Response:
        definitions = sorted(
            self.custom_fields[entity].values(),
            key=lambda definition: (definition["sort"], definition["id"]),
        )
        return self._page(
            request,
            "custom_fields",
            definitions,
            lambda definition: {
                **definition,
                "_links": self._href(request, f"/{entity}/custom_fields/{definition['id']}"),
            },
            cap=CUSTOM_FIELDS_LIMIT,
        )

    async def _get_custom_field(self, request: Request, entity: str, id: str) -> Response:
        definition = self.custom_fields[entity].get(int(id))
        if definition is None:
            return _no_content()
        return _hal({**definition, "_links": self._href(request, f"/{entity}/custom_fields/{id}")})

    # ---- tags -----------------------------------------------------------------------------

    async def _list_tags(self, request: Request, entity: str) -> Response:
        query = parse_query(request.url.query)
        filters = query.get("filter") if isinstance(query.get("filter"), dict) else {}
        wanted_ids = set(_ints(filters.get("id")))
        wanted_name = filters.get("name") if isinstance(filters.get("name"), str) else None
        text = request.query_params.get("query", "").strip().casefold()
        tags = [
            tag
            for tag in sorted(self.tags[entity].values(), key=lambda tag: tag["id"])
            if (not wanted_ids or tag["id"] in wanted_ids)
            and (wanted_name is None or tag["name"] == wanted_name)
            and (not text or text in tag["name"].casefold())
        ]
        return self._page(
            request,
            "tags",
            tags,
            lambda tag: {**tag, "_links": self._href(request, f"/{entity}/tags/{tag['id']}")},
        )

    async def _create_tags(self, request: Request, entity: str) -> Response:
        items = await self._json_array(request, BATCH_LIMIT)
        failures = []
        for index, item in enumerate(items):
            request_id = self._request_id(item, index)
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("name"), str)
                or not item["name"].strip()
            ):
                failures.append({"request_id": request_id, "errors": [_error(NOT_BLANK, "name")]})
        if failures:
            raise _Invalid(failures)
        created = []
        for index, item in enumerate(items):
            tag = self._tag_by_name(entity, item["name"].strip(), item.get("color"))
            created.append({**tag, "request_id": self._request_id(item, index)})
        return _hal(
            {
                "_total_items": len(created),
                "_links": self._href(request, f"/{entity}/tags"),
                "_embedded": {"tags": created},
            }
        )

    def _tag_by_name(self, entity: str, name: str, color: Any = None) -> dict[str, Any]:
        for tag in self.tags[entity].values():
            if tag["name"].casefold() == name.casefold():
                return tag
        tag = {
            "id": self._next_id("tags"),
            "name": name,
            "color": color if isinstance(color, str) else None,
        }
        self.tags[entity][tag["id"]] = tag
        return tag

    # ---- leads, contacts, companies: reading ----------------------------------------------

    def _present(
        self, request: Request, entity: str, record: dict[str, Any], extras: set[str]
    ) -> dict[str, Any]:
        embedded = {
            key: [dict(item) for item in value] for key, value in record["_embedded"].items()
        }
        hidden = {
            "leads": {"contacts": "contacts"},
            "contacts": {"leads": "leads"},
            "companies": {"contacts": "contacts", "leads": "leads"},
        }[entity]
        for key, needs in hidden.items():
            if needs not in extras:
                embedded.pop(key, None)
        for key in ("contacts", "leads", "companies"):
            for item in embedded.get(key, []):
                item["_links"] = self._href(request, f"/{key}/{item['id']}")
        return {
            **{key: value for key, value in record.items() if key != "_embedded"},
            "_links": self._href(request, f"/{entity}/{record['id']}"),
            "_embedded": embedded,
        }

    async def _get_entity(self, request: Request, entity: str, id: str) -> Response:
        record = self.records(entity).get(int(id))
        if record is None:
            return _no_content()
        return _hal(self._present(request, entity, record, _split_with(request)))

    async def _list_entities(self, request: Request, entity: str) -> Response:
        query = parse_query(request.url.query)
        filters = query.get("filter") if isinstance(query.get("filter"), dict) else {}
        records = [
            record
            for record in self.records(entity).values()
            if self._passes_filters(entity, record, filters)
        ]
        text = request.query_params.get("query", "").strip()
        if text:
            records = [record for record in records if _matches_text(record, text)]
        records = _ordered(records, query.get("order"))
        extras = _split_with(request)
        return self._page(
            request, entity, records, lambda record: self._present(request, entity, record, extras)
        )

    def _passes_filters(self, entity: str, record: dict[str, Any], filters: dict[str, Any]) -> bool:
        ids = _ints(filters.get("id"))
        if ids and record["id"] not in ids:
            return False
        names = [name for name in _as_list(filters.get("name")) if isinstance(name, str)]
        if names and record.get("name") not in names:
            return False
        responsible = _ints(filters.get("responsible_user_id"))
        if responsible and record.get("responsible_user_id") not in responsible:
            return False
        time_keys = (
            ("created_at", "updated_at", "closed_at")
            if entity == "leads"
            else ("created_at", "updated_at")
        )
        for key in time_keys:
            if not _in_range(record.get(key), filters.get(key)):
                return False
        if entity != "leads":
            return True

        # filter[status_id] is deliberately not read: amoCRM ignores it for leads.
        pipelines = _ints(filters.get("pipeline_id"))
        if pipelines and record["pipeline_id"] not in pipelines:
            return False
        pairs = set()
        for pair in _as_list(filters.get("statuses")):
            if isinstance(pair, dict):
                pipeline_ids, status_ids = (
                    _ints(pair.get("pipeline_id")),
                    _ints(pair.get("status_id")),
                )
                if pipeline_ids and status_ids:
                    pairs.add((pipeline_ids[0], status_ids[0]))
        return not pairs or (record["pipeline_id"], record["status_id"]) in pairs

    # ---- leads, contacts, companies: writing ----------------------------------------------

    def _request_id(self, item: Any, index: int) -> str:
        if (
            isinstance(item, dict)
            and isinstance(item.get("request_id"), (str, int))
            and not isinstance(item.get("request_id"), bool)
        ):
            return str(item["request_id"])
        return str(index)

    async def _create_entities(self, request: Request, entity: str) -> Response:
        # Emulator's choice: one invalid item rejects the whole batch and nothing is written.
        items = await self._json_array(request, BATCH_LIMIT)
        plans, failures = [], []
        for index, item in enumerate(items):
            errors, plan = self._check_entity(entity, item, "", existing=None)
            plans.append(plan)
            if errors:
                failures.append({"request_id": self._request_id(item, index), "errors": errors})
        if failures:
            raise _Invalid(failures)
        answer = []
        for index, (item, plan) in enumerate(zip(items, plans, strict=True)):
            record = self._create_record(entity, plan)
            answer.append(
                {
                    "id": record["id"],
                    "request_id": self._request_id(item, index),
                    "_links": self._href(request, f"/{entity}/{record['id']}"),
                }
            )
        return _hal({"_links": self._href(request, f"/{entity}"), "_embedded": {entity: answer}})

    async def _update_entities(self, request: Request, entity: str) -> Response:
        items = await self._json_array(request, BATCH_LIMIT)
        plans, failures = [], []
        for index, item in enumerate(items):
            errors, plan, record = self._check_update(entity, item)
            plans.append((record, plan))
            if errors:
                failures.append({"request_id": self._request_id(item, index), "errors": errors})
        if failures:
            raise _Invalid(failures)
        answer = []
        for record, plan in plans:
            self._apply(entity, record, plan)
            answer.append(
                {
                    "id": record["id"],
                    "updated_at": record["updated_at"],
                    "_links": self._href(request, f"/{entity}/{record['id']}"),
                }
            )
        return _hal({"_links": self._href(request, f"/{entity}"), "_embedded": {entity: answer}})

    async def _update_entity(self, request: Request, entity: str, id: str) -> Response:
        item = await self._json(request)
        if not isinstance(item, dict):
            raise _whole_body_error(WRONG_TYPE, "object")
        errors, plan, record = self._check_update(entity, {**item, "id": int(id)})
        if errors:
            raise _Invalid([{"request_id": self._request_id(item, 0), "errors": errors}])
        self._apply(entity, record, plan)
        return _hal(
            {
                "id": record["id"],
                "updated_at": record["updated_at"],
                "_links": self._href(request, f"/{entity}/{record['id']}"),
            }
        )

    def _check_update(
        self, entity: str, item: Any
    ) -> tuple[list[dict[str, str]], dict[str, Any], dict[str, Any] | None]:
        if not isinstance(item, dict):
            return [_error(WRONG_TYPE, "", "object")], {}, None
        if "id" not in item:
            return [_error(NOT_BLANK, "id")], {}, None
        if not _is_int(item["id"]):
            return [_error(WRONG_TYPE, "id", "int")], {}, None
        record = self.records(entity).get(item["id"])
        if record is None:
            return [_error(UNKNOWN_ID, "id")], {}, None
        body = {key: value for key, value in item.items() if key != "id"}
        errors, plan = self._check_entity(entity, body, "", existing=record)
        return errors, plan, record

    def _check_entity(
        self,
        entity: str,
        item: Any,
        prefix: str,
        existing: dict[str, Any] | None,
        complex_mode: bool = False,
    ) -> tuple[list[dict[str, str]], dict[str, Any]]:
        """Validate one written entity; return errors and the normalised changes to apply."""
        if not isinstance(item, dict):
            return [_error(WRONG_TYPE, prefix.rstrip("."), "object")], {}
        errors: list[dict[str, str]] = []
        plan: dict[str, Any] = {}
        for key in item:
            if key not in WRITABLE[entity]:
                errors.append(_error(NOT_EXPECTED, prefix + key))

        for key in ("name", "first_name", "last_name"):
            if key in item and key in WRITABLE[entity]:
                if isinstance(item[key], str):
                    plan[key] = item[key]
                else:
                    errors.append(_error(WRONG_TYPE, prefix + key, "string"))
        int_keys = ["responsible_user_id", "created_at", "updated_at", "updated_by"]
        if entity == "leads":
            int_keys += ["price", "status_id", "pipeline_id", "closed_at"]
        for key in int_keys:
            if key in item:
                if _is_int(item[key]):
                    plan[key] = item[key]
                else:
                    errors.append(_error(WRONG_TYPE, prefix + key, "int"))
        if entity == "leads" and "loss_reason_id" in item:
            if item["loss_reason_id"] is None or _is_int(item["loss_reason_id"]):
                plan["loss_reason_id"] = item["loss_reason_id"]
            else:
                errors.append(_error(WRONG_TYPE, prefix + "loss_reason_id", "int"))
        if "responsible_user_id" in plan and plan["responsible_user_id"] not in self.users:
            errors.append(_error(NOT_SUPPORTED, prefix + "responsible_user_id"))
        if entity == "leads":
            errors += self._check_status(item, plan, prefix, existing)

        if "custom_fields_values" in item:
            field_errors, plan["custom_fields_values"] = self._check_custom_fields(
                entity, item["custom_fields_values"], prefix + "custom_fields_values"
            )
            errors += field_errors
            if (
                complex_mode
                and isinstance(item["custom_fields_values"], list)
                and len(item["custom_fields_values"]) > COMPLEX_FIELDS_LIMIT
            ):
                errors.append(
                    _error(TOO_MANY, prefix + "custom_fields_values", COMPLEX_FIELDS_LIMIT)
                )
        for key in ("tags_to_add", "tags_to_delete"):
            if key in item:
                tag_errors, plan[key] = self._check_tags(entity, item[key], prefix + key)
                errors += tag_errors

        embedded = item.get("_embedded", {})
        if not isinstance(embedded, dict):
            errors.append(_error(WRONG_TYPE, prefix + "_embedded", "object"))
            embedded = {}
        for key in embedded:
            if key not in EMBEDDABLE[entity]:
                errors.append(_error(NOT_EXPECTED, f"{prefix}_embedded.{key}"))
        if "tags" in embedded:
            tag_errors, plan["tags"] = self._check_tags(
                entity, embedded["tags"], prefix + "_embedded.tags"
            )
            errors += tag_errors
        for key in ("contacts", "companies"):
            if key in embedded and key in EMBEDDABLE[entity] and not complex_mode:
                link_errors, plan[key] = self._check_existing_links(
                    key, embedded[key], f"{prefix}_embedded.{key}"
                )
                errors += link_errors
        return errors, plan

    def _check_status(
        self,
        item: dict[str, Any],
        plan: dict[str, Any],
        prefix: str,
        existing: dict[str, Any] | None,
    ) -> list[dict[str, str]]:
        if "pipeline_id" in plan and plan["pipeline_id"] not in self.pipelines:
            return [_error(NOT_SUPPORTED, prefix + "pipeline_id")]
        if "pipeline_id" in plan:
            pipeline_id = plan["pipeline_id"]
        elif existing is not None:
            pipeline_id = existing["pipeline_id"]
        else:
            pipeline_id = next(
                pid for pid, pipeline in self.pipelines.items() if pipeline["is_main"]
            )
        statuses = self.pipelines[pipeline_id]["_embedded"]["statuses"]
        # Emulator's choice: the unsorted status (type 1) cannot be set through the API.
        allowed = [status["id"] for status in statuses if status["type"] != 1]
        if "status_id" in plan:
            if plan["status_id"] not in allowed:
                return [_error(NOT_SUPPORTED, prefix + "status_id")]
        elif existing is None or existing["pipeline_id"] != pipeline_id:
            plan["status_id"] = allowed[0]
        plan["pipeline_id"] = pipeline_id
        return []

    def _check_custom_fields(
        self, entity: str, fields: Any, path: str
    ) -> tuple[list[dict[str, str]], list[tuple[dict[str, Any], Any]]]:
        if not isinstance(fields, list):
            return [_error(WRONG_TYPE, path, "array")], []
        definitions = self.custom_fields[entity]
        errors: list[dict[str, str]] = []
        changes: list[tuple[dict[str, Any], Any]] = []
        for index, written in enumerate(fields):
            where = f"{path}.{index}"
            if not isinstance(written, dict):
                errors.append(_error(WRONG_TYPE, where, "object"))
                continue
            for key in written:
                if key not in ("field_id", "field_code", "values"):
                    errors.append(_error(NOT_EXPECTED, f"{where}.{key}"))
            definition = None
            if "field_id" in written:
                definition = (
                    definitions.get(written["field_id"]) if _is_int(written["field_id"]) else None
                )
                if definition is None:
                    errors.append(_error(NOT_SUPPORTED, f"{where}.field_id"))
                    continue
            elif "field_code" in written:
                definition = next(
                    (
                        candidate
                        for candidate in definitions.values()
                        if candidate["code"] is not None
                        and candidate["code"] == written["field_code"]
                    ),
                    None,
                )
                if definition is None:
                    errors.append(_error(NOT_SUPPORTED, f"{where}.field_code"))
                    continue
            else:
                errors.append(_error(NOT_BLANK, f"{where}.field_id"))
                continue
            values = written.get("values")
            if values is None:
                changes.append((definition, None))
                continue
            if not isinstance(values, list):
                errors.append(_error(WRONG_TYPE, f"{where}.values", "array"))
                continue
            stored = []
            for position, value in enumerate(values):
                value_errors, read_value = _check_field_value(
                    definition, value, f"{where}.values.{position}"
                )
                errors += value_errors
                stored.append(read_value)
            changes.append((definition, stored))
        return errors, changes

    def _check_tags(
        self, entity: str, tags: Any, path: str
    ) -> tuple[list[dict[str, str]], list[Any]]:
        if not isinstance(tags, list):
            return [_error(WRONG_TYPE, path, "array")], []
        errors, wanted = [], []
        for index, tag in enumerate(tags):
            where = f"{path}.{index}"
            if isinstance(tag, dict) and "id" in tag:
                if _is_int(tag["id"]) and tag["id"] in self.tags[entity]:
                    wanted.append(tag["id"])
                else:
                    errors.append(_error(NOT_SUPPORTED, f"{where}.id"))
            elif isinstance(tag, dict) and isinstance(tag.get("name"), str) and tag["name"].strip():
                wanted.append(tag["name"].strip())
            else:
                errors.append(_error(NOT_BLANK, f"{where}.name"))
        return errors, wanted

    def _check_existing_links(
        self, kind: str, links: Any, path: str
    ) -> tuple[list[dict[str, str]], list[tuple[int, bool]]]:
        if not isinstance(links, list):
            return [_error(WRONG_TYPE, path, "array")], []
        errors, wanted = [], []
        for index, link in enumerate(links):
            where = f"{path}.{index}"
            if not isinstance(link, dict) or "id" not in link:
                # Emulator's choice: a new contact or company needs /leads/complex.
                errors.append(_error(NOT_BLANK, f"{where}.id"))
            elif not _is_int(link["id"]) or link["id"] not in self.records(kind):
                errors.append(_error(NOT_SUPPORTED, f"{where}.id"))
            else:
                wanted.append((link["id"], bool(link.get("is_main", False))))
        return errors, wanted

    def _create_record(self, entity: str, plan: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        record_id = self._next_id(entity)
        record: dict[str, Any] = {"id": record_id}
        if entity == "leads":
            record.update(name=plan.get("name", f"Сделка #{record_id}"), price=plan.get("price", 0))
        elif entity == "contacts":
            first, last = plan.get("first_name", ""), plan.get("last_name", "")
            record.update(
                name=plan.get("name") or f"{first} {last}".strip(), first_name=first, last_name=last
            )
        else:
            record.update(name=plan.get("name", ""))
        record.update(
            responsible_user_id=plan.get("responsible_user_id", self._current_user_id), group_id=0
        )
        if entity == "leads":
            record.update(
                status_id=plan["status_id"],
                pipeline_id=plan["pipeline_id"],
                loss_reason_id=plan.get("loss_reason_id"),
            )
        record.update(
            created_by=self._current_user_id,
            updated_by=plan.get("updated_by", self._current_user_id),
            # Emulator's choice: a caller's own created_at is kept, as amoCRM allows.
            created_at=plan.get("created_at", now),
            updated_at=plan.get("updated_at", now),
        )
        if entity == "leads":
            closed = plan["status_id"] in (WON_STATUS_ID, LOST_STATUS_ID)
            record["closed_at"] = plan.get("closed_at", now if closed else None)
        record.update(closest_task_at=None, is_deleted=False)
        if entity == "contacts":
            record["is_unsorted"] = False
        record["custom_fields_values"] = None
        if entity == "leads":
            record.update(score=None)
        record["account_id"] = self.account["id"]
        if entity == "leads":
            record["labor_cost"] = None
        record["_embedded"] = {
            "tags": [],
            **{
                key: []
                for key in {
                    "leads": ("companies", "contacts"),
                    "contacts": ("companies", "leads"),
                    "companies": ("contacts", "leads"),
                }[entity]
            },
        }
        self.records(entity)[record_id] = record
        self._apply(entity, record, plan, touch=False)
        self._record_event(f"{EVENT_ENTITY[entity]}_added", entity, record_id, [])
        return record

    def _apply(
        self, entity: str, record: dict[str, Any], plan: dict[str, Any], touch: bool = True
    ) -> None:
        now = int(time.time())
        if touch:
            for key in (
                "name",
                "first_name",
                "last_name",
                "price",
                "responsible_user_id",
                "loss_reason_id",
                "created_at",
                "updated_by",
            ):
                if key in plan:
                    record[key] = plan[key]
            if entity == "leads":
                self._move_lead(record, plan, now)
            record["updated_at"] = plan.get("updated_at", now)
        if plan.get("custom_fields_values"):
            record["custom_fields_values"] = _merge_fields(
                record["custom_fields_values"], plan["custom_fields_values"]
            )
        if "tags" in plan:
            record["_embedded"]["tags"] = self._resolve_tags(entity, plan["tags"])
        if plan.get("tags_to_add"):
            present = {tag["id"] for tag in record["_embedded"]["tags"]}
            for tag in self._resolve_tags(entity, plan["tags_to_add"]):
                if tag["id"] not in present:
                    record["_embedded"]["tags"].append(tag)
        if plan.get("tags_to_delete"):
            dropped = {tag["id"] for tag in self._resolve_tags(entity, plan["tags_to_delete"])}
            record["_embedded"]["tags"] = [
                tag for tag in record["_embedded"]["tags"] if tag["id"] not in dropped
            ]
        for kind in ("contacts", "companies"):
            for other_id, is_main in plan.get(kind, []):
                self.link(entity, record["id"], kind, other_id, is_main)

    def _move_lead(self, record: dict[str, Any], plan: dict[str, Any], now: int) -> None:
        before = (record["pipeline_id"], record["status_id"])
        record["pipeline_id"] = plan.get("pipeline_id", record["pipeline_id"])
        record["status_id"] = plan.get("status_id", record["status_id"])
        if "closed_at" in plan:
            record["closed_at"] = plan["closed_at"]
        elif (record["pipeline_id"], record["status_id"]) != before:
            closed = record["status_id"] in (WON_STATUS_ID, LOST_STATUS_ID)
            record["closed_at"] = now if closed else None
        if (record["pipeline_id"], record["status_id"]) != before:
            self._record_event(
                "lead_status_changed",
                "leads",
                record["id"],
                [
                    {
                        "lead_status": {
                            "id": record["status_id"],
                            "pipeline_id": record["pipeline_id"],
                        }
                    }
                ],
                [{"lead_status": {"id": before[1], "pipeline_id": before[0]}}],
            )

    def _resolve_tags(self, entity: str, wanted: list[Any]) -> list[dict[str, Any]]:
        resolved = []
        for tag in wanted:
            found = (
                self.tags[entity][tag] if isinstance(tag, int) else self._tag_by_name(entity, tag)
            )
            if all(found["id"] != item["id"] for item in resolved):
                resolved.append({"id": found["id"], "name": found["name"], "color": found["color"]})
        return resolved

    # ---- links ----------------------------------------------------------------------------

    def link(
        self, entity: str, entity_id: int, other: str, other_id: int, is_main: bool = False
    ) -> None:
        """Link two records both ways; a lead or a contact has at most one company."""
        pair = {entity: entity_id, other: other_id}
        if set(pair) == {"leads", "contacts"}:
            lead, contact = self.leads[pair["leads"]], self.contacts[pair["contacts"]]
            links = lead["_embedded"]["contacts"]
            existing = next((item for item in links if item["id"] == contact["id"]), None)
            if existing is None:
                existing = {"id": contact["id"], "is_main": False}
                links.append(existing)
            if is_main or not any(item["is_main"] for item in links):
                for item in links:
                    item["is_main"] = item is existing
            if all(item["id"] != lead["id"] for item in contact["_embedded"]["leads"]):
                contact["_embedded"]["leads"].append({"id": lead["id"]})
        elif "companies" in pair and len(pair) == 2:
            owner_kind = "leads" if "leads" in pair else "contacts"
            owner = self.records(owner_kind)[pair[owner_kind]]
            company = self.companies[pair["companies"]]
            for previous in owner["_embedded"]["companies"]:
                if previous["id"] != company["id"] and previous["id"] in self.companies:
                    members = self.companies[previous["id"]]["_embedded"][owner_kind]
                    members[:] = [item for item in members if item["id"] != owner["id"]]
            owner["_embedded"]["companies"] = [{"id": company["id"]}]
            if all(item["id"] != owner["id"] for item in company["_embedded"][owner_kind]):
                company["_embedded"][owner_kind].append({"id": owner["id"]})

    def unlink(self, entity: str, entity_id: int, other: str, other_id: int) -> None:
        first, second = self.records(entity)[entity_id], self.records(other)[other_id]
        for record, kind, target in ((first, other, other_id), (second, entity, entity_id)):
            links = record["_embedded"].get(kind)
            if links is not None:
                links[:] = [item for item in links if item["id"] != target]
        if "contacts" in (entity, other) and "leads" in (entity, other):
            lead = first if entity == "leads" else second
            contacts = lead["_embedded"]["contacts"]
            if contacts and not any(item["is_main"] for item in contacts):
                contacts[0]["is_main"] = True

    async def _list_links(self, request: Request, entity: str, id: str) -> Response:
        record = self.records(entity).get(int(id))
        if record is None:
            return _no_content()
        links = []
        for kind in ("leads", "contacts", "companies"):
            for item in record["_embedded"].get(kind, []):
                metadata = {"main_contact": item["is_main"]} if "is_main" in item else None
                links.append(
                    {"to_entity_id": item["id"], "to_entity_type": kind, "metadata": metadata}
                )
        if not links:
            # Emulator's choice: no links reads like an empty list, 204.
            return _no_content()
        return _hal(
            {
                "_total_items": len(links),
                "_links": self._href(request, f"/{entity}/{id}/links"),
                "_embedded": {"links": links},
            }
        )

    async def _check_link_body(
        self, request: Request, entity: str, id: str
    ) -> list[tuple[str, int, bool]]:
        if int(id) not in self.records(entity):
            # Emulator's choice: linking from a missing entity is a 404 problem.
            raise _Problem(404, "Not Found", f"No {entity} with id {id}")
        items = await self._json_array(request, BATCH_LIMIT)
        failures, wanted = [], []
        for index, item in enumerate(items):
            errors = []
            kind = item.get("to_entity_type") if isinstance(item, dict) else None
            target = item.get("to_entity_id") if isinstance(item, dict) else None
            if kind not in ENTITIES or kind == entity:
                errors.append(_error(NOT_SUPPORTED, "to_entity_type"))
            elif not _is_int(target) or target not in self.records(kind):
                errors.append(_error(NOT_SUPPORTED, "to_entity_id"))
            if errors:
                failures.append({"request_id": str(index), "errors": errors})
                continue
            metadata = item.get("metadata") or {}
            is_main = (
                bool(metadata.get("is_main") or metadata.get("main_contact"))
                if isinstance(metadata, dict)
                else False
            )
            wanted.append((kind, target, is_main))
        if failures:
            raise _Invalid(failures)
        return wanted

    async def _link_entities(self, request: Request, entity: str, id: str) -> Response:
        wanted = await self._check_link_body(request, entity, id)
        answer = []
        for kind, target, is_main in wanted:
            self.link(entity, int(id), kind, target, is_main)
            answer.append(
                {
                    "entity_id": int(id),
                    "entity_type": entity,
                    "to_entity_id": target,
                    "to_entity_type": kind,
                    "metadata": {"main_contact": is_main}
                    if "leads" in (entity, kind) and "contacts" in (entity, kind)
                    else None,
                }
            )
        return _hal(
            {
                "_total_items": len(answer),
                "_links": self._href(request, f"/{entity}/{id}/link"),
                "_embedded": {"links": answer},
            }
        )

    async def _unlink_entities(self, request: Request, entity: str, id: str) -> Response:
        for kind, target, _is_main in await self._check_link_body(request, entity, id):
            self.unlink(entity, int(id), kind, target)
        return _no_content()

    # ---- complex --------------------------------------------------------------------------

    async def _create_complex(self, request: Request) -> Response:
        items = await self._json_array(request, COMPLEX_LIMIT)
        plans, failures = [], []
        for index, item in enumerate(items):
            errors, plan = self._check_complex(item)
            plans.append(plan)
            if errors:
                failures.append({"request_id": self._request_id(item, index), "errors": errors})
        if failures:
            raise _Invalid(failures)

        answer = []
        for index, (item, plan) in enumerate(zip(items, plans, strict=True)):
            lead = self._create_record("leads", plan["lead"])
            contact_id = company_id = None
            if plan["contact"] is not None:
                contact_id = (
                    plan["contact"]
                    if isinstance(plan["contact"], int)
                    else self._create_record("contacts", plan["contact"])["id"]
                )
                self.link("leads", lead["id"], "contacts", contact_id, True)
            if plan["company"] is not None:
                company_id = (
                    plan["company"]
                    if isinstance(plan["company"], int)
                    else self._create_record("companies", plan["company"])["id"]
                )
                self.link("leads", lead["id"], "companies", company_id)
                if contact_id is not None:
                    self.link("contacts", contact_id, "companies", company_id)
            answer.append(
                {
                    "id": lead["id"],
                    "contact_id": contact_id,
                    "company_id": company_id,
                    "request_id": [self._request_id(item, index)],
                    "merged": False,
                }
            )
        # The complex endpoint answers with a bare array, not the usual _embedded envelope.
        return _hal(answer)

    def _check_complex(self, item: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
        errors, lead_plan = self._check_entity("leads", item, "", existing=None, complex_mode=True)
        plan: dict[str, Any] = {"lead": lead_plan, "contact": None, "company": None}
        embedded = item.get("_embedded") if isinstance(item, dict) else None
        if not isinstance(embedded, dict):
            return errors, plan
        for kind, key in (("contacts", "contact"), ("companies", "company")):
            entries = embedded.get(kind)
            if entries is None:
                continue
            path = f"_embedded.{kind}"
            if not isinstance(entries, list):
                errors.append(_error(WRONG_TYPE, path, "array"))
                continue
            if len(entries) > 1:
                errors.append(_error(TOO_MANY, path, 1))
                continue
            if not entries:
                continue
            entry = entries[0]
            if isinstance(entry, dict) and "id" in entry:
                # Emulator's choice: an existing id is linked, though amoCRM is unreliable here.
                if _is_int(entry["id"]) and entry["id"] in self.records(kind):
                    plan[key] = entry["id"]
                else:
                    errors.append(_error(NOT_SUPPORTED, f"{path}.0.id"))
                continue
            entry_errors, plan[key] = self._check_entity(
                kind, entry, f"{path}.0.", existing=None, complex_mode=True
            )
            errors += entry_errors
        return errors, plan

    # ---- notes ----------------------------------------------------------------------------

    def _present_note(self, request: Request, note: dict[str, Any]) -> dict[str, Any]:
        body = {key: value for key, value in note.items() if key != "entity_type"}
        path = f"/{note['entity_type']}/{note['entity_id']}/notes/{note['id']}"
        body["_links"] = self._href(request, path)
        return body

    async def _list_notes(self, request: Request, entity: str, id: str | None = None) -> Response:
        query = parse_query(request.url.query)
        filters = query.get("filter") if isinstance(query.get("filter"), dict) else {}
        entity_ids = {int(id)} if id is not None else set(_ints(filters.get("entity_id")))
        note_ids = set(_ints(filters.get("id")))
        note_types = {kind for kind in _as_list(filters.get("note_type")) if isinstance(kind, str)}
        notes = [
            note
            for note in self.notes.values()
            if note["entity_type"] == entity
            and (not entity_ids or note["entity_id"] in entity_ids)
            and (not note_ids or note["id"] in note_ids)
            and (not note_types or note["note_type"] in note_types)
            and _in_range(note["updated_at"], filters.get("updated_at"))
        ]
        notes = _ordered(notes, query.get("order"))
        return self._page(request, "notes", notes, lambda note: self._present_note(request, note))

    async def _create_notes(self, request: Request, entity: str, id: str | None = None) -> Response:
        items = await self._json_array(request, BATCH_LIMIT)
        failures = []
        for index, item in enumerate(items):
            errors = _check_note(item)
            target = (
                int(id)
                if id is not None
                else (item.get("entity_id") if isinstance(item, dict) else None)
            )
            if not _is_int(target) or target not in self.records(entity):
                errors.append(_error(NOT_SUPPORTED, "entity_id"))
            if errors:
                failures.append({"request_id": self._request_id(item, index), "errors": errors})
        if failures:
            raise _Invalid(failures)
        now = int(time.time())
        answer = []
        for index, item in enumerate(items):
            target = int(id) if id is not None else item["entity_id"]
            owner = self.records(entity)[target]
            note = {
                "id": self._next_id("notes"),
                "entity_id": target,
                "entity_type": entity,
                "created_by": item.get("created_by", self._current_user_id),
                "updated_by": self._current_user_id,
                "created_at": item.get("created_at", now),
                "updated_at": now,
                "responsible_user_id": item.get(
                    "responsible_user_id", owner["responsible_user_id"]
                ),
                "group_id": 0,
                "note_type": item["note_type"],
                "params": item["params"],
                "account_id": self.account["id"],
            }
            self.notes[note["id"]] = note
            answer.append(
                {
                    "id": note["id"],
                    "entity_id": target,
                    "request_id": self._request_id(item, index),
                    "_links": self._present_note(request, note)["_links"],
                }
            )
        return _hal(
            {
                "_links": self._href(request, request.url.path[len(API_PREFIX) :]),
                "_embedded": {"notes": answer},
            }
        )

    # ---- events ---------------------------------------------------------------------------

    async def _list_events(self, request: Request) -> Response:
        query = parse_query(request.url.query)
        filters = query.get("filter") if isinstance(query.get("filter"), dict) else {}
        kinds = {
            kind.strip()
            for text in _as_list(filters.get("type"))
            if isinstance(text, str)
            for kind in text.split(",")
            if kind.strip()
        }
        entity_kinds = {
            kind.strip()
            for text in _as_list(filters.get("entity"))
            if isinstance(text, str)
            for kind in text.split(",")
            if kind.strip()
        }
        events = [
            event
            for event in reversed(self.events)
            if (not kinds or event["type"] in kinds)
            and (not entity_kinds or event["entity_type"] in entity_kinds)
            and _in_range(event["created_at"], filters.get("created_at"))
        ]
        return self._page(
            request,
            "events",
            events,
            lambda event: {**event, "_links": self._href(request, f"/events/{event['id']}")},
            cap=EVENTS_LIMIT,
        )

    # ---- tasks ----------------------------------------------------------------------------

    def _present_task(self, request: Request, task: dict[str, Any]) -> dict[str, Any]:
        return {**task, "_links": self._href(request, f"/tasks/{task['id']}")}

    async def _list_tasks(self, request: Request) -> Response:
        query = parse_query(request.url.query)
        filters = query.get("filter") if isinstance(query.get("filter"), dict) else {}
        ids = set(_ints(filters.get("id")))
        responsible = set(_ints(filters.get("responsible_user_id")))
        entity_ids = set(_ints(filters.get("entity_id")))
        task_types = set(_ints(filters.get("task_type")))
        entity_type = filters.get("entity_type")
        completed = filters.get("is_completed")
        tasks = [
            task
            for task in self.tasks.values()
            if (not ids or task["id"] in ids)
            and (not responsible or task["responsible_user_id"] in responsible)
            and (not entity_ids or task["entity_id"] in entity_ids)
            and (not task_types or task["task_type_id"] in task_types)
            and (not isinstance(entity_type, str) or task["entity_type"] == entity_type)
            and (completed not in ("0", "1") or task["is_completed"] == (completed == "1"))
            and _in_range(task["updated_at"], filters.get("updated_at"))
        ]
        tasks = _ordered(tasks, query.get("order"))
        return self._page(request, "tasks", tasks, lambda task: self._present_task(request, task))

    async def _get_task(self, request: Request, id: str) -> Response:
        task = self.tasks.get(int(id))
        return _hal(self._present_task(request, task)) if task else _no_content()

    def _check_task(self, item: Any, existing: dict[str, Any] | None) -> list[dict[str, str]]:
        if not isinstance(item, dict):
            return [_error(WRONG_TYPE, "", "object")]
        errors = [
            _error(NOT_EXPECTED, key) for key in item if key not in TASK_WRITABLE and key != "id"
        ]
        if existing is None:
            for key in ("text", "complete_till"):
                if key not in item:
                    errors.append(_error(NOT_BLANK, key))
        if "text" in item and not isinstance(item["text"], str):
            errors.append(_error(WRONG_TYPE, "text", "string"))
        for key in ("complete_till", "duration", "created_at", "updated_at"):
            if key in item and not _is_int(item[key]):
                errors.append(_error(WRONG_TYPE, key, "int"))
        if "is_completed" in item and not isinstance(item["is_completed"], bool):
            errors.append(_error(WRONG_TYPE, "is_completed", "bool"))
        if "task_type_id" in item and item["task_type_id"] not in [
            kind["id"] for kind in TASK_TYPES
        ]:
            errors.append(_error(NOT_SUPPORTED, "task_type_id"))
        if "responsible_user_id" in item and item["responsible_user_id"] not in self.users:
            errors.append(_error(NOT_SUPPORTED, "responsible_user_id"))
        if "entity_type" in item or "entity_id" in item:
            kind = item.get("entity_type", existing["entity_type"] if existing else None)
            target = item.get("entity_id", existing["entity_id"] if existing else None)
            if kind not in ENTITIES:
                errors.append(_error(NOT_SUPPORTED, "entity_type"))
            elif not _is_int(target) or target not in self.records(kind):
                errors.append(_error(NOT_SUPPORTED, "entity_id"))
        return errors

    async def _create_tasks(self, request: Request) -> Response:
        items = await self._json_array(request, BATCH_LIMIT)
        failures = [
            {"request_id": self._request_id(item, index), "errors": errors}
            for index, item in enumerate(items)
            if (errors := self._check_task(item, None))
        ]
        if failures:
            raise _Invalid(failures)
        now = int(time.time())
        answer = []
        for index, item in enumerate(items):
            task = {
                "id": self._next_id("tasks"),
                "created_by": self._current_user_id,
                "updated_by": self._current_user_id,
                "created_at": item.get("created_at", now),
                "updated_at": item.get("updated_at", now),
                "responsible_user_id": item.get("responsible_user_id", self._current_user_id),
                "group_id": 0,
                "entity_id": item.get("entity_id"),
                "entity_type": item.get("entity_type"),
                "duration": item.get("duration", 0),
                "is_completed": item.get("is_completed", False),
                "task_type_id": item.get("task_type_id", 1),
                "text": item["text"],
                "result": item.get("result", []),
                "complete_till": item["complete_till"],
                "account_id": self.account["id"],
            }
            self.tasks[task["id"]] = task
            answer.append(
                {
                    "id": task["id"],
                    "request_id": self._request_id(item, index),
                    "_links": self._href(request, f"/tasks/{task['id']}"),
                }
            )
        return _hal({"_links": self._href(request, "/tasks"), "_embedded": {"tasks": answer}})

    def _apply_task(self, task: dict[str, Any], item: dict[str, Any]) -> None:
        for key, value in item.items():
            if key not in ("id", "request_id"):
                task[key] = value
        task["updated_at"] = item.get("updated_at", int(time.time()))
        task["updated_by"] = self._current_user_id

    async def _update_tasks(self, request: Request) -> Response:
        items = await self._json_array(request, BATCH_LIMIT)
        failures = []
        for index, item in enumerate(items):
            task = (
                self.tasks.get(item.get("id"))
                if isinstance(item, dict) and _is_int(item.get("id"))
                else None
            )
            errors = [_error(UNKNOWN_ID, "id")] if task is None else self._check_task(item, task)
            if errors:
                failures.append({"request_id": self._request_id(item, index), "errors": errors})
        if failures:
            raise _Invalid(failures)
        answer = []
        for item in items:
            task = self.tasks[item["id"]]
            self._apply_task(task, item)
            answer.append(
                {
                    "id": task["id"],
                    "updated_at": task["updated_at"],
                    "_links": self._href(request, f"/tasks/{task['id']}"),
                }
            )
        return _hal({"_links": self._href(request, "/tasks"), "_embedded": {"tasks": answer}})

    async def _update_task(self, request: Request, id: str) -> Response:
        item = await self._json(request)
        task = self.tasks.get(int(id))
        errors = [_error(UNKNOWN_ID, "id")] if task is None else self._check_task(item, task)
        if errors:
            raise _Invalid([{"request_id": "0", "errors": errors}])
        self._apply_task(task, item)
        return _hal(
            {
                "id": task["id"],
                "updated_at": task["updated_at"],
                "_links": self._href(request, f"/tasks/{task['id']}"),
            }
        )


def _check_note(item: Any) -> list[dict[str, str]]:
    if not isinstance(item, dict):
        return [_error(WRONG_TYPE, "", "object")]
    errors = [_error(NOT_EXPECTED, key) for key in item if key not in NOTE_WRITABLE]
    if item.get("note_type") not in NOTE_TYPES:
        errors.append(_error(NOT_SUPPORTED, "note_type"))
    params = item.get("params")
    if not isinstance(params, dict):
        errors.append(_error(NOT_BLANK, "params"))
    elif item.get("note_type") == "common" and not params.get("text"):
        errors.append(_error(NOT_BLANK, "params.text"))
    elif item.get("note_type") in ("call_in", "call_out"):
        for key in ("uniq", "duration", "source", "phone"):
            if key not in params:
                errors.append(_error(NOT_BLANK, f"params.{key}"))
    return errors


def _check_field_value(
    definition: dict[str, Any], value: Any, where: str
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Validate one written value of a custom field and return it in the read shape."""
    if not isinstance(value, dict):
        return [_error(WRONG_TYPE, where, "object")], {}
    errors = [
        _error(NOT_EXPECTED, f"{where}.{key}")
        for key in value
        if key not in ("value", "enum_id", "enum_code")
    ]
    enums = definition["enums"] or []
    if not enums:
        # A field without choices has no enum to name: sending one back is refused.
        errors += [
            _error(NOT_EXPECTED, f"{where}.{key}")
            for key in ("enum_id", "enum_code")
            if key in value
        ]
        if (
            not isinstance(value.get("value"), (str, int, float, bool))
            or isinstance(value.get("value"), str)
            and not value["value"].strip()
        ):
            errors.append(_error(NOT_BLANK, f"{where}.value"))
        return errors, {"value": value.get("value")}

    choice = None
    if "enum_id" in value:
        choice = next((item for item in enums if item["id"] == value["enum_id"]), None)
        if choice is None:
            errors.append(_error(NOT_SUPPORTED, f"{where}.enum_id"))
    elif "enum_code" in value:
        if definition["type"] != "multitext":
            errors.append(_error(NOT_EXPECTED, f"{where}.enum_code"))
        else:
            choice = next((item for item in enums if item["value"] == value["enum_code"]), None)
            if choice is None:
                errors.append(_error(NOT_SUPPORTED, f"{where}.enum_code"))
    elif definition["type"] == "multitext":
        # Emulator's choice: a phone or e-mail without an enum is filed as WORK.
        choice = enums[0]
    else:
        choice = next((item for item in enums if item["value"] == value.get("value")), None)
        if choice is None:
            errors.append(_error(NOT_SUPPORTED, f"{where}.value"))
    if choice is None:
        return errors, {}
    if definition["type"] == "multitext":
        text = value.get("value")
        if not isinstance(text, str) or not text.strip():
            errors.append(_error(NOT_BLANK, f"{where}.value"))
        return errors, {"value": text, "enum_id": choice["id"], "enum_code": choice["value"]}
    return errors, {"value": choice["value"], "enum_id": choice["id"], "enum_code": None}


def _merge_fields(
    current: list[dict[str, Any]] | None, changes: list[tuple[dict[str, Any], Any]]
) -> list[dict[str, Any]] | None:
    """A written field replaces all of that field's values; null or [] clears it."""
    merged = list(current or [])
    for definition, values in changes:
        merged = [item for item in merged if item["field_id"] != definition["id"]]
        if values:
            merged.append(field_value(definition, values))
    return merged or None


def _in_range(value: Any, bounds: Any) -> bool:
    if bounds is None:
        return True
    if isinstance(bounds, dict):
        lower, upper = _ints(bounds.get("from")), _ints(bounds.get("to"))
        if (lower or upper) and value is None:
            return False
        if lower and value < lower[0]:
            return False
        return not (upper and value > upper[0])
    exact = _ints(bounds)
    return not exact or value in exact


def _searchable_texts(record: dict[str, Any]) -> list[str]:
    texts = [
        record[key]
        for key in ("name", "first_name", "last_name")
        if isinstance(record.get(key), str) and record[key]
    ]
    for field in record.get("custom_fields_values") or []:
        for value in field.get("values") or []:
            if value.get("value") is not None:
                texts.append(str(value["value"]))
    return texts


def _matches_text(record: dict[str, Any], query: str) -> bool:
    """amoCRM's `query`: digits match any value's digits; other text is a case-blind substring."""
    texts = _searchable_texts(record)
    if query.isdigit():
        return any(query in digits_only(text) for text in texts)
    needle = query.casefold()
    return any(needle in text.casefold() for text in texts)


def _ordered(records: list[dict[str, Any]], order: Any) -> list[dict[str, Any]]:
    if isinstance(order, dict):
        for key in ("created_at", "updated_at", "id", "complete_till"):
            direction = order.get(key)
            if isinstance(direction, str) and direction.lower() in ("asc", "desc"):
                return sorted(
                    records,
                    key=lambda record: (record.get(key) or 0, record["id"]),
                    reverse=direction.lower() == "desc",
                )
    # Emulator's choice: without order[...] lists come by id ascending.
    return sorted(records, key=lambda record: record["id"])
