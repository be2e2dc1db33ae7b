"""``tariti-mcp sync`` and the amoCRM sync under it: both services into the store, a rerun with
nothing new costs a request per stream, a cut run goes on from its place, edits made during a
walk are not lost, and a second sync beside a running one waits its turn."""

from __future__ import annotations

import io
import logging
import os
import re
import time
from contextlib import closing
from urllib.parse import parse_qsl

import filelock
import httpx
import pytest

from tariti_mcp import sync_command
from tariti_mcp.amocrm import sync as amocrm_sync
from tariti_mcp.amocrm.client import AmoCrmClient
from tariti_mcp.amocrm.sync import STREAMS, state_name, sync_amocrm
from tariti_mcp.cli import main
from tariti_mcp.errors import ServiceError
from tariti_mcp.http import RetryPolicy
from tariti_mcp.sandbox import Sandbox
from tariti_mcp.store import Store
from tariti_mcp.sync_command import Display

FAST_FAILURE = RetryPolicy(attempts=1, first_wait=0.01, max_wait=0.01, total=1)


@pytest.fixture(autouse=True)
def quiet_environment(monkeypatch, tmp_path):
    """No setting of the machine running the tests, and the logging the command replaces back."""
    for key in list(os.environ):
        if key.startswith(("AMOCRM_", "MOIZVONKI_", "TARITI_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def account():
    """An emulator of our own: these tests edit its records."""
    with Sandbox(seed=61, calls=400, days=10, rate_limit=0) as running:
        yield running


class Tap(httpx.AsyncBaseTransport):
    """Passes requests to the emulator; keeps each one's query; can fail after ``fail_after``
    requests (503), drop the order parameter, or run ``between`` after each answer."""

    def __init__(self, fail_after=None, drop_order=False, between=None) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.queries: list[tuple[str, dict[str, str]]] = []
        self.fail_after = fail_after
        self.drop_order = drop_order
        self.between = between

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.drop_order:
            kept = [
                (k, v) for k, v in request.url.params.multi_items() if not k.startswith("order")
            ]
            request.url = request.url.copy_with(params=kept)
        self.queries.append((request.url.path, dict(parse_qsl(request.url.query.decode()))))
        if self.fail_after is not None and len(self.queries) > self.fail_after:
            return httpx.Response(503, text="Service Unavailable")
        response = await self._inner.handle_async_request(request)
        if self.between is not None:
            self.between(len(self.queries))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def client_of(sandbox: Sandbox, tap: Tap) -> AmoCrmClient:
    return AmoCrmClient(
        sandbox.amocrm_url,
        sandbox.env["AMOCRM_API_KEY"],
        transport=tap,
        retry_policy=FAST_FAILURE,
        rate_limit=7,
    )


def stored(store: Store, table: str) -> dict[int, dict]:
    return {row["id"]: row for row in store.query(f"SELECT id, name FROM {table}")}


ENTITIES = [("leads", "amocrm_leads"), ("contacts", "amocrm_contacts")]
ENTITIES += [("companies", "amocrm_companies")]


def assert_store_holds_the_account(sandbox: Sandbox, store: Store) -> None:
    for entity, table in ENTITIES:
        expected = {i: r["name"] for i, r in sandbox.amocrm.records(entity).items()}
        assert {i: r["name"] for i, r in stored(store, table).items()} == expected, entity


# --- the amoCRM streams -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_entity_arrives_and_a_rerun_sends_one_request_per_stream(account):
    tap = Tap()
    store = Store()
    client = client_of(account, tap)
    try:
        first = await sync_amocrm(client, store)
        assert_store_holds_the_account(account, store)
        pipelines = {row["id"] for row in store.query("SELECT id FROM amocrm_pipelines")}
        assert pipelines == {p["id"] for p in account.amocrm.pipelines.values()}
        assert next(store.query("SELECT count(*) AS n FROM amocrm_statuses"))["n"] > 3 * 3
        leads_with_contacts = next(
            store.query("SELECT count(*) AS n FROM amocrm_leads WHERE contact_id IS NOT NULL")
        )["n"]
        assert leads_with_contacts > 0

        sent = len(tap.queries)
        second = await sync_amocrm(client, store)
    finally:
        await client.aclose()

    assert first.requests == sent
    assert second.requests == len(STREAMS) == len(tap.queries) - sent
    # Each incremental stream asks from the newest second it stored, in updated_at order.
    for path, query in tap.queries[sent:]:
        if path.endswith(("/leads", "/contacts", "/companies")):
            assert query["order[updated_at]"] == "asc"
            assert int(query["filter[updated_at][from]"]) > 0


@pytest.mark.anyio
async def test_a_cut_sync_goes_on_from_its_place(account, monkeypatch):
    monkeypatch.setattr(amocrm_sync, "PAGE_LIMIT", 50)
    store = Store()
    cut = Tap(fail_after=6)
    client = client_of(account, cut)
    try:
        with pytest.raises(ServiceError):
            await sync_amocrm(client, store)
    finally:
        await client.aclose()
    # Pipelines, users and four pages of leads were stored before the service went away (each
    # page after the first starts a second early, so a few leads came twice).
    assert 3 * 50 < len(stored(store, "amocrm_leads")) <= 4 * 50 < len(account.amocrm.leads)
    assert store.sync_state(state_name(STREAMS[2]))["last_error"]

    rest = Tap()
    client = client_of(account, rest)
    try:
        await sync_amocrm(client, store)
    finally:
        await client.aclose()
    assert_store_holds_the_account(account, store)
    first_lead_query = next(q for path, q in rest.queries if path.endswith("/leads"))
    assert int(first_lead_query["filter[updated_at][from]"]) > 0
    assert store.sync_state(state_name(STREAMS[2])).get("last_error") is None


@pytest.mark.anyio
async def test_a_record_edited_during_the_walk_is_not_lost(account, monkeypatch):
    monkeypatch.setattr(amocrm_sync, "PAGE_LIMIT", 50)
    contacts = account.amocrm.contacts
    oldest = sorted(contacts.values(), key=lambda c: (c["updated_at"], c["id"]))
    edited = {oldest[0]["id"], oldest[1]["id"]}

    def edit_after_first_contacts_page(count: int) -> None:
        # Requests 1-2 are pipelines and users, then leads; once contacts are under way, two
        # contacts already read are edited: they move to the end of the updated_at order, and
        # every contact after them moves up a place.
        if contacts_pages() == 1:
            for contact_id in edited:
                contacts[contact_id]["name"] = f"edited {contact_id}"
                contacts[contact_id]["updated_at"] = int(time.time())

    tap = Tap(between=edit_after_first_contacts_page)

    def contacts_pages() -> int:
        return sum(1 for path, _ in tap.queries if path.endswith("/contacts"))

    store = Store()
    client = client_of(account, tap)
    try:
        await sync_amocrm(client, store)
    finally:
        await client.aclose()

    assert contacts_pages() > 2
    assert_store_holds_the_account(account, store)
    for contact_id in edited:
        assert stored(store, "amocrm_contacts")[contact_id]["name"] == f"edited {contact_id}"


@pytest.mark.anyio
async def test_more_records_in_one_second_than_a_page_all_arrive(account, monkeypatch):
    monkeypatch.setattr(amocrm_sync, "PAGE_LIMIT", 50)
    # A bulk import: every contact changed in the same second.
    stamp = int(time.time()) - 60
    for contact in account.amocrm.contacts.values():
        contact["updated_at"] = stamp
    tap = Tap()
    store = Store()
    client = client_of(account, tap)
    try:
        await sync_amocrm(client, store, streams=(STREAMS[3],))
    finally:
        await client.aclose()
    assert set(stored(store, "amocrm_contacts")) == set(account.amocrm.contacts)
    pages = len(account.amocrm.contacts) // 50 + 1
    assert len(tap.queries) <= pages + 1
    assert store.sync_state("amocrm.contacts")["cursor"] == stamp


@pytest.mark.anyio
async def test_a_server_ignoring_the_order_gets_every_page_read(account, monkeypatch, caplog):
    monkeypatch.setattr(amocrm_sync, "PAGE_LIMIT", 50)
    for contact in account.amocrm.contacts.values():
        # Newest ids last edited longest ago: id order is then far from updated_at order.
        contact["updated_at"] = 2_000_000_000 - contact["id"]
    tap = Tap(drop_order=True)
    store = Store()
    client = client_of(account, tap)
    started = int(time.time())
    try:
        with caplog.at_level(logging.WARNING):
            await sync_amocrm(client, store, streams=(STREAMS[3],))
    finally:
        await client.aclose()
    assert set(stored(store, "amocrm_contacts")) == set(account.amocrm.contacts)
    assert "did not list contacts in updated_at order" in caplog.text
    cursor = store.sync_state("amocrm.contacts")["cursor"]
    assert cursor >= started - amocrm_sync.CLOCK_SLACK


# --- the command ----------------------------------------------------------------------------


def write_env(path, settings: dict[str, str]) -> str:
    path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    return str(path)


def run(capsys, *words: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["sync", *words])
    out, err = capsys.readouterr()
    return code, out, err


def test_sync_fills_the_store_from_both_services(account, tmp_path, capsys):
    env = write_env(tmp_path / "sandbox.env", account.env)
    db = str(tmp_path / "dash.db")
    calls_before = len(account.moizvonki.requests)

    code, out, err = run(capsys, "--env-file", env, "--db", db, "--days", "10", "--plain")

    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines[0].startswith("moizvonki: ") and "every call since" in lines[0]
    assert lines[1].startswith("amocrm: ") and "leads" in lines[1]
    with closing(Store(db)) as store:
        assert_store_holds_the_account(account, store)
        since = store.sync_state("moizvonki.calls")["covered_from"]
        ids = {r["db_call_id"] for r in store.query("SELECT db_call_id FROM moizvonki_calls")}
        expected = {c.db_call_id for c in account.moizvonki.calls if c.start_time >= since}
        assert expected <= ids and expected
        # The dashboard's views count in the business zone from the first sync on.
        assert store.call_zone()[0] == "Europe/Moscow"
        by_view = next(store.query("SELECT sum(total_calls) AS n FROM moizvonki_daily"))["n"]
        assert by_view == len(ids)
    for secret in (account.env["AMOCRM_API_KEY"], account.env["MOIZVONKI_API_KEY"]):
        assert secret not in out + err

    # Nothing new: one calls.list request, one request per amoCRM stream.
    amocrm_before = len(account.amocrm.requests)
    calls_before = len(account.moizvonki.requests)
    code, out, err = run(capsys, "--env-file", env, "--db", db, "--plain")
    assert code == 0, (out, err)
    assert "moizvonki: 0 new calls" in out
    # The overlap reads the newest records again; a newcomer took "1 leads" for a change.
    amocrm_line = next(line for line in out.splitlines() if line.startswith("amocrm: "))
    assert "0 leads, 0 contacts, 0 companies new or changed (" in amocrm_line, amocrm_line
    assert re.search(r"\(\d+ read, 5 requests\)$", amocrm_line), amocrm_line
    moizvonki_sent = account.moizvonki.requests[calls_before:]
    # company.list_employee (one page) and one calls.list.
    assert len(moizvonki_sent) == 2
    assert len(account.amocrm.requests) - amocrm_before == len(STREAMS)


def test_one_service_down_still_syncs_the_other_and_exits_one(
    account, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(sync_command, "RETRY", FAST_FAILURE)
    settings = {**account.env, "AMOCRM_BASE_URL": "http://127.0.0.1:9"}
    env = write_env(tmp_path / "half.env", {**settings, "TARITI_HTTP_TIMEOUT": "2"})
    db = str(tmp_path / "half.db")
    code, out, err = run(capsys, "--env-file", env, "--db", db, "--plain", "--only", "amocrm")
    assert code == 1
    assert out.startswith("amocrm: not finished") and "run again" in out

    code, out, err = run(capsys, "--env-file", env, "--db", db, "--plain")
    assert code == 1
    assert "moizvonki: " in out and "new calls" in out
    assert "amocrm: not finished" in out


def test_a_second_sync_waits_then_says_another_is_running(account, tmp_path, capsys):
    env = write_env(tmp_path / "sandbox.env", account.env)
    db = str(tmp_path / "busy.db")
    Store(db).close()
    with filelock.FileLock(db + ".sync.lock"), filelock.FileLock(db + ".amocrm-sync.lock"):
        code, out, err = run(capsys, "--env-file", env, "--db", db, "--plain", "--wait", "0")
    assert code == 1
    assert out.count("another sync") == 2, out


def test_bad_invocations_are_one_line_and_exit_two(tmp_path, capsys):
    code, out, err = run(capsys, "--sandbox")
    assert code == 2 and "--db" in err
    code, out, err = run(capsys, "--db", str(tmp_path / "x.db"))
    assert code == 2 and "nothing to sync" in err and "MOIZVONKI_API_KEY" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["sync", "--since", "last tuesday"])
    assert exit_info.value.code == 2
    assert "is not a date" in capsys.readouterr().err


def test_sync_on_the_sandbox_fills_the_named_database(tmp_path, capsys):
    db = str(tmp_path / "try.db")
    code, out, err = run(capsys, "--sandbox", "--db", db, "--calls", "200", "--plain")
    assert code == 0, (out, err)
    with closing(Store(db)) as store:
        assert next(store.query("SELECT count(*) AS n FROM moizvonki_calls"))["n"] > 50
        assert next(store.query("SELECT count(*) AS n FROM amocrm_leads"))["n"] > 100


@pytest.mark.anyio
async def test_progress_is_a_bar_on_a_terminal_and_few_plain_lines_otherwise():
    bar_out = io.StringIO()
    with Display(bar_out, bar=True).stream("moizvonki calls") as report:
        await report(3, 10, "synced 300 calls, up to 2026-11-03")
        await report(6, 10, "synced 600 calls, up to 2026-11-06")
    assert "60%" in bar_out.getvalue() and "synced 600 calls" in bar_out.getvalue()

    plain_out = io.StringIO()
    with Display(plain_out, bar=False, every=3600).stream("amocrm leads") as report:
        for done in range(1, 50):
            await report(done * 250, None, f"synced {done * 250} leads")
    # The first report is said at once, the rest within the hour are not.
    assert plain_out.getvalue() == "amocrm leads: synced 250 leads\n"


@pytest.mark.anyio
async def test_sync_from_cron_beside_a_busy_server_on_one_database(tmp_path):
    """A ``tariti-mcp sync`` process back-fills a long call log while a server on the same file
    reads and writes through its tools: neither fails, nothing is counted twice."""
    import json
    import subprocess
    import sys

    from mcp import Client

    from tariti_mcp.config import Settings
    from tariti_mcp.server import create_server

    with Sandbox(seed=67, calls=40_000, days=200, rate_limit=0) as busy:
        env_file = write_env(tmp_path / "busy.env", busy.env)
        db = tmp_path / "shared.db"
        settings = Settings(
            _env_file=None,
            db_path=db,
            analytics_freshness=0,
            **{key.lower(): value for key, value in busy.env.items()},
        )
        Store(db).close()
        command = [sys.executable, "-m", "tariti_mcp", "sync", "--env-file", env_file]
        command += ["--db", str(db), "--days", "200", "--window-days", "2", "--plain"]
        sync = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("TARITI_")},
        )
        answers = []
        try:
            async with Client(create_server(settings)) as client:
                while sync.poll() is None and len(answers) < 200:
                    for name, arguments in (
                        ("call_amocrm_api", {"path": "/api/v4/leads", "query": {"limit": 50}}),
                        ("get_moizvonki_analytics", {"period": "last_7_days"}),
                    ):
                        result = await client.call_tool(name, arguments)
                        answers.append((name, result.is_error, result.content[0].text))
            out, err = sync.communicate(timeout=300)
        finally:
            if sync.poll() is None:
                sync.kill()

        assert sync.returncode == 0, (out, err)
        assert len(answers) >= 4, "the sync ended before the server was asked anything"
        failures = [answer for answer in answers if answer[1]]
        assert not failures, failures[:3]
        assert "locked" not in err
        # While the sync held the call log, the analytics said they could not sync, never wrong.
        for name, _, text in answers:
            if name == "get_moizvonki_analytics":
                assert json.loads(text)["total_calls"] >= 0

        with closing(Store(db)) as store:
            rows = next(store.query("SELECT count(*) AS n FROM moizvonki_calls"))["n"]
            since = store.sync_state("moizvonki.calls")["covered_from"]
            expected = sum(1 for call in busy.moizvonki.calls if call.start_time >= since)
            by_view = next(store.query("SELECT sum(total_calls) AS n FROM moizvonki_daily"))["n"]
        assert rows >= expected > 30_000
        assert by_view == rows
