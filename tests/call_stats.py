"""Every analytics figure computed the plain way, call by call, for tests to hold the SQL to.

Written from the definitions in the README, sharing no code with tariti_mcp.moizvonki.analytics
but the phone rule (last ten digits).
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from typing import Any
from zoneinfo import ZoneInfo

from tariti_mcp import phones

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _entry(calls: list[dict[str, Any]], not_called_back: int) -> dict[str, Any]:
    answered = [c for c in calls if c["answered"] == 1]
    talk = sum(c["duration"] for c in answered)
    return {
        "total_calls": len(calls),
        "incoming": sum(1 for c in calls if c["direction"] == 0),
        "outgoing": sum(1 for c in calls if c["direction"] == 1),
        "answered": len(answered),
        "missed": len(calls) - len(answered),
        "total_duration_seconds": talk,
        "avg_duration_seconds": round(talk / len(answered), 1) if answered else 0,
        "missed_not_called_back": not_called_back,
    }


def _waits(calls: list[dict[str, Any]]) -> list[int]:
    return [
        c["answer_time"] - c["start_time"]
        for c in calls
        if c["direction"] == 0 and c["answered"] == 1 and c["answer_time"] >= c["start_time"]
    ]


def clean(raw: dict[str, Any]) -> dict[str, Any]:
    """A call as the API sent it, read the way the definitions read it."""
    return {
        "id": int(raw["db_call_id"]),
        "start_time": int(raw["start_time"]),
        "direction": _int(raw.get("direction")),
        "answered": 1 if str(raw.get("answered")).strip() == "1" else 0,
        "duration": _int(raw.get("duration")) or 0,
        "answer_time": _int(raw.get("answer_time")) or 0,
        "client": phones.last10(raw.get("client_number") or ""),
        "number": raw.get("client_number") or "",
        "name": raw.get("client_name"),
        "account": raw.get("user_account") or "",
        "sim": raw.get("src_number"),
    }


def expected(
    raw_calls: list[dict[str, Any]],
    start: int,
    end: int,
    zone: ZoneInfo,
    *,
    accounts: set[str] | None = None,
    direction: int | None = None,
    client: str | None = None,
    window_hours: float = 24,
    top: int = 10,
) -> dict[str, Any]:
    """The figures for calls that started in [start, end), among ``raw_calls`` (every stored
    call: callbacks after the period and the company's own numbers are found among them)."""
    calls = [clean(raw) for raw in raw_calls]
    internal = {phones.last10(c["sim"]) for c in calls if c["sim"]} - {None}

    def local(call: dict[str, Any]) -> dt.datetime:
        return dt.datetime.fromtimestamp(call["start_time"], zone)

    in_period = [c for c in calls if start <= c["start_time"] < end]
    chosen = [
        c
        for c in in_period
        if (accounts is None or c["account"] in accounts)
        and (direction is None or c["direction"] == direction)
        and (client is None or c["client"] == client)
    ]

    # Missed clients: every incoming call of the period counts for "last", whoever took it.
    last_incoming: dict[str, dict[str, Any]] = {}
    for call in in_period:
        number = call["client"]
        if call["direction"] != 0 or number is None or number in internal:
            continue
        if client is not None and number != client:
            continue
        best = last_incoming.get(number)
        mine = (call["start_time"], call["answered"])
        if best is None or mine > (best["start_time"], best["answered"]):
            last_incoming[number] = call
        elif mine == (best["start_time"], best["answered"]):
            # A tie of missed calls: the first login in order (none first), then the lowest id.
            if (call["account"], call["id"]) < (best["account"], best["id"]):
                last_incoming[number] = call
    window = int(window_hours * 3600)
    missed = []
    for number, call in last_incoming.items():
        if call["answered"] == 1:
            continue
        if accounts is not None and call["account"] not in accounts:
            continue
        after = [
            o
            for o in calls
            if o["client"] == number
            and o["direction"] == 1
            and call["start_time"] < o["start_time"] <= call["start_time"] + window
        ]
        missed.append((call, bool(after), any(o["answered"] == 1 for o in after)))
    forgotten = [call for call, attempted, _ in missed if not attempted]

    answered = [c for c in chosen if c["answered"] == 1]
    waits = _waits(chosen)
    figures = {
        **{k: v for k, v in _entry(chosen, 0).items() if k != "missed_not_called_back"},
        "internal_calls": sum(1 for c in chosen if c["client"] in internal),
        "unique_clients": len({c["client"] for c in chosen if c["client"]} - internal),
        "median_duration_seconds": float(statistics.median(c["duration"] for c in answered))
        if answered
        else None,
        "avg_wait_seconds": round(sum(waits) / len(waits), 1) if waits else None,
        "missed_clients": len(missed),
        "callback_attempted": sum(1 for _, attempted, _ in missed if attempted),
        "callback_reached": sum(1 for _, _, reached in missed if reached),
        "not_called_back": len(forgotten),
        "by_status": {
            "incoming_answered": sum(1 for c in answered if c["direction"] == 0),
            "incoming_missed": sum(1 for c in chosen if c["direction"] == 0 and not c["answered"]),
            "outgoing_answered": sum(1 for c in answered if c["direction"] == 1),
            "outgoing_missed": sum(1 for c in chosen if c["direction"] == 1 and not c["answered"]),
        },
    }

    def grouped(key) -> tuple[dict, dict]:
        groups, lost = defaultdict(list), defaultdict(int)
        for call in chosen:
            groups[key(call)].append(call)
        for call in forgotten:
            lost[key(call)] += 1
        return groups, lost

    first = local({"start_time": start}).date()
    last = local({"start_time": end - 1}).date()
    days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
    groups, lost = grouped(lambda c: local(c).date())
    figures["by_day"] = {d.isoformat(): _entry(groups[d], lost[d]) for d in days}
    groups, lost = grouped(lambda c: local(c).hour)
    figures["by_hour"] = [{"hour": h, **_entry(groups[h], lost[h])} for h in range(24)]
    groups, lost = grouped(lambda c: local(c).weekday())
    figures["by_weekday"] = [
        {"weekday": name, **_entry(groups[n], lost[n])} for n, name in enumerate(WEEKDAYS)
    ]
    groups, lost = grouped(lambda c: local(c).strftime("%Y-%m"))
    months = sorted({d.strftime("%Y-%m") for d in days})
    figures["by_month"] = [{"month": m, **_entry(groups[m], lost[m])} for m in months]
    groups, lost = grouped(lambda c: c["account"])
    figures["by_employee"] = {
        account: {**_entry(groups[account], lost[account]), "waits": _waits(groups[account])}
        for account in set(groups) | set(lost)
    }
    for entry in figures["by_employee"].values():
        waits = entry.pop("waits")
        entry["avg_wait_seconds"] = round(sum(waits) / len(waits), 1) if waits else None

    clients = defaultdict(list)
    for call in chosen:
        if call["client"] and call["client"] not in internal:
            clients[call["client"]].append(call)
    ranked = sorted(
        clients.items(),
        key=lambda item: (-len(item[1]), -max(c["start_time"] for c in item[1]), item[0]),
    )
    figures["top_clients"] = []
    for number, own in ranked[:top]:
        latest = max(own, key=lambda c: (c["start_time"], c["id"]))
        name = latest["name"]
        figures["top_clients"].append(
            {
                "client": number,
                "number": latest["number"] or None,
                "name": name if name and phones.last10(name) != number else None,
                "total_calls": len(own),
                "answered": sum(c["answered"] for c in own),
                "missed": sum(1 - c["answered"] for c in own),
                "last_call": dt.datetime.fromtimestamp(latest["start_time"], zone).isoformat(
                    timespec="seconds"
                ),
            }
        )

    # Waiting clients, longest first; the employee's display name is the tool's to add.
    figures["waiting_clients"] = []
    for call in sorted(forgotten, key=lambda c: (c["start_time"], c["client"]))[:50]:
        number = call["client"]
        logged = max(
            (
                c
                for c in in_period
                if c["client"] == number
                and c["direction"] == 0
                and c["start_time"] == call["start_time"]
            ),
            key=lambda c: c["id"],
        )
        name = logged["name"]
        figures["waiting_clients"].append(
            {
                "client": number,
                "number": logged["number"] or None,
                "name": name if name and phones.last10(name) != number else None,
                "missed_at": dt.datetime.fromtimestamp(call["start_time"], zone).isoformat(
                    timespec="seconds"
                ),
                "missed_calls": len(
                    {
                        c["start_time"]
                        for c in in_period
                        if c["client"] == number
                        and c["direction"] == 0
                        and c["answered"] == 0
                        and (accounts is None or c["account"] in accounts)
                    }
                ),
                "user_account": call["account"] or None,
            }
        )
    return figures
