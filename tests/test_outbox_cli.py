"""``tariti-mcp outbox``: the table of what waits, its JSON lines, and retry delivering each lead
once against the sandbox, a lead whose answer was lost looked for before it is sent again."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from contextlib import closing

import anyio
import pytest
from ports import closed_port

from tariti_mcp import phones
from tariti_mcp.amocrm.client import AmoCrmClient
from tariti_mcp.amocrm.leads import prepare
from tariti_mcp.amocrm.outbox import Outbox
from tariti_mcp.cli import main
from tariti_mcp.http import RetryPolicy
from tariti_mcp.store import Store, field_values

QUICK = RetryPolicy(attempts=1, first_wait=0.01, max_wait=0.01, total=1.0)


@pytest.fixture(autouse=True)
def quiet_environment(monkeypatch, tmp_path):
    """No setting of the machine running the tests, and the logging the command replaces back."""
    for key in list(os.environ):
        if key.startswith(("AMOCRM_", "MOIZVONKI_", "TARITI_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "uvicorn")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, noisy_level in noisy.items():
        logging.getLogger(name).setLevel(noisy_level)


def write_env(path, settings: dict[str, str]) -> str:
    path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    return str(path)


@pytest.fixture
def db(tmp_path) -> str:
    """A server's database, made as the server makes it."""
    path = str(tmp_path / "outbox.db")
    Store(path).close()
    return path


@pytest.fixture
def env_file(sandbox, tmp_path) -> str:
    # Checked at once: the emulator has the deal by the time its answer would have come.
    return write_env(
        tmp_path / "sandbox.env",
        {**sandbox.env, "TARITI_OUTBOX_CHECK_DELAY": "0", "TARITI_LOG_LEVEL": "INFO"},
    )


def run(capsys, env_file: str, db: str, *words: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["outbox", *words, "--env-file", env_file, "--db", db])
    out, err = capsys.readouterr()
    return code, out, err


def unused_phones(sandbox, count: int) -> list[str]:
    taken = {
        phones.last10(v) for c in sandbox.amocrm.contacts.values() for v in field_values(c, "PHONE")
    }
    number = 9_950_000_000 + uuid.uuid4().int % 40_000_000
    found = []
    while len(found) < count:
        if str(number) not in taken:
            found.append(f"+7{number}")
        number += 1
    return found


def queue_leads(sandbox, db: str, count: int) -> list[dict]:
    """Forward leads while amoCRM cannot be reached: each waits in the outbox, queued."""
    tag = uuid.uuid4().hex[:8]
    leads = [
        prepare(
            region="RU",
            name=f"Клиент {tag} {n}",
            phone=phone,
            message="перезвоните",
            source="outbox cli test",
            external_id=f"outbox-cli-{tag}-{n}",
            lead_name=f"outbox cli {tag} {n}",
        )
        for n, phone in enumerate(unused_phones(sandbox, count))
    ]

    async def submit_all() -> list[dict]:
        client = AmoCrmClient(f"http://127.0.0.1:{closed_port()}", "no-token", retry_policy=QUICK)
        store = Store(db)
        try:
            outbox = Outbox(client, store, policy=QUICK)
            return [await outbox.submit(lead) for lead in leads]
        finally:
            store.close()
            await client.aclose()

    answers = anyio.run(submit_all)
    assert all(answer["status"] == "queued" for answer in answers), answers
    with closing(Store(db)) as store:
        return [store.forwarding(answer["forwarding_id"]) for answer in answers]


def deals_named(sandbox, title: str) -> list[int]:
    return [lead["id"] for lead in list(sandbox.amocrm.leads.values()) if lead["name"] == title]


def title_of(row: dict) -> str:
    return json.loads(row["request"])["lead"]["lead_name"]


def test_list_shows_what_waits_and_never_a_key(sandbox, env_file, db, capsys):
    queued, refused = queue_leads(sandbox, db, 2)
    with closing(Store(db)) as store:
        store.update_forwarding(
            refused["id"], status="failed", last_error="pipeline 'Опт' does not exist\n\x1b[2J"
        )

    code, out, err = run(capsys, env_file, db)

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATUS",
        "TRIES",
        "AGE",
        "NEXT",
        "EXTERNAL_ID",
        "LEAD",
        "LAST_ERROR",
    ]
    by_id = {line.split()[0]: line for line in lines[1:3]}
    assert set(by_id) == {queued["id"][:8], refused["id"][:8]}
    assert " queued " in by_id[queued["id"][:8]] and queued["external_id"] in out
    assert queued["phone"] in by_id[queued["id"][:8]]
    failed_line = by_id[refused["id"][:8]]
    assert " failed " in failed_line and "by hand" in failed_line
    assert "pipeline 'Опт' does not exist" in failed_line and "\x1b" not in out
    assert "1 queued, 1 failed" in out
    assert sandbox.env["AMOCRM_API_KEY"] not in out + err


