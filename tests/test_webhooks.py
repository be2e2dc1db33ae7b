"""Moizvonki webhooks into the store, and ``tariti-mcp moizvonki webhooks`` against the emulator.

A finished call must end as the very row calls.list gives, once, whatever order, repeats or
lateness its events come with; a call still going on never counts; nothing a sender posts makes
the receiver fail.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import logging
import os
import random
import time
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tariti_mcp import web
from tariti_mcp.cli import main
from tariti_mcp.config import Settings
from tariti_mcp.http import RetryPolicy
from tariti_mcp.moizvonki.client import MoizvonkiClient
from tariti_mcp.moizvonki.sync import CALLS, sync_calls
from tariti_mcp.moizvonki.webhooks import MAX_BODY, receive
from tariti_mcp.sandbox import Sandbox
from tariti_mcp.server import create_server
from tariti_mcp.store import Store

ZONE = ZoneInfo("Europe/Moscow")
QUICK = RetryPolicy(attempts=1, first_wait=0.01, max_wait=0.01, total=1.0)
CALL_EVENTS = ("call.start", "call.answer", "call.finish")
# Columns that say when we wrote a row, not what the call was.
BOOKKEEPING = ("fetched_at",)


@pytest.fixture(scope="module")
def sandbox():
    """An emulator of our own: these tests add calls and subscriptions to it."""
    with Sandbox(seed=61, calls=600, days=10) as running:
        yield running


@pytest.fixture
def store():
    opened = Store()
    yield opened
    opened.close()


def deliver(store: Store, body: dict | bytes) -> dict:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    return receive(store, raw, zone=ZONE)


def finish_of(sandbox: Sandbox, call) -> dict:
    return sandbox.moizvonki.webhook_events(call)[-1]


def local_day(moment: int) -> dt.date:
    return dt.datetime.fromtimestamp(moment, ZONE).date()


def midnight(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), ZONE).timestamp())


def yesterdays_calls(sandbox: Sandbox) -> list:
    day = dt.datetime.now(ZONE).date() - dt.timedelta(days=1)
    calls = [call for call in sandbox.moizvonki.calls if local_day(call.start_time) == day]
    assert len(calls) > 10, "the sandbox should have a day of calls"
    return calls


def sync(sandbox: Sandbox, store: Store, since: int):
    env = sandbox.env

    async def run():
        client = MoizvonkiClient(
            env["MOIZVONKI_BASE_URL"],
            env["MOIZVONKI_USER"],
            env["MOIZVONKI_API_KEY"],
            retry_policy=QUICK,
        )
        try:
            return await sync_calls(client, store, since=since)
        finally:
            await client.aclose()

    return anyio.run(run)


def call_rows(store: Store, ids) -> dict[int, dict]:
    marks = ",".join("?" for _ in ids)
    rows = store.query(f"SELECT * FROM moizvonki_calls WHERE db_call_id IN ({marks})", list(ids))
    return {
        row["db_call_id"]: {k: v for k, v in row.items() if k not in BOOKKEEPING} for row in rows
    }


def daily(store: Store, day: dt.date) -> dict | None:
    found = list(store.query("SELECT * FROM moizvonki_daily WHERE date = ?", [day.isoformat()]))
    return found[0] if found else None


def open_live_calls(store: Store) -> int:
    return next(
        store.query("SELECT count(*) AS n FROM moizvonki_live_calls WHERE state != 'finished'")
    )["n"]


# --- call.finish ------------------------------------------------------------------------------


def test_a_day_of_finish_events_replayed_twice_shuffled_matches_the_sync(sandbox, store):
    calls = yesterdays_calls(sandbox)
    bodies = [finish_of(sandbox, call) for call in calls] * 2
    random.Random(6).shuffle(bodies)

    answers = [deliver(store, body) for body in bodies]

    synced = Store()
    sync(sandbox, synced, since=midnight(local_day(calls[0].start_time)))
    ids = [call.db_call_id for call in calls]
    from_webhooks, from_sync = call_rows(store, ids), call_rows(synced, ids)
    synced.close()
    assert len(from_webhooks) == len(calls)
    assert next(store.query("SELECT count(*) AS n FROM moizvonki_calls"))["n"] == len(calls)
    for call_id in ids:
        assert from_webhooks[call_id] == from_sync[call_id]
    # The owner came as string ids in `webhook`; the row has the numbers calls.list gives.
    assert all(isinstance(row["user_id"], int) for row in from_webhooks.values())
    assert sorted(answer["outcome"] for answer in answers) == sorted(
        ["call stored"] * len(calls) + ["call stored already: left as it is"] * len(calls)
    )
    assert next(store.query("SELECT count(*) AS n FROM moizvonki_webhook_events"))["n"] == len(
        bodies
    )
    assert open_live_calls(store) == 0


def test_webhook_calls_count_once_and_a_later_sync_does_not_double_them(sandbox, store):
    calls = yesterdays_calls(sandbox)
    day = local_day(calls[0].start_time)
    for call in calls:
        deliver(store, finish_of(sandbox, call))
    counted = daily(store, day)
    assert counted is not None
    assert counted["total_calls"] == len(calls)
    assert counted["answered"] == sum(call.answered for call in calls)
    assert counted["incoming"] == sum(call.direction == 0 for call in calls)
    before = call_rows(store, [call.db_call_id for call in calls])

    sync(sandbox, store, since=midnight(day))

    assert daily(store, day) == counted
    assert call_rows(store, [call.db_call_id for call in calls]) == before


def test_a_late_finish_from_an_offline_phone_alone_stores_the_call(sandbox, store):
    employee = sandbox.moizvonki_manager_user
    started = int(dt.datetime.now(ZONE).timestamp()) - 6 * 3600
    call = sandbox.moizvonki.record_call(
        employee,
        0,
        "+79161234567",
        started,
        answered=True,
        duration=95,
        wait=7,
        upload_time=started + 5 * 3600,
    )

    answer = deliver(store, finish_of(sandbox, call))

    assert answer["ok"] and answer["outcome"] == "call stored"
    row = call_rows(store, [call.db_call_id])[call.db_call_id]
    assert (row["start_time"], row["answer_time"], row["duration"]) == (started, started + 7, 95)
    assert row["user_account"] == employee and row["answered"] == 1
    live = next(store.query("SELECT * FROM moizvonki_live_calls"))
    assert (live["state"], live["db_call_id"], live["started_at"]) == (
        "finished",
        call.db_call_id,
        started,
    )


def test_webhook_arrival_time_is_never_the_call_time(sandbox, store):
    """Failure pattern 9: the time a webhook arrived used as the call time."""
    call = yesterdays_calls(sandbox)[0]
    start, finish = sandbox.moizvonki.webhook_events(call)[0], finish_of(sandbox, call)
    # The finish event was created when the phone uploaded the call, hours later.
    finish["event"]["event_created"] = call.start_time + 5 * 3600
    start["event"]["event_pbx_call_id"] = "elsewhere-1"

    deliver(store, finish)
    deliver(store, start)

    row = call_rows(store, [call.db_call_id])[call.db_call_id]
    assert row["start_time"] == call.start_time
    assert daily(store, local_day(call.start_time))["total_calls"] == 1
    live = next(store.query("SELECT * FROM moizvonki_live_calls WHERE state = 'ringing'"))
    assert live["started_at"] == call.start_time != live["updated_at"]


def test_a_replayed_finish_changes_nothing(sandbox, store, monkeypatch):
    call = yesterdays_calls(sandbox)[1]
    finish = finish_of(sandbox, call)
    deliver(store, finish)
    rows = list(store.query("SELECT * FROM moizvonki_calls"))
    live = list(store.query("SELECT * FROM moizvonki_live_calls"))

    monkeypatch.setattr("tariti_mcp.store._now", lambda: 2_000_000_000)
    answer = deliver(store, finish)

    assert answer["outcome"] == "call stored already: left as it is"
    assert list(store.query("SELECT * FROM moizvonki_calls")) == rows
    assert list(store.query("SELECT * FROM moizvonki_live_calls")) == live


def test_webhook_call_does_not_move_the_sync_cursor(sandbox, store):
    since = int(dt.datetime.now(ZONE).timestamp()) - 2 * 86400
    sync(sandbox, store, since=since)
    cursor = store.sync_state(CALLS)["cursor"]
    employee = sandbox.moizvonki_manager_user
    now = int(dt.datetime.now(ZONE).timestamp())
    missed_by_webhooks = sandbox.moizvonki.record_call(
        employee, 0, "+79031112233", now - 600, answered=False, duration=0, wait=12
    )
    newer = sandbox.moizvonki.record_call(
        employee, 1, "+79034445566", now - 300, answered=True, duration=40
    )
    assert cursor <= missed_by_webhooks.db_call_id < newer.db_call_id

    deliver(store, finish_of(sandbox, newer))
    assert store.sync_state(CALLS)["cursor"] == cursor
    sync(sandbox, store, since=None)

    stored = call_rows(store, [missed_by_webhooks.db_call_id, newer.db_call_id])
    assert set(stored) == {missed_by_webhooks.db_call_id, newer.db_call_id}
    assert store.sync_state(CALLS)["cursor"] == newer.db_call_id + 1


# --- calls still going on ---------------------------------------------------------------------


def test_start_answer_finish_in_any_order_leave_one_call_and_no_open_live_row(sandbox):
    call = next(c for c in yesterdays_calls(sandbox) if c.answered and c.direction == 0)
    events = sandbox.moizvonki.webhook_events(call)
    assert [event["webhook"]["action"] for event in events] == list(CALL_EVENTS)

    for order in itertools.permutations(events):
        store = Store()
        try:
            outcomes = [deliver(store, event)["outcome"] for event in order]
            row = call_rows(store, [call.db_call_id])[call.db_call_id]
            assert row["start_time"] == call.start_time
            assert open_live_calls(store) == 0
            live = list(store.query("SELECT * FROM moizvonki_live_calls"))
            assert [(r["state"], r["db_call_id"], r["answered_at"]) for r in live] == [
                ("finished", call.db_call_id, call.answer_time)
            ]
            finished_at = [event["webhook"]["action"] for event in order].index("call.finish")
            assert all("finished already" in outcome for outcome in outcomes[finished_at + 1 :])
        finally:
            store.close()


def test_a_ringing_call_is_live_and_never_counted(sandbox, store):
    call = next(c for c in yesterdays_calls(sandbox) if c.answered and c.direction == 0)
    start, answer, _ = sandbox.moizvonki.webhook_events(call)

    assert deliver(store, start)["outcome"] == "live call ringing"
    assert deliver(store, start)["outcome"] == "unchanged: a repeat of what is stored"
    assert deliver(store, answer)["outcome"] == "live call answered"
    assert deliver(store, start)["outcome"] == "unchanged: a repeat of what is stored"

    live = next(store.query("SELECT * FROM moizvonki_live_calls"))
    assert (live["state"], live["started_at"], live["answered_at"]) == (
        "answered",
        call.start_time,
        call.answer_time,
    )
    assert live["user_account"] and live["client_number"] == call.client_number
    assert next(store.query("SELECT count(*) AS n FROM moizvonki_calls"))["n"] == 0
    assert daily(store, local_day(call.start_time)) is None


def test_a_calls_events_posted_by_the_emulator_through_the_route_end_in_the_store(
    sandbox, tmp_path
):
    secret = "webhook-secret-for-the-end-to-end-test"
    settings = Settings(
        _env_file=None,
        db_path=tmp_path / "tariti.db",
        webhook_secret=secret,
        **{key.lower(): value for key, value in sandbox.env.items()},
    )
    store = Store(settings.db_path)
    app = web.build_app(create_server(settings, store=store), settings, port=8000)
    url = f"http://127.0.0.1:8000/webhooks/moizvonki/{secret}"
    sandbox.moizvonki.webhooks.update({event: url for event in CALL_EVENTS})
    started = int(dt.datetime.now(ZONE).timestamp()) - 120
    call = sandbox.moizvonki.record_call(
        sandbox.moizvonki_manager_user, 0, "+79165550101", started, answered=True, duration=60
    )
    try:
        with TestClient(app, base_url="http://127.0.0.1:8000") as http:
            sent = sandbox.moizvonki.deliver_webhooks(call, http=http)
        assert sent == [(event, 200) for event in CALL_EVENTS]
        row = call_rows(store, [call.db_call_id])[call.db_call_id]
        assert (row["start_time"], row["user_account"]) == (
            started,
            sandbox.moizvonki_manager_user,
        )
        outcomes = [
            r["outcome"] for r in store.query("SELECT outcome FROM moizvonki_webhook_events")
        ]
        assert outcomes == [
            "live call ringing",
            "live call answered",
            "call stored; live call closed",
        ]
        assert open_live_calls(store) == 0
    finally:
        sandbox.moizvonki.webhooks.clear()
        store.close()


def test_the_emulator_never_posts_off_the_machine(sandbox):
    sandbox.moizvonki.webhooks["call.finish"] = "https://hooks.example/webhooks/moizvonki/x"
    try:
        assert sandbox.moizvonki.deliver_webhooks(yesterdays_calls(sandbox)[0]) == []
    finally:
        sandbox.moizvonki.webhooks.clear()


# --- what is not a call event -----------------------------------------------------------------


def _form(payload: dict) -> bytes:
    return urlencode({"request_data": json.dumps(payload)}).encode()


# A client's number in the strange bodies: it must not reach a log line.
CLIENT = "+79991112233"
STRANGE = {
    "empty": (b"", "malformed: the body is empty"),
    "not json": (b"hello=world", "malformed: neither JSON nor a form with request_data"),
    "not utf-8": (b"\xff\xfe{}", "malformed: the body is not UTF-8 text"),
    "a list": (b"[1, 2]", "malformed: the JSON is not an object"),
    "deep": (b"[" * 100_000, "malformed: neither JSON nor a form with request_data"),
    "no event": (b'{"webhook": {"action": "call.finish"}}', "malformed: no 'webhook'"),
    "form garbage": (b"request_data=%7Bnope", "malformed: not JSON"),
    "sms": (
        json.dumps(
            {
                "webhook": {"action": "sms.message"},
                "event": {"event_type": 32, "client_number": CLIENT, "text": "перезвоните"},
            }
        ).encode(),
        "stored only: sms.message events are not handled",
    ),
    "unknown action": (
        json.dumps(
            {"webhook": {"action": "call.transfer"}, "event": {"client_number": CLIENT}}
        ).encode(),
        "stored only: not a call event this server knows",
    ),
    "start without id": (
        b'{"webhook": {"action": "call.start"}, "event": {"event_type": 1}}',
        "stored only: no event_pbx_call_id",
    ),
    "finish without id": (
        b'{"webhook": {"action": "call.finish"}, "event": {"start_time": 1700000000}}',
        "call not stored: no readable db_call_id or start_time",
    ),
}


@pytest.mark.parametrize("name", list(STRANGE))
def test_unknown_and_malformed_payloads_are_stored_raw_and_never_raise(store, caplog, name):
    body, outcome = STRANGE[name]
    caplog.set_level(logging.INFO)

    answer = receive(store, body, zone=ZONE)

    assert answer["ok"] is True
    assert answer["outcome"].startswith(outcome)
    kept = list(store.query("SELECT * FROM moizvonki_webhook_events"))
    assert len(kept) == 1 and kept[0]["id"] == answer["event_id"]
    assert kept[0]["outcome"] == answer["outcome"]
    assert kept[0]["body"] == body[:MAX_BODY].decode("utf-8", errors="replace") + (
        "…" if len(body) > MAX_BODY else ""
    )
    assert next(store.query("SELECT count(*) AS n FROM moizvonki_calls"))["n"] == 0
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "webhook" in r.message
    ]
    assert len(warnings) == 1
    assert CLIENT not in caplog.text and "перезвоните" not in caplog.text


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1", "4", " 2400001 ", "call.finish", "", 10**18, -(10**18)]),
)
EVENT_FIELDS = st.dictionaries(
    st.sampled_from(
        [
            "event_type",
            "event_created",
            "db_call_id",
            "event_pbx_call_id",
            "start_time",
            "answer_time",
            "end_time",
            "duration",
            "answered",
            "direction",
            "client_number",
        ]
    ),
    st.one_of(
        SCALARS,
        st.lists(SCALARS, max_size=2),
        st.dictionaries(st.text(max_size=3), SCALARS, max_size=2),
    ),
)
HOOK_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "action": st.one_of(st.sampled_from(list(CALL_EVENTS) + ["sms.message"]), SCALARS),
        "user_id": SCALARS,
        "user_login": SCALARS,
    },
)


@given(hook=HOOK_FIELDS, event=EVENT_FIELDS)
@settings(max_examples=300, deadline=None)
def test_any_event_fields_are_handled_or_kept_never_raised(hook, event):
    store = Store()
    try:
        body = json.dumps({"webhook": hook, "event": event}).encode()
        answer = receive(store, body, zone=ZONE)
        assert answer["ok"] is True, answer
        kept = list(store.query("SELECT outcome FROM moizvonki_webhook_events"))
        assert [row["outcome"] for row in kept] == [answer["outcome"]]
    finally:
        store.close()


@pytest.mark.parametrize("start", [10**18, -(10**18), 2**62])
def test_a_finish_starting_beyond_the_calendar_is_kept_not_failed(store, start):
    """Fixed bug: such a start time made the zone check raise, and the event was reported as
    failed, which the route answers with 500, inviting Moizvonki to send it again forever."""
    body = {
        "webhook": {"action": "call.finish", "user_id": "7"},
        "event": {"db_call_id": 9, "start_time": start, "event_pbx_call_id": "far"},
    }
    answer = deliver(store, body)
    assert answer["ok"] is True and answer["outcome"] == "call stored"
    assert call_rows(store, [9])[9]["start_time"] == start


def test_a_form_with_request_data_is_read_like_json(sandbox, store):
    call = yesterdays_calls(sandbox)[2]
    answer = receive(store, _form(finish_of(sandbox, call)), zone=ZONE)
    assert answer["outcome"] == "call stored"
    assert call.db_call_id in call_rows(store, [call.db_call_id])


def test_the_event_type_names_the_event_when_the_action_is_missing(sandbox, store):
    call = yesterdays_calls(sandbox)[3]
    finish = finish_of(sandbox, call)
    del finish["webhook"]["action"]
    finish["event"]["event_type"] = "4"
    assert deliver(store, finish)["action"] == "call.finish"
    assert call.db_call_id in call_rows(store, [call.db_call_id])


def test_a_store_that_cannot_be_written_is_reported_not_raised(sandbox, store):
    call = yesterdays_calls(sandbox)[4]
    store.close()
    answer = receive(store, json.dumps(finish_of(sandbox, call)).encode(), zone=ZONE)
    assert answer["ok"] is False and answer["outcome"].startswith("failed")


# --- tariti-mcp moizvonki webhooks ------------------------------------------------------------

URL = "http://127.0.0.1:8808/webhooks/moizvonki/wh-secret-0123456789"
OTHER = "https://amocrm.example/moizvonki/other-integration-token"


@pytest.fixture
def cli_env(sandbox, tmp_path, monkeypatch):
    """An env file for the sandbox, no setting of the machine, and no subscription at first."""
    for key in list(os.environ):
        if key.startswith(("AMOCRM_", "MOIZVONKI_", "TARITI_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sandbox.moizvonki.webhooks.clear()
    path = tmp_path / "sandbox.env"
    values = {**sandbox.env, "TARITI_WEBHOOK_SECRET": "wh-secret-0123456789"}
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    yield str(path)
    sandbox.moizvonki.webhooks.clear()
    root.handlers[:] = handlers
    root.setLevel(level)


def webhooks_cli(capsys, env_file: str, *words: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["moizvonki", "webhooks", "--env-file", env_file, *words])
    out, err = capsys.readouterr()
    return code, out, err


def no_secrets(sandbox, *texts: str) -> None:
    for text in texts:
        assert sandbox.env["MOIZVONKI_API_KEY"] not in text
        assert "wh-secret-0123456789" not in text
        assert "other-integration-token" not in text


def test_cli_shows_the_subscriptions_with_the_secret_end_masked(sandbox, cli_env, capsys):
    sandbox.moizvonki.webhooks["call.finish"] = OTHER

    code, out, err = webhooks_cli(capsys, cli_env)

    assert code == 0
    assert "call.finish  https://amocrm.example/moizvonki/…" in out
    assert "call.start   -" in out and "sms.message  -" in out
    no_secrets(sandbox, out, err)


def test_cli_refuses_to_subscribe_without_yes_when_not_a_terminal(sandbox, cli_env, capsys):
    code, out, err = webhooks_cli(capsys, cli_env, "--subscribe", URL)

    assert code == 2
    assert "--yes" in err and "nothing was changed" in err
    assert sandbox.moizvonki.webhooks == {}
    assert "webhook.list" in out
    no_secrets(sandbox, out, err)


def test_cli_warns_about_replacing_and_subscribes_with_yes(sandbox, cli_env, capsys):
    sandbox.moizvonki.webhooks["call.finish"] = OTHER
    sandbox.moizvonki.webhooks["sms.message"] = OTHER

    code, out, err = webhooks_cli(capsys, cli_env, "--subscribe", URL, "--yes")

    assert code == 0
    assert "call.finish now goes to https://amocrm.example/moizvonki/…" in err
    assert "replaces" in err and "call.start now goes" not in err
    assert sandbox.moizvonki.webhooks == {
        "call.start": URL,
        "call.answer": URL,
        "call.finish": URL,
        "sms.message": OTHER,
    }
    assert "http://127.0.0.1:8808/webhooks/moizvonki/…" in out
    no_secrets(sandbox, out, err)

    code, out, err = webhooks_cli(capsys, cli_env, "--subscribe", URL, "--yes")
    assert code == 0 and "Nothing to do" in out


def test_cli_asks_on_a_terminal_and_a_no_changes_nothing(sandbox, cli_env, capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    code, out, _ = webhooks_cli(capsys, cli_env, "--subscribe", URL, "--events", "call.finish")
    assert code == 1 and "[y/N]" in out and sandbox.moizvonki.webhooks == {}

    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    code, out, err = webhooks_cli(capsys, cli_env, "--subscribe", URL, "--events", "call.finish")
    assert code == 0 and sandbox.moizvonki.webhooks == {"call.finish": URL}
    no_secrets(sandbox, out, err)


def test_cli_unsubscribes_with_yes(sandbox, cli_env, capsys):
    sandbox.moizvonki.webhooks.update({"call.finish": URL, "sms.message": OTHER})

    code, out, err = webhooks_cli(capsys, cli_env, "--unsubscribe", "--yes")

    assert code == 0
    assert "call.finish stops going to http://127.0.0.1:8808/webhooks/moizvonki/…" in err
    assert sandbox.moizvonki.webhooks == {"sms.message": OTHER}
    no_secrets(sandbox, out, err)


def test_cli_refuses_to_change_subscriptions_in_read_only_mode(sandbox, cli_env, capsys):
    with open(cli_env, "a") as env:
        env.write("TARITI_READ_ONLY=true\n")

    code, out, err = webhooks_cli(capsys, cli_env, "--subscribe", URL, "--yes")

    assert code == 2 and "TARITI_READ_ONLY" in err
    assert sandbox.moizvonki.webhooks == {}
    assert webhooks_cli(capsys, cli_env)[0] == 0  # showing the list is a read


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (("--subscribe", "http://hooks.example/webhooks/moizvonki/x"), "https"),
        (("--subscribe", "ftp://hooks.example/x"), "full URL"),
        (("--subscribe", "https://hooks.example/"), "must end with the secret"),
        (("--events", "call.finish"), "--subscribe URL or --unsubscribe"),
    ],
)
def test_cli_names_the_bad_argument(sandbox, cli_env, capsys, words, message):
    code, _, err = webhooks_cli(capsys, cli_env, *words)

    assert code == 2 and message in err
    assert sandbox.moizvonki.webhooks == {}


def test_cli_names_an_unknown_event(sandbox, cli_env, capsys):
    with pytest.raises(SystemExit) as exited:
        webhooks_cli(capsys, cli_env, "--subscribe", URL, "--events", "call.finish,call.ring")

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--events" in err and "'call.ring'" in err and "call.answer" in err
    assert sandbox.moizvonki.webhooks == {}


# --- webhook actions through the tool ---------------------------------------------------------


@pytest.mark.anyio
async def test_webhook_list_through_the_tool_hides_every_hook_secret(sandbox, store, tmp_path):
    """A newcomer's find: webhook.list gave the model our TARITI_WEBHOOK_SECRET and another
    integration's token, in full."""
    from mcp import Client

    sandbox.moizvonki.webhooks.update({"call.finish": URL, "sms.message": OTHER + "?sig=abc"})
    env = {key.lower(): value for key, value in sandbox.env.items()}
    settings = Settings(
        _env_file=None,
        db_path=tmp_path / "t.db",
        webhook_secret="wh-secret-0123456789",
        **env,
    )
    try:
        async with Client(create_server(settings, store=store)) as client:
            result = await client.call_tool(
                "call_moizvonki_api", {"action": "webhook.list", "params": {}}
            )
    finally:
        sandbox.moizvonki.webhooks.clear()

    assert not result.is_error, result.content[0].text
    text = result.content[0].text
    assert result.structured_content["answer"] == {
        "call.finish": "http://127.0.0.1:8808/webhooks/moizvonki/…",
        "sms.message": "https://amocrm.example/moizvonki/…?…",
    }
    assert "hidden" in result.structured_content["note"]
    no_secrets(sandbox, text, json.dumps(result.structured_content))


