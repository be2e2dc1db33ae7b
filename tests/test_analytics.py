"""Analytics from the store: business days in the configured zone, direction and answered codes."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tariti_mcp.errors import InvalidArgument
from tariti_mcp.moizvonki import analytics
from tariti_mcp.store import Store

MOSCOW = ZoneInfo("Europe/Moscow")


def at(day: str, hhmm: str, zone=MOSCOW) -> int:
    return int(dt.datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=zone).timestamp())


def call(call_id, start, direction, answered, duration, account="a@x.ru"):
    return {
        "db_call_id": call_id,
        "start_time": start,
        "direction": direction,
        "answered": answered,
        "duration": duration,
        "user_account": account,
        "client_number": "+79160000000",
    }


def test_direction_zero_is_incoming():
    store = Store()
    store.upsert_calls(
        [
            call(1, at("2026-11-02", "10:00"), 0, 1, 60),
            call(2, at("2026-11-02", "11:00"), 1, 1, 30),
            call(3, at("2026-11-02", "12:00"), 1, 1, 30),
        ]
    )
    result = analytics.compute(store, dt.date(2026, 11, 2), dt.date(2026, 11, 2), MOSCOW)
    assert (result["incoming"], result["outgoing"]) == (1, 2)


def test_answered_comes_from_the_flag_not_the_duration():
    store = Store()
    store.upsert_calls(
        [
            call(1, at("2026-11-02", "10:00"), 1, 0, 25),  # rang 25 s, nobody picked up
            call(2, at("2026-11-02", "10:05"), 1, "1", 100),  # answered sent as text
            call(3, at("2026-11-02", "10:10"), 0, 0, 0),
        ]
    )
    result = analytics.compute(store, dt.date(2026, 11, 2), dt.date(2026, 11, 2), MOSCOW)
    assert result["answered"] == 1 and result["missed"] == 2
    assert result["by_status"] == {
        "incoming_answered": 0,
        "incoming_missed": 1,
        "outgoing_answered": 1,
        "outgoing_missed": 1,
    }
    assert result["total_duration_seconds"] == 100  # talk time of answered calls only
    assert result["avg_duration_seconds"] == 100.0


def test_day_boundaries_are_in_the_business_zone():
    store = Store()
    # 23:30 Moscow on Nov 1 is 20:30 UTC on Nov 1; 00:30 Moscow on Nov 2 is 21:30 UTC on Nov 1.
    store.upsert_calls(
        [call(1, at("2026-11-01", "23:30"), 0, 1, 10), call(2, at("2026-11-02", "00:30"), 0, 1, 10)]
    )
    result = analytics.compute(store, dt.date(2026, 11, 1), dt.date(2026, 11, 2), MOSCOW)
    assert result["by_day"]["2026-11-01"]["total_calls"] == 1
    assert result["by_day"]["2026-11-02"]["total_calls"] == 1
    only_second = analytics.compute(store, dt.date(2026, 11, 2), dt.date(2026, 11, 2), MOSCOW)
    assert only_second["total_calls"] == 1


def test_days_without_calls_are_zero():
    store = Store()
    store.upsert_calls([call(1, at("2026-11-03", "12:00"), 0, 1, 10)])
    result = analytics.compute(store, dt.date(2026, 11, 1), dt.date(2026, 11, 3), MOSCOW)
    assert list(result["by_day"]) == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert result["by_day"]["2026-11-01"]["total_calls"] == 0
    assert result["by_day"]["2026-11-01"]["avg_duration_seconds"] == 0


def test_by_employee_uses_names_when_known():
    store = Store()
    store.upsert_employees([{"id": 1, "display_name": "Анна Смирнова", "email": "anna@x.ru"}])
    store.upsert_calls(
        [
            call(1, at("2026-11-02", "10:00"), 0, 1, 10, "anna@x.ru"),
            call(2, at("2026-11-02", "10:00"), 0, 1, 10, "anna@x.ru"),
            call(3, at("2026-11-02", "10:00"), 1, 0, 5, "ivan@x.ru"),
        ]
    )
    rows = analytics.compute(store, dt.date(2026, 11, 2), dt.date(2026, 11, 2), MOSCOW)[
        "by_employee"
    ]
    assert [(r["employee"], r["total_calls"]) for r in rows] == [
        ("Анна Смирнова", 2),
        ("ivan@x.ru", 1),
    ]


def test_period_defaults_and_refusals():
    now = dt.datetime(2026, 12, 3, 1, 0, tzinfo=MOSCOW)
    assert analytics.period("", "", MOSCOW, now) == (dt.date(2026, 12, 3),) * 2
    assert analytics.period("2026-12-01", "", MOSCOW, now) == (
        dt.date(2026, 12, 1),
        dt.date(2026, 12, 3),
    )
    assert analytics.period("", "2026-11-05", MOSCOW, now) == (dt.date(2026, 11, 5),) * 2
    with pytest.raises(InvalidArgument, match="before date_from"):
        analytics.period("2026-12-02", "2026-12-01", MOSCOW, now)
    with pytest.raises(InvalidArgument, match="ISO date"):
        analytics.period("01.12.2026", "", MOSCOW, now)
    with pytest.raises(InvalidArgument, match="future"):
        analytics.period("2026-12-04", "", MOSCOW, now)
    with pytest.raises(InvalidArgument, match="366"):
        analytics.period("2024-01-01", "2026-12-01", MOSCOW, now)


def test_today_is_the_business_zone_today():
    # 22:30 UTC on Dec 2 is already Dec 3 in Moscow.
    late_utc = dt.datetime(2026, 12, 2, 22, 30, tzinfo=dt.UTC)
    assert analytics.period("", "", MOSCOW, late_utc)[0] == dt.date(2026, 12, 3)


calls_strategy = st.lists(
    st.tuples(
        st.integers(min_value=at("2026-10-20", "00:00"), max_value=at("2026-11-10", "00:00")),
        st.sampled_from([0, 1]),
        st.sampled_from([0, 1, "0", "1"]),
        st.integers(min_value=0, max_value=3600),
        st.sampled_from(["a@x.ru", "b@x.ru", None]),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(calls_strategy, st.sampled_from(["Europe/Moscow", "Asia/Vladivostok", "America/New_York"]))
def test_sql_matches_plain_python(rows, zone_name):
    zone = ZoneInfo(zone_name)
    store = Store()
    store.upsert_calls(call(i + 1, *row) for i, row in enumerate(rows))
    first, last = dt.date(2026, 10, 25), dt.date(2026, 11, 5)  # crosses the US DST change
    result = analytics.compute(store, first, last, zone)

    def day_of(ts):
        return dt.datetime.fromtimestamp(ts, zone).date()

    inside = [r for r in rows if first <= day_of(r[0]) <= last]
    answered = [r for r in inside if int(r[2]) == 1]
    assert result["total_calls"] == len(inside)
    assert result["incoming"] == sum(1 for r in inside if r[1] == 0)
    assert result["answered"] == len(answered)
    assert result["missed"] == len(inside) - len(answered)
    assert result["total_duration_seconds"] == sum(r[3] for r in answered)
    for day, metrics in result["by_day"].items():
        expected = [r for r in inside if day_of(r[0]).isoformat() == day]
        assert metrics["total_calls"] == len(expected)
    assert sum(e["total_calls"] for e in result["by_employee"]) == len(inside)
