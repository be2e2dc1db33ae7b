"""Hostile or malformed tool arguments get a specific error, never a bare crash."""

import pytest
from mcp import Client

from tariti_mcp.server import create_server
from tariti_mcp.store import Store

HUGE = 10**5000

CASES = [
    ("call_amocrm_api", {"path": "/api/v4/leads/" + "1" * 70_000}, "longer than"),
    ("call_amocrm_api", {"path": "/api/v4/leads", "query": {"query": "x" * 70_000}}, "longer"),
    ("call_amocrm_api", {"path": "/api/v4/leads", "query": {"limit": HUGE}}, "too large"),
    (
        "call_amocrm_api",
        {"path": "/api/v4/leads", "method": "POST", "body": [{"price": HUGE}]},
        "cannot be sent",
    ),
    (
        "call_amocrm_api",
        {"path": "/api/v4/leads", "method": "POST", "body": "[{not json"},
        "JSON object or array",
    ),
    (
        "call_moizvonki_api",
        {"action": "company.list_employee", "params": {"max_results": "abc"}},
        "max_results must be a whole number",
    ),
    (
        "call_moizvonki_api",
        {"action": "company.list_group", "params": {"from_offset": [1]}},
        "from_offset must be a whole number",
    ),
    (
        "call_moizvonki_api",
        {"action": "calls.list", "params": {"from_id": HUGE}},
        "from_id must be a whole number",
    ),
    (
        "call_moizvonki_api",
        {"action": "calls.list", "params": {"from_date": "20261101"}},
        "between 2000 and 2100",
    ),
    (
        "call_moizvonki_api",
        {"action": "calls.list", "params": {"from_date": 1796072400000}},
        "milliseconds",
    ),
    ("call_moizvonki_api", {"action": "calls.list", "params": {"from_date": 1e300}}, "2100"),
    (
        "call_moizvonki_api",
        {"action": "company.create_employee", "params": {"x": HUGE}},
        "cannot be sent",
    ),
    ("get_moizvonki_analytics", {"date_to": "0001-01-01"}, "from 2000 to 2099"),
    # An adversary's find: the calendar's last days overflowed into an internal error.
    ("get_moizvonki_analytics", {"date_to": "9999-12-31"}, "date_to must be a date from 2000"),
    (
        "get_moizvonki_analytics",
        {"date_from": "9999-12-31T23:00-12:00"},
        "date_from must be a date from 2000",
    ),
    ("get_moizvonki_analytics", {"date_from": "2026-02-30"}, "ISO date"),
    # An adversary's find: an unknown action of a megabyte came back whole in the error.
    ("call_moizvonki_api", {"action": "x" * 1_000_000}, "unknown action 'xxxxxxxx"),
    ("call_amocrm_api", {"method": "G" * 100_000, "path": "/api/v4/leads"}, "method must be"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("tool", "arguments", "expected"), CASES)
async def test_hostile_argument_is_explained(sandbox_settings, tool, arguments, expected):
    # Allowed, so that company.create_employee's unchecked params reach the JSON check.
    settings = sandbox_settings.model_copy(update={"allow_destructive": True})
    async with Client(create_server(settings, store=Store()), mode="legacy") as client:
        result = await client.call_tool(tool, arguments)
    text = result.content[0].text
    assert result.is_error
    assert expected in text, text
    assert len(text) < 2_000  # an error says what is wrong, it does not echo the input
