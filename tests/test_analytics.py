"""Analytics from the store: periods in the business zone, each figure by its definition, and
the failure patterns of other integrations (named in docs/failure-patterns.md)."""

import datetime as dt
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tariti_mcp.errors import InvalidArgument
from tariti_mcp.moizvonki import analytics
from tariti_mcp.store import Store

MOSCOW = ZoneInfo("Europe/Moscow")
NEW_YORK = ZoneInfo("America/New_York")
NOW = dt.datetime(2026, 12, 3, 15, 0, tzinfo=MOSCOW).timestamp()

ANNA = {"id": 11, "display_name": "Анна Смирнова", "email": "anna@x.ru"}
IVAN = {"id": 12, "display_name": "Иван Петров", "email": "ivan@x.ru"}
SIMS = {"anna@x.ru": "+79260000011", "ivan@x.ru": "8 (926) 000-00-12"}


def at(day: str, hhmm: str, zone=MOSCOW) -> int:
    return int(dt.datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=zone).timestamp())


_ids = iter(range(1, 10**6))


def call(start, direction, answered, duration=0, account="anna@x.ru", number="+79160000001", **kw):
    return {
        "db_call_id": kw.pop("db_call_id", next(_ids)),
        "start_time": start,
        "direction": direction,
        "answered": answered,
        "duration": duration,
        "answer_time": kw.pop("answer_time", start if answered else 0),
        "user_account": account,
        "src_number": SIMS.get(account),
        "client_number": number,
        **kw,
    }


@pytest.fixture
def store():
    database = Store()
    database.upsert_employees([ANNA, IVAN])
    yield database
    database.close()


def days(store, first, last=None, zone=MOSCOW, **options):
    first_day = dt.date.fromisoformat(first)
    last_day = dt.date.fromisoformat(last or first)
    period = analytics.Period(
        analytics.day_start(first_day, zone),
        analytics.day_start(last_day + dt.timedelta(days=1), zone),
        zone,
    )
    filters = options.pop("filters", None)
    return analytics.compute(store, period, filters, now=options.pop("now", NOW), **options)


# --- failure patterns -------------------------------------------------------------------------


def test_direction_zero_is_incoming(store):
    store.upsert_calls(
        [
            call(at("2026-11-02", "10:00"), 0, 1, 60),
            call(at("2026-11-02", "11:00"), 1, 1, 30),
            call(at("2026-11-02", "12:00"), 1, 1, 30),
        ]
    )
    result = days(store, "2026-11-02")
    assert (result["incoming"], result["outgoing"]) == (1, 2)
    assert result["by_status"]["incoming_answered"] == 1


def test_answered_comes_from_the_flag_not_the_duration(store):
    store.upsert_calls(
        [
            call(at("2026-11-02", "10:00"), 1, 0, 25),  # rang 25 s, nobody picked up
            call(at("2026-11-02", "10:05"), 1, "1", 100),  # answered sent as text
            call(at("2026-11-02", "10:10"), 0, 0, 0),
        ]
    )
    result = days(store, "2026-11-02")
    assert result["answered"] == 1 and result["missed"] == 2
    assert result["by_status"] == {
        "incoming_answered": 0,
        "incoming_missed": 1,
        "outgoing_answered": 1,
        "outgoing_missed": 1,
    }
    assert result["total_duration_seconds"] == 100  # talk time of answered calls only
    assert result["avg_duration_seconds"] == 100.0
    assert result["median_duration_seconds"] == 100.0


def test_day_boundaries_are_in_the_business_zone(store):
    # 23:30 Moscow on Nov 1 is 20:30 UTC on Nov 1; 00:30 Moscow on Nov 2 is 21:30 UTC on Nov 1.
    store.upsert_calls(
        [call(at("2026-11-01", "23:30"), 0, 1, 10), call(at("2026-11-02", "00:30"), 0, 1, 10)]
    )
    result = days(store, "2026-11-01", "2026-11-02", include=["by_day", "by_hour"])
    assert result["by_day"]["2026-11-01"]["total_calls"] == 1
    assert result["by_day"]["2026-11-02"]["total_calls"] == 1
    assert [h["hour"] for h in result["by_hour"] if h["total_calls"]] == [0, 23]
    assert days(store, "2026-11-02")["total_calls"] == 1


