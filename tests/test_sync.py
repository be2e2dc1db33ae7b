"""Call sync against the emulator: nothing missed, nothing repeated, resumable, one request idle.

Tests are named after the failure patterns of existing integrations (reference notes, Moizvonki
1-15) they pin, or after the behaviour they promise.
"""

from __future__ import annotations

import json
import logging
import time
from zoneinfo import ZoneInfo

import anyio
import httpx
import pytest
import respx
from hypothesis import given, settings
from hypothesis import strategies as st

from tariti_mcp.errors import InvalidArgument, Unavailable
from tariti_mcp.http import RetryPolicy
from tariti_mcp.moizvonki.api import PARAMETERS, analytics_report, check_params
from tariti_mcp.moizvonki.client import MoizvonkiClient
from tariti_mcp.moizvonki.sync import (
    CALLS,
    DAY,
    EMPLOYEES,
    sync_all,
    sync_calls,
    sync_employees,
    sync_warnings,
)
from tariti_mcp.sandbox import Sandbox
from tariti_mcp.store import Store
from tariti_mcp.syncing import SyncBusy

pytestmark = pytest.mark.anyio

FAST_FAILURE = RetryPolicy(attempts=1, first_wait=0.01, max_wait=0.01, total=1)


class Recorder(httpx.AsyncBaseTransport):
    """Sends requests on to the emulator and keeps each one's parameters, credentials dropped.

    With ``fail_after`` set, every request after that many is answered 503 without reaching
    the emulator: the service going away in the middle of a sync.
    """

    def __init__(self, fail_after: int | None = None) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.sent: list[dict] = []
        self.fail_after = fail_after

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        body.pop("user_name", None)
        body.pop("api_key", None)
        self.sent.append(body)
        if self.fail_after is not None and len(self.sent) > self.fail_after:
            return httpx.Response(503, text="Service Unavailable")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
