"""Configured secrets never appear in a tool result or a log line, whatever the call does."""

import logging

import pytest
from mcp import Client

from tariti_mcp.server import create_server
from tariti_mcp.store import Store

CALLS = [
    ("call_amocrm_api", {"path": "/api/v4/account"}),
    ("call_amocrm_api", {"path": "/api/v4/leads", "query": {"limit": 3}}),
    ("call_amocrm_api", {"path": "/api/v4/nothing"}),
    ("call_amocrm_api", {"method": "POST", "path": "/api/v4/leads", "body": [{"price": "x"}]}),
    ("forward_lead_to_amocrm", {"name": "Тест", "phone": "+7 999 111-22-33"}),
    ("call_moizvonki_api", {"action": "calls.list", "params": {"from_id": 1}}),
    (
        "call_moizvonki_api",
        {"action": "calls.send_sms", "params": {"to": "+79991112233", "text": "t"}},
    ),
    ("call_moizvonki_api", {"action": "calls.list", "params": {"bogus": 1}}),
    ("get_moizvonki_analytics", {}),
]


@pytest.mark.anyio
async def test_no_secret_in_results_or_logs(sandbox, sandbox_settings, caplog):
    secrets = [sandbox.env["AMOCRM_API_KEY"], sandbox.env["MOIZVONKI_API_KEY"]]
    caplog.set_level(logging.DEBUG)
    seen = []
    async with Client(create_server(sandbox_settings, store=Store()), mode="legacy") as client:
        for name, arguments in CALLS:
            result = await client.call_tool(name, arguments)
            seen.append(result.model_dump_json())
    assert any('"isError":true' in s or '"is_error":true' in s for s in seen)
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        for text in seen:
            assert secret not in text
        assert secret not in logged


@pytest.mark.anyio
async def test_bad_credentials_answer_without_echoing_them(sandbox, sandbox_settings):
    wrong = sandbox_settings.model_copy(
        update={
            "amocrm_api_key": type(sandbox_settings.amocrm_api_key)("wrong-token-0123456789"),
            "moizvonki_api_key": type(sandbox_settings.moizvonki_api_key)("wrong-key-0123456789"),
        }
    )
    async with Client(create_server(wrong, store=Store()), mode="legacy") as client:
        amo = await client.call_tool("call_amocrm_api", {"path": "/api/v4/account"})
        mz = await client.call_tool("call_moizvonki_api", {"action": "calls.get_sms_templates"})
    assert amo.is_error and "401" in amo.content[0].text and "AMOCRM_API_KEY" in amo.content[0].text
    assert mz.is_error and "MOIZVONKI_API_KEY" in mz.content[0].text
    for result in (amo, mz):
        assert "wrong-" not in result.content[0].text