def test_day_boundaries_follow_daylight_saving(store):
    # New York leaves daylight saving at 02:00 on 2026-11-01: that day is 25 hours long.
    store.upsert_calls(
        [
            call(at("2026-11-01", "00:10", NEW_YORK), 0, 1, 10),
            call(at("2026-11-01", "23:50", NEW_YORK), 0, 1, 10),
            call(at("2026-11-02", "00:10", NEW_YORK), 0, 1, 10),
            call(at("2026-10-31", "23:50", NEW_YORK), 0, 1, 10),
        ]
    )
    result = days(store, "2026-11-01", zone=NEW_YORK, include=["by_day", "by_hour"])
    assert result["total_calls"] == 2
    assert [h["hour"] for h in result["by_hour"] if h["total_calls"]] == [0, 23]
    both = days(store, "2026-10-31", "2026-11-02", zone=NEW_YORK)
    assert [d["total_calls"] for d in both["by_day"].values()] == [1, 2, 1]


def test_callback_counts_only_after_the_miss_within_the_window(store):
    miss = at("2026-11-02", "12:00")
    store.upsert_calls(
        [
            # Called before the miss: that is not a callback.
            call(miss - 600, 1, 1, 60, number="+79160000001"),
            call(miss, 0, 0, number="8 916 000-00-01"),
            # Called back after the period ended, within the window: counts, reached.
            call(at("2026-11-03", "09:00"), 1, 1, 60, number="+7 (916) 000-00-02"),
            call(miss, 0, 0, number="+79160000002"),
            # Called back 25 hours later: outside the 24-hour window.
            call(miss + 25 * 3600, 1, 1, 60, number="+79160000003"),
            call(miss, 0, 0, number="+79160000003"),
            # Called, nobody answered: attempted, not reached.
            call(miss + 60, 1, 0, 20, number="+79160000004"),
            call(miss, 0, 0, number="+79160000004"),
        ]
    )
    result = days(store, "2026-11-02")
    assert result["missed_clients"] == 4
    assert (result["callback_attempted"], result["callback_reached"]) == (2, 1)
    assert result["not_called_back"] == 2
    wider = days(store, "2026-11-02", callback_window_hours=26)
    assert (wider["callback_attempted"], wider["not_called_back"]) == (3, 1)


def test_a_later_incoming_call_is_not_a_callback(store):
    store.upsert_calls(
        [
            # Missed, then the client rang again the next day and got through: in a period
            # ending before that call, the client was not called back.
            call(at("2026-11-02", "18:00"), 0, 0, number="+79160000001"),
            call(at("2026-11-03", "10:00"), 0, 1, 30, number="+79160000001"),
            # Missed, then answered within the period: not a missed client at all.
            call(at("2026-11-02", "10:00"), 0, 0, number="+79160000002"),
            call(at("2026-11-02", "11:00"), 0, 1, 30, number="+79160000002"),
        ]
    )
    one_day = days(store, "2026-11-02")
    assert (one_day["missed_clients"], one_day["not_called_back"]) == (1, 1)
    two_days = days(store, "2026-11-02", "2026-11-03")
    assert two_days["missed_clients"] == 0


