"""Call analytics from the store on a year of calls, beside the plain SQL floor.

200 000 calls over 365 days are written into a new database file with ``Store.upsert_calls``
(the sandbox's call log, or with ``--clients N`` a synthetic log with N distinct clients), then
``analytics.compute`` is timed for a month and a year, with the default breakdowns and with
every breakdown and the comparison, against the floor: one ``SELECT count(*), sum(duration)``
over the same span of ``start_time``.

Run: python benchmarks/analytics_speed.py [--calls 200000] [--days 365] [--runs 15]
                                          [--clients N] [--db PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tariti_mcp.moizvonki import analytics
from tariti_mcp.sandbox.data import generate
from tariti_mcp.store import Store

MOSCOW = ZoneInfo("Europe/Moscow")
FLOOR = "SELECT count(*), sum(duration) FROM moizvonki_calls WHERE start_time BETWEEN ? AND ?"


def sandbox_calls(count: int, days: int, now: float) -> list[dict[str, Any]]:
    """The sandbox's log, shaped as calls.list with supervised=1 returns it."""
    data = generate(seed=1, calls=count, days=days, now=now)
    staff = {employee.id: employee for employee in data.employees}
    return [
        {
            "db_call_id": call.db_call_id,
            "direction": call.direction,
            "client_number": call.client_number,
            "client_name": call.client_name,
            "start_time": call.start_time,
            "answer_time": call.answer_time,
            "end_time": call.end_time,
            "duration": call.duration,
            "answered": call.answered,
            "recording": "",
            "upload_time": call.upload_time,
            "src_number": staff[call.user_id].src_number,
            "user_id": call.user_id,
            "user_account": staff[call.user_id].email,
        }
        for call in data.calls
    ]


def wide_calls(count: int, days: int, now: float, clients: int) -> list[dict[str, Any]]:
    """Twenty employees and ``clients`` callers, some ringing often: many distinct clients."""
    rng = random.Random(5)
    staff = [(n + 1, f"employee{n}@firm.example", f"+7926500{n:04d}") for n in range(20)]
    numbers = [f"+7916{rng.randrange(10**7):07d}" for _ in range(clients)]
    weights = [1 / (rank + 3) ** 0.8 for rank in range(clients)]
    picks = rng.choices(numbers, weights=weights, k=count)
    starts = sorted(rng.randrange(int(now) - days * 86400, int(now)) for _ in range(count))
    calls = []
    for index, (start, number) in enumerate(zip(starts, picks, strict=True)):
        owner = rng.choice(staff)
        direction = int(rng.random() < 0.55)
        answered = int(rng.random() < 0.7)
        if rng.random() < 0.01:
            number = rng.choice(staff)[2]
        duration = rng.randint(5, 900) if answered or direction else 0
        calls.append(
            {
                "db_call_id": 1000 + index,
                "direction": direction,
                "client_number": number if rng.random() < 0.5 else "8" + number[2:],
                "client_name": number,
                "start_time": start,
                "answer_time": (start + (rng.randint(2, 30) if direction == 0 else 0))
                if answered
                else 0,
                "end_time": start + duration,
                "duration": duration,
                "answered": answered,
                "upload_time": start + duration + 5,
                "src_number": owner[2],
                "user_id": owner[0],
                "user_account": owner[1],
            }
        )
    return calls


def median_ms(action, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--clients", type=int, default=0, help="synthetic log with N clients")
    parser.add_argument("--db", type=Path, help="keep the database here (default: a temp dir)")
    args = parser.parse_args()

    now = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        path = args.db or Path(scratch) / "analytics.db"
        store = Store(path)
        if not next(store.query("SELECT count(*) AS n FROM moizvonki_calls"))["n"]:
            if args.clients:
                calls = wide_calls(args.calls, args.days, now, args.clients)
            else:
                calls = sandbox_calls(args.calls, args.days, now)
            started = time.perf_counter()
            for first in range(0, len(calls), 1000):
                store.upsert_calls(calls[first : first + 1000])
            print(f"stored {len(calls)} calls in {time.perf_counter() - started:.1f} s")
        stored = next(store.query("SELECT count(*) AS n FROM moizvonki_calls"))["n"]
        clients = next(
            store.query("SELECT count(DISTINCT client_last10) AS n FROM moizvonki_calls")
        )["n"]
        print(f"{stored} calls, {clients} distinct clients, file {path.stat().st_size >> 20} MB")

        started = time.perf_counter()
        recounted = analytics.use_zone(store, MOSCOW)
        if recounted:
            print(f"counts recomputed for {MOSCOW.key} in {time.perf_counter() - started:.2f} s")

        today = dt.datetime.fromtimestamp(now, MOSCOW).date()
        spans = {
            "month": analytics.resolve_period("last_30_days", "", "", MOSCOW, now),
            "year": analytics.resolve_period(
                None, (today - dt.timedelta(days=args.days - 1)).isoformat(), "", MOSCOW, now
            ),
        }
        print(f"medians of {args.runs} runs, ms")
        print(f"{'':6} {'floor':>8} {'default':>8} {'x floor':>8} {'all+compare':>12}")
        for label, period in spans.items():
            bounds = [period.start, period.end - 1]
            floor = median_ms(lambda b=bounds: store.db.execute(FLOOR, b).fetchall(), args.runs)
            default = median_ms(lambda p=period: analytics.compute(store, p, now=now), args.runs)
            everything = median_ms(
                lambda p=period: analytics.compute(
                    store, p, include=analytics.BREAKDOWNS, compare=True, now=now
                ),
                args.runs,
            )
            print(
                f"{label:6} {floor:8.1f} {default:8.1f} {default / floor:8.1f} {everything:12.1f}"
            )
        plan = store.db.execute("EXPLAIN QUERY PLAN " + FLOOR, [0, 1]).fetchall()
        print("floor plan:", "; ".join(row[-1] for row in plan))
        store.close()


if __name__ == "__main__":
    main()