async def connect():
    """A factory of clients of the emulator as the administrator or a manager; all are closed."""
    made: list[MoizvonkiClient] = []

    def make(sandbox: Sandbox, recorder: Recorder | None = None, manager: bool = False):
        env = sandbox.env
        user, key = (
            (sandbox.moizvonki_manager_user, sandbox.moizvonki_manager_key)
            if manager
            else (env["MOIZVONKI_USER"], env["MOIZVONKI_API_KEY"])
        )
        client = MoizvonkiClient(
            env["MOIZVONKI_BASE_URL"],
            user,
            key,
            transport=recorder or Recorder(),
            retry_policy=FAST_FAILURE,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


def stored_ids(store: Store) -> set[int]:
    return {row["db_call_id"] for row in store.query("SELECT db_call_id FROM moizvonki_calls")}


def expected_ids(sandbox: Sandbox, since: int) -> set[int]:
    return {call.db_call_id for call in sandbox.moizvonki.calls if call.start_time >= since}


def since_ids(store: Store, since: int) -> set[int]:
    rows = store.query("SELECT db_call_id FROM moizvonki_calls WHERE start_time >= ?", [since])
    return {row["db_call_id"] for row in rows}


def walks(sent: list[dict]) -> list[list[dict]]:
    """The requests grouped by selection: one list per walk over one query's pages."""
    grouped: list[list[dict]] = []
    for body in sent:
        key = {k: v for k, v in body.items() if k != "from_offset"}
        if grouped and {k: v for k, v in grouped[-1][0].items() if k != "from_offset"} == key:
            if body.get("from_offset"):
                grouped[-1].append(body)
                continue
        grouped.append([body])
    return grouped


@pytest.fixture
def sandbox():
    with Sandbox(seed=41, calls=3000, days=60) as running:
        yield running


# --- paging: patterns 3, 4, 5 --------------------------------------------------------------------


async def test_offset_assigned_not_added_and_every_call_arrives_once(sandbox, connect):
    recorder = Recorder()
    client = connect(sandbox, recorder)
    store = Store()
    since = int(time.time()) - 40 * DAY
    report = await sync_calls(client, store, since=since, window=6 * DAY)

    assert since_ids(store, since) == expected_ids(sandbox, since)
    assert report.new_calls == len(stored_ids(store)) and report.skipped == 0
    deep = [walk for walk in walks(recorder.sent) if len(walk) > 2]
    assert deep, "no window needed three pages: the test would not see offsets at all"
    for walk in deep:
        # Each answer's results_next_offset is offset + 100 here: assigned, the offsets run
        # 0, 100, 200; added, they would run 0, 100, 300.
        assert [body["from_offset"] for body in walk] == [100 * n for n in range(len(walk))]


async def test_unknown_parameters_refused_and_never_sent(sandbox, connect):
    zone = ZoneInfo("Europe/Moscow")
    for wrong in ("results_offset", "date_from", "offset", "limit"):
        with pytest.raises(InvalidArgument, match="ignore it silently"):
            check_params("calls.list", {"from_date": 1_700_000_000, wrong: 100}, zone)

    recorder = Recorder()
    client = connect(sandbox, recorder)
    await sync_calls(client, Store(), since=int(time.time()) - 10 * DAY)
    known = PARAMETERS["calls.list"] | {"action"}
    assert recorder.sent and all(set(body) <= known for body in recorder.sent)


async def test_max_results_capped_at_100(sandbox, connect):
    recorder = Recorder()
    client = connect(sandbox, recorder)
    await sync_calls(client, Store(), since=int(time.time()) - 20 * DAY)
    assert {body["max_results"] for body in recorder.sent} == {100}

    # Asking for 500 a page sends 100 and still reads every call, none skipped.
    seen = []
    params = {"from_id": 0, "supervised": 1, "max_results": 500}
    async for page in client.pages("calls.list", params, max_pages=1000):
        seen += [call["db_call_id"] for call in page["results"]]
    assert seen == [call.db_call_id for call in sandbox.moizvonki.calls]
    assert {body["max_results"] for body in recorder.sent} == {100}


# --- the cursor: pattern 7 -----------------------------------------------------------------------


async def test_from_id_inclusive_newest_call_not_delivered_twice(sandbox, connect):
    recorder = Recorder()
    client = connect(sandbox, recorder)
    store = Store()
    since = int(time.time()) - 5 * DAY
    await sync_calls(client, store, since=since)
    newest = max(call.db_call_id for call in sandbox.moizvonki.calls)
    assert store.sync_state(CALLS)["cursor"] == newest + 1

    mark = len(recorder.sent)
    again = await sync_calls(client, store, since=since)
    assert recorder.sent[mark:] == [
        {
            "from_id": newest + 1,
            "supervised": 1,
            "max_results": 100,
            "from_offset": 0,
            "action": "calls.list",
        }
    ]
    assert (again.calls, again.new_calls) == (0, 0)


async def test_no_change_resync_is_one_request(sandbox, connect):
    client = connect(sandbox)
    store = Store()
    since = int(time.time()) - 30 * DAY
    await sync_calls(client, store, since=since)

    for _ in range(3):
        before = len(sandbox.moizvonki.requests)
        report = await sync_calls(client, store, since=since)
        assert len(sandbox.moizvonki.requests) - before == 1
        assert report.requests == 1 and report.windows == 0
    # A later period inside the covered range needs no backfill either.
    before = len(sandbox.moizvonki.requests)
    await sync_calls(client, store, since=since + 10 * DAY)
    assert len(sandbox.moizvonki.requests) - before == 1


async def test_late_upload_picked_up(sandbox, connect):
    client = connect(sandbox)
    store = Store()
    since = int(time.time()) - 7 * DAY
    await sync_calls(client, store, since=since)

    # A phone that was offline uploads a call from two days ago: older start, newer id.
    late = sandbox.moizvonki.record_call(
        sandbox.moizvonki_manager_user,
        0,
        "+79160001122",
        int(time.time()) - 2 * DAY,
        answered=True,
        duration=42,
        wait=5,
    )
    assert late.db_call_id > max(stored_ids(store))
    report = await sync_calls(client, store, since=since)
    assert (report.requests, report.new_calls) == (1, 1)
    assert late.db_call_id in stored_ids(store)
    assert since_ids(store, since) == expected_ids(sandbox, since)


async def test_late_upload_into_a_window_already_walked_is_picked_up(sandbox, connect):
    client = connect(sandbox)
    store = Store()
    since = int(time.time()) - 30 * DAY
    uploaded = []

    async def progress(done, total, message):
        # Ten days into the backfill, one phone uploads a call from the backfill's second day,
        # then another a call from its twentieth: a cursor taken as the highest id the windows
        # saw would be past the first and lose it.
        if total and done > 10 and not uploaded:
            for start in (since + DAY + 600, since + 20 * DAY):
                uploaded.append(
                    sandbox.moizvonki.record_call(
                        sandbox.moizvonki_manager_user, 1, "+79035550011", start, True, 30
                    )
                )

    await sync_calls(client, store, since=since, progress=progress)
    assert len(uploaded) == 2
    assert {call.db_call_id for call in uploaded} <= stored_ids(store)
    assert since_ids(store, since) == expected_ids(sandbox, since)


async def test_stored_offset_never_reused_across_runs(sandbox, connect):
    since = int(time.time()) - 30 * DAY
    window = 6 * DAY
    # A first run, to learn where the second page of an early window is asked for. Windows start
    # at since, so the same requests come in the same order again.
    rehearsal = Recorder()
    await sync_calls(connect(sandbox, rehearsal), Store(), since=since, window=window)
    second_page = next(
        at
        for at, body in enumerate(rehearsal.sent)
        if "to_date" in body and body["from_offset"] == 100
    )

    # The service goes away just as that page is asked for.
    recorder = Recorder(fail_after=second_page)
    client = connect(sandbox, recorder)
    store = Store()
    with pytest.raises(Unavailable):
        await sync_calls(client, store, since=since, window=window)
    failed = recorder.sent[-1]
    assert failed["from_offset"] == 100
    assert "offset" not in json.dumps(store.sync_state(CALLS))

    recorder.fail_after = None
    mark = len(recorder.sent)
    await sync_calls(client, store, since=since, window=window)
    resumed = recorder.sent[mark]
    # The interrupted window is asked again from its start, never from a saved offset.
    assert resumed["from_offset"] == 0
    assert (resumed["from_date"], resumed["to_date"]) == (failed["from_date"], failed["to_date"])
    assert since_ids(store, since) == expected_ids(sandbox, since)


# --- backfill ------------------------------------------------------------------------------------


async def test_backfill_windows_keep_offsets_small(sandbox, connect):
    recorder = Recorder()
    client = connect(sandbox, recorder)
    store = Store()
    since = int(time.time()) - 61 * DAY
    report = await sync_calls(client, store, since=since, window=2 * DAY)

    assert since_ids(store, since) == expected_ids(sandbox, since)
    windows = [body for body in recorder.sent if "to_date" in body]
    assert report.windows >= 30 and windows
    assert all(body["to_date"] - body["from_date"] <= 2 * DAY for body in windows)
    # The whole log is 3000 calls; two days of it are never more than a few hundred deep.
    assert max(body["from_offset"] for body in recorder.sent) <= 300
    # Oldest first, each window starting where the last one ended.
    starts = [walk[0]["from_date"] for walk in walks(windows)]
    assert starts == sorted(starts) and starts[0] == since


async def test_resume_after_an_interrupted_backfill(sandbox, connect):
    recorder = Recorder(fail_after=25)
    client = connect(sandbox, recorder)
    store = Store()
    since = int(time.time()) - 45 * DAY
    with pytest.raises(Unavailable) as failure:
        await sync_calls(client, store, since=since)
    state = store.sync_state(CALLS)
    assert "503" in state["last_error"] and str(failure.value) == state["last_error"]
    assert state["covered_from"] is None  # not claimed until the backfill is done
    saved = json.loads(state["info"])["backfill"]
    assert saved["target"] == since and saved["position"] > since and saved["anchor"]

    recorder.fail_after = None
    mark = len(recorder.sent)
    report = await sync_calls(client, store, since=since)
    resumed = recorder.sent[mark:]
    # Nothing before the saved position is asked again, and no new probe is made.
    assert all(body.get("from_date", saved["position"]) >= saved["position"] for body in resumed)
    assert all("to_date" in body or "from_id" in body for body in resumed)
    assert since_ids(store, since) == expected_ids(sandbox, since)
    assert store.sync_state(CALLS)["info"] is None and report.covered_from == since


async def test_extending_the_range_back_walks_only_the_added_days(sandbox, connect):
    recorder = Recorder()
    client = connect(sandbox, recorder)
    store = Store()
    recent = int(time.time()) - 10 * DAY
    await sync_calls(client, store, since=recent)

    mark = len(recorder.sent)
    older = recent - 30 * DAY
    report = await sync_calls(client, store, since=older)
    extension = recorder.sent[mark:]
    windows = [body for body in extension if "to_date" in body]
    assert windows and max(body["to_date"] for body in windows) == recent
    assert all("to_date" in body or "from_id" in body for body in extension)
    assert report.covered_from == older
    assert since_ids(store, older) == expected_ids(sandbox, older)


async def test_a_call_on_a_window_boundary_is_kept(sandbox, connect):
    client = connect(sandbox)
    store = Store()
    since = int(time.time()) - 9 * DAY
    on_boundary = sandbox.moizvonki.record_call(
        sandbox.moizvonki_manager_user, 0, "+79161112233", since + 3 * DAY, False, 0, wait=9
    )
    await sync_calls(client, store, since=since, window=3 * DAY)
    assert on_boundary.db_call_id in stored_ids(store)


async def test_empty_log_then_first_calls(connect):
    with Sandbox(seed=5, calls=0, days=10) as sandbox:
        client = connect(sandbox)
        store = Store()
        since = int(time.time()) - 10 * DAY
        report = await sync_calls(client, store, since=since)
        assert report.new_calls == 0 and report.cursor is None
        assert store.sync_state(CALLS)["covered_from"] == since

        first = sandbox.moizvonki.record_call(
            sandbox.moizvonki_manager_user, 0, "+79160000007", int(time.time()) - DAY, True, 60
        )
        report = await sync_calls(client, store, since=since)
        assert report.new_calls == 1 and report.cursor == first.db_call_id + 1
        before = len(sandbox.moizvonki.requests)
        await sync_calls(client, store, since=since)
        assert len(sandbox.moizvonki.requests) - before == 1


async def test_first_sync_without_since_takes_thirty_days(sandbox, connect):
    client = connect(sandbox)
    store = Store()
    started = int(time.time())
    report = await sync_calls(client, store)
    assert abs(report.covered_from - (started - 30 * DAY)) <= 5
    since = report.covered_from
    assert since_ids(store, since) == expected_ids(sandbox, since)


# --- tolerant rows -------------------------------------------------------------------------------

URL = "https://acme.moizvonki.ru/api/v1"
KEY = "mz-key-0123456789abcdef"
ODD_PAGE = [
    # Numbers as strings, answered as text, an empty number: all readable.
    {
        "db_call_id": "101",
        "start_time": "1767261600",
        "answered": "true",
        "direction": "0",
        "duration": "",
        "answer_time": "1767261605",
        "client_number": 89161234567,
        "user_id": "57301",
        "user_account": "o.sokolova@acme.ru",
    },
    {"db_call_id": 102, "start_time": 1767261700, "answered": "false", "direction": 1},
    {"db_call_id": "103", "start_time": 1767261800.0, "answered": "1"},
    {"db_call_id": 104, "start_time": 1767261900},  # almost nothing: still a call
    # Unreadable: no id, a start time that is not a number, an id that is not one, not an object.
    {"start_time": 1767262000, "answered": 1},
    {"db_call_id": 107, "start_time": "yesterday"},
    {"db_call_id": "abc", "start_time": 1767262100},
    42,
]


async def test_bad_row_skipped_not_fatal(caplog):
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if "to_date" in body or "from_id" in body or body["from_offset"]:
            rows = []
        else:
            rows = ODD_PAGE
        return httpx.Response(
            200,
            json={
                "results_next_offset": 0,
                "results_count": len(rows),
                "results_remains": 0,
                "results": rows,
            },
        )

    caplog.set_level(logging.DEBUG)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(URL).mock(side_effect=answer)
        client = MoizvonkiClient(URL, "boss@acme.ru", KEY)
        store = Store()
        report = await sync_calls(client, store, since=int(time.time()) - DAY)
        await client.aclose()

    rows = {
        row["db_call_id"]: row
        for row in store.query(
            "SELECT db_call_id, answered, direction, duration, start_time, client_last10, "
            "user_id FROM moizvonki_calls"
        )
    }
    assert set(rows) == {101, 102, 103, 104}
    assert rows[101] == {
        "db_call_id": 101,
        "answered": 1,
        "direction": 0,
        "duration": 0,
        "start_time": 1767261600,
        "client_last10": "9161234567",
        "user_id": 57301,
    }
    assert (rows[102]["answered"], rows[103]["answered"], rows[104]["answered"]) == (0, 1, 0)
    assert report.skipped == 4 and report.new_calls == 4
    # The cursor moves past the highest id seen, the unreadable one included: it is not
    # asked for again and again.
    assert report.cursor == 108
    assert json.loads(route.calls.last.request.content)["from_id"] == 108
    assert "skipped a call that cannot be read" in caplog.text
    assert KEY not in caplog.text


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                name: st.one_of(
                    st.none(),
                    st.booleans(),
                    st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12),
                    st.sampled_from(["1", "0", "true", "false", " 42 ", "", "1e3", "NaN", "inf"]),
                    st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                )
                for name in (
                    "db_call_id",
                    "start_time",
                    "answered",
                    "direction",
                    "duration",
                    "answer_time",
                    "client_number",
                    "client_name",
                    "user_id",
                    "user_account",
                    "recording",
                )
            },
        ),
        max_size=8,
    )
)
def test_any_odd_row_is_stored_or_skipped_never_fatal(rows):
    store = Store()
    count, top = store.upsert_calls(rows)
    stored = list(store.query("SELECT db_call_id, answered FROM moizvonki_calls"))
    assert count <= len(rows) and len(stored) <= count
    assert all(row["db_call_id"] > 0 and row["answered"] in (0, 1) for row in stored)
    assert top == (max(row["db_call_id"] for row in stored) if count else None)