def test_one_client_ringing_several_phones_counts_once(store):
    rang = at("2026-11-02", "10:00")
    store.upsert_calls(
        [
            call(rang, 0, 0, account="anna@x.ru", number="+79160000001"),
            call(rang, 0, 0, account="ivan@x.ru", number="8 916 000 00 01"),
            call(rang + 5, 0, 0, account="ivan@x.ru", number="9160000001"),
        ]
    )
    result = days(store, "2026-11-02", include=["by_employee"])
    assert result["unique_clients"] == 1
    assert result["missed_clients"] == result["not_called_back"] == 1
    # The last call (10:00:05) missed on Ivan's phone is the one attributed.
    assert {e["user_account"]: e["missed_not_called_back"] for e in result["by_employee"]} == {
        "anna@x.ru": 0,
        "ivan@x.ru": 1,
    }


def test_same_second_ties_answered_wins_then_login_order(store):
    rang = at("2026-11-02", "10:00")
    store.upsert_calls(
        [
            call(rang, 0, 0, account="anna@x.ru", number="+79160000001"),
            call(rang, 0, 1, 40, account="ivan@x.ru", number="+79160000001"),
            call(rang, 0, 0, account="ivan@x.ru", number="+79160000002"),
            call(rang, 0, 0, account="anna@x.ru", number="+79160000002"),
        ]
    )
    # Read by client, by time, and client by client: all three agree.
    for share, per_seek in ((0, 40), (10**9, 10**9), (10**9, 1)):
        saved = analytics.TIME_SCAN_SHARE, analytics.CALLS_PER_SEEK
        analytics.TIME_SCAN_SHARE, analytics.CALLS_PER_SEEK = share, per_seek
        try:
            result = days(store, "2026-11-02", include=["by_employee"])
        finally:
            analytics.TIME_SCAN_SHARE, analytics.CALLS_PER_SEEK = saved
        assert result["missed_clients"] == 1  # client 1 was answered at that second
        lost = {e["user_account"]: e["missed_not_called_back"] for e in result["by_employee"]}
        assert lost == {"anna@x.ru": 1, "ivan@x.ru": 0}


def test_calls_between_employees_are_not_clients(store):
    store.upsert_calls(
        [
            call(at("2026-11-02", "10:00"), 1, 1, 60, account="anna@x.ru", number="89260000012"),
            call(at("2026-11-02", "10:00"), 0, 0, account="ivan@x.ru", number="+79260000011"),
            call(at("2026-11-02", "11:00"), 0, 0, account="ivan@x.ru", number="+79160000001"),
        ]
    )
    result = days(store, "2026-11-02", include=["top_clients"])
    assert result["total_calls"] == 3 and result["internal_calls"] == 2
    assert result["unique_clients"] == 1
    assert result["missed_clients"] == 1  # only the real client
    assert [c["client"] for c in result["top_clients"]] == ["9160000001"]


# --- figures ----------------------------------------------------------------------------------


def test_wait_is_for_answered_incoming_calls_only(store):
    start = at("2026-11-02", "10:00")
    store.upsert_calls(
        [
            call(start, 0, 1, 60, answer_time=start + 10),
            call(start, 0, 1, 60, answer_time=start + 20),
            call(start, 1, 1, 60, answer_time=start),  # outgoing: the phone cannot see a pickup
            call(start, 0, 0, 0, answer_time=0),
            call(start, 0, 1, 60, answer_time=0),  # answered without an answer time: unknown
        ]
    )
    result = days(store, "2026-11-02", include=["by_employee"])
    assert result["avg_wait_seconds"] == 15.0
    assert result["by_employee"][0]["avg_wait_seconds"] == 15.0


def test_median_of_odd_and_even_counts(store):
    store.upsert_calls(
        [call(at("2026-11-02", "10:00") + n, 0, 1, d) for n, d in enumerate([5, 50, 7])]
    )
    assert days(store, "2026-11-02")["median_duration_seconds"] == 7.0
    store.upsert_calls([call(at("2026-11-02", "11:00"), 1, 1, 100)])
    assert days(store, "2026-11-02")["median_duration_seconds"] == 28.5
    assert days(store, "2026-11-03")["median_duration_seconds"] is None


