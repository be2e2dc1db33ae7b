"""Input schemas must be flat and portable: clients such as Cursor and Gemini reject the rest."""

import pytest
from mcp import Client

from tariti_mcp.config import Settings
from tariti_mcp.server import create_server
from tariti_mcp.store import Store

FORBIDDEN = ("$ref", "$defs", "anyOf", "oneOf", "allOf")


def walk(node, where="schema"):
    if isinstance(node, dict):
        for key, value in node.items():
            assert key not in FORBIDDEN, f"{where} uses {key}"
            if key == "type":
                assert isinstance(value, str), f"{where} has a type array {value!r}"
            yield from walk(value, f"{where}.{key}")
        yield node
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}[{index}]")


@pytest.mark.anyio
async def test_input_schemas_are_portable():
    server = create_server(Settings(_env_file=None), store=Store())
    async with Client(server, mode="legacy") as client:
        tools = (await client.list_tools()).tools
    assert len(tools) == 4
    for tool in tools:
        schema = tool.input_schema
        assert schema["type"] == "object"
        list(walk(schema, tool.name))
        for name, prop in schema["properties"].items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
        assert len(tool.description) < 1200, f"{tool.name}'s description is too long"


def test_walk_catches_a_nullable_field():
    with pytest.raises(AssertionError):
        list(walk({"properties": {"x": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}))