# --- who can see what: pattern 15 ----------------------------------------------------------------


async def test_non_admin_key_says_only_one_users_calls_are_visible(sandbox, connect):
    client = connect(sandbox, manager=True)
    store = Store()
    report = await sync_all(client, store, since=int(time.time()) - 20 * DAY)

    assert any(
        "not an administrator's" in warning and sandbox.moizvonki_manager_user in warning
        for warning in report.warnings
    )
    accounts = {
        row["user_account"] for row in store.query("SELECT user_account FROM moizvonki_calls")
    }
    assert accounts == {sandbox.moizvonki_manager_user}
    # Later syncs, and reports built from the store, keep saying it.
    assert sync_warnings(store) == report.warnings
    assert (await sync_calls(client, store)).warnings == report.warnings


async def test_non_admin_warning_is_on_every_analytics_answer_fresh_or_not(sandbox, connect):
    client = connect(sandbox, manager=True)
    store = Store()
    zone = ZoneInfo("Europe/Moscow")

    first = await analytics_report(client, store, zone, period="last_7_days")
    # Moments later the store is fresh and nothing is fetched, yet the answer must say it again.
    second = await analytics_report(client, store, zone, period="last_7_days")

    for answer in (first, second):
        assert any(
            "not an administrator's" in warning and sandbox.moizvonki_manager_user in warning
            for warning in answer["warnings"]
        ), answer.get("warnings")
    assert first["synced_at"] == second["synced_at"]