def test_unknown_direction_counts_in_totals_only(store):
    store.upsert_calls(
        [call(at("2026-11-02", "10:00"), None, 1, 30), call(at("2026-11-02", "10:00"), 0, 1, 30)]
    )
    result = days(store, "2026-11-02")
    assert (result["total_calls"], result["incoming"], result["outgoing"]) == (2, 1, 0)
    assert sum(result["by_status"].values()) == 1


def test_days_without_calls_are_zero(store):
    store.upsert_calls([call(at("2026-11-03", "12:00"), 0, 1, 10)])
    result = days(store, "2026-11-01", "2026-11-03")
    assert list(result["by_day"]) == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert result["by_day"]["2026-11-01"]["total_calls"] == 0
    assert result["by_day"]["2026-11-01"]["avg_duration_seconds"] == 0


def test_by_employee_uses_names_when_known(store):
    store.upsert_calls(
        [
            call(at("2026-11-02", "10:00"), 0, 1, 10, "anna@x.ru"),
            call(at("2026-11-02", "10:00"), 0, 1, 10, "anna@x.ru"),
            call(at("2026-11-02", "10:00"), 1, 0, 5, "olga@x.ru"),
        ]
    )
    rows = days(store, "2026-11-02")["by_employee"]
    assert [(r["employee"], r["user_id"], r["total_calls"]) for r in rows] == [
        ("Анна Смирнова", 11, 2),
        ("olga@x.ru", None, 1),
    ]


def test_weekdays_months_and_hours(store):
    store.upsert_calls(
        [
            call(at("2026-11-30", "09:15"), 0, 1, 10),  # Monday
            call(at("2026-12-01", "09:45"), 0, 0),  # Tuesday
            call(at("2026-12-01", "17:00"), 1, 1, 20, number="+79160000002"),
        ]
    )
    result = days(store, "2026-11-30", "2026-12-01", include=["by_weekday", "by_month", "by_hour"])
    assert [w["total_calls"] for w in result["by_weekday"]] == [1, 2, 0, 0, 0, 0, 0]
    assert [(m["month"], m["total_calls"]) for m in result["by_month"]] == [
        ("2026-11", 1),
        ("2026-12", 2),
    ]
    assert result["by_hour"][9]["total_calls"] == 2 and result["by_hour"][9]["missed"] == 1
    assert result["by_hour"][9]["missed_not_called_back"] == 1
    assert result["by_weekday"][1]["missed_not_called_back"] == 1
    assert "by_day" not in result and result["truncated"] is False


def test_long_periods_cut_by_day_and_say_so(store):
    store.upsert_calls(
        [call(at("2026-03-01", "10:00"), 0, 1, 10), call(at("2026-11-02", "10:00"), 0, 1, 10)]
    )
    result = days(store, "2026-01-01", "2026-11-30")
    assert len(result["by_day"]) == analytics.MAX_DAY_ENTRIES
    assert list(result["by_day"])[-1] == "2026-11-30"
    assert result["truncated"] is True and "by_day" in result["cut"]
    months = {m["month"]: m["total_calls"] for m in result["by_month"]}
    assert len(months) == 11 and months["2026-03"] == months["2026-11"] == 1
    assert sum(m["total_calls"] for m in result["by_month"]) == result["total_calls"] == 2


def test_top_clients_limit_is_said(store):
    store.upsert_calls(
        [
            call(at("2026-11-02", "10:00") + n, 0, 1, 10, number=f"+7916000000{n % 4}")
            for n in range(10)
        ]
    )
    result = days(store, "2026-11-02", include=["top_clients"], top_clients=2)
    assert [(c["client"], c["total_calls"]) for c in result["top_clients"]] == [
        ("9160000001", 3),
        ("9160000000", 3),
    ]
    assert result["cut"]["top_clients"].startswith("the 2 of 4 clients")


# --- filters ----------------------------------------------------------------------------------


