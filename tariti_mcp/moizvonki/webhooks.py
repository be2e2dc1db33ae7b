"""Moizvonki webhooks into the store: a finished call becomes the row calls.list would give, a
call still ringing or talking waits apart in ``moizvonki_live_calls``, and every event received
is kept in ``moizvonki_webhook_events`` with what was done with it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

from ..store import Store
from .analytics import use_zone

logger = logging.getLogger(__name__)

START, ANSWER, FINISH, SMS = "call.start", "call.answer", "call.finish", "sms.message"
EVENTS = (START, ANSWER, FINISH, SMS)
CALL_EVENTS = (START, ANSWER, FINISH)
# The example's event_type values are one bit per event; webhook.action names the event too,
# and wins when both are there.
EVENT_TYPES = {1: START, 2: ANSWER, 4: FINISH, 32: SMS}
# Fields about the event rather than the call: left out of the call's raw JSON, so a call that
# came by webhook reads like the one calls.list gives.
EVENT_ONLY = ("event_type", "event_created")
# What the audit log keeps of a body; the HTTP route bounds the whole request before us.
MAX_BODY = 64 * 1024
# A live call only moves forward: a late call.start never reopens an answered or finished call.
STATES = {START: "ringing", ANSWER: "answered", FINISH: "finished"}
RANK = {"ringing": 1, "answered": 2, "finished": 3}
DAY = 86400


class _Unreadable(ValueError):
    """The body is no event we can read; the message says why without repeating its content."""


def receive(store: Store, body: bytes, *, zone: ZoneInfo) -> dict[str, Any]:
    """Take one webhook request body (JSON, or a form whose ``request_data`` holds the JSON).

    Never raises. Returns what was done, for the HTTP answer: ``ok`` (False when the event
    could not be handled, so the route can answer with an error and Moizvonki may send it
    again), ``event_id`` in the audit log (absent when even that could not be written),
    ``action``, ``outcome`` and the ids the event named. No phone number, name or secret.
    """
    text = body[:MAX_BODY].decode("utf-8", errors="replace")
    if len(body) > MAX_BODY:
        text += "…"
    facts: dict[str, Any] = {"action": None, "event_pbx_call_id": None, "db_call_id": None}
    try:
        outcome, warn = _handle(store, body, zone, facts)
    except Exception as exc:  # the promise is to never fail the sender; the log says why
        logger.error("a Moizvonki webhook could not be handled: %s", type(exc).__name__)
        logger.debug("the failure in full", exc_info=True)
        outcome, warn = f"failed: {type(exc).__name__}", False

    try:
        event_id = store.record_webhook_event(outcome=outcome, body=text, **facts)
    except Exception as exc:
        logger.error("a Moizvonki webhook was not logged: %s", type(exc).__name__)
        return {"ok": False, **facts, "outcome": outcome}
    if warn:
        logger.warning(
            "Moizvonki webhook %r: %s (kept as event %d in moizvonki_webhook_events)",
            facts["action"],
            outcome,
            event_id,
        )
    else:
        logger.info("Moizvonki webhook %r: %s", facts["action"], outcome)
    return {
        "ok": not outcome.startswith("failed"),
        "event_id": event_id,
        **facts,
        "outcome": outcome,
    }


def _handle(store: Store, body: bytes, zone: ZoneInfo, facts: dict[str, Any]) -> tuple[str, bool]:
    """Do what the event asks; fill ``facts`` as it is read. Returns (outcome, worth a warning)."""
    try:
        hook, event = _payload(body)
    except _Unreadable as exc:
        return f"malformed: {exc}", True

    action = _action(hook, event)
    facts["action"] = action[:40] if action else None
    facts["event_pbx_call_id"] = _pbx_id(event)
    facts["db_call_id"] = _number(event.get("db_call_id"))
    if action == SMS:
        return "stored only: sms.message events are not handled", True
    if action not in CALL_EVENTS:
        return "stored only: not a call event this server knows", True
    if action == FINISH:
        return _finish(store, hook, event, zone, facts["event_pbx_call_id"])
    if facts["event_pbx_call_id"] is None:
        return "stored only: no event_pbx_call_id to follow the call by", True
    return _progress(store, action, hook, event, facts["event_pbx_call_id"]), False


def _payload(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``webhook`` and ``event`` objects of a body."""
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _Unreadable("the body is not UTF-8 text") from None
    if not text:
        raise _Unreadable("the body is empty")
    try:
        payload = _json(text)
    except _Unreadable:
        # The form Moizvonki's own example posts: request_data holds the JSON.
        fields = parse_qs(text, keep_blank_values=True)
        if "request_data" not in fields:
            raise _Unreadable("neither JSON nor a form with request_data") from None
        payload = _json(fields["request_data"][0])
    if not isinstance(payload, dict):
        raise _Unreadable("the JSON is not an object")
    hook, event = payload.get("webhook"), payload.get("event")
    if not isinstance(hook, dict) or not isinstance(event, dict):
        raise _Unreadable("no 'webhook' and 'event' objects in it")
    return hook, event


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise _Unreadable("not JSON") from None


