"""What every sync into the store shares: one run per stream and database at a time, and the
shape of its progress reports."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from weakref import WeakKeyDictionary

import anyio
import filelock

from .errors import Unavailable
from .store import Store

# progress(done, total or None, message), as MCP progress notifications carry it.
Progress = Callable[[float, float | None, str], Awaitable[None]]


class SyncBusy(Unavailable):
    """Another task or process is syncing the same stream into the same database; the model or
    the operator is told to try again later."""

    def __init__(self, service: str, what: str) -> None:
        super().__init__(
            service,
            f"another sync of {what} into this database is still running",
            advice="Try again when it finishes (a first sync of a long period takes minutes).",
        )


# In this process one anyio lock per database and stream; across processes a lock file beside
# the database, so a cron job and a running server take turns.
_LOCKS: WeakKeyDictionary[Store, dict[str, anyio.Lock]] = WeakKeyDictionary()


@asynccontextmanager
async def exclusive(
    store: Store,
    lock_name: str,
    *,
    service: str,
    what: str,
    timeout: float,
    progress: Progress | None = None,
) -> AsyncIterator[None]:
    """Hold the stream ``lock_name`` of ``store`` (file ``<database><lock_name>``) for one run.

    Waits at most ``timeout`` seconds in all, then raises SyncBusy."""
    lock = _LOCKS.setdefault(store, {}).setdefault(lock_name, anyio.Lock())
    if lock.locked() and progress is not None:
        await progress(0, None, f"waiting for another sync of {what} to finish")
    deadline = time.monotonic() + timeout
    try:
        with anyio.fail_after(timeout):
            await lock.acquire()
    except TimeoutError:
        raise SyncBusy(service, what) from None
    try:
        if store.path == ":memory:":
            yield
            return
        file_lock = filelock.AsyncFileLock(store.path + lock_name)
        try:
            await file_lock.acquire(timeout=max(deadline - time.monotonic(), 0.01))
        except filelock.Timeout:
            raise SyncBusy(service, what) from None
        try:
            yield
        finally:
            await file_lock.release()
    finally:
        lock.release()
