"""What the two Moizvonki tools do: any action with checked parameters, and period analytics."""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from .. import phones
from ..answers import MAX_ANSWER_CHARS, cut_list, preview, size
from ..errors import InvalidArgument, ServiceError, WriteRefused
from ..store import Store
from . import analytics
from .client import ACTIONS, PAGED_ACTIONS, PHONE_ACTIONS, RESERVED, Login, MoizvonkiClient
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

_EXAMPLES = {
    "calls.make_call": '{"to": "+79161234567"}',
    "calls.send_sms": '{"to": "+79161234567", "text": "..."}',
    "webhook.subscribe": '{"hooks": {"call.finish": "https://your-host/..."}}',
    "webhook.unsubscribe": '{"hooks": ["call.finish"]}',
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


@dataclass(frozen=True)
class PhoneOwners:
    """Whom make_call and send_sms may act as: MOIZVONKI_USER and the employees whose own keys
    are in MOIZVONKI_EMPLOYEE_KEYS, reachable also by amoCRM user through
    TARITI_MOIZVONKI_USER_MAP. Moizvonki rings the phone of the login a request carries, and
    only with that login's key."""

    admin: Login
    keys: dict[str, str] = field(default_factory=dict, repr=False)
    user_map: dict[str, str] = field(default_factory=dict)

    def logins(self) -> list[str]:
        return sorted({self.admin.user, *self.keys})

    def login_for(self, user: str) -> Login:
        if user.lower() == self.admin.user.lower():
            return self.admin
        key = self.keys.get(user.lower())
        if key is None:
            raise WriteRefused(
                f"the server holds no API key for {user}, and Moizvonki acts on an employee's "
                "phone only with that employee's own key: the operator must add "
                f"{user}=<their key> to MOIZVONKI_EMPLOYEE_KEYS and restart the server. Employees "
                f"it can act for now: {', '.join(self.logins())}"
            )
        return Login(user, key)


def parse_user_map(text: str) -> dict[str, str]:
    """TARITI_MOIZVONKI_USER_MAP ("amoCRM user id or e-mail=Moizvonki login, ...") as a dict
    keyed by the lower-cased amoCRM side."""
    mapping = {}
    for item in (part.strip() for part in text.split(",")):
        amocrm_user, sep, login = item.partition("=")
        if not sep or not amocrm_user.strip() or not login.strip():
            if item:
                logger.warning("TARITI_MOIZVONKI_USER_MAP: %r is not user=login; ignored", item)
            continue
        mapping[amocrm_user.strip().lower()] = login.strip()
    return mapping


def _known_employees(store: Store | None) -> str:
    rows = store.employees() if store is not None else []
    if not rows:
        return "List them with company.list_employee."
    shown = [
        f"{row.get('display_name') or '?'} <{row.get('email')}> (id {row['id']})" for row in rows
    ]
    more = f" and {len(shown) - 20} more" if len(shown) > 20 else ""
    return f"Known employees: {'; '.join(shown[:20])}{more}."


async def _login_by_id(client: MoizvonkiClient, store: Store | None, employee_id: int) -> str:
    """The login of a Moizvonki employee id, from the store or, failing that, the account."""

    def stored() -> str | None:
        rows = store.employees() if store is not None else []
        return next((row["email"] for row in rows if row["id"] == employee_id), None)

    login = stored()
    if login is None and store is not None:
        try:
            await sync_employees(client, store, force=True)
        except ServiceError:
            logger.info("could not read the employee list to find id %d", employee_id)
        login = stored()
    if not login:
        raise InvalidArgument(
            f"employee {employee_id} is no Moizvonki employee id known here: give the "
            f"employee's Moizvonki login e-mail instead. {_known_employees(store)}"
        )
    return login


async def phone_owner(
    client: MoizvonkiClient,
    store: Store | None,
    owners: PhoneOwners,
    action: str,
    employee: str,
) -> Login:
    """The login and key whose phone ``action`` uses, from the tool's ``employee`` argument.

    Never the configured administrator by default: every click-to-call would ring that phone.
    """
    text = employee.strip()
    if not text:
        raise InvalidArgument(
            f"{action} acts on a real employee's phone: say whose, with employee=<Moizvonki "
            "login e-mail or employee id>. The server can act for: "
            f"{', '.join(owners.logins())}. {_known_employees(store)}"
        )
    user = owners.user_map.get(text.lower())
    if user is None and text.isdigit():
        user = await _login_by_id(client, store, int(text))
    if user is None and "@" in text:
        user = text
    if user is None:
        raise InvalidArgument(
            f"employee must be a Moizvonki login e-mail or employee id (got {text[:60]!r})"
            + (", or an amoCRM user listed in TARITI_MOIZVONKI_USER_MAP" if owners.user_map else "")
            + f". {_known_employees(store)}"
        )
    return owners.login_for(user)


# A URL read leniently, as a receiver may have typed it: scheme and // optional, the host up to
# the first slash, backslash, query, fragment or space.
_URL = re.compile(r"(?:([A-Za-z][A-Za-z0-9+.-]*):)?(//)?([^/\\?#\s]*)(.*)", re.DOTALL)
_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")
# Path segments shown: words, as route names are; a secret has digits or length.
_ROUTE = re.compile(r"[A-Za-z_-]{1,20}")


def hidden_url(url: object) -> str:
    """A webhook address with what may be a secret taken out: Moizvonki signs nothing, so every
    receiver (ours under TARITI_WEBHOOK_SECRET, other integrations' too) keeps a secret in the
    path or the query. The host stays, and the leading path segments that are plain words,
    enough to tell whose hook it is; the last segment and anything after a non-word one never
    do."""
    text = str(url).strip()
    scheme, slashes, authority, rest = _URL.fullmatch(text).groups()  # type: ignore[union-attr]
    host = authority.rpartition("@")[2]  # user:password@ is a secret too
    if not _HOST.fullmatch(host) or not (scheme or slashes or "." in host):
        return "(not a URL)"
    path, mark = rest, ""
    for separator in "?#":
        if separator in path:
            path, mark = path.split(separator, 1)[0], "?…"
    segments = [segment for segment in re.split(r"[/\\]", path) if segment]
    shown = []
    for segment in segments[:-1]:
        if not _ROUTE.fullmatch(segment):
            break
        shown.append(segment)
    prefix = f"{scheme}://" if scheme else ("//" if slashes else "")
    tail = "/".join([*shown, "…"]) if segments else ""
    return f"{prefix}{host}/{tail}{mark}" if tail or mark else f"{prefix}{host}{path[:1]}"


def hide_hook_urls(value: Any) -> Any:
    """Every string of a webhook action's answer that may be an address, keys included, passed
    through :func:`hidden_url`; words without a slash or a query are left as they are."""
    if isinstance(value, str):
        return hidden_url(value) if any(mark in value for mark in "/\\?") else value
    if isinstance(value, dict):
        return {hide_hook_urls(key): hide_hook_urls(item) for key, item in value.items()}
    if isinstance(value, list):
        return [hide_hook_urls(item) for item in value]
    return value


def check_params(
    action: str, params: dict[str, Any], zone: ZoneInfo, region: str = "RU"
) -> dict[str, Any]:
    if action not in ACTIONS:
        raise InvalidArgument(f"unknown action {action[:60]!r}; use one of: {', '.join(ACTIONS)}")
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
        named = " and ".join(repr(name) for name in missing)
        raise InvalidArgument(f"{action} needs {named} in params (e.g. {_EXAMPLES[action]})")
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
        if "from_date" in checked and "to_date" in checked:
            if checked["to_date"] < checked["from_date"]:
                # Moizvonki answers such a range with no calls, which reads as a quiet day.
                raise InvalidArgument(
                    "to_date is before from_date, a range with no calls in it: swap them"
                )
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
    employee: str = "",
    owners: PhoneOwners | None = None,
) -> dict[str, Any]:
    """Run one action for the tool. ``employee`` names whose phone make_call and send_sms use
    (see :func:`phone_owner`); other actions take no employee."""
    if action in ACTIONS:
        client.check_allowed(action)
    checked = check_params(action, params, zone, region)
    login = None
    if action in PHONE_ACTIONS:
        login = await phone_owner(
            client, store, owners or PhoneOwners(client.login), action, employee
        )
    elif employee.strip():
        raise InvalidArgument(
            f"employee is only for calls.make_call and calls.send_sms, not {action}: leave it "
            "empty (for one employee's call figures use get_moizvonki_analytics)"
        )
    result: dict[str, Any] = {"action": action}
    if login is not None:
        result["employee"] = login.user

    async def waiting(delay: float, message: str) -> None:
        if progress is not None:
            await progress(0, None, message)

    if action not in PAGED_ACTIONS:
        answer = await client.call(action, checked, on_wait=waiting, login=login)
        if action == "company.delete_employee" and store is not None:
            # Moizvonki deleted the employee's calls too; the store must not keep counting them.
            removed = store.delete_employee(
                checked.get("employee_id"), checked.get("employee_user_name")
            )
            result["calls_removed_from_store"] = removed
        if action.startswith("webhook."):
            answer = hide_hook_urls(answer)
            result["note"] = (
                "the secret part of each hook URL is hidden; unsubscribe takes event names only"
            )
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