def test_empty_outbox_is_one_friendly_line(env_file, db, capsys):
    code, out, err = run(capsys, env_file, db, "list")
    assert code == 0 and out == "The outbox is empty: no lead has been forwarded yet.\n"

    code, out, err = run(capsys, env_file, db, "--json")
    assert code == 0 and out == "" and "empty" in err


def test_listing_a_database_that_does_not_exist_creates_nothing(env_file, tmp_path, capsys):
    """A newcomer's find: the listing made an empty database in the home directory and said
    the outbox was empty, hiding that it read the wrong place."""
    missing = tmp_path / "typo.db"
    code, out, err = run(capsys, env_file, str(missing))
    assert code == 2 and out == ""
    assert err == (
        f"tariti-mcp: no database at {missing}: no server has used it yet. Name the server's "
        "database with --db or TARITI_DB_PATH\n"
    )
    assert not list(tmp_path.glob("typo.db*"))  # no database, no lock file


def test_outbox_says_which_database_it_read(env_file, db, capsys):
    """A newcomer's find: an empty outbox gave no hint that it was another database than the
    server's (a --sandbox server keeps a scratch one of its own)."""
    code, out, err = run(capsys, env_file, db)
    assert code == 0
    assert f"outbox of {db}" in err
    assert str(db) not in out  # stdout stays the table, or JSON lines for scripts


def test_json_lines_parse_and_carry_full_ids(sandbox, env_file, db, capsys):
    rows = queue_leads(sandbox, db, 2)

    code, out, _ = run(capsys, env_file, db, "list", "--json")

    assert code == 0
    records = {r["id"]: r for r in map(json.loads, out.splitlines())}
    assert set(records) == {row["id"] for row in rows}
    first = records[rows[0]["id"]]
    assert first["status"] == "queued" and first["attempts"] == 0
    assert first["external_id"] == rows[0]["external_id"] and first["phone"] == rows[0]["phone"]
    assert first["last_error"] and first["next_attempt_at"].endswith("+00:00")
    assert first["lead_id"] is None and first["steps_left"] == []


def test_retry_delivers_each_queued_lead_once(sandbox, env_file, db, capsys):
    rows = queue_leads(sandbox, db, 3)
    with closing(Store(db)) as store:
        # Backed off far into the future: retry does not wait for it.
        store.update_forwarding(rows[0]["id"], next_attempt_at=int(time.time()) + 86_400)

    code, out, err = run(capsys, env_file, db, "retry")

    assert code == 0, out + err
    assert "delivered 3, still queued 0, failed 0" in out
    with closing(Store(db)) as store:
        done = [store.forwarding(row["id"]) for row in rows]
    for row in done:
        assert row["status"] == "delivered" and row["attempts"] == 1
        assert deals_named(sandbox, title_of(row)) == [row["lead_id"]]
        assert f"{row['id'][:8]}  {row['external_id']}  delivered: deal {row['lead_id']}" in out
    assert sandbox.env["AMOCRM_API_KEY"] not in out + err

    # Nothing is left, so nothing is sent again.
    requests_before = len(sandbox.amocrm.requests)
    code, out, _ = run(capsys, env_file, db, "retry")
    assert code == 0 and "delivered 0, still queued 0, failed 0" in out
    assert len(sandbox.amocrm.requests) == requests_before
    for row in done:
        assert deals_named(sandbox, title_of(row)) == [row["lead_id"]]

    code, out, _ = run(capsys, env_file, db)
    assert code == 0 and out.startswith("Nothing waits in the outbox: all 3 forwarded leads")
    code, out, _ = run(capsys, env_file, db, "--all", "--json")
    assert code == 0
    delivered = {r["id"]: r for r in map(json.loads, out.splitlines())}
    assert set(delivered) == {row["id"] for row in rows}
    assert all(r["status"] == "delivered" and r["lead_url"] for r in delivered.values())


def test_retry_looks_for_a_lost_answer_before_sending_again(sandbox, env_file, db, capsys):
    [row] = queue_leads(sandbox, db, 1)
    assert run(capsys, env_file, db, "retry")[0] == 0
    with closing(Store(db)) as store:
        lead_id = store.forwarding(row["id"])["lead_id"]
        # As after a create request whose answer never came, with the next check far away.
        store.update_forwarding(
            row["id"],
            status="unknown",
            lead_id=None,
            lead_url=None,
            delivered_at=None,
            next_attempt_at=int(time.time()) + 86_400,
            last_error="no answer to the create request",
        )

    code, out, err = run(capsys, env_file, db, "retry")

    assert code == 0, out + err
    with closing(Store(db)) as store:
        found = store.forwarding(row["id"])
    assert found["status"] == "delivered" and found["lead_id"] == lead_id
    assert found["attempts"] == 1  # found, not sent a second time
    assert deals_named(sandbox, title_of(row)) == [lead_id]


