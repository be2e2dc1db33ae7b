"""Every figure of the SQL analytics equals a plain computation over random call logs.

Random zones (one with daylight saving over midnight, one with half-hour offsets), periods of
whole days and exact bounds, filters, edits and deletions after the first write (the stored
counts follow them), and both ways of reading per-client figures.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from call_stats import expected
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tariti_mcp.errors import InvalidArgument
from tariti_mcp.moizvonki import analytics
from tariti_mcp.store import Store

ZONES = ["Europe/Moscow", "America/New_York", "America/Santiago", "Asia/Kolkata"]
# Each window holds a daylight-saving change of one of the zones.
ANCHORS = [dt.date(2026, 10, 27), dt.date(2026, 4, 1), dt.date(2026, 9, 3)]
EMPLOYEES = [
    {"id": 1, "display_name": "Анна", "email": "anna@x.ru"},
    {"id": 2, "display_name": "Борис", "email": "boris@x.ru"},
]
SIMS = {"anna@x.ru": "+79260000001", "boris@x.ru": "8 926 000-00-02", "vera@x.ru": "79260000003"}
NUMBERS = [
    "+79160000001",
    "8 (916) 000-00-01",
    "+79160000002",
    "89160000003",
    "+7 926 000-00-03",  # Vera's own SIM: an internal call
    "",
    "12345",
]
ACCOUNTS = ["anna@x.ru", "boris@x.ru", "vera@x.ru", None]
WINDOW_DAYS = 16


def utc(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())


@st.composite
def call_logs(draw, anchor: dt.date):
    base = utc(anchor)
    moments = st.one_of(
        st.integers(base, base + WINDOW_DAYS * 86400),
        # Shared seconds make same-second ties between phones.
        st.sampled_from([base + 5 * 86400 + 3600 * h for h in range(0, 24, 5)]),
    )
    calls = []
    for index in range(draw(st.integers(0, 45))):
        start = draw(moments)
        direction = draw(st.sampled_from([0, 0, 1, 1, None]))
        answered = draw(st.sampled_from([0, 1]))
        account = draw(st.sampled_from(ACCOUNTS))
        wait = draw(st.sampled_from([0, 7, 30, -5, None]))
        if not answered or wait is None:
            answer_time = 0
        else:
            answer_time = start + (wait if direction == 0 else 0)
        calls.append(
            {
                "db_call_id": index + 1,
                "start_time": start,
                "direction": direction,
                "answered": answered,
                "duration": draw(st.integers(0, 600)),
                "answer_time": answer_time,
                "client_number": draw(st.sampled_from(NUMBERS)),
                "client_name": draw(st.sampled_from(["", "Клиент", "+79160000001"])),
                "user_account": account,
                "src_number": SIMS.get(account),
            }
        )
    return calls


@st.composite
def edits(draw, calls):
    """Changes a later sync may bring, and deletions; returns the log as the store ends up."""
    changed, deleted = [], set()
    for call in calls:
        roll = draw(st.integers(0, 9))
        if roll == 0:
            changed.append(
                {
                    **call,
                    "answered": 1 - call["answered"],
                    "duration": draw(st.integers(0, 600)),
                    "start_time": call["start_time"] + draw(st.integers(-86400, 86400)),
                    "user_account": draw(st.sampled_from(ACCOUNTS[:3])),
                }
            )
        elif roll == 1:
            deleted.add(call["db_call_id"])
    final = {call["db_call_id"]: call for call in calls}
    for call in changed:
        final[call["db_call_id"]] = {**call, "src_number": SIMS.get(call["user_account"])}
    return changed, deleted, [c for i, c in final.items() if i not in deleted]


@st.composite
def periods(draw, anchor: dt.date, zone: ZoneInfo):
    kind = draw(st.sampled_from(["days", "days", "exact", "named"]))
    first = anchor + dt.timedelta(days=draw(st.integers(-1, WINDOW_DAYS - 2)))
    if kind == "days":
        last = first + dt.timedelta(days=draw(st.integers(0, 9)))
        return analytics.resolve_period(
            None, first.isoformat(), last.isoformat(), zone, now=utc(anchor) + 90 * 86400
        )
    if kind == "exact":
        start = utc(first) + draw(st.integers(0, 86399))
        end = start + draw(st.integers(1, 6 * 86400))
        fmt = lambda moment: dt.datetime.fromtimestamp(moment, zone).isoformat()  # noqa: E731
        return analytics.resolve_period(None, fmt(start), fmt(end), zone, now=end + 86400)
    now = utc(first) + draw(st.integers(0, 86399))
    return analytics.resolve_period(draw(st.sampled_from(analytics.PERIODS)), "", "", zone, now)


def compare_entries(actual: dict, wanted: dict) -> None:
    for key, value in wanted.items():
        assert actual[key] == value, key


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_every_figure_equals_a_plain_computation(data):
    zone = ZoneInfo(data.draw(st.sampled_from(ZONES), label="zone"))
    anchor = data.draw(st.sampled_from(ANCHORS), label="anchor")
    calls = data.draw(call_logs(anchor), label="calls")
    changed, deleted, final = data.draw(edits(calls), label="edits")
    period = data.draw(periods(anchor, zone), label="period")
    employee = data.draw(st.sampled_from(["", "", "anna@x.ru", "Борис", "vera@x.ru"]))
    direction = data.draw(st.sampled_from(["", "", "incoming", "outgoing"]))
    client = data.draw(st.sampled_from(["", "", "", "8 916 000 00 01", "+79260000003"]))
    window = data.draw(st.sampled_from([24, 1, 100]), label="window")
    share = data.draw(st.sampled_from([0, analytics.TIME_SCAN_SHARE, 10**9]), label="share")
    # 1: every client is sought on its own (few clients among many calls); the default: as the
    # store's numbers decide; a huge one: never.
    per_seek = data.draw(st.sampled_from([1, analytics.CALLS_PER_SEEK, 10**9]), label="seek")

    store = Store()
    store.upsert_employees(EMPLOYEES)
    store.upsert_calls(calls)
    if data.draw(st.booleans(), label="counted in another zone first"):
        analytics.use_zone(store, ZoneInfo("Asia/Tokyo"))
    store.upsert_calls(changed)
    if deleted:
        marks = ", ".join("?" * len(deleted))
        store.db.execute(f"DELETE FROM moizvonki_calls WHERE db_call_id IN ({marks})", [*deleted])

    if employee == "vera@x.ru" and all(c["user_account"] != employee for c in final):
        # Not on the employee list and never on a call: nobody by that name is known.
        with pytest.raises(InvalidArgument, match="anna@x.ru"):
            analytics.resolve_filters(store, employee)
        return
    filters = analytics.resolve_filters(store, employee, direction, client)
    saved, analytics.TIME_SCAN_SHARE = analytics.TIME_SCAN_SHARE, share
    saved_seek, analytics.CALLS_PER_SEEK = analytics.CALLS_PER_SEEK, per_seek
    try:
        now = max(period.end, period.start + 1) + 30 * 86400
        result = analytics.compute(
            store,
            period,
            filters,
            include=analytics.BREAKDOWNS,
            callback_window_hours=window,
            top_clients=3,
            compare=True,
            now=now,
        )
    finally:
        analytics.TIME_SCAN_SHARE = saved
        analytics.CALLS_PER_SEEK = saved_seek

    options = {
        "accounts": set(filters.accounts) if filters.accounts is not None else None,
        "direction": filters.direction,
        "client": filters.client,
        "window_hours": window,
        "top": 3,
    }
    wanted = expected(final, period.start, period.end, zone, **options)
    for key in (
        "total_calls",
        "incoming",
        "outgoing",
        "answered",
        "missed",
        "total_duration_seconds",
        "avg_duration_seconds",
        "internal_calls",
        "unique_clients",
        "median_duration_seconds",
        "avg_wait_seconds",
        "missed_clients",
        "callback_attempted",
        "callback_reached",
        "not_called_back",
        "by_status",
        "by_hour",
        "by_weekday",
        "by_month",
        "top_clients",
    ):
        assert result[key] == wanted[key], key
    assert result["by_day"] == wanted["by_day"]
    waiting = [
        {key: value for key, value in entry.items() if key != "employee"}
        for entry in result["waiting_clients"]
    ]
    assert waiting == wanted["waiting_clients"]
    employees = {entry["user_account"] or "": entry for entry in result["by_employee"]}
    assert set(employees) == set(wanted["by_employee"])
    for account, entry in wanted["by_employee"].items():
        compare_entries(employees[account], entry)

    # The preceding period of equal length, computed the plain way from its own bounds.
    previous = result["previous_period"]
    days = (period.last - period.first).days + 1
    whole = period.start == analytics.day_start(period.first, zone) and (
        period.end == analytics.day_start(period.last + dt.timedelta(days=1), zone)
    )
    start = (
        analytics.day_start(period.first - dt.timedelta(days=days), zone)
        if whole
        else period.start - (period.end - period.start)
    )
    before = expected(final, start, period.start, zone, **options)
    for key in ("total_calls", "unique_clients", "missed_clients", "median_duration_seconds"):
        assert previous[key] == before[key], key
    store.close()