@pytest.mark.anyio
async def test_a_configured_secret_echoed_by_any_api_is_masked_in_the_answer(
    sandbox, store, tmp_path
):
    """Defence in depth: whatever action brings a configured secret back, the model sees ***."""
    from mcp import Client

    env = {key.lower(): value for key, value in sandbox.env.items()}
    secret = "wh-secret-0123456789"
    settings = Settings(_env_file=None, db_path=tmp_path / "t.db", webhook_secret=secret, **env)
    templates = sandbox.moizvonki.sms_templates
    saved = list(templates)
    templates.append({"id": 99, "text": f"see https://x.example/{secret}"})
    try:
        async with Client(create_server(settings, store=store)) as client:
            result = await client.call_tool(
                "call_moizvonki_api", {"action": "calls.get_sms_templates", "params": {}}
            )
    finally:
        templates[:] = saved

    text = result.content[0].text
    assert not result.is_error, text
    assert secret not in text and secret not in json.dumps(result.structured_content)
    assert "https://x.example/***" in text
    assert json.loads(text) == result.structured_content


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("https://crm.example/hooks/moizvonki/TOK123", "https://crm.example/hooks/moizvonki/…"),
        ("h.example/hooks/TOK", "h.example/hooks/…"),
        ("//h.example/hooks/TOK", "//h.example/hooks/…"),
        ("https://h.example\\TOK", "https://h.example/…"),
        ("https://h.example/a/TOK\nhttps://h2/x", "https://h.example/a/…"),
        ("https://user:TOK@h.example:8443/a", "https://h.example:8443/…"),
        ("https://h.example/T0K/route/x", "https://h.example/…"),
        ("https://h.example/hook#TOK", "https://h.example/…?…"),
        ("https://[::1]:8443/x/TOK", "https://[::1]:8443/x/…"),
        ("http://[::1", "(not a URL)"),
    ],
)
def test_hook_urls_of_any_shape_hide_their_secret(given, shown):
    """An adversary's find: addresses without a scheme, with a backslash or a newline, kept
    their secret."""
    from tariti_mcp.moizvonki.api import hide_hook_urls

    assert hide_hook_urls({"call.finish": given}) == {"call.finish": shown}
    assert "TOK" not in json.dumps(hide_hook_urls({given: 1, "list": [given]}))