def test_employee_by_id_email_or_name(store):
    store.upsert_calls(
        [
            call(at("2026-11-02", "10:00"), 0, 0, account="anna@x.ru", number="+79160000001"),
            call(at("2026-11-02", "10:05"), 0, 1, 10, account="ivan@x.ru"),
            call(at("2026-11-02", "11:00"), 1, 1, 20, account="ivan@x.ru", number="+79160000002"),
        ]
    )
    for given in ("12", "IVAN@x.ru", "Иван Петров", "петров"):
        filters = analytics.resolve_filters(store, employee=given)
        result = days(store, "2026-11-02", filters=filters)
        assert result["total_calls"] == 2, given
        assert result["filters"]["employee"]["email"] == "ivan@x.ru"
    anna = days(store, "2026-11-02", filters=analytics.resolve_filters(store, employee="Анна"))
    # Anna's miss was followed by Ivan's answered call to the same client: not a missed client.
    assert anna["total_calls"] == 1 and anna["missed_clients"] == 0
    with pytest.raises(InvalidArgument, match="Анна Смирнова \\(anna@x.ru, id 11\\)"):
        analytics.resolve_filters(store, employee="Пётр")


def test_employee_seen_only_on_calls_is_known(store):
    store.upsert_calls([call(at("2026-11-02", "10:00"), 0, 1, 10, account="olga@x.ru")])
    filters = analytics.resolve_filters(store, employee="olga@x.ru")
    assert days(store, "2026-11-02", filters=filters)["total_calls"] == 1


def test_client_in_any_format_and_direction(store):
    store.upsert_calls(
        [
            call(at("2026-11-02", "10:00"), 0, 0, number="+7 916 000-00-01"),
            call(at("2026-11-02", "10:30"), 1, 1, 30, number="89160000001"),
            call(at("2026-11-02", "11:00"), 0, 1, 30, number="+79160000002"),
        ]
    )
    filters = analytics.resolve_filters(store, client="8 (916) 000-00-01")
    result = days(store, "2026-11-02", filters=filters, include=["by_employee", "by_hour"])
    assert (result["total_calls"], result["unique_clients"], result["callback_reached"]) == (
        2,
        1,
        1,
    )
    incoming = days(
        store, "2026-11-02", filters=analytics.resolve_filters(store, direction="incoming")
    )
    assert (incoming["total_calls"], incoming["outgoing"], incoming["unique_clients"]) == (2, 0, 2)
    with pytest.raises(InvalidArgument, match="not a phone number"):
        analytics.resolve_filters(store, client="12-34")
    with pytest.raises(InvalidArgument, match="incoming or outgoing"):
        analytics.resolve_filters(store, direction="both")


def test_options_are_checked(store):
    with pytest.raises(InvalidArgument, match="by_week"):
        days(store, "2026-11-02", include=["by_week"])
    with pytest.raises(InvalidArgument, match="callback_window_hours"):
        days(store, "2026-11-02", callback_window_hours=0)
    # An adversary's find: 0.0001 hours was taken, a window no callback can fall in.
    with pytest.raises(InvalidArgument, match=r"from 0\.1 \(6 minutes\) to 168"):
        days(store, "2026-11-02", callback_window_hours=0.0001)
    assert days(store, "2026-11-02", callback_window_hours=0.1)["callback_window_hours"] == 0.1


# --- comparison -------------------------------------------------------------------------------


def test_previous_period_of_equal_length_and_the_change(store):
    store.upsert_calls(
        [
            call(at("2026-11-01", "10:00"), 0, 1, 10),
            call(at("2026-11-03", "10:00"), 0, 1, 30),
            call(at("2026-11-04", "10:00"), 1, 0, 5),
        ]
    )
    result = days(store, "2026-11-03", "2026-11-04", compare=True)
    previous = result["previous_period"]
    assert (previous["period"]["date_from"], previous["period"]["date_to"]) == (
        "2026-11-01",
        "2026-11-02",
    )
    assert previous["total_calls"] == 1 and "by_day" not in previous
    assert result["change"]["total_calls"] == {"absolute": 1, "percent": 100.0}
    assert result["change"]["missed"] == {"absolute": 1, "percent": None}
    assert result["change"]["total_duration_seconds"] == {"absolute": 20, "percent": 200.0}