def test_failed_lead_is_sent_again_only_when_named(sandbox, env_file, db, capsys):
    [row] = queue_leads(sandbox, db, 1)
    with closing(Store(db)) as store:
        store.update_forwarding(row["id"], status="failed", last_error="Rejected: bad stage")

    code, out, _ = run(capsys, env_file, db, "retry")
    assert code == 1
    assert "delivered 0, still queued 0, failed 1" in out and "Rejected: bad stage" in out
    assert deals_named(sandbox, title_of(row)) == []

    code, out, err = run(capsys, env_file, db, "retry", row["id"][:10])

    assert code == 0, out + err
    assert "delivered 1, still queued 0, failed 0" in out
    with closing(Store(db)) as store:
        sent = store.forwarding(row["id"])
    assert sent["status"] == "delivered" and sent["last_error"] is None
    assert deals_named(sandbox, title_of(row)) == [sent["lead_id"]]


def test_failed_after_a_lost_answer_is_looked_for_not_duplicated(sandbox, env_file, db, capsys):
    [row] = queue_leads(sandbox, db, 1)
    assert run(capsys, env_file, db, "retry")[0] == 0
    with closing(Store(db)) as store:
        lead_id = store.forwarding(row["id"])["lead_id"]
        # The answer was lost, then looking for the deal was refused: failed, deal in amoCRM.
        store.update_forwarding(
            row["id"], status="failed", lead_id=None, lead_url=None, last_error="403 Forbidden"
        )

    code, out, err = run(capsys, env_file, db, "retry", row["id"])

    assert code == 0, out + err
    with closing(Store(db)) as store:
        assert store.forwarding(row["id"])["lead_id"] == lead_id
    assert deals_named(sandbox, title_of(row)) == [lead_id]


def test_delivered_lead_is_refused(sandbox, env_file, db, capsys):
    [row] = queue_leads(sandbox, db, 1)
    assert run(capsys, env_file, db, "retry")[0] == 0
    requests_before = len(sandbox.amocrm.requests)

    code, out, err = run(capsys, env_file, db, "retry", row["id"])

    assert code == 0
    assert f"forwarding {row['id']} is delivered already" in err and "never sent twice" in err
    assert len(sandbox.amocrm.requests) == requests_before
    assert len(deals_named(sandbox, title_of(row))) == 1


def test_unknown_or_ambiguous_id_is_refused_before_anything_is_sent(sandbox, env_file, db, capsys):
    rows = queue_leads(sandbox, db, 1)
    with closing(Store(db)) as store:
        for forwarding_id in ("ab" + "1" * 30, "ab" + "2" * 30):
            store.accept_forwarding({"id": forwarding_id, "dedupe_key": forwarding_id}, 0)
    requests_before = len(sandbox.amocrm.requests)

    code, out, err = run(capsys, env_file, db, "retry", rows[0]["id"], "zz9")
    assert code == 2 and out == ""
    assert err == "tariti-mcp: no forwarding id begins with 'zz9'\n"

    code, out, err = run(capsys, env_file, db, "retry", "ab")
    assert code == 2 and "more than one forwarding id begins with 'ab'" in err

    assert len(sandbox.amocrm.requests) == requests_before
    with closing(Store(db)) as store:
        assert store.forwarding(rows[0]["id"])["status"] == "queued"


def test_retry_needs_amocrm_configured(tmp_path, db, capsys):
    empty = write_env(tmp_path / "empty.env", {"TARITI_LOG_LEVEL": "WARNING"})
    code, out, err = run(capsys, empty, db, "retry")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "AMOCRM_BASE_URL" in err


def test_retry_while_amocrm_is_down_keeps_the_leads_queued(sandbox, tmp_path, db, capsys):
    rows = queue_leads(sandbox, db, 2)
    down = write_env(
        tmp_path / "down.env",
        {"AMOCRM_BASE_URL": f"http://127.0.0.1:{closed_port()}", "AMOCRM_API_KEY": "k" * 40},
    )

    code, out, err = run(capsys, down, db, "retry")

    assert code == 1
    assert "still queued 2" in out and "amoCRM cannot take leads now" in out
    with closing(Store(db)) as store:
        for row in rows:
            left = store.forwarding(row["id"])
            assert left["status"] == "queued" and left["next_attempt_at"] > time.time()
    assert "k" * 40 not in out + err


def test_emulator_settings_without_a_database_are_refused(env_file, capsys):
    # Such settings mean a scratch database per process, which never holds the server's outbox.
    code = main(["outbox", "--env-file", env_file])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--db" in err


def test_options_count_before_or_after_the_word(sandbox, env_file, db, capsys):
    [row] = queue_leads(sandbox, db, 1)
    capsys.readouterr()
    assert main(["outbox", "--json", "--db", db, "--env-file", env_file, "list"]) == 0
    [record] = map(json.loads, capsys.readouterr().out.splitlines())
    assert record["id"] == row["id"]