async def test_admin_key_syncs_employees_without_warning(sandbox, connect):
    client = connect(sandbox)
    store = Store()
    report = await sync_all(client, store, since=int(time.time()) - 5 * DAY)
    assert report.warnings == [] and sync_warnings(store) == []
    staff = {employee["email"] for employee in store.employees()}
    assert staff == {employee.email for employee in sandbox.moizvonki.employees.values()}
    assert store.sync_state(EMPLOYEES)["last_error"] is None
    # Fresh: no request until the list is stale or a refresh is forced.
    before = len(sandbox.moizvonki.requests)
    assert await sync_employees(client, store) is None
    assert len(sandbox.moizvonki.requests) == before


# --- one sync at a time --------------------------------------------------------------------------


async def test_two_syncs_of_one_database_take_turns(sandbox, tmp_path, connect):
    path = tmp_path / "tariti.db"
    since = int(time.time()) - 30 * DAY
    first, second = Store(path), Store(path)
    clients = [connect(sandbox), connect(sandbox)]
    reports = []

    async def run(client, store):
        reports.append(await sync_calls(client, store, since=since, lock_timeout=30))

    async with anyio.create_task_group() as group:
        group.start_soon(run, clients[0], first)
        group.start_soon(run, clients[1], second)

    # One walked the backfill; the other waited, then only asked what was new.
    assert sorted(report.windows for report in reports)[0] == 0
    assert min(report.requests for report in reports) == 1
    assert since_ids(first, since) == expected_ids(sandbox, since)


async def test_a_sync_that_cannot_wait_says_another_is_running(sandbox, tmp_path, connect):
    path = tmp_path / "tariti.db"
    since = int(time.time()) - 30 * DAY
    holder, waiter = Store(path), Store(path)
    client = connect(sandbox)
    started = anyio.Event()
    release = anyio.Event()

    async def slow_progress(done, total, message):
        started.set()
        await release.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(lambda: sync_calls(client, holder, since=since, progress=slow_progress))
        await started.wait()
        with pytest.raises(SyncBusy, match="another sync"):
            await sync_calls(client, waiter, since=since, lock_timeout=0.2)
        release.set()
    assert since_ids(waiter, since) == expected_ids(sandbox, since)
