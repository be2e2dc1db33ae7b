"""The SQLite database dashboards read: amoCRM entities, forwarded leads, Moizvonki calls.

One row per entity id, plain columns for what a widget needs and the raw JSON beside them.
The schema is versioned with ``PRAGMA user_version`` and migrated when the file is opened;
docs/store.md is the contract for dashboard authors.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils
from filelock import FileLock

from . import phones

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 5

# A column value the answer did not carry: keep what the store already has.
UNKNOWN: Any = object()


# Values come from parsed JSON answers or our own dicts, never circular: the check is skipped.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=str, check_circular=False
)


def _json(value: Any) -> str:
    return _ENCODER.encode(value)


def _int(value: Any) -> int | None:
    """Tolerant integer: the APIs send numbers, numeric strings, empty strings or nothing.

    Anything SQLite cannot hold as an integer (NaN, infinities, 20-digit ids) is None.
    """
    if type(value) is int:  # the usual case, first: a sync reads a dozen numbers per call
        number = value
    elif isinstance(value, bool):
        return int(value)
    elif value is None or isinstance(value, dict | list):
        return None
    elif isinstance(value, int):
        number = int(value)
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            try:
                number = int(float(value))
            except (TypeError, ValueError, OverflowError):
                return None
    return number if -(2**63) <= number < 2**63 else None


def _flag(value: Any) -> int:
    """0 or 1 from a flag sent as a number, a numeric string or text ("true", "false")."""
    if isinstance(value, str) and value.strip().lower() in ("true", "yes"):
        return 1
    return 1 if _int(value) == 1 else 0


def _text(value: Any) -> str | None:
    """A text column from a scalar; a nested object is not a value for a plain column."""
    if type(value) is str:
        return value
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _now() -> int:
    return int(time.time())


def _migrate_1(db: sqlite_utils.Database) -> None:
    entity = {"raw": str, "fetched_at": int}
    db["amocrm_leads"].create(
        {
            "id": int,
            "name": str,
            "price": int,
            "pipeline_id": int,
            "status_id": int,
            "responsible_user_id": int,
            "contact_id": int,
            "company_id": int,
            "tags": str,
            "created_at": int,
            "updated_at": int,
            "closed_at": int,
            "is_deleted": int,
            **entity,
        },
        pk="id",
    )
    db["amocrm_leads"].create_index(["pipeline_id", "status_id"])
    db["amocrm_leads"].create_index(["created_at"])
    db["amocrm_contacts"].create(
        {
            "id": int,
            "name": str,
            "first_name": str,
            "last_name": str,
            "responsible_user_id": int,
            "phones": str,
            "phone_last10": str,
            "emails": str,
            "created_at": int,
            "updated_at": int,
            **entity,
        },
        pk="id",
    )
    db["amocrm_companies"].create(
        {
            "id": int,
            "name": str,
            "responsible_user_id": int,
            "created_at": int,
            "updated_at": int,
            **entity,
        },
        pk="id",
    )
    db["amocrm_pipelines"].create(
        {"id": int, "name": str, "sort": int, "is_main": int, "is_archive": int, **entity},
        pk="id",
    )
    db["amocrm_statuses"].create(
        {
            "pipeline_id": int,
            "id": int,
            "name": str,
            "sort": int,
            "type": int,
            "color": str,
            **entity,
        },
        pk=("pipeline_id", "id"),
    )
    db["amocrm_users"].create(
        {"id": int, "name": str, "email": str, "is_admin": int, "is_active": int, **entity},
        pk="id",
    )
    db["forwarded_leads"].create(
        {
            "id": str,
            "external_id": str,
            "status": str,
            "name": str,
            "phone": str,
            "email": str,
            "source": str,
            "lead_id": int,
            "contact_id": int,
            "contact_existed": int,
            "lead_url": str,
            "attempts": int,
            "last_error": str,
            "request": str,
            "created_at": int,
            "updated_at": int,
        },
        pk="id",
    )
    db["forwarded_leads"].create_index(["external_id"], unique=True)
    db["forwarded_leads"].create_index(["status"])
    db["moizvonki_calls"].create(
        {
            "db_call_id": int,
            "direction": int,
            "answered": int,
            "start_time": int,
            "answer_time": int,
            "end_time": int,
            "duration": int,
            "upload_time": int,
            "client_number": str,
            "client_last10": str,
            "client_name": str,
            "user_id": int,
            "user_account": str,
            "src_number": str,
            "recording": str,
            **entity,
        },
        pk="db_call_id",
    )
    db["moizvonki_calls"].create_index(["start_time"])
    db["moizvonki_calls"].create_index(["user_account", "start_time"])
    db["moizvonki_calls"].create_index(["client_last10"])
    db["moizvonki_employees"].create(
        {
            "id": int,
            "display_name": str,
            "email": str,
            "group_id": int,
            "group_name": str,
            "role": str,
            **entity,
        },
        pk="id",
    )
    db["sync_state"].create(
        {
            "name": str,
            "cursor": int,
            "covered_from": int,
            "last_synced_at": int,
            "last_error": str,
            "info": str,
        },
        pk="name",
    )


def _migrate_2(db: sqlite_utils.Database) -> None:
    # The OAuth pair lives here so a restart, or a second process, finds the newest one.
    db["amocrm_tokens"].create(
        {
            "account": str,
            "access_token": str,
            "refresh_token": str,
            "expires_at": int,
            "state": str,
            "last_error": str,
            "updated_at": int,
        },
        pk="account",
    )
    db["amocrm_token_seeds"].create(
        {"digest": str, "account": str, "used_at": int},
        pk="digest",
    )


def _migrate_3(db: sqlite_utils.Database) -> None:
    # The outbox: a forwarding is a row that moves queued -> sending -> delivered (or unknown,
    # checked in amoCRM, or failed with amoCRM's reason); a process holds a row while it works
    # on it, so two processes never deliver one lead at once.
    table = db["forwarded_leads"]
    for column, kind in (
        ("dedupe_key", str),
        ("next_attempt_at", int),
        ("claimed_until", int),
        ("sent_at", int),
        ("delivered_at", int),
        ("company_id", int),
        ("amocrm_pipeline_id", int),
        ("amocrm_status_id", int),
        ("responsible_user_id", int),
        ("followups", str),
    ):
        table.add_column(column, kind)
    db.execute("UPDATE forwarded_leads SET status = 'queued' WHERE status = 'pending'")
    # Left mid-write by version 2: the deal is looked for from the row's last change on.
    db.execute(
        "UPDATE forwarded_leads SET sent_at = updated_at WHERE status IN ('unknown', 'sending')"
    )
    table.create_index(["dedupe_key", "created_at"])
    table.create_index(["status", "next_attempt_at"])


# The per-day and per-hour counts analytics read instead of a year of calls. A call's local
# time is its start plus the business zone's UTC offset in effect then (moizvonki_call_zone);
# the counts are kept by triggers, so every write to moizvonki_calls, from any process, keeps
# them exact. Unknown direction is -1 and an unknown employee ''.
_LOCAL = (
    "(coalesce({row}.start_time, 0) + coalesce((SELECT utc_offset FROM moizvonki_call_zone "
    "WHERE since <= coalesce({row}.start_time, 0) ORDER BY since DESC LIMIT 1), 0))"
)
_WAITED = (
    "CASE WHEN {row}.direction = 0 AND {row}.answered = 1 "
    "AND {row}.answer_time >= {row}.start_time THEN 1 ELSE 0 END"
)
_CELLS = {
    "moizvonki_call_days": ("user_account", "coalesce({row}.user_account, '')"),
    "moizvonki_call_hours": ("hour", _LOCAL + " % 86400 / 3600"),
}


def _cell_key(table: str, row: str) -> dict[str, str]:
    column, value = _CELLS[table]
    return {
        "day": (_LOCAL + " / 86400").format(row=row),
        "direction": f"coalesce({row}.direction, -1)",
        "answered": f"coalesce({row}.answered, 0)",
        column: value.format(row=row),
    }


def _cell_values(row: str) -> dict[str, str]:
    waited = _WAITED.format(row=row)
    return {
        "calls": "1",
        "duration_seconds": f"coalesce({row}.duration, 0)",
        "wait_seconds": f"CASE WHEN {waited} = 1 THEN {row}.answer_time - {row}.start_time "
        "ELSE 0 END",
        "waited_calls": waited,
    }


def _count_call(table: str) -> str:
    cells = {**_cell_key(table, "NEW"), **_cell_values("NEW")}
    added = ", ".join(f"{name} = {name} + excluded.{name}" for name in _cell_values("NEW"))
    return (
        f"INSERT INTO {table} ({', '.join(cells)}) VALUES ({', '.join(cells.values())}) "
        f"ON CONFLICT DO UPDATE SET {added};"
    )


def _uncount_call(table: str) -> str:
    key = " AND ".join(f"{name} = {value}" for name, value in _cell_key(table, "OLD").items())
    taken = ", ".join(f"{name} = {name} - ({value})" for name, value in _cell_values("OLD").items())
    return (
        f"UPDATE {table} SET {taken} WHERE {key}; DELETE FROM {table} WHERE calls <= 0 AND {key};"
    )


def _count_calls_sql(table: str) -> str:
    """Every stored call counted again, for a new zone."""
    key = _cell_key(table, "moizvonki_calls")
    values = _cell_values("moizvonki_calls")
    sums = ", ".join(f"sum({value})" for value in values.values())
    return (
        f"INSERT INTO {table} ({', '.join(key)}, {', '.join(values)}) "
        f"SELECT {', '.join(key.values())}, {sums} FROM moizvonki_calls "
        f"GROUP BY {', '.join(str(i + 1) for i in range(len(key)))}"
    )


_COUNTED = ("start_time", "direction", "answered", "duration", "answer_time", "user_account")


def _migrate_4(db: sqlite_utils.Database) -> None:
    # Covering indexes: each analytics query reads one index and never the rows with their JSON.
    for old in ("start_time", "client_last10", "user_account_start_time"):
        db.execute(f"DROP INDEX IF EXISTS idx_moizvonki_calls_{old}")
    for name, columns in (
        (
            "time",
            "start_time, direction, answered, duration, answer_time, user_account, client_last10",
        ),
        ("client", "client_last10, start_time, direction, answered, user_account"),
        ("employee", "user_account, start_time, direction, answered, duration, answer_time"),
        ("sim", "src_number"),
    ):
        db.execute(f"CREATE INDEX idx_moizvonki_calls_{name} ON moizvonki_calls ({columns})")
    # The median talk time reads answered calls in order of duration, up to the middle one.
    db.execute(
        "CREATE INDEX idx_moizvonki_calls_duration ON moizvonki_calls "
        "(duration, start_time, direction, user_account, answered) WHERE answered = 1"
    )

    db.execute(
        "CREATE TABLE moizvonki_call_zone (since INTEGER PRIMARY KEY, "
        "utc_offset INTEGER NOT NULL, zone TEXT NOT NULL)"
    )
    db.execute("INSERT INTO moizvonki_call_zone VALUES (?, 0, 'UTC')", [-(2**63)])
    measures = (
        "calls INTEGER NOT NULL, duration_seconds INTEGER NOT NULL, "
        "wait_seconds INTEGER NOT NULL, waited_calls INTEGER NOT NULL"
    )
    db.execute(
        "CREATE TABLE moizvonki_call_days (day INTEGER NOT NULL, direction INTEGER NOT NULL, "
        f"answered INTEGER NOT NULL, user_account TEXT NOT NULL, {measures}, "
        "PRIMARY KEY (day, direction, answered, user_account)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE moizvonki_call_hours (day INTEGER NOT NULL, hour INTEGER NOT NULL, "
        f"direction INTEGER NOT NULL, answered INTEGER NOT NULL, {measures}, "
        "PRIMARY KEY (day, hour, direction, answered)) WITHOUT ROWID"
    )
    tables = list(_CELLS)
    add = " ".join(_count_call(table) for table in tables)
    remove = " ".join(_uncount_call(table) for table in tables)
    changed = " OR ".join(f"OLD.{column} IS NOT NEW.{column}" for column in _COUNTED)
    db.execute(
        f"CREATE TRIGGER moizvonki_calls_counted AFTER INSERT ON moizvonki_calls BEGIN {add} END"
    )
    db.execute(
        f"CREATE TRIGGER moizvonki_calls_uncounted AFTER DELETE ON moizvonki_calls "
        f"BEGIN {remove} END"
    )
    db.execute(
        f"CREATE TRIGGER moizvonki_calls_recounted AFTER UPDATE OF {', '.join(_COUNTED)} "
        f"ON moizvonki_calls WHEN {changed} BEGIN {remove} {add} END"
    )
    for table in tables:
        db.execute(_count_calls_sql(table))

    # The figures of get_moizvonki_analytics a dashboard reads by date (in the counts' zone).
    figures = """
        sum(calls) AS total_calls,
        sum(CASE WHEN direction = 0 THEN calls ELSE 0 END) AS incoming,
        sum(CASE WHEN direction = 1 THEN calls ELSE 0 END) AS outgoing,
        sum(CASE WHEN answered = 1 THEN calls ELSE 0 END) AS answered,
        sum(CASE WHEN answered = 0 THEN calls ELSE 0 END) AS missed,
        sum(CASE WHEN answered = 1 THEN duration_seconds ELSE 0 END) AS total_duration_seconds,
        sum(wait_seconds) AS wait_seconds,
        sum(waited_calls) AS waited_calls
    """
    day = "date(day * 86400, 'unixepoch') AS date"
    db.execute(
        f"CREATE VIEW moizvonki_daily AS SELECT {day}, {figures} "
        "FROM moizvonki_call_days GROUP BY day"
    )
    db.execute(
        f"CREATE VIEW moizvonki_daily_by_employee AS SELECT {day}, user_account, {figures} "
        "FROM moizvonki_call_days GROUP BY day, user_account"
    )
    db.execute(
        f"CREATE VIEW moizvonki_hourly AS SELECT {day}, hour, {figures} "
        "FROM moizvonki_call_hours GROUP BY day, hour"
    )


def _migrate_5(db: sqlite_utils.Database) -> None:
    # Moizvonki webhooks: calls still ringing or talking, kept apart so they never count in
    # analytics, and every event received, as it came, with what was done with it.
    db.execute(
        "CREATE TABLE moizvonki_live_calls (event_pbx_call_id TEXT PRIMARY KEY, "
        "state TEXT NOT NULL, db_call_id INTEGER, user_id INTEGER, user_account TEXT, "
        "direction INTEGER, client_number TEXT, client_name TEXT, started_at INTEGER, "
        "answered_at INTEGER, ended_at INTEGER, updated_at INTEGER NOT NULL, raw TEXT)"
    )
    db.execute("CREATE INDEX idx_moizvonki_live_calls_state ON moizvonki_live_calls (state)")
    db.execute(
        "CREATE TABLE moizvonki_webhook_events (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "received_at INTEGER NOT NULL, action TEXT, event_pbx_call_id TEXT, db_call_id INTEGER, "
        "outcome TEXT NOT NULL, body TEXT)"
    )
    db.execute(
        "CREATE INDEX idx_moizvonki_webhook_events_received ON moizvonki_webhook_events "
        "(received_at)"
    )


# How long the webhook audit log keeps an event: long enough to look into any complaint about
# a call; the calls themselves stay in moizvonki_calls.
WEBHOOK_EVENTS_DAYS = 90

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migrate_1,
    _migrate_2,
    _migrate_3,
    _migrate_4,
    _migrate_5,
]


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only, before SQLite opens it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(descriptor)
    try:
        os.chmod(path, 0o600)
    except PermissionError:  # pragma: no cover - a file owned by someone else
        logger.warning("cannot restrict permissions of %s", path)


def _call_row(call: dict[str, Any], now: int) -> tuple[Any, ...] | None:
    """A ``moizvonki_calls`` row from a call as calls.list or a call.finish webhook gives it;
    None (logged) when it has no positive id or no numeric start time."""
    call_id = _int(call.get("db_call_id"))
    start = _int(call.get("start_time"))
    if call_id is None or call_id <= 0 or isinstance(call.get("db_call_id"), bool) or start is None:
        # The id only: the row may hold a client's number.
        logger.warning(
            "skipped a call that cannot be read (db_call_id %r, start_time %r)",
            str(call.get("db_call_id"))[:20],
            str(call.get("start_time"))[:20],
        )
        return None
    number = (_text(call.get("client_number")) or "").strip()
    return (
        call_id,
        _int(call.get("direction")),
        _flag(call.get("answered")),
        start,
        _int(call.get("answer_time")) or 0,
        _int(call.get("end_time")),
        _int(call.get("duration")) or 0,
        _int(call.get("upload_time")),
        number,
        phones.last10(number),
        _text(call.get("client_name")),
        _int(call.get("user_id")),
        _text(call.get("user_account")) or None,
        _text(call.get("src_number")) or None,
        _text(call.get("recording")) or "",
        _json(call),
        now,
    )


# One statement per call: sqlite-utils' generic upsert costs several times more per row, and a
# year's log is a few hundred thousand rows. Owner fields come only with supervised=1, so a NULL
# never erases one already stored.
_UPSERT_CALL = """
INSERT INTO moizvonki_calls (
    db_call_id, direction, answered, start_time, answer_time, end_time, duration, upload_time,
    client_number, client_last10, client_name, user_id, user_account, src_number, recording,
    raw, fetched_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (db_call_id) DO UPDATE SET
    direction = excluded.direction,
    answered = excluded.answered,
    start_time = excluded.start_time,
    answer_time = excluded.answer_time,
    end_time = excluded.end_time,
    duration = excluded.duration,
    upload_time = excluded.upload_time,
    client_number = excluded.client_number,
    client_last10 = excluded.client_last10,
    client_name = excluded.client_name,
    user_id = COALESCE(excluded.user_id, moizvonki_calls.user_id),
    user_account = COALESCE(excluded.user_account, moizvonki_calls.user_account),
    src_number = COALESCE(excluded.src_number, moizvonki_calls.src_number),
    recording = excluded.recording,
    raw = excluded.raw,
    fetched_at = excluded.fetched_at
"""
_INSERT_NEW_CALL = _UPSERT_CALL.split("ON CONFLICT")[0] + "ON CONFLICT (db_call_id) DO NOTHING"


class Store:
    """The database, opened and migrated. Safe to share between tasks on one event loop."""

    def __init__(self, path: str | os.PathLike[str] = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            _create_private(Path(self.path))
        connection = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        self.db = sqlite_utils.Database(connection)
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=10000")
        # The triggers that keep call counts make each write a statement with a journal of its
        # own: in memory, not a temporary file per statement. A larger cache keeps the indexes
        # a sync writes into (by client, by duration) from being read back page by page.
        self.db.execute("PRAGMA temp_store=MEMORY")
        self.db.execute("PRAGMA cache_size=-16000")
        self._migrate()

    def close(self) -> None:
        self.db.conn.close()

    def _migrate(self) -> None:
        if self.path == ":memory:":
            self._migrate_locked()
            return
        # Two servers started together on a new file must not both create its tables.
        with FileLock(self.path + ".migrate.lock", timeout=60):
            self._migrate_locked()

    def _migrate_locked(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database {self.path} has schema version {version}, newer than this "
                f"tariti-mcp understands ({SCHEMA_VERSION}); upgrade tariti-mcp"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with self.db.conn:
                MIGRATIONS[number - 1](self.db)
                self.db.execute(f"PRAGMA user_version = {number}")
            logger.info("database migrated to schema version %d", number)

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    # --- amoCRM -------------------------------------------------------------------------------

    def upsert_leads(self, leads: Iterable[dict[str, Any]]) -> int:
        now = _now()
        rows = []
        for lead in leads:
            if _int(lead.get("id")) is None:
                continue
            embedded = lead.get("_embedded") or {}
            contacts = embedded.get("contacts") or []
            main = next((c for c in contacts if c.get("is_main")), contacts[0] if contacts else {})
            companies = embedded.get("companies") or []
            tags = [t.get("name", "") for t in embedded.get("tags") or [] if isinstance(t, dict)]
            rows.append(
                {
                    "id": _int(lead["id"]),
                    "name": lead.get("name"),
                    "price": _int(lead.get("price")),
                    "pipeline_id": _int(lead.get("pipeline_id")),
                    "status_id": _int(lead.get("status_id")),
                    "responsible_user_id": _int(lead.get("responsible_user_id")),
                    # Only a read made `with=contacts` says who the contact is.
                    "contact_id": (_int(main.get("id")) if main else None)
                    if "contacts" in embedded
                    else UNKNOWN,
                    "company_id": (_int(companies[0].get("id")) if companies else None)
                    if "companies" in embedded
                    else UNKNOWN,
                    "tags": ",".join(tags),
                    "created_at": _int(lead.get("created_at")),
                    "updated_at": _int(lead.get("updated_at")),
                    "closed_at": _int(lead.get("closed_at")),
                    "is_deleted": int(bool(lead.get("is_deleted"))),
                    "raw": _json(lead),
                    "fetched_at": now,
                }
            )
        return self._upsert("amocrm_leads", rows, "id", keep=("contact_id", "company_id"))

    def upsert_contacts(self, contacts: Iterable[dict[str, Any]]) -> int:
        now = _now()
        rows = []
        for contact in contacts:
            if _int(contact.get("id")) is None:
                continue
            phone_values = field_values(contact, "PHONE")
            emails = [e.strip().lower() for e in field_values(contact, "EMAIL") if e.strip()]
            tails = sorted({t for t in map(phones.last10, phone_values) if t})
            rows.append(
                {
                    "id": _int(contact["id"]),
                    "name": contact.get("name"),
                    "first_name": contact.get("first_name"),
                    "last_name": contact.get("last_name"),
                    "responsible_user_id": _int(contact.get("responsible_user_id")),
                    "phones": _json(phone_values),
                    "phone_last10": " ".join(tails),
                    "emails": _json(emails),
                    "created_at": _int(contact.get("created_at")),
                    "updated_at": _int(contact.get("updated_at")),
                    "raw": _json(contact),
                    "fetched_at": now,
                }
            )
        return self._upsert("amocrm_contacts", rows, "id")

    def upsert_companies(self, companies: Iterable[dict[str, Any]]) -> int:
        now = _now()
        rows = [
            {
                "id": _int(c["id"]),
                "name": c.get("name"),
                "responsible_user_id": _int(c.get("responsible_user_id")),
                "created_at": _int(c.get("created_at")),
                "updated_at": _int(c.get("updated_at")),
                "raw": _json(c),
                "fetched_at": now,
            }
            for c in companies
            if _int(c.get("id")) is not None
        ]
        return self._upsert("amocrm_companies", rows, "id")

    def upsert_pipelines(self, pipelines: Iterable[dict[str, Any]]) -> int:
        now = _now()
        pipeline_rows, status_rows = [], []
        for pipeline in pipelines:
            pipeline_id = _int(pipeline.get("id"))
            if pipeline_id is None:
                continue
            statuses = (pipeline.get("_embedded") or {}).get("statuses") or []
            pipeline_rows.append(
                {
                    "id": pipeline_id,
                    "name": pipeline.get("name"),
                    "sort": _int(pipeline.get("sort")),
                    "is_main": int(bool(pipeline.get("is_main"))),
                    "is_archive": int(bool(pipeline.get("is_archive"))),
                    "raw": _json(pipeline),
                    "fetched_at": now,
                }
            )
            status_rows.extend(self._status_row(status, pipeline_id, now) for status in statuses)
        self._upsert("amocrm_statuses", [r for r in status_rows if r], ("pipeline_id", "id"))
        return self._upsert("amocrm_pipelines", pipeline_rows, "id")

    def upsert_statuses(self, statuses: Iterable[dict[str, Any]]) -> int:
        now = _now()
        rows = [self._status_row(s, _int(s.get("pipeline_id")), now) for s in statuses]
        return self._upsert("amocrm_statuses", [r for r in rows if r], ("pipeline_id", "id"))

    @staticmethod
    def _status_row(status: dict[str, Any], pipeline_id: int | None, now: int) -> dict | None:
        status_id = _int(status.get("id"))
        pipeline_id = _int(status.get("pipeline_id")) or pipeline_id
        if status_id is None or pipeline_id is None:
            return None
        return {
            "pipeline_id": pipeline_id,
            "id": status_id,
            "name": status.get("name"),
            "sort": _int(status.get("sort")),
            "type": _int(status.get("type")),
            "color": status.get("color"),
            "raw": _json(status),
            "fetched_at": now,
        }

    def upsert_users(self, users: Iterable[dict[str, Any]]) -> int:
        now = _now()
        rows = []
        for user in users:
            if _int(user.get("id")) is None:
                continue
            rights = user.get("rights") or {}
            rows.append(
                {
                    "id": _int(user["id"]),
                    "name": user.get("name"),
                    "email": user.get("email"),
                    "is_admin": int(bool(rights.get("is_admin"))),
                    "is_active": int(bool(rights.get("is_active", True))),
                    "raw": _json(user),
                    "fetched_at": now,
                }
            )
        return self._upsert("amocrm_users", rows, "id")

    # --- forwarded leads (the outbox) --------------------------------------------------------

    def forwarding_by_external_id(self, external_id: str) -> dict[str, Any] | None:
        rows = list(self.db["forwarded_leads"].rows_where("external_id = ?", [external_id]))
        return rows[0] if rows else None

    def accept_forwarding(
        self, record: dict[str, Any], window: float
    ) -> tuple[dict[str, Any], bool]:
        """Record a forwarding before anything is sent; return (row, True) when it is new.

        A forwarding with the same ``external_id``, or else with the same ``dedupe_key`` made
        less than ``window`` seconds ago and not failed, is returned as it is, with False. The
        check and the insert are one transaction, so two processes cannot both accept one lead.
        """
        now = _now()
        row = {
            "status": "queued",
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "next_attempt_at": now,
            **record,
        }
        with self._immediate():
            earlier = self.find_forwarding(
                record.get("external_id"), record["dedupe_key"], window, now
            )
            if earlier is not None:
                return earlier, False
            self.db["forwarded_leads"].insert(row)
        return self.forwarding(record["id"]) or row, True

    def find_forwarding(
        self,
        external_id: str | None,
        dedupe_key: str,
        window: float,
        now: float | None = None,
    ) -> dict[str, Any] | None:
        """The forwarding a new lead repeats: the same ``external_id``; or, for a lead without
        one, the newest not failed with the same ``dedupe_key`` less than ``window`` seconds
        old (whether or not that one had an external_id)."""
        if external_id:
            return self.forwarding_by_external_id(external_id)
        if window <= 0:
            return None  # no window: every lead without an external_id is new
        since = (now if now is not None else time.time()) - window
        return next(
            self.query(
                "SELECT * FROM forwarded_leads WHERE dedupe_key = ? AND created_at >= ? "
                "AND status != 'failed' ORDER BY created_at DESC LIMIT 1",
                [dedupe_key, since],
            ),
            None,
        )

    def update_forwarding(self, forwarding_id: str, **fields: Any) -> None:
        fields["updated_at"] = _now()
        with self.db.conn:
            self.db["forwarded_leads"].update(forwarding_id, fields)

    def forwarding(self, forwarding_id: str) -> dict[str, Any] | None:
        rows = list(self.db["forwarded_leads"].rows_where("id = ?", [forwarding_id]))
        return rows[0] if rows else None

    def take_forwarding(self, forwarding_id: str, lease: float) -> dict[str, Any] | None:
        """Hold a forwarding for ``lease`` seconds; None when another worker holds it now."""
        now = _now()
        with self._immediate():
            cursor = self.db.execute(
                "UPDATE forwarded_leads SET claimed_until = ? WHERE id = ? "
                "AND (claimed_until IS NULL OR claimed_until < ?)",
                [now + int(lease), forwarding_id, now],
            )
            if cursor.rowcount != 1:
                return None
        return self.forwarding(forwarding_id)

    def release_forwarding(self, forwarding_id: str, claimed_until: int | None = None) -> None:
        """Let go of a forwarding; with ``claimed_until``, only if that hold is still ours."""
        with self.db.conn:
            if claimed_until is None:
                self.db.execute(
                    "UPDATE forwarded_leads SET claimed_until = NULL WHERE id = ?", [forwarding_id]
                )
            else:
                self.db.execute(
                    "UPDATE forwarded_leads SET claimed_until = NULL "
                    "WHERE id = ? AND claimed_until = ?",
                    [forwarding_id, claimed_until],
                )

    def due_forwardings(self, now: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Forwardings with work to do now, oldest first: queued, unknown, left mid-send by a
        process that is gone, or delivered with a step (note, company) still to make."""
        at = int(now if now is not None else time.time())
        return list(
            self.query(
                "SELECT * FROM forwarded_leads WHERE (claimed_until IS NULL OR claimed_until < ?) "
                "AND (status IN ('queued', 'unknown', 'sending') "
                "OR (status = 'delivered' AND followups IS NOT NULL AND followups != '[]')) "
                "AND COALESCE(next_attempt_at, 0) <= ? ORDER BY created_at, id LIMIT ?",
                [at, at, limit],
            )
        )

    def pending_leads(self) -> list[dict[str, Any]]:
        """Forwardings not delivered yet, and failed ones, for people to look at."""
        return list(
            self.query(
                "SELECT * FROM forwarded_leads WHERE status != 'delivered' "
                "OR (followups IS NOT NULL AND followups != '[]') ORDER BY created_at, id"
            )
        )

    def lead_claimed(self, lead_id: int, other_than: str) -> bool:
        """Another forwarding already owns this amoCRM deal."""
        return (
            next(
                self.query(
                    "SELECT 1 FROM forwarded_leads WHERE lead_id = ? AND id != ? LIMIT 1",
                    [lead_id, other_than],
                ),
                None,
            )
            is not None
        )

    @contextmanager
    def _immediate(self) -> Iterator[None]:
        """A write transaction taken at once, so a read inside it cannot go stale."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.conn.rollback()
            raise
        self.db.conn.commit()

    # --- amoCRM OAuth tokens ------------------------------------------------------------------

    def token_pair(self, account: str) -> dict[str, Any] | None:
        rows = list(self.query("SELECT * FROM amocrm_tokens WHERE account = ?", [account]))
        return rows[0] if rows else None

    def save_token_pair(
        self,
        account: str,
        *,
        access_token: str,
        refresh_token: str,
        expires_at: int,
        seed_digest: str | None = None,
    ) -> None:
        """Replace the account's pair in one transaction, durable before the pair is used."""
        now = _now()
        with self.db.conn:
            self.db.execute(
                """
                INSERT INTO amocrm_tokens (account, access_token, refresh_token, expires_at,
                                           state, last_error, updated_at)
                VALUES (?, ?, ?, ?, 'valid', NULL, ?)
                ON CONFLICT(account) DO UPDATE SET
                    access_token = excluded.access_token,
                    refresh_token = excluded.refresh_token,
                    expires_at = excluded.expires_at,
                    state = 'valid', last_error = NULL, updated_at = excluded.updated_at
                """,
                [account, access_token, refresh_token, expires_at, now],
            )
            if seed_digest is not None:
                self._insert_seed(account, seed_digest)

    def mark_tokens_refused(self, account: str, reason: str) -> None:
        with self.db.conn:
            self.db.execute(
                "UPDATE amocrm_tokens SET state = 'refused', last_error = ?, updated_at = ? "
                "WHERE account = ?",
                [reason, _now(), account],
            )

    def remember_seed(self, account: str, digest: str) -> None:
        with self.db.conn:
            self._insert_seed(account, digest)

    def _insert_seed(self, account: str, digest: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO amocrm_token_seeds (digest, account, used_at) VALUES (?, ?, ?)",
            [digest, account, _now()],
        )

    def seed_used(self, account: str, digest: str) -> bool:
        found = self.query(
            "SELECT 1 AS used FROM amocrm_token_seeds WHERE digest = ? AND account = ?",
            [digest, account],
        )
        return next(found, None) is not None

    # --- Moizvonki ----------------------------------------------------------------------------

    def upsert_calls(self, calls: Iterable[dict[str, Any]]) -> tuple[int, int | None]:
        """Store calls by ``db_call_id``; return how many and the highest id seen.

        A row that cannot be read (no positive id, no numeric start time) is logged and
        skipped. Numbers may come as strings and ``answered`` as text. An owner field the answer
        does not carry (``supervised`` off) or carries empty keeps the value already stored.
        """
        now = _now()
        rows = [row for row in (_call_row(call, now) for call in calls) if row is not None]
        if rows:
            with self.db.conn:
                self.db.conn.executemany(_UPSERT_CALL, rows)
        return len(rows), max((row[0] for row in rows), default=None)

    def add_call(self, call: dict[str, Any]) -> bool | None:
        """Store a call the store does not hold yet, read as ``upsert_calls`` reads it.

        True when added, False when a row with its id was there already (left as it is: a
        webhook never overwrites what ``calls.list`` stored), None when it cannot be read.
        """
        row = _call_row(call, _now())
        if row is None:
            return None
        with self.db.conn:
            added = self.db.conn.execute(_INSERT_NEW_CALL, row).rowcount
        return added == 1

    def change_live_call(
        self,
        event_pbx_call_id: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """Read a live call, let ``change`` return its new row (None: leave it), write it.

        One write transaction, so two events of one call arriving together cannot lose one.
        Returns the row as stored afterwards.
        """
        with self._immediate():
            found = list(
                self.query(
                    "SELECT * FROM moizvonki_live_calls WHERE event_pbx_call_id = ?",
                    [event_pbx_call_id],
                )
            )
            current = found[0] if found else None
            changed = change(dict(current) if current is not None else None)
            if changed is None or changed == current:
                return current
            changed = {**changed, "event_pbx_call_id": event_pbx_call_id, "updated_at": _now()}
            columns = ", ".join(changed)
            marks = ", ".join("?" for _ in changed)
            self.db.execute(
                f"INSERT OR REPLACE INTO moizvonki_live_calls ({columns}) VALUES ({marks})",
                list(changed.values()),
            )
        return changed

    def record_webhook_event(
        self,
        *,
        action: str | None,
        outcome: str,
        body: str,
        event_pbx_call_id: str | None = None,
        db_call_id: int | None = None,
        received_at: int | None = None,
    ) -> int:
        """Add one received webhook event to the audit log; return its id. Events older than
        :data:`WEBHOOK_EVENTS_DAYS` go as new ones come, so the log cannot grow without end."""
        with self.db.conn:
            self.db.execute(
                "DELETE FROM moizvonki_webhook_events WHERE received_at < ?",
                [_now() - WEBHOOK_EVENTS_DAYS * 86400],
            )
            cursor = self.db.execute(
                "INSERT INTO moizvonki_webhook_events (received_at, action, event_pbx_call_id, "
                "db_call_id, outcome, body) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    received_at if received_at is not None else _now(),
                    action,
                    event_pbx_call_id,
                    db_call_id,
                    outcome,
                    body,
                ],
            )
        return int(cursor.lastrowid or 0)

    def upsert_employees(self, employees: Iterable[dict[str, Any]]) -> int:
        now = _now()
        rows = [
            {
                "id": _int(e["id"]),
                "display_name": e.get("display_name"),
                "email": e.get("email"),
                "group_id": _int(e.get("group_id")),
                "group_name": e.get("group_name"),
                "role": e.get("role"),
                "raw": _json(e),
                "fetched_at": now,
            }
            for e in employees
            if _int(e.get("id")) is not None
        ]
        return self._upsert("moizvonki_employees", rows, "id")

    def delete_employee(self, employee_id: Any, login: Any) -> int:
        """Forget an employee Moizvonki deleted, with their calls; return how many calls."""
        account = str(login).strip().lower() if login else None
        if account is None and _int(employee_id) is not None:
            rows = list(
                self.query(
                    "SELECT email FROM moizvonki_employees WHERE id = ?", [_int(employee_id)]
                )
            )
            account = (rows[0]["email"] or "").lower() if rows else None
        with self.db.conn:
            removed = self.db.execute(
                "DELETE FROM moizvonki_calls WHERE user_id = ? OR lower(user_account) = ?",
                [_int(employee_id), account],
            ).rowcount
            self.db.execute(
                "DELETE FROM moizvonki_employees WHERE id = ? OR lower(email) = ?",
                [_int(employee_id), account],
            )
        return removed

    def employees(self) -> list[dict[str, Any]]:
        return list(self.db["moizvonki_employees"].rows)

    def call_zone(self) -> tuple[str, list[tuple[int, int]]]:
        """The zone the per-day and per-hour call counts are in, and its (since, offset) rows."""
        rows = self.db.execute(
            "SELECT since, utc_offset, zone FROM moizvonki_call_zone ORDER BY since"
        ).fetchall()
        zone = rows[0][2] if rows else ""
        return zone, [(since, offset) for since, offset, _ in rows]

    def count_calls_in_zone(self, zone: str, offsets: list[tuple[int, int]]) -> None:
        """Count every call again by day and hour in ``zone``, whose UTC offset is
        ``offset`` from each ``since`` (Unix seconds; the first ``since`` the earliest)."""
        with self._immediate():
            self.db.execute("DELETE FROM moizvonki_call_zone")
            self.db.conn.executemany(
                "INSERT INTO moizvonki_call_zone (since, utc_offset, zone) VALUES (?, ?, ?)",
                [(since, offset, zone) for since, offset in offsets],
            )
            for table in _CELLS:
                self.db.execute(f"DELETE FROM {table}")
                self.db.execute(_count_calls_sql(table))
        logger.info("call counts recomputed in time zone %s", zone)

    # --- sync state ---------------------------------------------------------------------------

    def sync_state(self, name: str) -> dict[str, Any]:
        rows = list(self.db["sync_state"].rows_where("name = ?", [name]))
        return rows[0] if rows else {"name": name}

    def save_sync_state(self, name: str, **fields: Any) -> None:
        with self.db.conn:
            self.db["sync_state"].upsert({"name": name, **fields}, pk="name")

    # --- plumbing -----------------------------------------------------------------------------

    def _upsert(
        self, table: str, rows: list[dict[str, Any]], pk: Any, keep: tuple[str, ...] = ()
    ) -> int:
        """Insert or replace rows; a ``keep`` column marked UNKNOWN keeps its stored value."""
        if not rows:
            return 0
        if keep:
            self._fill_unknown(table, rows, pk, keep)
        with self.db.conn:
            self.db[table].upsert_all(rows, pk=pk)
        return len(rows)

    def _fill_unknown(
        self, table: str, rows: list[dict[str, Any]], pk: str, columns: tuple[str, ...]
    ) -> None:
        partial: dict[Any, list[dict[str, Any]]] = {}
        for row in rows:
            if any(row[c] is UNKNOWN for c in columns):
                partial.setdefault(row[pk], []).append(row)
        ids = list(partial)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" for _ in chunk)
            selected = ", ".join(columns)
            sql = f"SELECT {pk}, {selected} FROM {table} WHERE {pk} IN ({marks})"
            for stored in self.query(sql, chunk):
                for row in partial[stored[pk]]:
                    for column in columns:
                        if row[column] is UNKNOWN:
                            row[column] = stored[column]
        for same_id in partial.values():
            for row in same_id:
                for column in columns:
                    if row[column] is UNKNOWN:
                        row[column] = None

    def query(self, sql: str, params: Iterable[Any] = ()) -> Iterator[dict[str, Any]]:
        cursor = self.db.execute(sql, list(params))
        names = [d[0] for d in cursor.description]
        for row in cursor:
            yield dict(zip(names, row, strict=True))


def field_values(entity: dict[str, Any], code: str) -> list[str]:
    """The values of a system multitext field (PHONE, EMAIL) of an amoCRM contact."""
    values = []
    for field in entity.get("custom_fields_values") or []:
        if isinstance(field, dict) and field.get("field_code") == code:
            values.extend(
                str(v.get("value", "")) for v in field.get("values") or [] if isinstance(v, dict)
            )
    return values
