"""The seeded sandbox data: deterministic, and shaped like the real services' data."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import time

import pytest

from tariti_mcp.sandbox import generate
from tariti_mcp.sandbox.data import MOSCOW, digits_only

# Noon in Moscow on a fixed Wednesday, so every run sees the same day.
NOON = int(dt.datetime(2026, 3, 11, 12, 0, tzinfo=MOSCOW).timestamp())


@pytest.fixture(scope="module")
def data():
    return generate(seed=7, calls=4000, days=30, now=NOON)


def phones(contact):
    return [
        value["value"]
        for field in contact["custom_fields_values"]
        if field["field_code"] == "PHONE"
        for value in field["values"]
    ]


def test_same_seed_same_data(data):
    assert generate(seed=7, calls=4000, days=30, now=NOON) == data


def test_other_seed_other_data(data):
    other = generate(seed=8, calls=4000, days=30, now=NOON)
    assert other.contacts != data.contacts
    assert other.calls != data.calls


def test_later_the_same_day_keeps_the_past_calls(data):
    later = generate(seed=7, calls=4000, days=30, now=NOON + 3 * 3600)
    assert later.leads == data.leads
    assert later.calls[: len(data.calls)] == data.calls
    assert len(later.calls) > len(data.calls)


def test_no_call_from_the_future(data):
    assert data.calls
    assert all(call.upload_time <= NOON for call in data.calls)
    first_day = int(dt.datetime(2026, 2, 10, tzinfo=MOSCOW).timestamp())
    assert min(call.start_time for call in data.calls) >= first_day


def test_missed_incoming_calls_have_no_duration(data):
    missed = [call for call in data.calls if call.direction == 0 and not call.answered]
    assert missed
    assert all(call.duration == 0 and call.answer_time == 0 for call in missed)
    assert all(call.end_time > call.start_time for call in missed)


def test_unanswered_outgoing_calls_still_have_a_duration(data):
    unanswered = [call for call in data.calls if call.direction == 1 and not call.answered]
    assert len(unanswered) > 100
    assert all(call.duration > 0 and call.answer_time == 0 for call in unanswered)
    # The trap for "answered = duration > 0": most unanswered outgoing calls look answered.
    assert sum(call.duration > 0 for call in unanswered) == len(unanswered)


def test_answer_time_is_zero_exactly_when_not_answered(data):
    for call in data.calls:
        assert call.answered in (0, 1)
        assert (call.answer_time == 0) == (call.answered == 0)
        assert call.end_time >= call.start_time
        assert call.upload_time >= call.end_time


def test_answered_call_timings(data):
    for call in data.calls:
        if call.answered and call.direction == 1:
            assert call.answer_time == call.start_time
            assert call.end_time == call.start_time + call.duration
        elif call.answered:
            assert 3 <= call.answer_time - call.start_time <= 25
            assert call.end_time == call.answer_time + call.duration


def test_direction_and_answer_shares(data):
    incoming = [call for call in data.calls if call.direction == 0]
    outgoing = [call for call in data.calls if call.direction == 1]
    assert 0.38 < len(incoming) / len(data.calls) < 0.52
    assert 0.68 < sum(call.answered for call in incoming) / len(incoming) < 0.82
    assert 0.32 < sum(not call.answered for call in outgoing) / len(outgoing) < 0.48
    assert not any(call.has_recording and not call.answered for call in data.calls)


def test_ids_strictly_increase_in_upload_order(data):
    ids = [call.db_call_id for call in data.calls]
    uploads = [call.upload_time for call in data.calls]
    assert 2_390_000 < ids[0] < 2_410_000
    assert all(1 <= later - earlier <= 5 for earlier, later in itertools.pairwise(ids))
    assert uploads == sorted(uploads)
    # Some phones uploaded hours late, so upload order is not call order.
    assert any(call.upload_time - call.end_time > 3600 for call in data.calls)
    starts = [call.start_time for call in data.calls]
    assert starts != sorted(starts)


def test_calls_mostly_in_moscow_working_hours(data):
    hours = [dt.datetime.fromtimestamp(call.start_time, MOSCOW).hour for call in data.calls]
    assert sum(9 <= hour < 20 for hour in hours) / len(hours) > 0.75
    assert any(hour < 7 for hour in hours)


def test_client_numbers_as_phones_log_them(data):
    numbers = [call.client_number for call in data.calls]
    assert any(number.startswith("+7") and len(number) == 12 for number in numbers)
    assert any(number.startswith("8") and len(number) == 11 for number in numbers)
    assert "" in numbers
    assert any(0 < len(number) < 10 for number in numbers)
    sims = {employee.src_number for employee in data.employees}
    assert any(number in sims for number in numbers)

    crm_tails = {digits_only(phone)[-10:] for contact in data.contacts for phone in phones(contact)}
    client_calls = [number for number in numbers if len(number) >= 10 and number not in sims]
    share = sum(digits_only(number)[-10:] in crm_tails for number in client_calls)
    assert share / len(client_calls) > 0.4


def test_clients_ring_again_and_ring_several_employees(data):
    owners: dict[str, set[int]] = {}
    for call in data.calls:
        if call.client_number:
            owners.setdefault(digits_only(call.client_number)[-10:], set()).add(call.user_id)
    assert len(owners) < 500
    assert any(len(users) > 1 for users in owners.values())


def test_employees_one_admin_with_calls(data):
    roles = [employee.role for employee in data.employees]
    assert roles.count("admin") == 1
    assert len(data.employees) == 6
    by_owner = {call.user_id for call in data.calls}
    assert {employee.id for employee in data.employees} == by_owner
    assert len({employee.email for employee in data.employees}) == 6


@pytest.mark.parametrize(
    "pattern",
    [
        r"^\+7 \(\d{3}\) \d{3}-\d{2}-\d{2}$",
        r"^8 \d{3} \d{3} \d{2} \d{2}$",
        r"^7\d{10}$",
        r"^\+7\d{10}$",
        r"^8\(\d{3}\)\d{7}$",
    ],
)
def test_contact_phones_in_mixed_formats(data, pattern):
    assert any(re.match(pattern, phone) for contact in data.contacts for phone in phones(contact))


def test_some_comments_quote_another_contacts_number(data):
    comment_field = next(
        field for field in data.custom_fields["contacts"] if field["name"] == "Комментарий"
    )
    quoted = 0
    for contact in data.contacts:
        own = {digits_only(phone)[-10:] for phone in phones(contact)}
        for field in contact["custom_fields_values"]:
            if field["field_id"] != comment_field["id"]:
                continue
            digits = digits_only(field["values"][0]["value"])
            others = [
                other
                for other in data.contacts
                if other is not contact
                and any(digits_only(phone)[-10:] in digits for phone in phones(other))
            ]
            if others and not any(tail in digits for tail in own):
                quoted += 1
    assert quoted >= 3


def test_contacts_names_and_emails(data):
    assert len(data.contacts) == 300
    assert len({contact["id"] for contact in data.contacts}) == 300
    with_email = [
        contact
        for contact in data.contacts
        if any(field["field_code"] == "EMAIL" for field in contact["custom_fields_values"])
    ]
    assert 0.5 < len(with_email) / len(data.contacts) < 0.7
    assert any(len(phones(contact)) == 2 for contact in data.contacts)
    # Female first names take female surnames.
    anna = [contact for contact in data.contacts if contact["first_name"] == "Анна"]
    assert all(not contact["last_name"].endswith(("ов", "ев", "ин", "ий")) for contact in anna)


def test_won_and_lost_statuses_in_every_pipeline(data):
    assert len(data.pipelines) == 3
    assert [pipeline["is_main"] for pipeline in data.pipelines].count(True) == 1
    working_ids = []
    for pipeline in data.pipelines:
        statuses = pipeline["_embedded"]["statuses"]
        ids = [status["id"] for status in statuses]
        assert 142 in ids and 143 in ids
        assert statuses[0]["type"] == 1
        working_ids += [status_id for status_id in ids if status_id not in (142, 143)]
    assert len(working_ids) == len(set(working_ids))


def test_leads_are_closed_exactly_when_won_or_lost(data):
    assert len(data.leads) == 400
    for lead in data.leads:
        closed = lead["status_id"] in (142, 143)
        assert (lead["closed_at"] is not None) == closed
        assert isinstance(lead["created_at"], int) and isinstance(lead["price"], int)
        assert data.day_start - 181 * 86400 < lead["created_at"] < data.day_start
    assert {lead["pipeline_id"] for lead in data.leads} == {p["id"] for p in data.pipelines}
    assert any(lead["_embedded"]["companies"] for lead in data.leads)


def test_custom_field_ids_differ_between_entity_types(data):
    lead_ids = {field["id"] for field in data.custom_fields["leads"]}
    contact_ids = {field["id"] for field in data.custom_fields["contacts"]}
    assert not lead_ids & contact_ids
    codes = {field["code"] for field in data.custom_fields["contacts"]}
    assert {"PHONE", "EMAIL", "POSITION"} <= codes
    phone = next(field for field in data.custom_fields["contacts"] if field["code"] == "PHONE")
    assert [enum["value"] for enum in phone["enums"]] == [
        "WORK",
        "WORKDD",
        "MOB",
        "FAX",
        "HOME",
        "OTHER",
    ]
    lead_codes = {field["code"] for field in data.custom_fields["leads"]}
    assert {"UTM_SOURCE", "UTM_MEDIUM", "UTM_CAMPAIGN", "UTM_CONTENT", "UTM_TERM"} <= lead_codes


def test_large_call_log_is_quick_to_generate():
    started = time.perf_counter()
    big = generate(seed=3, calls=100_000, days=365, now=NOON)
    assert time.perf_counter() - started < 20
    assert len(big.calls) > 99_000