def test_a_running_period_meets_the_same_stretch_before_it(store):
    store.upsert_calls(
        [
            call(at("2026-12-02", "10:00"), 0, 1, 10),
            call(at("2026-12-02", "16:00"), 0, 1, 10),  # later in the day than "now"
            call(at("2026-12-03", "10:00"), 0, 1, 10),
        ]
    )
    today = analytics.resolve_period("today", "", "", MOSCOW, NOW)
    result = analytics.compute(store, today, compare=True, now=NOW)
    assert result["previous_period"]["period"]["end"] == "2026-12-02T15:00:00+03:00"
    assert result["previous_period"]["total_calls"] == 1
    assert result["change"]["total_calls"]["percent"] == 0.0


# --- periods ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        ("today", "2026-12-03", "2026-12-03"),
        ("yesterday", "2026-12-02", "2026-12-02"),
        ("this_week", "2026-11-30", "2026-12-03"),  # 2026-12-03 is a Thursday
        ("last_week", "2026-11-23", "2026-11-29"),
        ("last_7_days", "2026-11-27", "2026-12-03"),
        ("this_month", "2026-12-01", "2026-12-03"),
        ("last_month", "2026-11-01", "2026-11-30"),
        ("last_30_days", "2026-11-04", "2026-12-03"),
    ],
)
def test_named_periods(name, first, last):
    period = analytics.resolve_period(name, "", "", MOSCOW, NOW)
    assert (period.first.isoformat(), period.last.isoformat()) == (first, last)
    assert period.start == at(first, "00:00")
    assert period.end == at(last, "00:00") + 86400


def test_last_month_in_january():
    january = dt.datetime(2027, 1, 15, 12, tzinfo=MOSCOW).timestamp()
    period = analytics.resolve_period("last_month", "", "", MOSCOW, january)
    assert (period.first, period.last) == (dt.date(2026, 12, 1), dt.date(2026, 12, 31))


def test_period_defaults_and_refusals():
    def both(date_from, date_to):
        period = analytics.resolve_period(None, date_from, date_to, MOSCOW, NOW)
        return period.first, period.last

    assert both("", "") == (dt.date(2026, 12, 3),) * 2
    assert both("2026-12-01", "") == (dt.date(2026, 12, 1), dt.date(2026, 12, 3))
    assert both("", "2026-11-05") == (dt.date(2026, 11, 5),) * 2
    with pytest.raises(InvalidArgument, match="not after date_from"):
        both("2026-12-02", "2026-12-01")
    with pytest.raises(InvalidArgument, match="ISO date"):
        both("01.12.2026", "")
    with pytest.raises(InvalidArgument, match="period='yesterday'"):
        both("yesterday", "")
    with pytest.raises(InvalidArgument, match="future"):
        both("2026-12-04", "")
    with pytest.raises(InvalidArgument, match="366"):
        both("2024-01-01", "2026-12-01")
    with pytest.raises(InvalidArgument, match="either period"):
        analytics.resolve_period("today", "2026-12-01", "", MOSCOW, NOW)
    with pytest.raises(InvalidArgument, match="unknown period"):
        analytics.resolve_period("fortnight", "", "", MOSCOW, NOW)
    assert both("2025-12-03", "2026-12-03")[0] == dt.date(2025, 12, 3)  # 366 days is allowed


def test_today_is_the_business_zone_today():
    # 22:30 UTC on Dec 2 is already Dec 3 in Moscow.
    late_utc = dt.datetime(2026, 12, 2, 22, 30, tzinfo=dt.UTC).timestamp()
    assert analytics.resolve_period(None, "", "", MOSCOW, late_utc).first == dt.date(2026, 12, 3)