def _action(hook: dict[str, Any], event: dict[str, Any]) -> str | None:
    named = hook.get("action")
    named = named.strip() if isinstance(named, str) else None
    if named in EVENTS:
        return named
    kind = _number(event.get("event_type"))
    return EVENT_TYPES.get(kind, named or None) if kind is not None else named or None


def _number(value: Any) -> int | None:
    """A whole number sent as a number or a numeric string ("ids may be strings")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, float) and value.is_integer():
        return _number(int(value))
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return _number(int(value.strip()))
    return None


def _pbx_id(event: dict[str, Any]) -> str | None:
    value = event.get("event_pbx_call_id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text[:200] or None


# --- a finished call ------------------------------------------------------------------------


def _finish(
    store: Store,
    hook: dict[str, Any],
    event: dict[str, Any],
    zone: ZoneInfo,
    pbx_id: str | None,
) -> tuple[str, bool]:
    """The call row, added when the store lacks it, and its live row closed."""
    call = _call(hook, event)
    start = _number(call.get("start_time"))
    if start is not None:
        # The day counts the triggers keep must be in the business zone, as a sync keeps them.
        try:
            use_zone(store, zone, start, start + DAY)
        except (OverflowError, ValueError, OSError):
            logger.info("a call.finish starts at %d, beyond what a calendar holds", start)
    added = store.add_call(call)
    if added is None:
        outcome, warn = "call not stored: no readable db_call_id or start_time", True
    elif added:
        outcome, warn = "call stored", False
    else:
        outcome, warn = "call stored already: left as it is", False
    if pbx_id is not None:
        before, _ = _change(store, pbx_id, lambda live: _finished(live, call, hook, event))
        if before is not None and before["state"] != "finished":
            outcome += "; live call closed"
    return outcome, warn


def _call(hook: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The call as calls.list gives it with supervised=1: the event's call fields, and the
    owner from ``webhook`` (``user_login`` is the list's ``user_account``)."""
    call = {key: value for key, value in event.items() if key not in EVENT_ONLY}
    user_id = _number(hook.get("user_id"))
    if user_id is not None:
        call["user_id"] = user_id
    login = hook.get("user_login")
    if isinstance(login, str) and login.strip():
        call["user_account"] = login.strip()
    return call


def _finished(
    live: dict[str, Any] | None,
    call: dict[str, Any],
    hook: dict[str, Any],
    event: dict[str, Any],
) -> dict[str, Any] | None:
    if live is not None and live["state"] == "finished":
        return None  # a replay, or a second finish: the first one stands
    row = _details(live, hook, event)
    answered = _number(call.get("answered")) == 1 or str(call.get("answered")).lower() == "true"
    row.update(
        state="finished",
        db_call_id=_number(call.get("db_call_id")),
        started_at=_number(call.get("start_time")) or row.get("started_at"),
        answered_at=(_number(call.get("answer_time")) or None) if answered else None,
        ended_at=_number(call.get("end_time")),
        raw=json.dumps({"webhook": hook, "event": event}, ensure_ascii=False),
    )
    return row


# --- a call still going on ------------------------------------------------------------------


def _progress(
    store: Store, action: str, hook: dict[str, Any], event: dict[str, Any], pbx_id: str
) -> str:
    """call.start or call.answer: the live row created or moved forward, never backward."""
    state = STATES[action]
    column = "started_at" if action == START else "answered_at"

    def advance(live: dict[str, Any] | None) -> dict[str, Any] | None:
        if live is not None and live["state"] == "finished":
            return None
        row = _details(live, hook, event)
        if row.get(column) is None:
            # The time the event says, never when it reached us; a missing one stays unknown.
            row[column] = _number(event.get("start_time" if action == START else "answer_time"))
            row[column] = row[column] or _number(event.get("event_created"))
        if RANK[state] > RANK.get(row.get("state") or "", 0):
            row["state"] = state
        if live is not None and row == live:
            return None
        row["raw"] = json.dumps({"webhook": hook, "event": event}, ensure_ascii=False)
        return row

    before, after = _change(store, pbx_id, advance)
    if before is not None and before["state"] == "finished":
        return f"ignored: call {pbx_id} has finished already"
    if before == after:
        return "unchanged: a repeat of what is stored"
    return f"live call {after['state'] if after else state}"


def _details(
    live: dict[str, Any] | None, hook: dict[str, Any], event: dict[str, Any]
) -> dict[str, Any]:
    """The live row so far, with what it did not know yet taken from this event."""
    row = dict(live) if live is not None else {}
    login = hook.get("user_login")
    found = {
        "user_id": _number(hook.get("user_id")),
        "user_account": login.strip() if isinstance(login, str) and login.strip() else None,
        "direction": _number(event.get("direction")),
        "client_number": _plain(event.get("client_number")),
        "client_name": _plain(event.get("client_name")),
    }
    for column, value in found.items():
        if row.get(column) is None:
            row[column] = value
    return row


def _plain(value: Any) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value).strip()[:200]
    return None


def _change(
    store: Store,
    pbx_id: str,
    change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Apply ``change`` to a live row; return the row before and after."""
    seen: dict[str, Any] = {}

    def watched(live: dict[str, Any] | None) -> dict[str, Any] | None:
        seen["before"] = dict(live) if live is not None else None
        return change(live)

    after = store.change_live_call(pbx_id, watched)
    return seen.get("before"), after
