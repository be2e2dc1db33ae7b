"""Call statistics for a period of business days, computed in SQL from the synced call log.

A call belongs to the day its ``start_time`` falls on in the business time zone. "Answered"
comes from the ``answered`` flag alone, never from a positive duration.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from ..errors import InvalidArgument
from ..store import Store

MAX_DAYS = 366

# direction: 0 incoming, 1 outgoing (Moizvonki's codes; 1 is NOT incoming).
_METRICS = """
    count(db_call_id) AS total_calls,
    coalesce(sum(direction = 0), 0) AS incoming,
    coalesce(sum(direction = 1), 0) AS outgoing,
    coalesce(sum(answered = 1), 0) AS answered,
    coalesce(sum(answered = 0), 0) AS missed,
    coalesce(sum(CASE WHEN answered = 1 THEN duration ELSE 0 END), 0) AS total_duration_seconds,
    coalesce(sum(direction = 0 AND answered = 1), 0) AS incoming_answered,
    coalesce(sum(direction = 0 AND answered = 0), 0) AS incoming_missed,
    coalesce(sum(direction = 1 AND answered = 1), 0) AS outgoing_answered,
    coalesce(sum(direction = 1 AND answered = 0), 0) AS outgoing_missed
"""
_STATUS_KEYS = ("incoming_answered", "incoming_missed", "outgoing_answered", "outgoing_missed")


def _parse_date(value: str, argument: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidArgument(
            f"{argument} must be an ISO date like 2026-12-01 (got {value!r})"
        ) from None


def period(
    date_from: str, date_to: str, zone: ZoneInfo, now: dt.datetime | None = None
) -> tuple[dt.date, dt.date]:
    """The inclusive business days asked for. Both empty: today. Only ``date_from``: up to today.

    Only ``date_to``: that single day.
    """
    today = (now or dt.datetime.now(zone)).astimezone(zone).date()
    first = _parse_date(date_from, "date_from") if date_from.strip() else None
    last = _parse_date(date_to, "date_to") if date_to.strip() else None
    if first is None and last is None:
        first = last = today
    elif first is None:
        first = last
    elif last is None:
        last = max(first, today)
    assert first is not None and last is not None
    if first.year < 2000:
        raise InvalidArgument(f"the period starts in {first.year}: give dates from 2000 on")
    if last < first:
        raise InvalidArgument(f"date_to ({last}) is before date_from ({first}); swap them")
    if first > today:
        raise InvalidArgument(
            f"date_from ({first}) is in the future; today is {today} ({zone.key})"
        )
    if (last - first).days + 1 > MAX_DAYS:
        raise InvalidArgument(f"the period is longer than {MAX_DAYS} days; ask for a shorter one")
    return first, last


def day_start(day: dt.date, zone: ZoneInfo) -> int:
    """Unix seconds of local midnight; correct across daylight-saving changes."""
    return int(dt.datetime.combine(day, dt.time(), tzinfo=zone).timestamp())


def _shape(row: dict[str, Any]) -> dict[str, Any]:
    answered = row["answered"]
    return {
        "total_calls": row["total_calls"],
        "incoming": row["incoming"],
        "outgoing": row["outgoing"],
        "answered": answered,
        "missed": row["missed"],
        "total_duration_seconds": row["total_duration_seconds"],
        "avg_duration_seconds": round(row["total_duration_seconds"] / answered, 1)
        if answered
        else 0,
    }


def compute(store: Store, first: dt.date, last: dt.date, zone: ZoneInfo) -> dict[str, Any]:
    """Totals, status split, days and employees for the inclusive days ``first``..``last``."""
    start = day_start(first, zone)
    end = day_start(last + dt.timedelta(days=1), zone)
    where = "start_time >= ? AND start_time < ?"

    totals = next(
        store.query(f"SELECT {_METRICS} FROM moizvonki_calls WHERE {where}", [start, end])
    )
    result = _shape(totals)
    result["by_status"] = {key: totals[key] for key in _STATUS_KEYS}

    days = []
    day = first
    while day <= last:
        days.append(
            (day.isoformat(), day_start(day, zone), day_start(day + dt.timedelta(days=1), zone))
        )
        day += dt.timedelta(days=1)
    placeholders = ",".join("(?, ?, ?)" for _ in days)
    rows = store.query(
        f"""
        WITH days(day, day_start, day_end) AS (VALUES {placeholders})
        SELECT day, {_METRICS}
        FROM days LEFT JOIN moizvonki_calls
          ON start_time >= day_start AND start_time < day_end
        GROUP BY day ORDER BY day
        """,
        [value for triple in days for value in triple],
    )
    result["by_day"] = {row["day"]: _shape(row) for row in rows}

    employees = {(e.get("email") or "").lower(): e.get("display_name") for e in store.employees()}
    by_employee = []
    for row in store.query(
        f"""
        SELECT user_account, max(user_id) AS user_id, {_METRICS}
        FROM moizvonki_calls WHERE {where}
        GROUP BY user_account ORDER BY total_calls DESC, user_account
        """,
        [start, end],
    ):
        account = row["user_account"] or ""
        by_employee.append(
            {
                "employee": employees.get(account.lower()) or account or "unknown",
                "user_account": account or None,
                "user_id": row["user_id"],
                **_shape(row),
            }
        )
    result["by_employee"] = by_employee
    return result
