"""What the two Moizvonki tools do: any action with checked parameters, and period analytics."""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

from .. import phones
from ..answers import MAX_ANSWER_CHARS, cut_list, preview, size
from ..errors import InvalidArgument, ServiceError
from ..store import Store
from . import analytics
from .client import ACTIONS, PAGED_ACTIONS, RESERVED, MoizvonkiClient
from .sync import CALLS, sync_calls, sync_employees, sync_warnings

logger = logging.getLogger(__name__)

Progress = Callable[[float, float | None, str], Awaitable[None]]

# Parameter names each action takes. An unknown name is silently ignored by Moizvonki (and the
# same first page comes back forever), so it is refused here. None: not documented, not checked.
PARAMETERS: dict[str, frozenset[str] | None] = {
    "calls.list": frozenset(
        {"from_date", "to_date", "from_id", "from_offset", "max_results", "supervised"}
    ),
    "calls.get_sms_templates": frozenset(),
    "calls.make_call": frozenset({"to"}),
    "calls.send_sms": frozenset({"to", "text"}),
    "webhook.list": frozenset(),
    "webhook.subscribe": frozenset({"hooks"}),
    "webhook.unsubscribe": frozenset({"hooks"}),
    "company.list_employee": frozenset(
        {"max_results", "from_offset", "employee_user_name", "employee_id"}
    ),
    "company.list_group": frozenset({"max_results", "from_offset"}),
    "company.create_employee": None,
    "company.activate_employee": None,
    "company.delete_employee": frozenset({"employee_user_name", "employee_id"}),
}
_REQUIRED = {
    "calls.make_call": ("to",),
    "calls.send_sms": ("to", "text"),
    "webhook.subscribe": ("hooks",),
    "webhook.unsubscribe": ("hooks",),
}


# Several SMS parts at most; a longer text is a mistake, not a message.
MAX_SMS = 1000
# Calls are recent: a time before 2000 is a misread value (YYYYMMDD taken as seconds, say).
EARLIEST = 946_684_800  # 2000-01-01 UTC
LATEST = 4_102_444_800  # 2100-01-01 UTC
_WHOLE_NUMBERS = {
    "from_id": (0, 2**53),
    "from_offset": (0, 2**53),
    "max_results": (1, 100),
    "employee_id": (0, 2**53),
    "supervised": (0, 1),
}


def _unix(value: Any, name: str, zone: ZoneInfo) -> int:
    """Unix seconds from a number or an ISO date/datetime read in the business time zone."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be Unix seconds or an ISO date")
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 12:
        value = int(value.strip())
    if isinstance(value, int | float):
        if not math.isfinite(value) or not EARLIEST <= value < LATEST:
            milliseconds = EARLIEST * 1000 <= value < LATEST * 1000
            hint = " (that looks like milliseconds: divide by 1000)" if milliseconds else ""
            raise InvalidArgument(
                f"{name} must be Unix seconds between 2000 and 2100, or an ISO date like "
                f"2026-12-01{hint}"
            )
        return int(value)
    text = str(value).strip()
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            f"{name} must be Unix seconds or an ISO date like 2026-12-01 (got {text[:40]!r})"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    if name == "to_date" and len(text) == 10:
        # A bare date as the upper bound means the whole of that day.
        moment += dt.timedelta(days=1, seconds=-1)
    return _unix(int(moment.timestamp()), name, zone)


def _whole(value: Any, name: str) -> int:
    low, high = _WHOLE_NUMBERS[name]
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 16:
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{name} must be a whole number from {low} to {high}")
    return value


def _phone(value: Any, region: str) -> str:
    """The number to ring or text, checked: the employee's real phone acts on it."""
    number = phones.normalize(str(value), region)
    if number is None:
        raise InvalidArgument(
            f"to {str(value)[:40]!r} is not a valid phone number: give it with the country code, "
            "e.g. +7 916 123-45-67"
        )
    return number


def check_params(
    action: str, params: dict[str, Any], zone: ZoneInfo, region: str = "RU"
) -> dict[str, Any]:
    if action not in ACTIONS:
        raise InvalidArgument(f"unknown action {action!r}; use one of: {', '.join(ACTIONS)}")
    if not isinstance(params, dict):
        raise InvalidArgument("params must be a JSON object of the action's parameters")
    reserved = sorted(name for name in params if name in RESERVED)
    if reserved:
        raise InvalidArgument(
            f"params must not contain {', '.join(reserved)}: the server adds the login and key"
        )
    allowed = PARAMETERS[action]
    if allowed is not None:
        unknown = sorted(str(name)[:40] for name in set(params) - allowed)
        if unknown:
            accepted = ", ".join(sorted(allowed)) or "none"
            raise InvalidArgument(
                f"{action} does not take {', '.join(unknown)} (Moizvonki would ignore it "
                f"silently); it takes: {accepted}"
            )
    missing = [name for name in _REQUIRED.get(action, ()) if params.get(name) in (None, "")]
    if missing:
        raise InvalidArgument(f"{action} needs {', '.join(missing)}")
    checked = dict(params)
    if action in ("calls.make_call", "calls.send_sms"):
        checked["to"] = _phone(checked["to"], region)
    if action == "calls.send_sms":
        text = str(checked["text"])
        if len(text) > MAX_SMS:
            raise InvalidArgument(
                f"text is {len(text)} characters; an SMS here takes at most {MAX_SMS}"
            )
    for name in _WHOLE_NUMBERS:
        if name in checked:
            checked[name] = _whole(checked[name], name)
    if action == "calls.list":
        if "from_date" not in checked and "from_id" not in checked:
            raise InvalidArgument(
                "calls.list needs from_date (Unix seconds or ISO date) or from_id (a db_call_id)"
            )
        for name in ("from_date", "to_date"):
            if name in checked:
                checked[name] = _unix(checked[name], name, zone)
        checked.setdefault("supervised", 1)
    return checked


