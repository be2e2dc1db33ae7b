"""Logging to stderr, one line per event, with every known secret masked.

Only the command-line entry point calls :func:`configure`; modules just take a logger.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

MASK = "***"

# Shapes that are secret whatever their value: bearer tokens, keys in JSON or query strings.
_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + MASK),
    (
        re.compile(
            r"(?i)([\"']?(?:api_key|access_token|refresh_token|client_secret)[\"']?\s*[:=]\s*[\"']?)"
            r"[^\"'&\s,}]+"
        ),
        r"\1" + MASK,
    ),
]


class Redactor:
    """Masks registered secret values and secret-shaped fragments in text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._encoded: list[re.Pattern[str]] = []

    def add(self, secrets: Iterable[str]) -> None:
        # Very short values would mask ordinary words; real keys are long.
        for secret in secrets:
            if secret and len(secret) >= 6 and secret not in self._secrets:
                self._secrets.add(secret)
                # Echoed inside a URL, any of its characters may come back percent-encoded.
                self._encoded.append(
                    re.compile(
                        "".join(f"(?:{re.escape(c)}|%{ord(c):02X})" for c in secret)
                        if secret.isascii()
                        else re.escape(secret),
                        re.IGNORECASE,
                    )
                )

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        if "%" in text:
            for pattern in self._encoded:
                text = pattern.sub(MASK, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


redact = Redactor()


# A record longer than this is cut: a header or body a peer sent may be megabytes.
MAX_RECORD = 20_000
# Control characters but the newline: a terminal would act on them (colours, erasing, moving
# the cursor), so a peer's text could rewrite what the operator reads.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        if len(text) > MAX_RECORD:
            text = f"{text[:MAX_RECORD]}… ({len(text) - MAX_RECORD} more characters)"
        text = _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)
        # One event, one line: a newline in untrusted text must not forge a second record.
        return text.replace("\n", "\n    ")


def configure(level: str = "WARNING", secrets: Iterable[str] = ()) -> None:
    """Send every log record to stderr; call before the MCP server is built.

    The SDK calls ``logging.basicConfig`` when a server is constructed; because the root logger
    already has our handler by then, that call does nothing.
    """
    redact.add(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # At INFO these libraries print every URL, query strings included.
    for noisy in ("httpx", "httpcore", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
