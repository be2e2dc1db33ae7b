"""Bringing the amoCRM account into the store for dashboards: pipelines with their statuses and
users whole, leads, contacts and companies incrementally by ``updated_at``.

An incremental stream asks for ``filter[updated_at][from]`` in ascending ``updated_at`` order and
moves its start to the newest second it has stored after every page, so a run cut short goes on
from there, and a record edited during the walk moves to the end of the list instead of out from
under a page boundary. A page that is not in that order means the server ignored the order: the
stream then walks every page of its selection and starts its next run from the moment this one
began.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import AMOCRM, ServiceError
from ..http import WaitCallback
from ..store import Store
from ..syncing import Progress, exclusive
from .client import AmoCrmClient, list_items, next_link

logger = logging.getLogger(__name__)

PAGE_LIMIT = 250
LOCK_TIMEOUT = 15.0
# Guards against a server whose next links never end; a million records at 250 a page.
MAX_REQUESTS = 4000
# Whether filter[updated_at][from] is inclusive is not documented: asking from a second before
# the newest one stored fetches that second again either way.
OVERLAP = 1
# Without a usable order, edits made while the walk ran are caught by starting the next run this
# long before this one started (clocks of amoCRM and this machine may differ a little).
CLOCK_SLACK = 300


@dataclass(frozen=True)
class Stream:
    name: str
    path: str
    store: Callable[[Store, list[dict[str, Any]]], int]
    incremental: bool = True
    query: tuple[tuple[str, str], ...] = ()
    # Where an incremental stream's records are kept, to tell changed ones from ones read again.
    table: str = ""


STREAMS = (
    Stream("pipelines", "/api/v4/leads/pipelines", Store.upsert_pipelines, incremental=False),
    Stream("users", "/api/v4/users", Store.upsert_users, incremental=False),
    # with=contacts is what tells a lead's contact; companies come with every lead.
    Stream(
        "leads",
        "/api/v4/leads",
        Store.upsert_leads,
        query=(("with", "contacts"),),
        table="amocrm_leads",
    ),
    Stream("contacts", "/api/v4/contacts", Store.upsert_contacts, table="amocrm_contacts"),
    Stream("companies", "/api/v4/companies", Store.upsert_companies, table="amocrm_companies"),
)


def state_name(stream: Stream) -> str:
    return f"amocrm.{stream.name}"


@dataclass
class StreamReport:
    """What one stream's run did: requests sent, records stored (read again ones included), and
    of those the ones new or changed since the store last had them."""

    name: str
    requests: int = 0
    records: int = 0
    changed: int = 0
    cursor: int | None = None
    ordered: bool = True


@dataclass
class AmoSyncReport:
    streams: list[StreamReport] = field(default_factory=list)
    synced_at: int | None = None

    @property
    def requests(self) -> int:
        return sum(stream.requests for stream in self.streams)


async def sync_amocrm(
    client: AmoCrmClient,
    store: Store,
    *,
    streams: tuple[Stream, ...] = STREAMS,
    progress: Progress | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> AmoSyncReport:
    """Sync each stream in turn; a stream that fails keeps its place and stops the run with the
    ServiceError, the streams before it stored."""
    report = AmoSyncReport()
    async with exclusive(
        store,
        ".amocrm-sync.lock",
        service=AMOCRM,
        what="the amoCRM account",
        timeout=lock_timeout,
        progress=progress,
    ):
        for stream in streams:
            stream_report = StreamReport(stream.name)
            report.streams.append(stream_report)
            try:
                await _sync_stream(client, store, stream, stream_report, progress)
            except ServiceError as exc:
                store.save_sync_state(state_name(stream), last_error=str(exc))
                raise
    report.synced_at = int(time.time())
    logger.info(
        "synced amoCRM: %s in %d requests",
        ", ".join(f"{s.records} {s.name}" for s in report.streams),
        report.requests,
    )
    return report


async def _sync_stream(
    client: AmoCrmClient,
    store: Store,
    stream: Stream,
    report: StreamReport,
    progress: Progress | None,
) -> None:
    name = state_name(stream)
    started = int(time.time())
    state = store.sync_state(name)
    if not stream.incremental:
        await _walk_all(client, store, stream, report, progress, since=None)
        store.save_sync_state(name, last_synced_at=started, last_error=None)
        return

    cursor = state.get("cursor")
    if report.ordered:
        cursor = await _walk_ordered(client, store, stream, report, progress, cursor, state)
    if not report.ordered:
        logger.warning(
            "amoCRM did not list %s in updated_at order; reading every page of the selection",
            stream.name,
        )
        await _walk_all(client, store, stream, report, progress, since=cursor)
        cursor = started - CLOCK_SLACK if cursor is None else max(cursor, started - CLOCK_SLACK)
    report.cursor = cursor
    store.save_sync_state(name, cursor=cursor, info=None, last_synced_at=started, last_error=None)


def _query(stream: Stream, since: int | None, page: int, ordered: bool) -> list[tuple[str, str]]:
    query = [("limit", str(PAGE_LIMIT)), *stream.query]
    if ordered:
        query.append(("order[updated_at]", "asc"))
    if since is not None:
        query.append(("filter[updated_at][from]", str(max(since - OVERLAP, 0))))
    if page > 1:
        query.append(("page", str(page)))
    return query


async def _walk_ordered(
    client: AmoCrmClient,
    store: Store,
    stream: Stream,
    report: StreamReport,
    progress: Progress | None,
    cursor: int | None,
    state: dict[str, Any],
) -> int | None:
    """Walk from ``cursor`` in updated_at order, saving the place after each page; return the
    newest second stored. Sets ``report.ordered`` False and stops when the order is not kept."""
    name = state_name(stream)
    page = _saved_page(state.get("info"))
    while report.requests < MAX_REQUESTS:
        answer = await client.request(
            "GET",
            stream.path,
            _query(stream, cursor, page, True),
            on_wait=_waiting(progress, report),
        )
        report.requests += 1
        records = _records(answer.body)
        if not records:
            break
        stamps = [_stamp(record) for record in records]
        if any(later < earlier for earlier, later in zip(stamps, stamps[1:], strict=False)):
            report.ordered = False
            break
        _store(store, stream, records, report)
        newest = max(stamps)
        # A newer second: ask again from it. The same second fills this whole page: more of it
        # lies on the next page of the same selection.
        if cursor is None or newest > cursor:
            cursor, page = newest, 1
        else:
            page += 1
        store.save_sync_state(name, cursor=cursor, info=json.dumps({"page": page}))
        if progress is not None:
            await progress(report.records, None, f"read {report.records} {stream.name}")
        if next_link(answer.body) is None:
            break
    return cursor


async def _walk_all(
    client: AmoCrmClient,
    store: Store,
    stream: Stream,
    report: StreamReport,
    progress: Progress | None,
    since: int | None,
) -> None:
    """Every page of a selection, by its next links."""
    target: tuple[str, list[tuple[str, str]]] | None = (
        stream.path,
        _query(stream, since, 1, False),
    )
    while target is not None and report.requests < MAX_REQUESTS:
        answer = await client.request(
            "GET", target[0], target[1], on_wait=_waiting(progress, report)
        )
        report.requests += 1
        records = _records(answer.body)
        if not records:
            return
        _store(store, stream, records, report)
        if progress is not None:
            await progress(report.records, None, f"read {report.records} {stream.name}")
        href = next_link(answer.body)
        target = client.follow(href) if href else None


def _store(
    store: Store, stream: Stream, records: list[dict[str, Any]], report: StreamReport
) -> None:
    """Store a page, counting what it changed: the overlap that keeps a same-second edit from
    being missed reads the newest records again, and a run with nothing new must say 0."""
    if stream.table:
        ids = [record.get("id") for record in records]
        marks = ", ".join("?" * len(ids))
        held = {
            row["id"]: row["updated_at"]
            for row in store.query(
                f"SELECT id, updated_at FROM {stream.table} WHERE id IN ({marks})", ids
            )
        }
        report.changed += sum(
            1
            for record in records
            if record.get("id") not in held or held[record.get("id")] != record.get("updated_at")
        )
    stored = stream.store(store, records)
    report.records += stored
    if not stream.table:
        report.changed += stored  # lists kept whole each run: whatever was read counts


def _waiting(progress: Progress | None, report: StreamReport) -> WaitCallback | None:
    """Retry waits shown as progress, so a sync riding out a bad minute does not look hung."""
    if progress is None:
        return None

    async def wait(seconds: float, reason: str) -> None:
        await progress(report.records, None, reason)

    return wait


def _records(body: Any) -> list[dict[str, Any]]:
    listing = list_items(body)
    if listing is None:
        return []  # 204: nothing (more) matched
    return [item for item in listing[1] if isinstance(item, dict)]


def _stamp(record: dict[str, Any]) -> int:
    value = record.get("updated_at")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _saved_page(info: str | None) -> int:
    try:
        page = json.loads(info or "{}").get("page", 1)
    except (ValueError, AttributeError):
        return 1
    return page if isinstance(page, int) and page >= 1 else 1