def test_datetimes_are_exact_bounds(store):
    store.upsert_calls(
        [
            call(at("2026-11-02", "08:59"), 0, 1, 10),
            call(at("2026-11-02", "09:00"), 0, 0),
            call(at("2026-11-03", "17:59"), 1, 1, 20),
            call(at("2026-11-03", "18:00"), 0, 1, 10),
        ]
    )
    period = analytics.resolve_period(None, "2026-11-02T09:00", "2026-11-03T18:00", MOSCOW, NOW)
    result = analytics.compute(store, period, now=NOW, include=["by_day", "by_hour"])
    assert result["total_calls"] == 2 and result["period"]["days"] == 2
    assert [d["total_calls"] for d in result["by_day"].values()] == [1, 1]
    aware = analytics.resolve_period(None, "2026-11-02T06:00:00+00:00", "", MOSCOW, NOW)
    assert aware.start == at("2026-11-02", "09:00")


def test_zone_is_recounted_when_it_changes(store):
    store.upsert_calls([call(at("2026-11-02", "01:00"), 0, 1, 10)])  # Nov 1 in New York
    assert days(store, "2026-11-02")["total_calls"] == 1
    assert days(store, "2026-11-01", zone=NEW_YORK)["total_calls"] == 1
    assert store.call_zone()[0] == "America/New_York"
    assert days(store, "2026-11-02")["total_calls"] == 1


def test_counts_follow_changed_and_deleted_calls(store):
    first = call(at("2026-11-02", "10:00"), 0, 0, db_call_id=900)
    store.upsert_calls([first, call(at("2026-11-02", "11:00"), 1, 1, 30, account="ivan@x.ru")])
    assert days(store, "2026-11-02")["missed"] == 1
    store.upsert_calls(
        [{**first, "answered": 1, "duration": 50, "start_time": at("2026-11-03", "10:00")}]
    )
    assert days(store, "2026-11-02")["total_calls"] == 1
    assert days(store, "2026-11-03")["total_duration_seconds"] == 50
    store.delete_employee(None, "ivan@x.ru")
    result = days(store, "2026-11-02", "2026-11-03")
    assert result["total_calls"] == 1 and [e["user_account"] for e in result["by_employee"]] == [
        "anna@x.ru"
    ]


def test_dashboard_queries_in_the_docs_give_the_tools_numbers(store):
    """docs/store.md shows dashboard authors SQL for these figures: it must stay true."""
    start = at("2026-11-02", "00:00")
    store.upsert_calls(
        [
            call(start + 3600, 0, 0, number="+79160000001"),
            call(start + 7200, 1, 1, 40, account="ivan@x.ru", number="89160000001"),
            call(start + 9000, 0, 0, account="ivan@x.ru", number="+79160000002"),
            call(start + 9600, 0, 1, 30, answer_time=start + 9610, number="+79160000003"),
            call(start + 9700, 1, 1, 20, number="+7 926 000-00-12"),
            call(start + 90000, 0, 0, number="+79160000004"),
        ]
    )
    result = days(store, "2026-11-02", "2026-11-03", include=["by_day", "by_employee"])
    docs = (Path(__file__).parent.parent / "docs" / "store.md").read_text()
    daily, calls = re.findall(r"```sql\n(.*?)```", docs, re.S)[-2:]
    daily = daily.replace("'2026-11-01'", "'2026-11-02'").replace("'2026-11-30'", "'2026-11-03'")
    by_date, by_employee = (query.strip() for query in daily.split(";")[:2])
    rows = {row["date"]: row for row in store.query(by_date)}
    for day, entry in result["by_day"].items():
        assert {k: rows[day][k] for k in ("total_calls", "answered", "missed")} == {
            k: entry[k] for k in ("total_calls", "answered", "missed")
        }
    talk = {row["user_account"]: row["talk"] for row in store.query(by_employee)}
    assert talk == {e["user_account"]: e["total_duration_seconds"] for e in result["by_employee"]}

    unique, missed = calls.split("-- missed clients")
    bounds = {"start": start, "end": at("2026-11-04", "00:00"), "window": 86400}
    assert store.db.execute(unique, bounds).fetchone()[0] == result["unique_clients"]
    forgotten = store.db.execute("-- missed clients" + missed, bounds).fetchall()
    assert len(forgotten) == result["not_called_back"] == 2


