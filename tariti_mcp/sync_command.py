"""``tariti-mcp sync``: fill the store from both services for the dashboard, from a terminal or
from cron, beside a running server on the same database.

Progress goes to stderr, as a bar on a terminal and as a plain line now and then otherwise; one
summary line per service goes to stdout. Each stream saves its place as it goes, so a run that
is cut short (Ctrl-C, a lost connection, a reboot) goes on from there the next time.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

from .config import Settings
from .errors import ServiceError
from .http import DEFAULT_RETRY
from .store import Store
from .syncing import Progress

if TYPE_CHECKING:
    from .amocrm.sync import StreamReport

logger = logging.getLogger(__name__)

# Requests a second the sync sends to amoCRM. The integration's limit (7) is shared with any
# server running beside it, which keeps its own count: a slow sync leaves it the room.
SYNC_AMOCRM_RATE = 2.0
PLAIN_EVERY = 5.0
# Reads ride out a bad minute as in the server; a cron run that still fails exits 1 and the next
# run goes on from the saved place.
RETRY = DEFAULT_RETRY


@dataclass(frozen=True)
class SyncOptions:
    moizvonki: bool = True
    amocrm: bool = True
    since: int | None = None  # Unix seconds: calls from then on; None keeps the synced range
    window_days: int = 3
    amocrm_rate: float = SYNC_AMOCRM_RATE
    lock_timeout: float = 60.0


class Display:
    """Progress of one stream at a time: a bar on a terminal, otherwise a line every few
    seconds (cron mails and journald keep every line, so they must be few)."""

    def __init__(self, out: TextIO, *, bar: bool | None = None, every: float = PLAIN_EVERY):
        self.out = out
        self.bar = out.isatty() if bar is None else bar
        self.every = every

    @contextmanager
    def stream(self, label: str) -> Iterator[Progress]:
        if self.bar:
            with tqdm(
                file=self.out,
                leave=False,
                dynamic_ncols=True,
                total=None,
                desc="starting",
                bar_format=label + " {desc} [{elapsed}]",
            ) as bar:
                yield self._bar_reporter(bar, label)
        else:
            yield self._plain_reporter(label)

    @staticmethod
    def _bar_reporter(bar: tqdm, label: str) -> Progress:
        # The message rides in desc, after the bar, so the bar does not move as it changes.
        with_total = label + " {percentage:3.0f}%|{bar:24}| {desc} [{elapsed}]"
        without = label + " {desc} [{elapsed}]"

        async def report(done: float, total: float | None, message: str) -> None:
            bar.bar_format = with_total if total else without
            bar.total = total
            bar.n = min(done, total) if total else done
            bar.set_description_str(message, refresh=False)
            bar.refresh()

        return report

    def _plain_reporter(self, label: str) -> Progress:
        last: float | None = None

        async def report(done: float, total: float | None, message: str) -> None:
            nonlocal last
            now = time.monotonic()
            if last is not None and now - last < self.every:
                return
            last = now
            share = f" ({min(done / total, 1):.0%})" if total else ""
            self.out.write(f"{label}: {message}{share}\n")
            self.out.flush()

        return report


async def run_sync(
    settings: Settings,
    store: Store,
    options: SyncOptions,
    display: Display,
    say,
) -> int:
    """Sync what ``options`` asks and is configured; 0 when every service synced, 1 otherwise.
    ``say`` writes a summary line (stdout)."""
    failed = False
    if options.moizvonki:
        failed |= not await _sync_moizvonki(settings, store, options, display, say)
    if options.amocrm:
        failed |= not await _sync_amocrm(settings, store, options, display, say)
    return 1 if failed else 0


async def _sync_moizvonki(
    settings: Settings, store: Store, options: SyncOptions, display: Display, say
) -> bool:
    from .moizvonki.analytics import use_zone
    from .moizvonki.client import MoizvonkiClient
    from .moizvonki.sync import DAY, sync_all

    # The day and hour counts the dashboard's views read are kept in the business zone as calls
    # are written: set it first, so they are right without a question to the server (and an
    # empty store costs nothing to recount).
    use_zone(store, settings.zone)

    client = MoizvonkiClient(
        settings.moizvonki_base_url,
        settings.moizvonki_user,
        settings.moizvonki_api_key.get_secret_value(),
        timeout=settings.http_timeout,
        retry_policy=RETRY,
    )
    try:
        with display.stream("moizvonki calls") as progress:
            report = await sync_all(
                client,
                store,
                since=options.since,
                window=options.window_days * DAY,
                progress=progress,
                lock_timeout=options.lock_timeout,
            )
    except ServiceError as exc:
        say(f"moizvonki: not finished, run again to go on from where it stopped: {exc}")
        return False
    finally:
        await client.aclose()

    if report.covered_from is None:
        covered = "no calls yet"
    else:
        since = dt.datetime.fromtimestamp(report.covered_from, settings.zone)
        covered = f"every call since {since:%Y-%m-%d %H:%M} ({settings.timezone}) is stored"
    say(
        f"moizvonki: {report.new_calls} new calls ({report.calls} read, {report.skipped} "
        f"skipped) in {report.requests} request{'' if report.requests == 1 else 's'}; {covered}"
    )
    for warning in report.warnings:
        say(f"moizvonki: warning: {warning}")
    return True


async def _sync_amocrm(
    settings: Settings, store: Store, options: SyncOptions, display: Display, say
) -> bool:
    from .amocrm.client import AmoCrmClient
    from .amocrm.sync import STREAMS, sync_amocrm
    from .amocrm.tokens import amocrm_credentials
    from .http import Gate

    gate = Gate(min(options.amocrm_rate, settings.amocrm_rate_limit))
    try:
        credentials = await amocrm_credentials(settings, store, gate)
    except ServiceError as exc:
        say(f"amocrm: not synced: {exc}")
        return False
    client = AmoCrmClient(
        settings.amocrm_base_url,
        credentials,
        timeout=settings.http_timeout,
        gate=gate,
        retry_policy=RETRY,
    )
    done: list[StreamReport] = []
    try:
        for stream in STREAMS:
            with display.stream(f"amocrm {stream.name}") as progress:
                report = await sync_amocrm(
                    client,
                    store,
                    streams=(stream,),
                    progress=progress,
                    lock_timeout=options.lock_timeout,
                )
            done.extend(report.streams)
    except ServiceError as exc:
        stored = ", ".join(map(_counted, done)) + " new or changed" if done else "nothing"
        say(f"amocrm: not finished ({stored} stored), run again to go on: {exc}")
        return False
    finally:
        await credentials.aclose()
        await client.aclose()
    requests = sum(s.requests for s in done)
    read = sum(s.records for s in done)
    say(
        f"amocrm: {', '.join(map(_counted, done))} new or changed "
        f"({read} read, {requests} request{'' if requests == 1 else 's'})"
    )
    return True


def _counted(report: StreamReport) -> str:
    return f"{report.changed} {report.name}"
