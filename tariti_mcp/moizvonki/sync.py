"""Bringing the Moizvonki call log into the store: by date once, then incrementally by ``from_id``.

Calls uploaded late by a phone that was offline still get new ids, so after the first pass the
``from_id`` cursor (last id + 1, inclusive on the server) finds them where a date window would not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import AccessDenied, ServiceError
from ..store import Store
from .client import MoizvonkiClient

logger = logging.getLogger(__name__)

CALLS = "moizvonki.calls"
EMPLOYEES = "moizvonki.employees"
EMPLOYEES_MAX_AGE = 6 * 3600
MAX_PAGES = 100_000

Progress = Callable[[float, float | None, str], Awaitable[None]]


@dataclass
class SyncReport:
    requests: int = 0
    calls: int = 0
    cursor: int | None = None
    covered_from: int | None = None
    synced_at: int | None = None
    warnings: list[str] = field(default_factory=list)


async def _walk(
    client: MoizvonkiClient,
    store: Store,
    params: dict[str, Any],
    report: SyncReport,
    progress: Progress | None,
) -> int | None:
    """Fetch every page of ``calls.list`` for ``params`` into the store; return the top id."""
    highest: int | None = None
    async for page in client.pages("calls.list", params, max_pages=MAX_PAGES):
        report.requests += 1
        stored, top = store.upsert_calls(
            c for c in page.get("results") or [] if isinstance(c, dict)
        )
        report.calls += stored
        if top is not None:
            highest = top if highest is None else max(highest, top)
        if progress is not None:
            remains = int(page.get("results_remains") or 0)
            await progress(report.calls, report.calls + remains, f"synced {report.calls} calls")
    return highest


async def sync_calls(
    client: MoizvonkiClient,
    store: Store,
    *,
    since: int,
    progress: Progress | None = None,
) -> SyncReport:
    """Make the store hold every call that started at or after ``since`` (Unix seconds)."""
    state = store.sync_state(CALLS)
    cursor: int | None = state.get("cursor")
    covered_from: int | None = state.get("covered_from")
    report = SyncReport()

    try:
        reached_now = False
        if covered_from is None or since < covered_from:
            # A date window for what was never fetched; supervised=1 gives every employee's calls.
            params: dict[str, Any] = {"from_date": since, "supervised": 1}
            if covered_from is not None:
                params["to_date"] = covered_from
            reached_now = covered_from is None
            top = await _walk(client, store, params, report, progress)
            if top is not None:
                cursor = max(cursor or 0, top + 1)
            covered_from = since
            store.save_sync_state(CALLS, cursor=cursor, covered_from=covered_from)
        if not reached_now:
            # Everything new since the last pass, late uploads included.
            params = {"from_id": cursor} if cursor is not None else {"from_date": covered_from}
            top = await _walk(client, store, {**params, "supervised": 1}, report, progress)
            if top is not None:
                cursor = max(cursor or 0, top + 1)
    except ServiceError as exc:
        store.save_sync_state(CALLS, cursor=cursor, covered_from=covered_from, last_error=str(exc))
        raise

    report.synced_at = int(time.time())
    report.cursor = cursor
    report.covered_from = covered_from
    store.save_sync_state(
        CALLS,
        cursor=cursor,
        covered_from=covered_from,
        last_synced_at=report.synced_at,
        last_error=None,
    )
    logger.info(
        "synced %d calls in %d requests, next from_id %s", report.calls, report.requests, cursor
    )
    return report


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
        warning = (
            "the Moizvonki key is not an administrator's: only the calls of "
            f"{client.user} are visible, and employee names are unknown"
        )
        store.save_sync_state(EMPLOYEES, last_synced_at=int(time.time()), last_error=warning)
        return warning
    store.save_sync_state(EMPLOYEES, last_synced_at=int(time.time()), last_error=None)
    return None
