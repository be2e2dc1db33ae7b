"""Local emulator of the Moizvonki API (one POST endpoint, actions in the body).

It follows reference/moizvonki.md and records side effects (dialled numbers, SMS, webhooks).
"""

from __future__ import annotations

import bisect
import dataclasses
import hmac
import ipaddress
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .data import RECORDINGS_URL, Call, Employee, SandboxData

logger = logging.getLogger(__name__)

API_PATH = "/api/v1"
PAGE_LIMIT = 100
WEBHOOK_EVENTS = ("call.start", "call.answer", "call.finish", "sms.message")
# The event_type each event carries, one bit per event as in the reference's example.
WEBHOOK_EVENT_TYPES = {"call.start": 1, "call.answer": 2, "call.finish": 4, "sms.message": 32}
# Emulator's choice: the account named in webhook bodies.
WEBHOOK_ACCOUNT_ID = "52417"
WEBHOOK_ACCOUNT_NAME = "tariti-sandbox"
BAD_CREDENTIALS = "Username or password is invalid"
# Emulator's choice: the text a non-admin gets for an admin-only action.
ACCESS_DENIED = "Access denied"
SELECTION_CACHE_SIZE = 16


class _Refusal(Exception):
    """An error answer: Moizvonki documents only a non-200 status and a text body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def _number(params: dict[str, Any], key: str) -> int | None:
    """An integer parameter; emulator's choice: digit strings are accepted as well."""
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise _Refusal(400, f"Parameter {key} must be an integer")


