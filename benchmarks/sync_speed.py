"""A first full sync of a year of calls from the sandbox, beside its floor; a no-change resync.

1. A first sync of every call (200 000 over 365 days by default) into a new database file, timed
   beside the floor: a bare httpx loop asking the emulator for exactly the pages the sync asked
   for, parsing each and storing nothing. The emulator's own time answering is read from it; the
   sync minus the floor is our code (paging, checking rows, writing them), and the time spent in
   ``Store.upsert_calls`` (making the rows, then SQLite's indexes and triggers) on its own.
2. A resync with nothing new: the requests the emulator saw (one is the requirement) and the time.
3. With --write-breakdown, where the writing goes: the same calls stored without HTTP, as the
   schema is, without the triggers on ``moizvonki_calls``, and without its indexes too.

The sandbox runs in a process of its own, so it does not share our interpreter lock.

Run: python benchmarks/sync_speed.py [--calls 200000] [--days 365] [--runs 3] [--window-days 3]
     [--write-breakdown]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from tariti_mcp.moizvonki.client import MoizvonkiClient
from tariti_mcp.moizvonki.sync import DAY, FLUSH_ROWS, sync_calls
from tariti_mcp.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from sync_sandbox import SandboxProcess  # noqa: E402


class Recording(httpx.AsyncBaseTransport):
    """Keeps the body of every request, to send the same pages again without our code."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.content)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def floor(url: str, bodies: list[bytes]) -> float:
    """The same requests, answers parsed and dropped: what no sync can go below."""
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient() as http:
        started = time.perf_counter()
        for body in bodies:
            response = await http.post(url, content=body, headers=headers)
            response.raise_for_status()
            response.json()
        return time.perf_counter() - started


async def one_run(sandbox: SandboxProcess, scratch: Path, run: int, args: Any) -> dict[str, Any]:
    env = sandbox.env
    recording = Recording()
    client = MoizvonkiClient(
        env["MOIZVONKI_BASE_URL"],
        env["MOIZVONKI_USER"],
        env["MOIZVONKI_API_KEY"],
        transport=recording,
    )
    store = Store(scratch / f"run{run}.db")
    since = int(time.time()) - args.days * DAY - DAY
    window = int(args.window_days * DAY)

    before = sandbox.stats()
    started = time.perf_counter()
    report = await sync_calls(client, store, since=since, window=window)
    sync_seconds = time.perf_counter() - started
    after = sandbox.stats()
    stored = next(store.query("SELECT count(*) AS n FROM moizvonki_calls"))["n"]

    floor_seconds = await floor(env["MOIZVONKI_BASE_URL"], recording.bodies)
    after_floor = sandbox.stats()

    resync_before = sandbox.stats()
    started = time.perf_counter()
    again = await sync_calls(client, store, since=since, window=window)
    resync_seconds = time.perf_counter() - started
    resync_after = sandbox.stats()
    await client.aclose()
    store.close()

    return {
        "sync": sync_seconds,
        "requests": after["requests"] - before["requests"],
        "windows": report.windows,
        "stored": stored,
        "rows_written": report.calls,
        "emulator_busy": after["busy_seconds"] - before["busy_seconds"],
        "storing": report.write_seconds,
        "floor": floor_seconds,
        "floor_busy": after_floor["busy_seconds"] - after["busy_seconds"],
        "resync": resync_seconds,
        "resync_requests": resync_after["requests"] - resync_before["requests"],
        "resync_new": again.new_calls,
    }


def write_breakdown(calls: int, days: int, scratch: Path) -> list[tuple[str, float]]:
    """The same calls written three times, each into a new file: as the schema is, without
    the triggers on ``moizvonki_calls``, and without its secondary indexes as well."""
    from tariti_mcp.sandbox import generate
    from tariti_mcp.sandbox.moizvonki import MoizvonkiEmulator

    data = generate(seed=1, calls=calls, days=days)
    emulator = MoizvonkiEmulator(data, {})
    rows = [json.loads(json.dumps(emulator._present_call(call, True))) for call in data.calls]
    timings = []
    for name in ("as the schema is", "without triggers", "without triggers and indexes"):
        store = Store(scratch / f"{len(timings)}.db")
        schema = "SELECT type, name FROM sqlite_master WHERE tbl_name = 'moizvonki_calls'"
        for kind, item in list(store.db.execute(schema)):
            if kind == "trigger" or (kind == "index" and "indexes" in name):
                if not item.startswith("sqlite_autoindex"):
                    store.db.execute(f"DROP {kind.upper()} {item}")
        started = time.perf_counter()
        for at in range(0, len(rows), FLUSH_ROWS):
            store.upsert_calls(rows[at : at + FLUSH_ROWS])
        timings.append((name, time.perf_counter() - started))
        store.close()
    return timings


def seconds(runs: list[dict[str, Any]], key: str) -> str:
    values = [run[key] for run in runs]
    return f"{statistics.median(values):7.2f} s (min {min(values):.2f})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=3, help="first syncs, each into a new file")
    parser.add_argument("--window-days", type=float, default=3.0, help="backfill window")
    parser.add_argument(
        "--write-breakdown",
        action="store_true",
        help="also time writing the same calls without the store's triggers and indexes",
    )
    args = parser.parse_args()

    with SandboxProcess(calls=args.calls, days=args.days) as sandbox:
        print(
            f"sandbox: {sandbox.info['calls']} calls over {args.days} days, generated and "
            f"started in {sandbox.info['start_seconds']:.2f} s (in its own process)"
        )
        runs = []
        with tempfile.TemporaryDirectory() as scratch:
            for run in range(args.runs):
                runs.append(await one_run(sandbox, Path(scratch), run, args))

    first = runs[0]
    print(
        f"first full sync, {args.runs} runs, median (window {args.window_days:g} days, "
        f"{first['windows']} windows, {first['requests']} requests, {first['stored']} calls "
        f"stored, {first['rows_written']} rows written)"
    )
    print(f"  sync_calls, total                  {seconds(runs, 'sync')}")
    print(f"  floor: same pages, bare httpx      {seconds(runs, 'floor')}")
    print(f"    of which the emulator answering  {seconds(runs, 'floor_busy')}")
    print(f"  emulator answering during the sync {seconds(runs, 'emulator_busy')}")
    ours = [run["sync"] - run["floor"] for run in runs]
    print(f"  our code (sync - floor)            {statistics.median(ours):7.2f} s")
    print(f"  of which Store.upsert_calls        {seconds(runs, 'storing')}")
    print("resync with nothing new")
    print(f"  requests the emulator saw          {[run['resync_requests'] for run in runs]}")
    print(f"  new calls                          {[run['resync_new'] for run in runs]}")
    resync_ms = statistics.median(run["resync"] for run in runs) * 1000
    print(f"  time                               {resync_ms:7.1f} ms")
    if args.write_breakdown:
        print(f"writing {first['stored']} calls with Store.upsert_calls, no HTTP")
        with tempfile.TemporaryDirectory() as scratch:
            for name, spent in write_breakdown(args.calls, args.days, Path(scratch)):
                print(f"  {name:32} {spent:7.2f} s")
    if any(run["resync_requests"] != 1 for run in runs):
        raise SystemExit("a resync with nothing new must send exactly one request")


if __name__ == "__main__":
    anyio.run(main)
