"""The log: stderr only, one line per event, nothing a peer sends can rewrite it."""

import io
import logging

import pytest

from tariti_mcp import logs


@pytest.fixture
def logged(monkeypatch):
    """What the configured log writes, captured; the root logger put back afterwards."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.configure("INFO", ["secret-abcdef-0123"])
    return stream


def test_a_peers_control_characters_and_size_cannot_rewrite_the_log(logged):
    """An adversary's find: an Origin header with terminal escapes and 60 KB reached the log
    raw, through the SDK's own warning."""
    origin = "https://x\x1b[31mRED\x1b[0m\x08\r\nFORGED 2026-12-04 ERROR y" + "A" * 60_000
    logging.getLogger("mcp.server.transport_security").warning("Invalid Origin: %s", origin)
    text = logged.getvalue()
    assert "\x1b" not in text and "\x08" not in text and "\r" not in text
    assert "\\x1b[31mRED" in text
    lines = text.splitlines()
    assert lines[0].endswith("Invalid Origin: https://x\\x1b[31mRED\\x1b[0m\\x08\\x0d")
    assert lines[1].startswith("    FORGED")  # indented: a continuation, never a new record
    assert len(text) < logs.MAX_RECORD + 200
    assert text.rstrip().endswith("more characters)")


def test_a_secret_is_masked_even_percent_encoded(logged):
    logging.getLogger("x").warning("hook https://h/%s and %s", "secret%2Dabcdef-0123", "ok")
    assert "***" in logged.getvalue() and "abcdef" not in logged.getvalue()