def _text(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _Refusal(400, f"Parameter {key} is required")
    return value


def _page_size(params: dict[str, Any]) -> int:
    size = _number(params, "max_results")
    if size is None:
        return PAGE_LIMIT
    # Above 100 is silently clamped; emulator's choice: below 1 is raised to 1.
    return max(1, min(PAGE_LIMIT, size))


def _envelope(
    selection: list[Any],
    offset: int,
    size: int,
    present: Callable[[Any], dict[str, Any]],
    begin: int = 0,
) -> dict[str, Any]:
    """One page; `offset` counts from `begin`, where the selection starts inside the list."""
    page = selection[begin + offset : begin + offset + size]
    remains = max(0, len(selection) - begin - offset - len(page))
    return {
        "results_next_offset": offset + len(page) if remains else 0,
        "results_count": len(page),
        "results_remains": remains,
        "results": [present(item) for item in page],
    }


class MoizvonkiEmulator:
    """A Moizvonki account: employees with keys, a call log, SMS templates and webhooks."""

    def __init__(self, data: SandboxData, users: dict[str, str]) -> None:
        self.users = dict(users)
        self.employees = {employee.id: dataclasses.replace(employee) for employee in data.employees}
        self.groups = [dict(group) for group in data.groups]
        self.sms_templates = [dict(template) for template in data.sms_templates]
        self.calls: list[Call] = list(data.calls)
        self.requests: list[tuple[str | None, int]] = []
        # Time spent answering, from the body read to the response built: what a benchmark
        # subtracts to see its own share. HTTP parsing and sending are not in it.
        self.busy_seconds = 0.0
        self.dialed: list[tuple[str, str]] = []
        self.sms: list[tuple[str, str, str]] = []
        self.webhooks: dict[str, str] = {}
        self._selections: OrderedDict[tuple[Any, ...], tuple[list[Call], list[int]]] = OrderedDict()
        self._last_call_id = max((call.db_call_id for call in self.calls), default=2_400_000)
        self._reindex()
        self._actions: dict[str, tuple[Callable[[Employee, dict[str, Any]], Response], bool]] = {
            "calls.list": (self._list_calls, False),
            "calls.make_call": (self._make_call, False),
            "calls.send_sms": (self._send_sms, False),
            "calls.get_sms_templates": (self._sms_templates, False),
            "company.list_employee": (self._list_employees, True),
            "company.list_group": (self._list_groups, True),
            "company.create_employee": (self._create_employee, True),
            "company.activate_employee": (self._activate_employee, True),
            "company.delete_employee": (self._delete_employee, True),
            "webhook.list": (self._list_webhooks, True),
            "webhook.subscribe": (self._subscribe, True),
            "webhook.unsubscribe": (self._unsubscribe, True),
        }
        self.app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._serve,
                    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
                )
            ]
        )

    # ---- the call log ---------------------------------------------------------------------

    def _reindex(self) -> None:
        """Index the log by owner; every change to the log comes through here."""
        self.calls.sort(key=lambda call: call.db_call_id)
        self._all_ids = [call.db_call_id for call in self.calls]
        self._own_calls: dict[int, list[Call]] = {}
        for call in self.calls:
            self._own_calls.setdefault(call.user_id, []).append(call)
        self._own_ids = {
            user_id: [call.db_call_id for call in calls]
            for user_id, calls in self._own_calls.items()
        }
        # Positions in the log ordered by start time, so a date window is found by bisection.
        self._by_start = sorted(range(len(self.calls)), key=lambda at: self.calls[at].start_time)
        self._starts = [self.calls[at].start_time for at in self._by_start]
        self._selections.clear()

    def record_call(
        self,
        employee_email: str,
        direction: int,
        client_number: str,
        start_time: int,
        answered: bool,
        duration: int,
        wait: int = 0,
        client_name: str | None = None,
        recording: bool = False,
        upload_time: int | None = None,
    ) -> Call:
        """Append a call as a phone would upload it now, with the next id; for tests."""
        owner = self._employee_by_email(employee_email)
        if owner is None:
            raise KeyError(employee_email)
        if direction == 0 and answered:
            answer_time = start_time + wait
            end_time, logged = answer_time + duration, duration
        elif direction == 0:
            # A missed incoming call logs no duration, only the ringing until end_time.
            answer_time, end_time, logged = 0, start_time + max(wait, 1), 0
        else:
            # Outgoing: the phone cannot see the pick-up, so duration includes the ringing.
            answer_time = start_time if answered else 0
            end_time, logged = start_time + duration, duration
        # Ids are global on the service: never reuse one, even after a deletion.
        self._last_call_id += 1
        if upload_time is None:
            upload_time = max(end_time, int(time.time()))
        call = Call(
            self._last_call_id,
            owner.id,
            direction,
            client_number,
            client_name if client_name is not None else client_number,
            start_time,
            answer_time,
            end_time,
            logged,
            int(bool(answered)),
            upload_time,
            bool(recording and answered),
        )
        self.calls.append(call)
        self._reindex()
        return call

    def _employee_by_email(self, email: str) -> Employee | None:
        return next(
            (employee for employee in self.employees.values() if employee.email == email), None
        )

    def _selection(
        self,
        owner: Employee,
        everyone: bool,
        from_id: int | None,
        from_date: int | None,
        to_date: int | None,
    ) -> tuple[list[Call], int]:
        """The calls matching a query, as a sorted list and the index where they begin.

        Selections are memoized and a from_id cursor only bisects into one, so each page of a
        walk costs O(page), whether the walk moves by offset or by from_id.
        """
        if from_id is not None:
            calls, ids = self._window(owner, everyone, None, to_date)
            return calls, bisect.bisect_left(ids, from_id)
        return self._window(owner, everyone, from_date, to_date)[0], 0

    def _window(
        self, owner: Employee, everyone: bool, from_date: int | None, to_date: int | None
    ) -> tuple[list[Call], list[int]]:
        if everyone:
            calls, ids = self.calls, self._all_ids
        else:
            calls, ids = self._own_calls.get(owner.id, []), self._own_ids.get(owner.id, [])
        if from_date is None and to_date is None:
            return calls, ids
        key = (owner.id, everyone, from_date, to_date)
        cached = self._selections.get(key)
        if cached is not None:
            self._selections.move_to_end(key)
            return cached
        # Emulator's choice: the date window filters start_time, to_date inclusive; to_date
        # bounds a from_id query as well. The selection keeps the log's order, by id.
        begin = 0 if from_date is None else bisect.bisect_left(self._starts, from_date)
        end = len(self._starts) if to_date is None else bisect.bisect_right(self._starts, to_date)
        positions = sorted(self._by_start[begin:end])
        selected = [self.calls[at] for at in positions]
        if not everyone:
            selected = [call for call in selected if call.user_id == owner.id]
        cached = (selected, [call.db_call_id for call in selected])
        self._selections[key] = cached
        if len(self._selections) > SELECTION_CACHE_SIZE:
            self._selections.popitem(last=False)
        return cached

    def _present_call(self, call: Call, with_owner: bool) -> dict[str, Any]:
        owner = self.employees[call.user_id]
        record = {
            "db_call_id": call.db_call_id,
            "direction": call.direction,
            "client_number": call.client_number,
            "client_name": call.client_name,
            "start_time": call.start_time,
            "answer_time": call.answer_time,
            "end_time": call.end_time,
            "duration": call.duration,
            "answered": call.answered,
            "recording": f"{RECORDINGS_URL}/{call.db_call_id}.mp3" if call.has_recording else "",
            "upload_time": call.upload_time,
            "src_number": owner.src_number,
            "src_id": owner.src_id,
            "src_slot": owner.src_slot,
            # Emulator's choice: the webhook call id is derived from the call, not stored.
            "event_pbx_call_id": f"{call.start_time:x}-{call.db_call_id * 2654435761 % 2**32:08x}",
        }
        if with_owner:
            record["user_id"] = owner.id
            record["user_account"] = owner.email
        return record

    def webhook_events(self, call: Call) -> list[dict[str, Any]]:
        """The bodies Moizvonki would POST for ``call``: call.start, call.answer when answered,
        and call.finish carrying the call's fields as calls.list gives them.

        Ids in ``webhook`` are strings, as in the reference's example. Emulator's choice:
        call.finish is created when the phone uploads the call (the id exists only then), so
        its ``event_created`` is the upload time, which for an offline phone is hours late.
        """
        owner = self.employees[call.user_id]
        record = self._present_call(call, with_owner=False)
        hook = {
            "account_id": WEBHOOK_ACCOUNT_ID,
            "account_name": WEBHOOK_ACCOUNT_NAME,
            "user_id": str(owner.id),
            "user_login": owner.email,
        }
        ongoing = {
            "direction": call.direction,
            "client_number": call.client_number,
            "client_name": call.client_name,
            "event_pbx_call_id": record["event_pbx_call_id"],
        }

        def body(action: str, created: int, fields: dict[str, Any]) -> dict[str, Any]:
            event = {"event_type": WEBHOOK_EVENT_TYPES[action], "event_created": created}
            return {"webhook": {"action": action, **hook}, "event": {**event, **fields}}

        events = [body("call.start", call.start_time, ongoing)]
        if call.answered:
            # For outgoing calls the phone cannot see the pick-up: answer fires at the start.
            events.append(body("call.answer", call.answer_time or call.start_time, ongoing))
        events.append(body("call.finish", call.upload_time, record))
        return events

    def deliver_webhooks(
        self, call: Call, http: httpx.Client | None = None
    ) -> list[tuple[str, int]]:
        """POST ``call``'s events to the URLs subscribed for them, in order, and wait for each
        answer; returns (event, HTTP status) per event sent, 0 when no answer came.

        Called by a test or a demo, never on its own: the emulator answers in its own thread and
        must not block on a receiver. Emulator's choice: only loopback URLs are called, so a
        subscription to a real host never sends anything off the machine.
        """
        sent: list[tuple[str, int]] = []
        client = http if http is not None else httpx.Client(timeout=10)
        try:
            for body in self.webhook_events(call):
                action = body["webhook"]["action"]
                url = self.webhooks.get(action)
                if not url or not _loopback_url(url):
                    continue
                try:
                    status = client.post(url, json=body).status_code
                except httpx.HTTPError:
                    logger.info("sandbox Moizvonki: webhook %s got no answer", action)
                    status = 0
                sent.append((action, status))
        finally:
            if http is None:
                client.close()
        return sent

    # ---- HTTP -----------------------------------------------------------------------------

    async def _serve(self, request: Request) -> Response:
        started = time.perf_counter()
        action: str | None = None
        try:
            if request.url.path.rstrip("/") != API_PATH:
                raise _Refusal(404, "Not Found")
            if request.method != "POST":
                # Emulator's choice: other methods on the endpoint get 405.
                raise _Refusal(405, "Method Not Allowed")
            payload = await self._payload(request)
            action = payload.get("action") if isinstance(payload.get("action"), str) else None
            response = self._handle(payload, action)
        except _Refusal as refusal:
            response = PlainTextResponse(refusal.text, status_code=refusal.status)
        except Exception:
            logger.exception("sandbox Moizvonki failed on action %s", action)
            response = PlainTextResponse("Internal Server Error", status_code=500)
        self.requests.append((action, response.status_code))
        self.busy_seconds += time.perf_counter() - started
        logger.debug("Moizvonki sandbox %s -> %d", action, response.status_code)
        return response

    async def _payload(self, request: Request) -> dict[str, Any]:
        """The request object: a JSON body, or a form whose `request_data` holds the JSON."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            async with request.form() as form:
                text = form.get("request_data")
            if not isinstance(text, str):
                raise _Refusal(400, "Form field request_data is required")
        else:
            try:
                text = (await request.body()).decode("utf-8")
            except UnicodeDecodeError:
                raise _Refusal(400, "Request body is not UTF-8") from None
        try:
            payload = json.loads(text)
        except ValueError:
            raise _Refusal(400, "Request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise _Refusal(400, "Request body must be a JSON object")
        return payload

    def _handle(self, payload: dict[str, Any], action: str | None) -> Response:
        employee = self._authenticate(payload)
        if action not in self._actions:
            raise _Refusal(400, f"Unknown action: {action}")
        handler, admin_only = self._actions[action]
        if admin_only and employee.role != "admin":
            raise _Refusal(403, ACCESS_DENIED)
        return handler(employee, payload)

    def _authenticate(self, payload: dict[str, Any]) -> Employee:
        login, key = payload.get("user_name"), payload.get("api_key")
        if not isinstance(login, str) or not isinstance(key, str):
            raise _Refusal(403, BAD_CREDENTIALS)
        expected = self.users.get(login)
        # Keys are compared exactly: a pasted trailing space or newline fails, as on the service.
        if expected is None or not hmac.compare_digest(key.encode(), expected.encode()):
            raise _Refusal(403, BAD_CREDENTIALS)
        employee = self._employee_by_email(login)
        if employee is None:
            raise _Refusal(403, BAD_CREDENTIALS)
        return employee

    # ---- calls.* --------------------------------------------------------------------------

    def _list_calls(self, employee: Employee, params: dict[str, Any]) -> Response:
        from_id, from_date = _number(params, "from_id"), _number(params, "from_date")
        to_date = _number(params, "to_date")
        if from_id is None and from_date is None:
            raise _Refusal(400, "from_date or from_id is required")
        supervised = _number(params, "supervised") == 1
        # A non-admin asking for supervised still sees only their own calls.
        everyone = supervised and employee.role == "admin"
        selection, begin = self._selection(employee, everyone, from_id, from_date, to_date)
        offset = max(0, _number(params, "from_offset") or 0)
        body = _envelope(
            selection,
            offset,
            _page_size(params),
            lambda call: self._present_call(call, supervised),
            begin,
        )
        return _json(body)

    def _make_call(self, employee: Employee, params: dict[str, Any]) -> Response:
        self.dialed.append((employee.email, _text(params, "to")))
        # Emulator's choice: the answer is undocumented, so a plain "OK".
        return PlainTextResponse("OK")

    def _send_sms(self, employee: Employee, params: dict[str, Any]) -> Response:
        to, text = _text(params, "to"), _text(params, "text")
        self.sms.append((employee.email, to, text))
        return PlainTextResponse("SMS posted")

    def _sms_templates(self, employee: Employee, params: dict[str, Any]) -> Response:
        return _json(
            {
                "results_count": len(self.sms_templates),
                "results": [dict(template) for template in self.sms_templates],
            }
        )

    # ---- company.* ------------------------------------------------------------------------

    def _find_employee(self, params: dict[str, Any], required: bool) -> Employee | None:
        login = params.get("employee_user_name")
        employee_id = _number(params, "employee_id")
        if isinstance(login, str) and login:
            found = self._employee_by_email(login)
        elif employee_id is not None:
            found = self.employees.get(employee_id)
        elif required:
            raise _Refusal(400, "employee_user_name or employee_id is required")
        else:
            return None
        if found is None:
            raise _Refusal(400, "Employee not found")
        return found

    def _list_employees(self, employee: Employee, params: dict[str, Any]) -> Response:
        wanted = (
            self._find_employee(params, required=False)
            if (params.get("employee_user_name") or params.get("employee_id") is not None)
            else None
        )
        staff = [wanted] if wanted else sorted(self.employees.values(), key=lambda item: item.id)
        offset = max(0, _number(params, "from_offset") or 0)
        return _json(_envelope(staff, offset, _page_size(params), _present_employee))

    def _list_groups(self, employee: Employee, params: dict[str, Any]) -> Response:
        offset = max(0, _number(params, "from_offset") or 0)
        return _json(_envelope(self.groups, offset, _page_size(params), dict))

    def _create_employee(self, employee: Employee, params: dict[str, Any]) -> Response:
        # Emulator's choice: the new login comes as employee_user_name, as in the other actions.
        login = _text(params, "employee_user_name")
        if self._employee_by_email(login) is not None:
            raise _Refusal(400, "Employee already exists")
        group_id = _number(params, "group_id") or self.groups[0]["id"]
        group = next((item for item in self.groups if item["id"] == group_id), None)
        if group is None:
            raise _Refusal(400, "Group not found")
        new_id = max(self.employees) + 7
        display_name = params.get("display_name")
        created = Employee(
            id=new_id,
            display_name=display_name if isinstance(display_name, str) else login,
            email=login,
            group_id=group["id"],
            group_name=group["name"],
            role="user",
            src_number=str(params.get("src_number") or ""),
            src_id=0,
            src_slot=0,
            amocrm_user_id=0,
            # Emulator's choice: a new employee stays inactive until activate_employee.
            is_active=False,
        )
        self.employees[new_id] = created
        return _json(_present_employee(created))

    def _activate_employee(self, employee: Employee, params: dict[str, Any]) -> Response:
        target = self._find_employee(params, required=True)
        assert target is not None
        target.is_active = True
        return _json(_present_employee(target))

    def _delete_employee(self, employee: Employee, params: dict[str, Any]) -> Response:
        target = self._find_employee(params, required=True)
        assert target is not None
        if target.id == employee.id:
            # Emulator's choice: the administrator cannot delete their own login.
            raise _Refusal(400, "Cannot delete yourself")
        del self.employees[target.id]
        self.users.pop(target.email, None)
        self.calls = [call for call in self.calls if call.user_id != target.id]
        self._reindex()
        logger.info("sandbox Moizvonki deleted employee %s and their calls", target.id)
        # Emulator's choice: the answer is undocumented, so a plain "OK".
        return PlainTextResponse("OK")

    # ---- webhook.* ------------------------------------------------------------------------

    def _list_webhooks(self, employee: Employee, params: dict[str, Any]) -> Response:
        return _json(dict(self.webhooks))

    def _subscribe(self, employee: Employee, params: dict[str, Any]) -> Response:
        hooks = params.get("hooks")
        if not isinstance(hooks, dict) or not hooks:
            raise _Refusal(400, "Parameter hooks must be an object of event: url")
        for event, url in hooks.items():
            if event not in WEBHOOK_EVENTS:
                raise _Refusal(400, f"Unknown event: {event}")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise _Refusal(400, f"Bad URL for event {event}")
        # One URL per event for the whole account: a new subscription replaces the old one.
        self.webhooks.update(hooks)
        # Emulator's choice: the answer is undocumented, so it lists the subscriptions.
        return _json(dict(self.webhooks))

    def _unsubscribe(self, employee: Employee, params: dict[str, Any]) -> Response:
        hooks = params.get("hooks")
        if not isinstance(hooks, list) or not all(isinstance(event, str) for event in hooks):
            raise _Refusal(400, "Parameter hooks must be a list of events")
        for event in hooks:
            self.webhooks.pop(event, None)
        return _json(dict(self.webhooks))


def _loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _present_employee(employee: Employee) -> dict[str, Any]:
    return {
        "id": employee.id,
        "display_name": employee.display_name,
        "email": employee.email,
        "group_id": employee.group_id,
        "group_name": employee.group_name,
        "role": employee.role,
    }


def _json(body: Any) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), media_type="application/json")
