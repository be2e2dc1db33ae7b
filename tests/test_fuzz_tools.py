"""Every tool, fed arguments a confused or hostile model might send, answers without crashing.

Arguments are drawn from each tool's own input schema as the server advertises it, mixed with
values of the wrong type, extra keys and missing ones. Whatever comes back must be a normal
answer or an error the tool meant to give (a crash reaches the model only as the bare "Error
executing tool NAME"), must carry no configured secret, and the server must go on answering.

The session with the server lives in a portal thread so that hypothesis drives plain
synchronous examples and can still shrink a failure to its smallest form.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from tariti_mcp.server import create_server
from tariti_mcp.store import Store

EXAMPLES_PER_TOOL = 60

# Values a model really sends, so that examples reach past the first check into the clients.
REALISTIC = {
    "path": [
        "/api/v4/leads",
        "/api/v4/leads/1",
        "/api/v4/contacts",
        "/api/v4/leads/pipelines",
        "/api/v4/users",
        "/api/v4/account",
        "/api/v4/leads/notes",
        "https://evil.example/api/v4/leads",
        "/api/v4/../../etc/passwd",
    ],
    "phone": ["+7 916 123-45-67", "89161234567", "9161234567", "+1", "ext. 12"],
    "email": ["ivan@example.ru", "not-an-email", "a@b"],
    "date_from": ["2026-11-01", "2026-11-01T09:30", "2026-02-30", "yesterday"],
    "date_to": ["2026-11-30", "2026-12-31T23:59:59+03:00", "1970-01-01"],
    "employee": ["", "1", "manager1@example.ru", "Иванов"],
    "client": ["+79161234567", "12", "abc"],
}

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _fitting(name: str, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of the type and within the bounds the schema asks for."""
    kind = schema.get("type")
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if kind == "string":
        known = REALISTIC.get(name)
        text = st.text(max_size=60)
        return st.one_of(st.sampled_from(known), text) if known else text
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1001) + 1)
        high = schema.get("maximum", schema.get("exclusiveMaximum", 1001) - 1)
        return st.integers(min_value=low, max_value=high)
    if kind == "number":
        low = schema.get("minimum", -1e6)
        high = schema.get("maximum", 1e6)
        exclusive = "exclusiveMinimum" in schema
        low = schema.get("exclusiveMinimum", low)
        return st.floats(min_value=low, max_value=high, exclude_min=exclusive, allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        items = schema.get("items", {})
        return st.lists(_fitting(name, items) if items else json_values, max_size=4)
    if kind == "object":
        return st.dictionaries(st.text(max_size=20), json_values, max_size=5)
    return json_values


def arguments_for(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly arguments the schema accepts, so that calls reach the clients; sometimes one
    value of any type, or an unknown key, to try the checks in front of them."""
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))

    @st.composite
    def build(draw):
        arguments = {}
        for name, spec in properties.items():
            if name in required or draw(st.booleans()):
                arguments[name] = draw(_fitting(name, spec))
        if properties and draw(st.integers(0, 3)) == 0:
            arguments[draw(st.sampled_from(sorted(properties)))] = draw(json_values)
        if draw(st.integers(0, 9)) == 0:
            arguments[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
        return arguments

    return build()


@pytest.fixture
def served(sandbox, sandbox_settings):
    """A server on the sandbox, held open in a portal thread for synchronous examples."""
    # Failed forwardings would be retried in the background against the emulator; the test
    # looks at answers, so the outbox waits longer than the test runs.
    fuzz_settings = sandbox_settings.model_copy(
        update={"outbox_interval": 3_600.0, "outbox_check_delay": 3_600.0}
    )
    with start_blocking_portal() as portal:
        store = Store()
        with portal.wrap_async_context_manager(
            Client(create_server(fuzz_settings, store=store))
        ) as client:
            tools = portal.call(client.list_tools).tools
            yield portal, client, tools, fuzz_settings.secrets()
        store.close()


def _check(name: str, result: Any, secrets: list[str]) -> None:
    text = "\n".join(getattr(part, "text", "") for part in result.content)
    structured = json.dumps(result.structured_content, ensure_ascii=False, default=str)
    if result.is_error:
        # A deliberate error keeps its own words after the prefix; a crash has none.
        assert text.strip() != f"Error executing tool {name}", "the tool crashed"
        assert "Traceback" not in text
    for secret in secrets:
        assert secret not in text
        assert secret not in structured


@pytest.mark.parametrize(
    "tool_name",
    [
        "call_amocrm_api",
        "forward_lead_to_amocrm",
        "call_moizvonki_api",
        "get_moizvonki_analytics",
    ],
)
def test_no_arguments_crash_a_tool_or_leak_a_secret(served, tool_name, caplog):
    portal, client, tools, secrets = served
    tool = next(t for t in tools if t.name == tool_name)
    caplog.set_level(logging.DEBUG)

    @settings(
        max_examples=EXAMPLES_PER_TOOL,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(arguments=arguments_for(tool.input_schema))
    def one_call(arguments):
        result = portal.call(client.call_tool, tool_name, arguments)
        _check(tool_name, result, secrets)

    one_call()

    # Still serving after every example, and nothing secret or crashed in the server's log.
    assert portal.call(client.list_tools).tools
    logged = caplog.text
    for secret in secrets:
        assert secret not in logged
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert not crashes, crashes[0].getMessage()