def test_waiting_clients_list_who_to_call_back_longest_waiting_first(store):
    """A newcomer's find: the missed-calls prompt had the model rebuild this list from a cut
    calls.list; the tool now gives it."""
    store.upsert_calls(
        [
            # Rang twice unanswered on Ivan's phone; nobody called back.
            call(at("2026-11-02", "09:00"), 0, 0, account="ivan@x.ru", number="8 916 000-00-01"),
            call(
                at("2026-11-02", "11:00"),
                0,
                0,
                account="ivan@x.ru",
                number="+7 916 000-00-01",
                client_name="ООО Ромашка",
            ),
            # Missed earlier on Anna's phone, never called back: waited longest.
            call(at("2026-11-02", "10:00"), 0, 0, account="anna@x.ru", number="+79160000002"),
            # Missed, then called back: not waiting.
            call(at("2026-11-02", "12:00"), 0, 0, number="+79160000003"),
            call(at("2026-11-02", "12:30"), 1, 1, 60, number="+79160000003"),
        ]
    )
    result = days(store, "2026-11-02", include=["waiting_clients"])
    assert result["not_called_back"] == 2
    assert result["waiting_clients"] == [
        {
            "client": "9160000002",
            "number": "+79160000002",
            "name": None,
            "missed_at": "2026-11-02T10:00:00+03:00",
            "missed_calls": 1,
            "employee": "Анна Смирнова",
            "user_account": "anna@x.ru",
        },
        {
            "client": "9160000001",
            "number": "+7 916 000-00-01",
            "name": "ООО Ромашка",
            "missed_at": "2026-11-02T11:00:00+03:00",
            "missed_calls": 2,
            "employee": "Иван Петров",
            "user_account": "ivan@x.ru",
        },
    ]
    only_anna = days(
        store,
        "2026-11-02",
        include=["waiting_clients"],
        filters=analytics.Filters(accounts=("anna@x.ru",)),
    )
    assert [entry["client"] for entry in only_anna["waiting_clients"]] == ["9160000002"]


def test_one_ring_logged_by_two_phones_is_one_missed_call_of_a_waiting_client(store):
    """An adversary's find: missed_calls counted the phones that logged a ring, not rings."""
    rang = at("2026-11-02", "10:00")
    store.upsert_calls(
        [
            call(rang, 0, 0, account="anna@x.ru", number="+79160000001"),
            call(rang, 0, 0, account="ivan@x.ru", number="8 916 000-00-01"),
            call(rang + 3600, 0, 0, account="ivan@x.ru", number="+79160000001"),
        ]
    )
    (entry,) = days(store, "2026-11-02", include=["waiting_clients"])["waiting_clients"]
    assert entry["missed_calls"] == 2 and entry["user_account"] == "ivan@x.ru"
    only_anna = days(
        store,
        "2026-11-02",
        include=["waiting_clients"],
        filters=analytics.Filters(accounts=("anna@x.ru",)),
    )
    # Anna's phone did not take the last call: the client waits on Ivan's list, not hers.
    assert only_anna["waiting_clients"] == []


def test_waiting_clients_beyond_fifty_are_cut_and_said(store):
    store.upsert_calls(
        [call(at("2026-11-02", "09:00") + n, 0, 0, number=f"+7916{n:07d}") for n in range(60)]
    )
    result = days(store, "2026-11-02", include=["waiting_clients"])
    assert len(result["waiting_clients"]) == 50
    assert result["waiting_clients"][0]["client"] == "9160000000"
    assert result["truncated"] is True
    assert "50 of 60" in result["cut"]["waiting_clients"]
