"""Bringing the Moizvonki call log into the store: a backfill by date windows, then by ``from_id``.

A backfill walks its range oldest first in windows of a few days, so no page needs a large
offset, and saves its place after each window. Then, and on every later run, the ``from_id``
cursor (last id + 1; the server's bound is inclusive) brings everything uploaded since, including
calls a phone uploads hours late: they get new ids, which a date window already walked would miss.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import MOIZVONKI, AccessDenied, ServiceError
from ..store import Store
from ..syncing import Progress, exclusive
from .client import MoizvonkiClient

logger = logging.getLogger(__name__)

CALLS = "moizvonki.calls"
EMPLOYEES = "moizvonki.employees"
EMPLOYEES_MAX_AGE = 6 * 3600
DAY = 86400
# Pages past offset ~20 000 are reported to take over 30 s; three days of a busy team's calls
# stay a few thousand rows deep.
WINDOW = 3 * DAY
# The first range a new backfill reads, open-ended, to find the newest id: the last hour.
FIRST_WINDOW = 3600
# How far back a first sync reaches when nobody said.
DEFAULT_HISTORY = 30 * DAY
# Calls held before they are written: a transaction per page of 100 would spend much of a sync on
# commits, while 2000 calls are a few megabytes and a write that blocks the event loop for tens
# of milliseconds. A window is written before its place is saved, whatever its size.
FLUSH_ROWS = 2000
LOCK_TIMEOUT = 15.0
MAX_PAGES = 100_000


@dataclass
class SyncReport:
    """What one run did.

    ``calls`` counts rows written, calls fetched again included; ``new_calls`` the rows the
    store gained; ``skipped`` rows that could not be read; ``windows`` date ranges walked;
    ``write_seconds`` time spent writing; ``cursor`` the next ``from_id``; ``covered_from``
    the start time from which every call is stored; ``warnings`` what a report built from the
    store must say (a key that is not an administrator's).
    """

    requests: int = 0
    calls: int = 0
    new_calls: int = 0
    skipped: int = 0
    windows: int = 0
    write_seconds: float = 0.0
    cursor: int | None = None
    covered_from: int | None = None
    synced_at: int | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Backfill:
    """A backfill in progress, saved in ``sync_state.info`` after each step.

    Windows run from ``target`` up to ``limit``. Above ``limit`` a probe has read everything,
    newest first and open-ended, to find ``anchor``: the highest id on the first page that had
    calls, plus one. Everything uploaded after that call has a higher id, so the ``from_id``
    pass that follows the windows, starting at ``anchor``, finds what the windows could not
    have seen. A backfill that extends a range already synced needs no probe: the cursor is
    the anchor, and ``limit`` is where the synced range begins.
    """

    target: int
    limit: int | None = None
    position: int | None = None
    anchor: int | None = None


# --- the call log ---------------------------------------------------------------------------


async def sync_calls(
    client: MoizvonkiClient,
    store: Store,
    *,
    since: int | None = None,
    window: int = WINDOW,
    progress: Progress | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> SyncReport:
    """Make the store hold every call that started at or after ``since`` (Unix seconds), and
    everything uploaded since the last run.

    ``since`` None keeps the range already covered (a first sync takes the last 30 days); an
    unfinished backfill is always finished first. ``progress(done, total, message)`` counts days
    while windows are walked, then calls. Raises SyncBusy when another sync of the same database
    holds it longer than ``lock_timeout`` seconds, and the ServiceError that stopped it otherwise,
    with the place reached saved.
    """
    if window < 60:
        raise ValueError("a backfill window shorter than a minute would take forever")
    async with exclusive(
        store,
        ".sync.lock",
        service=MOIZVONKI,
        what="the call log",
        timeout=lock_timeout,
        progress=progress,
    ):
        return await _sync_calls(client, store, since, window, progress)


async def _sync_calls(
    client: MoizvonkiClient,
    store: Store,
    since: int | None,
    window: int,
    progress: Progress | None,
) -> SyncReport:
    state = store.sync_state(CALLS)
    cursor: int | None = state.get("cursor")
    covered_from: int | None = state.get("covered_from")
    report = SyncReport()
    before = _count(store)

    try:
        # An unfinished backfill first; then, if ``since`` reaches further back, one more.
        while (plan := _plan(state, since, cursor, covered_from)) is not None:
            await _backfill(client, store, plan, cursor, window, report, progress)
            if cursor is None:
                cursor = plan.anchor
            covered_from = plan.target if covered_from is None else min(covered_from, plan.target)
            store.save_sync_state(CALLS, cursor=cursor, covered_from=covered_from, info=None)
            state = store.sync_state(CALLS)
        cursor = await _catch_up(client, store, cursor, covered_from, report, progress)
    except ServiceError as exc:
        store.save_sync_state(CALLS, last_error=str(exc))
        raise

    report.synced_at = int(time.time())
    report.cursor = cursor
    report.covered_from = covered_from
    report.new_calls = _count(store) - before
    store.save_sync_state(
        CALLS,
        cursor=cursor,
        covered_from=covered_from,
        last_synced_at=report.synced_at,
        last_error=None,
    )
    report.warnings.extend(sync_warnings(store))
    logger.info(
        "synced %d calls (%d new, %d skipped) in %d requests, next from_id %s",
        report.calls,
        report.new_calls,
        report.skipped,
        report.requests,
        cursor,
    )
    return report


def _plan(
    state: dict[str, Any], since: int | None, cursor: int | None, covered_from: int | None
) -> _Backfill | None:
    """The backfill this run must walk, if any: the one left unfinished, or a new one."""
    saved = _load_backfill(state.get("info"))
    if saved is not None:
        return saved
    if covered_from is None:
        target = since if since is not None else int(time.time()) - DEFAULT_HISTORY
        return _Backfill(target=target)
    if since is not None and since < covered_from:
        # Without a cursor nothing was ever seen, so there is no anchor yet: probe for one.
        return _Backfill(target=since, limit=covered_from if cursor is not None else None)
    return None


def _load_backfill(info: str | None) -> _Backfill | None:
    if not info:
        return None
    try:
        saved = json.loads(info).get("backfill")
        return _Backfill(**saved) if isinstance(saved, dict) else None
    except (ValueError, TypeError, AttributeError):
        logger.warning("the saved backfill state cannot be read; starting the backfill again")
        return None


def _save_backfill(store: Store, plan: _Backfill) -> None:
    store.save_sync_state(CALLS, info=json.dumps({"backfill": asdict(plan)}))


async def _backfill(
    client: MoizvonkiClient,
    store: Store,
    plan: _Backfill,
    cursor: int | None,
    window: int,
    report: SyncReport,
    progress: Progress | None,
) -> None:
    """Probe for the anchor if needed, then walk windows from ``target`` up to ``limit``.

    Oldest first, so ids arrive mostly ascending and SQLite appends instead of splitting pages.
    """
    if plan.limit is None:
        await _probe(client, store, plan, window, report, progress)
        _save_backfill(store, plan)
    assert plan.limit is not None
    span = max(plan.limit - plan.target, 1)

    while (low := plan.position if plan.position is not None else plan.target) < plan.limit:
        high = min(low + window, plan.limit)
        # Whether to_date is inclusive is not documented: the next window's from_date is this
        # one's to_date, so the boundary second is fetched either way (twice at worst).
        params = {"from_date": low, "to_date": high, "supervised": 1}
        on_page = _window_progress(progress, report, low - plan.target, high - low, span, high)
        await _walk(client, store, params, report, on_page)
        plan.position = high
        report.windows += 1
        _save_backfill(store, plan)
        logger.debug("backfill window up to %d done, %d calls so far", high, report.calls)


async def _probe(
    client: MoizvonkiClient,
    store: Store,
    plan: _Backfill,
    window: int,
    report: SyncReport,
    progress: Progress | None,
) -> None:
    """Read open-ended ranges reaching further back until one has calls, to set the anchor.

    The first range is the last hour, so what lies above its first page (fetched again by the
    ``from_id`` pass) is little. Each later one is a window longer; the part of it already found
    empty holds only what was uploaded since, so its offsets stay small too.
    """

    async def on_page(fetched: int, remains: int) -> None:
        if progress is not None:
            await progress(0, None, f"synced {report.calls} calls, looking for the newest")

    now = int(time.time())
    width = min(window, FIRST_WINDOW)
    while True:
        low = max(plan.target, now - width)
        first_top, _ = await _walk(
            client, store, {"from_date": low, "supervised": 1}, report, on_page
        )
        report.windows += 1
        if first_top is not None or low <= plan.target:
            plan.limit = low
            plan.anchor = first_top + 1 if first_top is not None else None
            return
        width += window


def _window_progress(
    progress: Progress | None, report: SyncReport, done: int, width: int, span: int, high: int
) -> Callable[[int, int], Awaitable[None]]:
    """Progress in days of the backfill's span, moving inside a window as its pages come."""
    day = time.strftime("%Y-%m-%d", time.gmtime(high))

    async def on_page(fetched: int, remains: int) -> None:
        if progress is None:
            return
        share = fetched / (fetched + remains) if fetched + remains else 1.0
        reached = min(done + share * width, span)
        message = f"synced {report.calls} calls, up to {day}"
        await progress(round(reached / DAY, 2), round(span / DAY, 2), message)

    return on_page


async def _catch_up(
    client: MoizvonkiClient,
    store: Store,
    cursor: int | None,
    covered_from: int | None,
    report: SyncReport,
    progress: Progress | None,
) -> int | None:
    """Everything uploaded since the cursor, late uploads included; return the next cursor."""

    async def report_page(fetched: int, remains: int) -> None:
        if progress is not None:
            await progress(fetched, fetched + remains, f"synced {fetched} new calls")

    if cursor is None:
        if covered_from is None:
            return None
        # Nothing was ever seen: the covered range was empty, so a date walk over it is short.
        # Limitation: if it has since filled with thousands of calls, this walk pages deep.
        first_top, _ = await _walk(
            client, store, {"from_date": covered_from, "supervised": 1}, report, report_page
        )
        if first_top is None:
            return None
        cursor = first_top + 1
        store.save_sync_state(CALLS, cursor=cursor)
    params = {"from_id": cursor, "supervised": 1}
    _, top = await _walk(client, store, params, report, report_page)
    return cursor if top is None else max(cursor, top + 1)


async def _walk(
    client: MoizvonkiClient,
    store: Store,
    params: dict[str, Any],
    report: SyncReport,
    on_page: Callable[[int, int], Awaitable[None]],
) -> tuple[int | None, int | None]:
    """Stream every page of one ``calls.list`` selection into the store.

    Returns the highest id on the first page that had calls and the highest id of all; bad
    rows count, so a cursor moves past a call that cannot be stored instead of asking again.
    """
    first_top: int | None = None
    top: int | None = None
    fetched = 0
    pending: list[dict[str, Any]] = []
    async for page in client.pages("calls.list", params, max_pages=MAX_PAGES):
        report.requests += 1
        rows = page.get("results")
        rows = rows if isinstance(rows, list) else []
        calls = [row for row in rows if isinstance(row, dict)]
        if len(calls) < len(rows):
            logger.warning("skipped %d call rows that are not objects", len(rows) - len(calls))
            report.skipped += len(rows) - len(calls)
        page_top = max((_call_id(call) or 0 for call in calls), default=0) or None
        if page_top is not None:
            top = page_top if top is None else max(top, page_top)
            if first_top is None:
                first_top = page_top
        pending.extend(calls)
        if len(pending) >= FLUSH_ROWS:
            _write(store, pending, report)
            pending = []
        fetched += len(rows)
        await on_page(fetched, _whole(page.get("results_remains")))
    _write(store, pending, report)
    return first_top, top


def _write(store: Store, calls: list[dict[str, Any]], report: SyncReport) -> None:
    if not calls:
        return
    started = time.perf_counter()
    stored, _ = store.upsert_calls(calls)
    report.write_seconds += time.perf_counter() - started
    report.calls += stored
    report.skipped += len(calls) - stored


def _call_id(call: dict[str, Any]) -> int | None:
    value = call.get("db_call_id")
    if isinstance(value, str):
        value = value.strip()
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if 0 < number < 2**63 and not isinstance(value, bool) else None


def _whole(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def _count(store: Store) -> int:
    return next(store.query("SELECT count(*) AS n FROM moizvonki_calls"))["n"]


# --- employees ------------------------------------------------------------------------------


def one_user_warning(user: str) -> str:
    return (
        f"the Moizvonki key is not an administrator's: only the calls of {user} are visible, "
        "every other employee looks idle, and employee names are unknown. Set MOIZVONKI_USER "
        "and MOIZVONKI_API_KEY to an administrator's login and key to see the whole team"
    )


async def sync_employees(
    client: MoizvonkiClient, store: Store, *, force: bool = False
) -> str | None:
    """Refresh the employee list when stale; return a warning when it cannot be read."""
    state = store.sync_state(EMPLOYEES)
    last = state.get("last_synced_at") or 0
    if not force and time.time() - last < EMPLOYEES_MAX_AGE:
        return state.get("last_error")
    try:
        async for page in client.pages("company.list_employee", {}, max_pages=100):
            store.upsert_employees(e for e in page.get("results") or [] if isinstance(e, dict))
    except AccessDenied:
        warning = one_user_warning(client.user)
        logger.warning("%s", warning)
        store.save_sync_state(EMPLOYEES, last_synced_at=int(time.time()), last_error=warning)
        return warning
    store.save_sync_state(EMPLOYEES, last_synced_at=int(time.time()), last_error=None)
    return None


def sync_warnings(store: Store) -> list[str]:
    """What a report built from the store must say about it, e.g. that one user's calls show."""
    warning = store.sync_state(EMPLOYEES).get("last_error")
    return [warning] if warning else []


# --- both -------------------------------------------------------------------------------------


async def sync_all(
    client: MoizvonkiClient,
    store: Store,
    *,
    since: int | None = None,
    window: int = WINDOW,
    progress: Progress | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> SyncReport:
    """Employees, then calls: what ``tariti-mcp sync`` runs for Moizvonki."""
    await sync_employees(client, store, force=True)
    return await sync_calls(
        client, store, since=since, window=window, progress=progress, lock_timeout=lock_timeout
    )