@pytest.mark.anyio
async def test_a_cut_through_a_secret_leaves_no_piece_of_it(sandbox, store, tmp_path):
    """An adversary's find: a value too large to show was cut inside a secret, and the piece
    before the cut was no longer recognised as one."""
    from mcp import Client

    secret = "wh-secret-0123456789"
    env = {key.lower(): value for key, value in sandbox.env.items()}
    settings = Settings(_env_file=None, db_path=tmp_path / "t.db", webhook_secret=secret, **env)
    templates = sandbox.moizvonki.sms_templates
    saved = list(templates)
    try:
        async with Client(create_server(settings, store=store)) as client:
            for padding in (57_930, 57_935, 57_938):
                templates[:] = [{"id": 1, "text": "x" * padding + secret + "y" * 3000}]
                result = await client.call_tool(
                    "call_moizvonki_api", {"action": "calls.get_sms_templates", "params": {}}
                )
                text = result.content[0].text
                assert result.structured_content["truncated"] is True
                assert "wh-secret" not in text, text[-80:]
                encoded = "wh%2Dsecret%2D0123456789"
                templates[:] = [{"id": 1, "text": f"https://x.example/{encoded}"}]
                result = await client.call_tool(
                    "call_moizvonki_api", {"action": "calls.get_sms_templates", "params": {}}
                )
                assert encoded not in result.content[0].text
    finally:
        templates[:] = saved


def test_the_event_log_forgets_events_older_than_ninety_days(store):
    """The audit log was never trimmed: a busy account would grow it without end."""
    from tariti_mcp.store import WEBHOOK_EVENTS_DAYS

    now = int(time.time())
    for age_days in (WEBHOOK_EVENTS_DAYS + 1, WEBHOOK_EVENTS_DAYS - 1):
        store.record_webhook_event(
            action="call.finish",
            outcome="call stored",
            body="{}",
            received_at=now - age_days * 86400,
        )
    store.record_webhook_event(action="call.start", outcome="live call ringing", body="{}")
    kept = [row["action"] for row in store.query("SELECT action FROM moizvonki_webhook_events")]
    assert kept == ["call.finish", "call.start"]
    ages = [
        (now - row["received_at"]) // 86400
        for row in store.query("SELECT received_at FROM moizvonki_webhook_events")
    ]
    assert ages[0] == WEBHOOK_EVENTS_DAYS - 1
