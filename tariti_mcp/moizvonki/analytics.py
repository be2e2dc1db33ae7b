"""Call statistics for a period in the business time zone, computed in SQL from the synced log.

A call belongs to the moment its ``start_time`` falls on in the business time zone. "Answered"
comes from the ``answered`` flag alone, never from a positive duration. Every figure is defined
in the README ("Analytics definitions"); the store keeps per-day and per-hour counts, so a year
is read from a few thousand rows and the calls themselves only through covering indexes.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from .. import phones
from ..errors import InvalidArgument
from ..store import Store

MAX_DAYS = 366
PERIODS = (
    "today",
    "yesterday",
    "this_week",
    "last_week",
    "last_7_days",
    "this_month",
    "last_month",
    "last_30_days",
)
BREAKDOWNS = (
    "by_day",
    "by_hour",
    "by_weekday",
    "by_month",
    "by_employee",
    "top_clients",
    "waiting_clients",
)
DEFAULT_INCLUDE = ("by_day", "by_employee")
DIRECTIONS = {"incoming": 0, "outgoing": 1}
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
CALLBACK_WINDOW_HOURS = 24
MAX_CALLBACK_WINDOW_HOURS = 168
# Below a few minutes no callback could count: a window is counted in whole seconds.
MIN_CALLBACK_WINDOW_HOURS = 0.1
TOP_CLIENTS = 10
MAX_TOP_CLIENTS = 50
# Longer breakdowns are cut, and the answer says so: a model reads every entry.
MAX_DAY_ENTRIES = 62
MAX_EMPLOYEE_ENTRIES = 50
MAX_WAITING_CLIENTS = 50

DAY = 86400
# The store's zone table starts at the smallest integer; offsets are listed from 2000 to 2100.
_ZONE_FROM = 946_684_800
_ZONE_TO = 4_102_444_800
_FIRST = -(2**63)

# A period whose calls are fewer than 1/TIME_SCAN_SHARE of the log reads them by time.
TIME_SCAN_SHARE = 16
# Seeking one client's calls costs about as much as reading this many calls in a scan
# (measured on 200 000 calls: some 10 us a client against 0.3 us a call).
CALLS_PER_SEEK = 40
_TIME_INDEX = "idx_moizvonki_calls_time"
_CLIENT_INDEX = "idx_moizvonki_calls_client"
_DURATION_INDEX = "idx_moizvonki_calls_duration"
# Every distinct client, one seek each: a hop from one to the next in the client index. A
# recursive CTE, for a WITH RECURSIVE clause; a LIMIT on what reads it stops the hopping.
_EVERY_CLIENT = f"""
    every(client) AS (
        SELECT min(client_last10) FROM moizvonki_calls INDEXED BY {_CLIENT_INDEX}
        WHERE client_last10 IS NOT NULL
        UNION ALL
        SELECT (SELECT min(client_last10) FROM moizvonki_calls INDEXED BY {_CLIENT_INDEX}
                WHERE client_last10 > every.client)
        FROM every WHERE every.client IS NOT NULL
    )"""
_SIM_INDEX = "idx_moizvonki_calls_sim"


# --- periods ------------------------------------------------------------------------------------


def day_start(day: dt.date, zone: ZoneInfo) -> int:
    """Unix seconds of the first moment of ``day`` in ``zone``; correct across daylight saving,
    including zones whose clocks jump over midnight."""
    return int(dt.datetime.combine(day, dt.time(), tzinfo=zone).timestamp())


def local_date(moment: int, zone: ZoneInfo) -> dt.date:
    return dt.datetime.fromtimestamp(moment, zone).date()


def iso(moment: int | None, zone: ZoneInfo) -> str | None:
    if not moment:
        return None
    return dt.datetime.fromtimestamp(moment, zone).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Period:
    """Calls that started at or after ``start`` and before ``end`` (Unix seconds)."""

    start: int
    end: int
    zone: ZoneInfo
    name: str | None = None

    @property
    def first(self) -> dt.date:
        return local_date(self.start, self.zone)

    @property
    def last(self) -> dt.date:
        return local_date(self.end - 1, self.zone)

    def days(self) -> list[dt.date]:
        count = (self.last - self.first).days + 1
        return [self.first + dt.timedelta(days=n) for n in range(count)]

    def previous(self, now: float) -> Period:
        """The preceding period of equal length: as many whole days before a period of whole
        days, as many seconds before one with exact bounds. A period still running is compared
        with the same stretch of time from its start, so a half-day meets a half-day."""
        first, last = self.first, self.last
        whole = self.start == day_start(first, self.zone) and self.end == day_start(
            last + dt.timedelta(days=1), self.zone
        )
        if whole:
            count = (last - first).days + 1
            start = day_start(first - dt.timedelta(days=count), self.zone)
        else:
            start = self.start - (self.end - self.start)
        end = self.start
        if self.end > now > self.start:
            end = min(end, start + int(now) - self.start)
        return Period(start, max(end, start + 1), self.zone, "previous_period")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "date_from": self.first.isoformat(),
            "date_to": self.last.isoformat(),
            "start": iso(self.start, self.zone),
            "end": iso(self.end, self.zone),
            "days": (self.last - self.first).days + 1,
            "timezone": self.zone.key,
        }


def _bound(value: str, argument: str, zone: ZoneInfo) -> tuple[dt.date, dt.datetime | None]:
    """An ISO date (a whole day) or an ISO date and time (an exact moment), from 2000 to 2099:
    a later one is a typo, and dates near the calendar's end overflow."""
    text = value.strip()
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return _in_range(day, argument), None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        hint = f"; for that use period={text!r}" if text in PERIODS else ""
        raise InvalidArgument(
            f"{argument} must be an ISO date like 2026-12-01 or a date and time like "
            f"2026-12-01T09:30 (got {text[:40]!r}){hint}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    _in_range(moment.date(), argument)
    return moment.astimezone(zone).date(), moment


def _in_range(day: dt.date, argument: str) -> dt.date:
    if not 2000 <= day.year < 2100:
        raise InvalidArgument(f"{argument} must be a date from 2000 to 2099 (got {day})")
    return day


def _named(name: str, today: dt.date) -> tuple[dt.date, dt.date]:
    monday = today - dt.timedelta(days=today.weekday())
    month = today.replace(day=1)
    if name == "today":
        return today, today
    if name == "yesterday":
        return (today - dt.timedelta(days=1),) * 2
    if name == "this_week":
        return monday, today
    if name == "last_week":
        return monday - dt.timedelta(days=7), monday - dt.timedelta(days=1)
    if name == "last_7_days":
        return today - dt.timedelta(days=6), today
    if name == "this_month":
        return month, today
    if name == "last_month":
        end = month - dt.timedelta(days=1)
        return end.replace(day=1), end
    if name == "last_30_days":
        return today - dt.timedelta(days=29), today
    raise InvalidArgument(f"unknown period {name!r}; use one of: {', '.join(PERIODS)}")


def resolve_period(
    name: str | None,
    date_from: str,
    date_to: str,
    zone: ZoneInfo,
    now: float | None = None,
) -> Period:
    """The period asked for. A named period, or dates: both empty is today; only ``date_from``
    runs to the end of today; only ``date_to`` is that one day. Dates are whole days, both
    included; a date and time is an exact bound (``date_to`` itself not included)."""
    moment = time.time() if now is None else now
    today = local_date(int(moment), zone)
    name = (name or "").strip() or None
    if name is not None:
        if date_from.strip() or date_to.strip():
            raise InvalidArgument("give either period or date_from/date_to, not both")
        first, last = _named(name, today)
        return Period(
            day_start(first, zone), day_start(last + dt.timedelta(days=1), zone), zone, name
        )

    lower = _bound(date_from, "date_from", zone) if date_from.strip() else None
    upper = _bound(date_to, "date_to", zone) if date_to.strip() else None
    if lower is None and upper is None:
        lower = upper = (today, None)
    elif lower is None:
        assert upper is not None
        lower = (upper[0], None)
    elif upper is None:
        upper = (max(lower[0], today), None)
    assert lower is not None and upper is not None
    (first, first_moment), (last, last_moment) = lower, upper
    start = int(first_moment.timestamp()) if first_moment else day_start(first, zone)
    if last_moment is not None:
        end = int(last_moment.timestamp())
    else:
        end = day_start(last + dt.timedelta(days=1), zone)

    if first.year < 2000:
        raise InvalidArgument(f"the period starts in {first.year}: give dates from 2000 on")
    if end <= start:
        raise InvalidArgument(
            f"date_to ({date_to.strip() or last}) is not after date_from "
            f"({date_from.strip() or first}); swap them"
        )
    if start > moment:
        raise InvalidArgument(
            f"date_from ({date_from.strip()}) is in the future; today is {today} ({zone.key})"
        )
    period = Period(start, end, zone)
    if (period.last - period.first).days + 1 > MAX_DAYS:
        raise InvalidArgument(f"the period is longer than {MAX_DAYS} days; ask for a shorter one")
    return period


# --- the business time zone in SQL --------------------------------------------------------------


def _offset(moment: int, zone: ZoneInfo) -> int:
    offset = dt.datetime.fromtimestamp(moment, zone).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def zone_offsets(zone: ZoneInfo, start: int, end: int) -> list[tuple[int, int]]:
    """``[(since, utc_offset), ...]``: the offset at ``start`` and every change before ``end``."""
    offsets = [(start, _offset(start, zone))]
    low = start
    while low < end:
        # Offsets change at most a few times a year: a day at a time finds every change.
        high = min(low + DAY, end)
        current = offsets[-1][1]
        if _offset(high, zone) != current:
            # Somewhere in (low, high] the offset changes: find the first second of the new one.
            left, right = low, high
            while right - left > 1:
                middle = (left + right) // 2
                if _offset(middle, zone) == current:
                    left = middle
                else:
                    right = middle
            if right < end:
                offsets.append((right, _offset(right, zone)))
            low = right
        else:
            low = high
    return offsets


def use_zone(store: Store, zone: ZoneInfo, start: int = _ZONE_FROM, end: int = _ZONE_TO) -> bool:
    """Make the store's per-day and per-hour call counts be in ``zone``; check the offsets that
    matter from ``start`` to ``end`` and recount everything when they differ. True if recounted.
    """
    stored_zone, stored = store.call_zone()
    wanted = zone_offsets(zone, start, end)
    in_effect = [row for row in stored if row[0] <= start][-1:] or [(start, None)]
    seen = [(start, in_effect[0][1])] + [row for row in stored if start < row[0] < end]
    if stored_zone == zone.key and seen == wanted:
        return False
    full = _all_offsets(zone)
    store.count_calls_in_zone(zone.key, [(_FIRST, full[0][1]), *full[1:]])
    return True


@functools.lru_cache(maxsize=8)
def _all_offsets(zone: ZoneInfo) -> list[tuple[int, int]]:
    return zone_offsets(zone, _ZONE_FROM, _ZONE_TO)


def _local_sql(offsets: Sequence[tuple[int, int]]) -> str:
    """SQL for a call's local wall-clock time in seconds, given the offsets of its period."""
    if len(offsets) == 1:
        return f"(start_time + {int(offsets[0][1])})"
    cases = " ".join(
        f"WHEN start_time < {int(since)} THEN {int(before)}"
        for (_, before), (since, _) in zip(offsets, offsets[1:], strict=False)
    )
    return f"(start_time + CASE {cases} ELSE {int(offsets[-1][1])} END)"


# --- filters ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """Which calls count: one employee's (as the logins stored on their calls), one direction,
    one client (the last ten digits of the number)."""

    accounts: tuple[str, ...] | None = None
    direction: int | None = None
    client: str | None = None
    shown: tuple[tuple[str, Any], ...] = ()

    def sql(self, *, employee: bool = True, client: bool = True) -> tuple[str, list[Any]]:
        """`` AND ...`` clauses for these filters, and their parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        if employee and self.accounts is not None:
            clauses.append(f"user_account IN ({', '.join('?' * len(self.accounts))})")
            params.extend(self.accounts)
        if self.direction is not None:
            clauses.append("direction = ?")
            params.append(self.direction)
        if client and self.client is not None:
            clauses.append("client_last10 = ?")
            params.append(self.client)
        return "".join(f" AND {clause}" for clause in clauses), params

    @property
    def narrowed(self) -> bool:
        return self.accounts is not None or self.direction is not None


def _people(store: Store) -> list[dict[str, Any]]:
    """Employees from the employee list, and logins seen on calls that the list lacks."""
    people = [
        {"id": row["id"], "name": row["display_name"], "email": row["email"]}
        for row in store.query(
            "SELECT id, display_name, email FROM moizvonki_employees ORDER BY id"
        )
    ]
    known = {(person["email"] or "").casefold() for person in people}
    for row in store.query(
        "SELECT DISTINCT user_account FROM moizvonki_call_days WHERE user_account != '' "
        "ORDER BY user_account"
    ):
        if row["user_account"].casefold() not in known:
            known.add(row["user_account"].casefold())
            people.append({"id": None, "name": None, "email": row["user_account"]})
    return people


def _label(person: dict[str, Any]) -> str:
    details = ", ".join(
        part for part in (person["email"], f"id {person['id']}" if person["id"] else None) if part
    )
    return f"{person['name']} ({details})" if person["name"] else details


def _employee(store: Store, value: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    people = _people(store)
    wanted = value.strip()
    folded = wanted.casefold()
    matches = [p for p in people if wanted.isdigit() and str(p["id"]) == wanted]
    matches = matches or [p for p in people if (p["email"] or "").casefold() == folded]
    matches = matches or [p for p in people if (p["name"] or "").casefold() == folded]
    matches = matches or [p for p in people if folded and folded in (p["name"] or "").casefold()]
    if len(matches) != 1:
        listed = matches or people
        names = "; ".join(_label(p) for p in listed[:30]) or "none are known yet"
        problem = "matches several employees" if matches else "is not a known employee"
        raise InvalidArgument(
            f"employee {wanted[:60]!r} {problem}; give an id, e-mail or name of one of: {names}"
        )
    person = matches[0]
    email = (person["email"] or "").casefold()
    accounts = {
        row["user_account"]
        for row in store.query("SELECT DISTINCT user_account FROM moizvonki_call_days")
        if row["user_account"].casefold() == email
    }
    return person, tuple(sorted(accounts | {person["email"] or ""}))


def resolve_filters(
    store: Store, employee: str = "", direction: str = "", client: str = ""
) -> Filters:
    shown: list[tuple[str, Any]] = []
    accounts = None
    if employee.strip():
        person, accounts = _employee(store, employee)
        shown.append(("employee", {"name": person["name"], "email": person["email"]}))
    code = None
    if direction.strip():
        code = DIRECTIONS.get(direction.strip().lower())
        if code is None:
            raise InvalidArgument("direction must be incoming or outgoing")
        shown.append(("direction", direction.strip().lower()))
    number = None
    if client.strip():
        number = phones.last10(client)
        if number is None:
            raise InvalidArgument(
                f"client {client.strip()[:40]!r} is not a phone number: give at least its last "
                "ten digits, in any format (+7 916 123-45-67, 8 916 ...)"
            )
        shown.append(("client", number))
    return Filters(accounts, code, number, tuple(shown))


# --- counting -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """Calls of one group (a day, an hour, an employee...) split by direction and answer."""

    total: int = 0
    incoming: int = 0
    outgoing: int = 0
    answered: int = 0
    talk: int = 0
    wait: int = 0
    waited: int = 0
    incoming_answered: int = 0
    outgoing_answered: int = 0
    not_called_back: int = 0

    def add(self, direction: int, answered: int, calls: int, duration: int, wait: int, waited: int):
        self.total += calls
        if direction == 0:
            self.incoming += calls
            self.incoming_answered += calls if answered else 0
        elif direction == 1:
            self.outgoing += calls
            self.outgoing_answered += calls if answered else 0
        if answered:
            self.answered += calls
            self.talk += duration
        self.wait += wait
        self.waited += waited

    def shape(self) -> dict[str, Any]:
        return {
            "total_calls": self.total,
            "incoming": self.incoming,
            "outgoing": self.outgoing,
            "answered": self.answered,
            "missed": self.total - self.answered,
            "total_duration_seconds": self.talk,
            "avg_duration_seconds": round(self.talk / self.answered, 1) if self.answered else 0,
            "missed_not_called_back": self.not_called_back,
        }

    @property
    def avg_wait(self) -> float | None:
        return round(self.wait / self.waited, 1) if self.waited else None

    def by_status(self) -> dict[str, int]:
        return {
            "incoming_answered": self.incoming_answered,
            "incoming_missed": self.incoming - self.incoming_answered,
            "outgoing_answered": self.outgoing_answered,
            "outgoing_missed": self.outgoing - self.outgoing_answered,
        }


_MEASURES = "sum(calls), sum(duration_seconds), sum(wait_seconds), sum(waited_calls)"


def _raw_cells(local: str, keys: str) -> str:
    """Calls as cells of one call each, with the measures of the stored counts."""
    waited = "direction = 0 AND answered = 1 AND answer_time >= start_time"
    return (
        f"SELECT {keys}, coalesce(direction, -1) AS direction, answered, 1 AS calls, "
        "duration AS duration_seconds, "
        f"CASE WHEN {waited} THEN answer_time - start_time ELSE 0 END AS wait_seconds, "
        f"CASE WHEN {waited} THEN 1 ELSE 0 END AS waited_calls FROM moizvonki_calls"
    )


class _Reader:
    """The SQL behind one answer: which stored counts and which calls a period needs."""

    def __init__(self, store: Store, period: Period, filters: Filters) -> None:
        self.store, self.period, self.filters = store, period, filters
        self.bounds = [period.start, period.end]
        self.offsets = zone_offsets(period.zone, period.start, period.end)
        self.local = _local_sql(self.offsets)
        # Whole days come from the stored counts; the part of a day an exact bound cuts, and
        # everything for one client, come from the calls.
        zone = period.zone
        first, last = period.first, period.last
        if day_start(first, zone) < period.start:
            first += dt.timedelta(days=1)
        if day_start(last + dt.timedelta(days=1), zone) > period.end:
            last -= dt.timedelta(days=1)
        self.whole: tuple[int, int] | None = None
        self.edges = [(period.start, period.end)]
        if filters.client is None and first <= last:
            self.whole = (_epoch_day(first), _epoch_day(last))
            edges = (
                (period.start, day_start(first, zone)),
                (day_start(last + dt.timedelta(days=1), zone), period.end),
            )
            self.edges = [(low, high) for low, high in edges if low < high]
        # Per-client figures read the client index whole (no sorting), or, for a period
        # holding a small share of the log, the period's calls by time, sorted; with few
        # clients among many calls, they seek each client instead (see choose_scan).
        self.by_client = True
        self.few_clients = False

    def choose_scan(self, period_calls: int) -> None:
        if self.filters.client is None:
            stored = self.store.db.execute(
                "SELECT coalesce(sum(calls), 0) FROM moizvonki_call_days"
            ).fetchone()[0]
            self.by_client = period_calls * TIME_SCAN_SHARE >= stored
            if self.by_client:
                self.few_clients = self._clients_below(period_calls // CALLS_PER_SEEK)

    def _clients_below(self, limit: int) -> bool:
        """Whether the store holds fewer than ``limit`` distinct clients: counted by hopping
        from one client to the next in the client index, giving up at ``limit``."""
        if limit < 1:
            return False
        sql = f"SELECT count(*) FROM (WITH RECURSIVE {_EVERY_CLIENT} SELECT 1 FROM every LIMIT ?)"
        (counted,) = self.store.db.execute(sql, [limit + 1]).fetchone()
        return counted <= limit

    @property
    def _scan(self) -> str:
        return _CLIENT_INDEX if self.by_client else _TIME_INDEX

    def _cells(self, stored: str, keys: str, stored_filter: tuple[str, list[Any]]) -> tuple:
        """One query over the stored counts of whole days and the calls of the rest."""
        parts, params = [], []
        if self.whole is not None:
            parts.append(f"{stored} WHERE day BETWEEN ? AND ?{stored_filter[0]}")
            params += [*self.whole, *stored_filter[1]]
        where, extra = self.filters.sql()
        for low, high in self.edges:
            parts.append(
                f"{_raw_cells(self.local, keys)} WHERE start_time >= ? AND start_time < ?{where}"
            )
            params += [low, high, *extra]
        return " UNION ALL ".join(parts), params

    def day_and_employee_cells(self) -> list[tuple]:
        """(0, day, ...) and (1, login, ...) rows of direction, answered, calls, talk, wait,
        waited: the period by day and by employee."""
        stored_filter = self.filters.sql(client=False)
        if self.whole is not None and not self.edges:
            # Whole days only: the stored counts are read in their key order, not sorted.
            where = f"WHERE day BETWEEN ? AND ?{stored_filter[0]}"
            params = [*self.whole, *stored_filter[1]]
            sql = (
                f"SELECT 0, day, direction, answered, {_MEASURES} FROM moizvonki_call_days "
                f"{where} GROUP BY day, direction, answered"
            )
            rows = self.store.db.execute(sql, params).fetchall()
            sql = (
                f"SELECT 1, user_account, direction, answered, {_MEASURES} "
                f"FROM moizvonki_call_days {where} GROUP BY user_account, direction, answered"
            )
            return rows + self.store.db.execute(sql, params).fetchall()
        cells, params = self._cells(
            "SELECT day, user_account, direction, answered, calls, duration_seconds, "
            "wait_seconds, waited_calls FROM moizvonki_call_days",
            f"{self.local} / {DAY} AS day, coalesce(user_account, '') AS user_account",
            stored_filter,
        )
        sql = (
            f"WITH cells AS ({cells}) "
            f"SELECT 0, day, direction, answered, {_MEASURES} FROM cells "
            "GROUP BY day, direction, answered "
            f"UNION ALL SELECT 1, user_account, direction, answered, {_MEASURES} FROM cells "
            "GROUP BY user_account, direction, answered"
        )
        return self.store.db.execute(sql, params).fetchall()

    def hour_cells(self) -> list[tuple]:
        """(hour, direction, answered, calls, talk, wait, waited) rows."""
        hour = f"{self.local} % {DAY} / 3600 AS hour"
        if self.filters.accounts is not None and self.whole is not None:
            # The stored hourly counts do not know the employee: read their calls instead.
            where, extra = self.filters.sql()
            cells = f"{_raw_cells(self.local, hour)} WHERE start_time >= ? AND start_time < ?"
            cells, params = cells + where, [*self.bounds, *extra]
        else:
            cells, params = self._cells(
                "SELECT hour, direction, answered, calls, duration_seconds, wait_seconds, "
                "waited_calls FROM moizvonki_call_hours",
                hour,
                self.filters.sql(employee=False, client=False),
            )
        sql = (
            f"SELECT hour, direction, answered, {_MEASURES} FROM ({cells}) "
            "GROUP BY hour, direction, answered"
        )
        return self.store.db.execute(sql, params).fetchall()

    def per_client(self, internal: Iterable[str], window: int) -> tuple[int, list[tuple]]:
        """The number of clients, and the clients whose last incoming call was missed:
        ``(client, time, login, callback)`` with callback None (no outgoing call after the miss
        within ``window`` seconds), 0 (called, not reached) or 1 (reached)."""
        internal = sorted(internal)
        marks = ", ".join("?" * len(internal))
        client = " AND client_last10 = ?" if self.filters.client is not None else ""
        client_params = [self.filters.client] if self.filters.client is not None else []
        # The largest start_time * 2 + answered is the last incoming call, an answered one
        # winning a tie. Of missed calls at that same second, the first in the client index
        # (by login, then id) is the one attributed: read in that order, it is the row the
        # maximum keeps; otherwise, it is looked up.
        hop = self.few_clients and self.filters.client is None
        if self.by_client and not hop:
            account, attributed = ", user_account AS account", "coalesce(account, '')"
        else:
            account, attributed = (
                "",
                (
                    f"(SELECT coalesce(user_account, '') FROM moizvonki_calls INDEXED BY "
                    f"{_CLIENT_INDEX} WHERE client_last10 = clients.client "
                    "AND start_time = clients.last_in / 2 AND direction = 0 AND answered = 0 "
                    "ORDER BY user_account, db_call_id LIMIT 1)"
                ),
            )
        if hop:
            # Few clients, many calls: hop from client to client in the index and seek each
            # one's last incoming call, rather than reading every call of the period.
            clients = f"""
                {_EVERY_CLIENT},
                clients AS (
                    SELECT client, (
                        SELECT start_time * 2 + answered FROM moizvonki_calls
                        INDEXED BY {_CLIENT_INDEX} WHERE client_last10 = every.client
                          AND start_time >= ?1 AND start_time < ?2 AND direction = 0
                        ORDER BY start_time DESC, answered DESC LIMIT 1
                    ) AS last_in
                    FROM every WHERE EXISTS (
                        SELECT 1 FROM moizvonki_calls INDEXED BY {_CLIENT_INDEX}
                        WHERE client_last10 = every.client AND start_time >= ?1
                          AND start_time < ?2
                    )
                )"""
        else:
            clients = f"""
                clients AS (
                    SELECT client_last10 AS client,
                           max(CASE WHEN direction = 0 THEN start_time * 2 + answered END)
                               AS last_in{account}
                    FROM moizvonki_calls INDEXED BY {self._scan}
                    WHERE client_last10 IS NOT NULL AND start_time >= ?1 AND start_time < ?2
                      {client}
                    GROUP BY client_last10
                )"""
        sql = f"""
            WITH RECURSIVE {clients}
            SELECT 0, NULL, count(*), NULL, NULL
            FROM clients WHERE client NOT IN ({marks})
            UNION ALL
            SELECT 1, client, last_in / 2, {attributed}, (
                SELECT max(answered) FROM moizvonki_calls INDEXED BY {_CLIENT_INDEX}
                WHERE client_last10 = clients.client AND start_time > clients.last_in / 2
                  AND start_time <= clients.last_in / 2 + ? AND direction = 1
            )
            FROM clients WHERE last_in % 2 = 0 AND client NOT IN ({marks})
        """
        params = [*self.bounds, *client_params, *internal, window, *internal]
        rows = self.store.db.execute(sql, params).fetchall()
        counted = next(row[2] for row in rows if row[0] == 0)
        return counted, [row[1:] for row in rows if row[0] == 1]

    def unique_clients(self) -> int:
        where, params = self.filters.sql()
        sql = (
            f"SELECT count(DISTINCT client_last10) FROM moizvonki_calls INDEXED BY {self._scan} "
            f"WHERE client_last10 IS NOT NULL AND start_time >= ? AND start_time < ?{where}"
        )
        return self.store.db.execute(sql, [*self.bounds, *params]).fetchone()[0]

    def internal_calls(self, internal: Iterable[str]) -> tuple[int, int]:
        """Calls with the company's own numbers, and how many of those numbers they reached."""
        numbers = sorted(internal)
        if not numbers:
            return 0, 0
        where, params = self.filters.sql()
        sql = (
            f"SELECT count(*), count(DISTINCT client_last10) FROM moizvonki_calls "
            f"INDEXED BY {_CLIENT_INDEX} WHERE client_last10 IN ({', '.join('?' * len(numbers))})"
            f" AND start_time >= ? AND start_time < ?{where}"
        )
        count, reached = self.store.db.execute(sql, [*numbers, *self.bounds, *params]).fetchone()
        return count, reached

    def median_duration(self, answered: int) -> float | None:
        if not answered:
            return None
        # The duration index is read in order until the middle; a short period sorts its own.
        index = _DURATION_INDEX if self.by_client else _TIME_INDEX
        if self.filters.client is not None:
            index = _CLIENT_INDEX
        where, params = self.filters.sql()
        sql = (
            f"SELECT duration FROM moizvonki_calls INDEXED BY {index} WHERE answered = 1 "
            f"AND start_time >= ? AND start_time < ?{where} ORDER BY duration LIMIT 2 OFFSET ?"
        )
        offset = (answered - 1) // 2
        values = [row[0] for row in self.store.db.execute(sql, [*self.bounds, *params, offset])]
        middle = values[:1] if answered % 2 else values[:2]
        return sum(middle) / len(middle) if middle else None

    def waiting_clients(
        self, missed: list[tuple], names: dict[str, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The clients of ``missed`` nobody called back, longest waiting first, each with the
        number and name their missed call logged and how often they rang unanswered."""
        # Like the missed-client figures: the employee filter applies, the direction never does.
        where, params = Filters(accounts=self.filters.accounts).sql()
        waiting = sorted(
            (row for row in missed if row[3] is None), key=lambda row: (row[1], row[0])
        )
        entries = []
        for client, moment, account, _ in waiting[:MAX_WAITING_CLIENTS]:
            number, name = self.store.db.execute(
                f"SELECT client_number, client_name FROM moizvonki_calls INDEXED BY "
                f"{_CLIENT_INDEX} WHERE client_last10 = ? AND start_time = ? AND direction = 0 "
                "ORDER BY db_call_id DESC LIMIT 1",
                [client, moment],
            ).fetchone()
            (rang,) = self.store.db.execute(
                # A ring several phones logged at the same second is one ring.
                f"SELECT count(DISTINCT start_time) FROM moizvonki_calls INDEXED BY "
                f"{_CLIENT_INDEX} WHERE client_last10 = ? AND start_time >= ? "
                f"AND start_time < ? AND direction = 0 AND answered = 0{where}",
                [client, *self.bounds, *params],
            ).fetchone()
            person = names.get((account or "").casefold(), {})
            entries.append(
                {
                    "client": client,
                    "number": number or None,
                    "name": _client_name(name, client),
                    "missed_at": iso(moment, self.period.zone),
                    "missed_calls": rang,
                    "employee": person.get("name") or account or "unknown",
                    "user_account": account or None,
                }
            )
        return entries

    def top_clients(self, internal: Iterable[str], limit: int) -> list[dict[str, Any]]:
        internal = set(internal)
        where, params = self.filters.sql()
        sql = (
            "SELECT client_last10, count(*) AS calls, sum(answered), max(start_time) "
            f"FROM moizvonki_calls INDEXED BY {self._scan} WHERE client_last10 IS NOT NULL "
            f"AND start_time >= ? AND start_time < ?{where} GROUP BY client_last10 "
            "ORDER BY calls DESC, max(start_time) DESC, client_last10 LIMIT ?"
        )
        rows = self.store.db.execute(sql, [*self.bounds, *params, limit + len(internal)])
        top = []
        for client, calls, answered, last in rows.fetchall():
            if client in internal:
                continue
            # The number and name as the last of these calls logged them.
            number, name = self.store.db.execute(
                f"SELECT client_number, client_name FROM moizvonki_calls "
                f"INDEXED BY {_CLIENT_INDEX} WHERE client_last10 = ? AND start_time = ?{where} "
                "ORDER BY db_call_id DESC LIMIT 1",
                [client, last, *params],
            ).fetchone()
            top.append(
                {
                    "client": client,
                    "number": number or None,
                    "name": _client_name(name, client),
                    "total_calls": calls,
                    "answered": answered,
                    "missed": calls - answered,
                    "last_call": iso(last, self.period.zone),
                }
            )
        return top[:limit]


def _client_name(name: str | None, client: str) -> str | None:
    """The name a call logged for the client, unless it is only the number again."""
    return name if name and phones.last10(name) != client else None


def _epoch_day(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


def internal_numbers(store: Store) -> set[str]:
    """The last ten digits of every SIM the company's phones called from: its own numbers."""
    sims = store.db.execute(
        f"""
        WITH RECURSIVE sims(number) AS (
            SELECT min(src_number) FROM moizvonki_calls INDEXED BY {_SIM_INDEX}
            UNION ALL
            SELECT (SELECT min(src_number) FROM moizvonki_calls INDEXED BY {_SIM_INDEX}
                    WHERE src_number > sims.number)
            FROM sims WHERE sims.number IS NOT NULL
        )
        SELECT number FROM sims WHERE number IS NOT NULL
        """
    ).fetchall()
    return {tail for (number,) in sims if (tail := phones.last10(number))}


# --- the answer ---------------------------------------------------------------------------------

_COMPARED = (
    "total_calls",
    "incoming",
    "outgoing",
    "answered",
    "missed",
    "internal_calls",
    "unique_clients",
    "total_duration_seconds",
    "avg_duration_seconds",
    "median_duration_seconds",
    "avg_wait_seconds",
    "missed_clients",
    "callback_attempted",
    "callback_reached",
    "not_called_back",
)


def _totals(
    reader: _Reader, internal: set[str], window: int, breakdowns: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The period's figures, and what the breakdowns are made of."""
    cells = reader.day_and_employee_cells()
    days: dict[int, Tally] = {}
    employees: dict[str, Tally] = {}
    total = Tally()
    for kind, key, direction, answered, calls, talk, wait, waited in cells:
        group = (days if kind == 0 else employees).setdefault(key, Tally())
        group.add(direction, answered, calls, talk, wait, waited)
        if kind == 0:
            total.add(direction, answered, calls, talk, wait, waited)

    filters = reader.filters
    reader.choose_scan(total.total)
    clients, missed = reader.per_client(internal, window)
    if filters.narrowed:
        clients = reader.unique_clients()
    internal_calls, internal_reached = reader.internal_calls(internal)
    if filters.narrowed:
        clients -= internal_reached
    if filters.accounts is not None:
        accounts = set(filters.accounts)
        missed = [row for row in missed if row[2] in accounts]
    attempted = sum(1 for row in missed if row[3] is not None)
    reached = sum(1 for row in missed if row[3] == 1)

    figures = {
        **{key: value for key, value in total.shape().items() if key != "missed_not_called_back"},
        "internal_calls": internal_calls,
        "unique_clients": clients,
        "median_duration_seconds": reader.median_duration(total.answered),
        "avg_wait_seconds": total.avg_wait,
        "missed_clients": len(missed),
        "callback_attempted": attempted,
        "callback_reached": reached,
        "not_called_back": len(missed) - attempted,
        "by_status": total.by_status(),
    }
    parts = {"days": days, "employees": employees, "missed": missed} if breakdowns else {}
    return figures, parts


def _change(current: Any, previous: Any) -> dict[str, Any]:
    if current is None or previous is None:
        return {"absolute": None, "percent": None}
    difference = current - previous
    return {
        "absolute": round(difference, 1) if isinstance(difference, float) else difference,
        "percent": round(100 * difference / previous, 1) if previous else None,
    }


def _employee_names(store: Store) -> dict[str, dict[str, Any]]:
    """Name and id of each employee company.list_employee gave, by login folded to lower case."""
    return {
        (row["email"] or "").casefold(): {"name": row["display_name"], "id": row["id"]}
        for row in store.query("SELECT id, display_name, email FROM moizvonki_employees")
    }


def _employee_entries(
    names: dict[str, dict[str, Any]], employees: dict[str, Tally], missed: list[tuple]
) -> list[dict[str, Any]]:
    for _, _, account, callback in missed:
        if callback is None:
            employees.setdefault(account, Tally()).not_called_back += 1
    entries = []
    for account, tally in employees.items():
        person = names.get(account.casefold(), {})
        entries.append(
            {
                "employee": person.get("name") or account or "unknown",
                "user_account": account or None,
                "user_id": person.get("id"),
                **tally.shape(),
                "avg_wait_seconds": tally.avg_wait,
            }
        )
    entries.sort(key=lambda e: (-e["total_calls"], -e["missed_not_called_back"], e["employee"]))
    return entries


def _month_entries(period: Period, days: dict[int, Tally]) -> list[dict[str, Any]]:
    months: dict[str, Tally] = {}
    for day in period.days():
        month = months.setdefault(day.strftime("%Y-%m"), Tally())
        tally = days.get(_epoch_day(day))
        if tally is not None:
            for field in Tally.__dataclass_fields__:
                setattr(month, field, getattr(month, field) + getattr(tally, field))
    return [{"month": month, **tally.shape()} for month, tally in months.items()]


def _breakdowns(
    reader: _Reader,
    parts: dict[str, Any],
    include: Sequence[str],
    top: int,
    internal: set[str],
) -> tuple[dict[str, Any], dict[str, str]]:
    period, zone = reader.period, reader.period.zone
    names = functools.cache(lambda: _employee_names(reader.store))
    days: dict[int, Tally] = parts["days"]
    hours: dict[int, Tally] = {}
    for _, moment, _, callback in parts["missed"]:
        if callback is None:
            local = dt.datetime.fromtimestamp(moment, zone)
            days.setdefault(_epoch_day(local.date()), Tally()).not_called_back += 1
            hours.setdefault(local.hour, Tally()).not_called_back += 1

    result: dict[str, Any] = {}
    cut: dict[str, str] = {}
    every_day = period.days()
    if "by_day" in include:
        shown = every_day[-MAX_DAY_ENTRIES:]
        result["by_day"] = {
            day.isoformat(): (days.get(_epoch_day(day)) or Tally()).shape() for day in shown
        }
        if len(shown) < len(every_day):
            cut["by_day"] = (
                f"only the last {len(shown)} of {len(every_day)} days; by_month covers the "
                "whole period, or ask for a shorter period for other days"
            )
    if "by_month" in include or "by_day" in cut:
        result["by_month"] = _month_entries(period, days)
    if "by_hour" in include:
        for hour, direction, answered, calls, talk, wait, waited in reader.hour_cells():
            hours.setdefault(hour, Tally()).add(direction, answered, calls, talk, wait, waited)
        result["by_hour"] = [
            {"hour": hour, **(hours.get(hour) or Tally()).shape()} for hour in range(24)
        ]
    if "by_weekday" in include:
        weekdays = [Tally() for _ in WEEKDAYS]
        for day in every_day:
            tally = days.get(_epoch_day(day))
            if tally is not None:
                into = weekdays[day.weekday()]
                for field in Tally.__dataclass_fields__:
                    setattr(into, field, getattr(into, field) + getattr(tally, field))
        result["by_weekday"] = [
            {"weekday": name, **tally.shape()}
            for name, tally in zip(WEEKDAYS, weekdays, strict=True)
        ]
    if "by_employee" in include:
        entries = _employee_entries(names(), parts["employees"], parts["missed"])
        result["by_employee"] = entries[:MAX_EMPLOYEE_ENTRIES]
        if len(entries) > MAX_EMPLOYEE_ENTRIES:
            cut["by_employee"] = (
                f"only the {MAX_EMPLOYEE_ENTRIES} of {len(entries)} employees with most calls; "
                "filter by employee for the others"
            )
    if "top_clients" in include:
        result["top_clients"] = reader.top_clients(internal, top)
    if "waiting_clients" in include:
        missed = parts["missed"]
        result["waiting_clients"] = reader.waiting_clients(missed, names())
        waiting = sum(1 for row in missed if row[3] is None)
        if waiting > MAX_WAITING_CLIENTS:
            cut["waiting_clients"] = (
                f"the {MAX_WAITING_CLIENTS} of {waiting} clients who have waited longest; "
                "filter by employee or ask a shorter period for the others"
            )
    return result, cut


def check_options(
    include: Sequence[str] | None, callback_window_hours: float, top_clients: int
) -> list[str]:
    """The breakdowns asked for (the default ones for None), once every option is checked."""
    wanted = list(DEFAULT_INCLUDE if include is None else include)
    unknown = [str(name)[:30] for name in wanted if name not in BREAKDOWNS]
    if unknown:
        raise InvalidArgument(
            f"include does not know {', '.join(unknown)}; use any of: {', '.join(BREAKDOWNS)}"
        )
    if not MIN_CALLBACK_WINDOW_HOURS <= callback_window_hours <= MAX_CALLBACK_WINDOW_HOURS:
        raise InvalidArgument(
            f"callback_window_hours must be from {MIN_CALLBACK_WINDOW_HOURS} (6 minutes) to "
            f"{MAX_CALLBACK_WINDOW_HOURS} (a week)"
        )
    if not 1 <= top_clients <= MAX_TOP_CLIENTS:
        raise InvalidArgument(f"top_clients_limit must be from 1 to {MAX_TOP_CLIENTS}")
    return wanted


def compute(
    store: Store,
    period: Period,
    filters: Filters | None = None,
    *,
    include: Sequence[str] | None = None,
    callback_window_hours: float = CALLBACK_WINDOW_HOURS,
    top_clients: int = TOP_CLIENTS,
    compare: bool = False,
    now: float | None = None,
) -> dict[str, Any]:
    """Every figure of ``period`` for the calls ``filters`` select, with the breakdowns in
    ``include`` (default: by day and by employee) and, if ``compare``, the preceding period."""
    filters = filters or Filters()
    moment = time.time() if now is None else now
    wanted = check_options(include, callback_window_hours, top_clients)
    window = int(callback_window_hours * 3600)

    previous = period.previous(moment) if compare else None
    use_zone(store, period.zone, previous.start if previous else period.start, period.end)
    internal = internal_numbers(store)

    reader = _Reader(store, period, filters)
    figures, parts = _totals(reader, internal, window, breakdowns=True)
    result: dict[str, Any] = {"period": period.describe()}
    if filters.shown:
        result["filters"] = dict(filters.shown)
    result.update(figures)
    result["callback_window_hours"] = callback_window_hours
    breakdowns, cut = _breakdowns(reader, parts, wanted, top_clients, internal)
    result.update(breakdowns)
    if "top_clients" in wanted and figures["unique_clients"] > len(result["top_clients"]):
        cut["top_clients"] = (
            f"the {len(result['top_clients'])} of {figures['unique_clients']} clients with most "
            f"calls; top_clients_limit takes up to {MAX_TOP_CLIENTS}"
        )

    if previous is not None:
        before, _ = _totals(_Reader(store, previous, filters), internal, window, breakdowns=False)
        result["previous_period"] = {"period": previous.describe(), **before}
        result["change"] = {key: _change(figures[key], before[key]) for key in _COMPARED}

    result["truncated"] = bool(cut)
    if cut:
        result["cut"] = cut
    return result