async def call_action(
    client: MoizvonkiClient,
    store: Store | None,
    action: str,
    params: dict[str, Any],
    zone: ZoneInfo,
    *,
    all_pages: bool = False,
    max_pages: int = 20,
    region: str = "RU",
    progress: Progress | None = None,
) -> dict[str, Any]:
    checked = check_params(action, params, zone, region)
    result: dict[str, Any] = {"action": action}

    async def waiting(delay: float, message: str) -> None:
        if progress is not None:
            await progress(0, None, message)

    if action not in PAGED_ACTIONS:
        answer = await client.call(action, checked, on_wait=waiting)
        if action == "company.delete_employee" and store is not None:
            # Moizvonki deleted the employee's calls too; the store must not keep counting them.
            removed = store.delete_employee(
                checked.get("employee_id"), checked.get("employee_user_name")
            )
            result["calls_removed_from_store"] = removed
        result["answer"] = answer
        if size(result) > MAX_ANSWER_CHARS:
            result["answer"] = None
            result["answer_preview"] = preview(answer)
            result["truncated"] = True
        return result

    pages = max_pages if all_pages else 1
    results: list[Any] = []
    last: dict[str, Any] = {}
    fetched = 0
    async for page in client.pages(action, checked, max_pages=pages, on_wait=waiting):
        if fetched and size(results) >= MAX_ANSWER_CHARS:
            break  # the answer is full: what follows would be fetched only to be cut
        fetched += 1
        last = page
        rows = [r for r in page.get("results") or [] if isinstance(r, dict)]
        if store is not None and action == "calls.list":
            store.upsert_calls(rows)
        elif store is not None and action == "company.list_employee":
            store.upsert_employees(rows)
        results.extend(rows)
        if progress is not None and all_pages:
            remains = int(page.get("results_remains") or 0)
            await progress(len(results), len(results) + remains, f"fetched {len(results)} rows")

    start = int(checked.get("from_offset") or 0)
    next_offset = start + len(results)
    remains = int(last.get("results_remains") or 0)
    if not int(last.get("results_next_offset") or 0):
        remains = 0
    result.update(
        {
            "count": len(results),
            "pages_fetched": fetched,
            "has_more": bool(remains and next_offset),
            "results_remains": remains,
        }
    )
    notes = []
    if remains and next_offset:
        result["next_offset"] = next_offset
        notes.append(
            f"{remains} more rows remain: call again with params from_offset={next_offset} "
            "(assign it, do not add it) or set all_pages=true"
        )
    result["results"] = results
    shown = cut_list(result, "results")
    if shown is not None:
        kept = result["results"]
        result["count"] = len(kept)
        result["fetched"] = len(results)
        result["truncated"] = True
        result["has_more"] = True
        result["results_remains"] = remains + len(results) - len(kept)
        resume = start + len(kept)
        result["next_offset"] = resume
        notes = [
            f"answer cut to {len(kept)} of {len(results)} rows fetched, to stay readable; to "
            f"continue right after the last one shown, repeat with from_offset={resume}. "
            "For call statistics use get_moizvonki_analytics"
        ]
    if notes:
        result["notes"] = notes
    return result


async def analytics_report(
    client: MoizvonkiClient,
    store: Store,
    zone: ZoneInfo,
    *,
    period: str = "",
    date_from: str = "",
    date_to: str = "",
    employee: str = "",
    direction: str = "",
    client_number: str = "",
    include: list[str] | None = None,
    compare_to: str = "",
    callback_window_hours: float = analytics.CALLBACK_WINDOW_HOURS,
    top_clients_limit: int = analytics.TOP_CLIENTS,
    freshness: float = 60.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Sync what the period needs (unless synced moments ago), then compute from the store."""
    asked = analytics.resolve_period(period, date_from, date_to, zone)
    if compare_to.strip() not in ("", "previous_period"):
        raise InvalidArgument("compare_to takes previous_period (or nothing)")
    compare = bool(compare_to.strip())
    # What needs no stored data is checked before anything is fetched.
    analytics.resolve_filters(store, direction=direction, client=client_number)
    analytics.check_options(include, callback_window_hours, top_clients_limit)

    now = time.time()
    since = asked.previous(now).start if compare else asked.start
    state = store.sync_state(CALLS)
    warnings: list[str] = []
    fresh = (
        state.get("covered_from") is not None
        and state["covered_from"] <= since
        and now - (state.get("last_synced_at") or 0) < freshness
    )
    if not fresh:
        try:
            await sync_calls(client, store, since=since, progress=progress)
            await sync_employees(client, store)
        except ServiceError as exc:
            covered = state.get("covered_from")
            if covered is None or covered > since:
                raise
            warnings.append(f"could not sync new calls, figures are from the last sync: {exc}")
    state = store.sync_state(CALLS)
    # Said on every answer, fresh or not: a report of one user's calls must never pass for the
    # team's.
    warnings[:0] = sync_warnings(store)

    filters = analytics.resolve_filters(store, employee, direction, client_number)
    result = analytics.compute(
        store,
        asked,
        filters,
        include=include,
        callback_window_hours=callback_window_hours,
        top_clients=top_clients_limit,
        compare=compare,
        now=now,
    )
    result["period"]["covered_from"] = analytics.iso(since, zone)
    result["period"]["covered_to"] = analytics.iso(min(asked.end, int(now)), zone)
    result = {"period": result.pop("period"), "synced_at": _iso(state, zone), **result}
    if warnings:
        result["warnings"] = warnings
    return result


def _iso(state: dict[str, Any], zone: ZoneInfo) -> str | None:
    return analytics.iso(state.get("last_synced_at"), zone)
