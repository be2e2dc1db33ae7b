"""Fault injection for the sandbox: a loopback HTTP proxy that refuses, delays or loses requests.

Each request draws one outcome from seeded rules, reads and writes apart, so a client's retries
and its handling of writes with an unknown outcome can be tried against the emulators behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

logger = logging.getLogger(__name__)

# Order matters: it is the order of the bands a draw falls into, hence part of determinism.
FAULTS = ("error_429", "error_503", "slow", "drop", "drop_after", "error_after")
OUTCOMES = ("pass", *FAULTS)
ALIASES = {"429": "error_429", "503": "error_503"}
KINDS = ("read", "write")
MOIZVONKI_READS = frozenset(
    {
        "calls.list",
        "calls.get_sms_templates",
        "webhook.list",
        "company.list_employee",
        "company.list_group",
    }
)
SERVICES = ("amocrm", "moizvonki")
DEFAULT_SLOW_SECONDS = 2.0
MAX_SLOW_SECONDS = 300.0
UPSTREAM_TIMEOUT = 120.0
HEAD_LIMIT = 64 * 1024
BODY_LIMIT = 64 * 1024 * 1024
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection"})
REASONS = {
    411: "Length Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    400: "Bad Request",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class FaultSpecError(ValueError):
    """A fault spec that cannot be used; the message says which part and why."""


@dataclass(frozen=True)
class FaultRules:
    """Probabilities of each fault for reads and for writes; what is left over passes through.

    As a mapping: ``{"read": {"error_503": 0.1, "slow": 0.1}, "write": {"drop_after": 0.1},
    "all": {...}, "slow_seconds": 2.0}``; "all" adds to both kinds, every key is optional.
    Faults: error_429 and error_503 answer at once without forwarding; slow waits slow_seconds
    and forwards; drop closes the connection without forwarding; drop_after forwards, lets the
    emulator act, then closes without relaying its answer; error_after forwards and answers 502
    and 503 in turn in place of the real answer.
    """

    read: Mapping[str, float] = field(default_factory=dict)
    write: Mapping[str, float] = field(default_factory=dict)
    slow_seconds: float = DEFAULT_SLOW_SECONDS

    def __post_init__(self) -> None:
        # Validated and normalised here, so rules built by hand are held to the same checks.
        for kind in KINDS:
            chances = _probabilities(kind, getattr(self, kind))
            if sum(chances.values()) > 1.0 + 1e-9:
                raise FaultSpecError(f"{kind}: the probabilities add up to more than 1")
            object.__setattr__(self, kind, chances)
        slow = self.slow_seconds
        if isinstance(slow, bool) or not isinstance(slow, int | float):
            raise FaultSpecError("slow_seconds must be a number")
        if not 0 <= slow <= MAX_SLOW_SECONDS:
            raise FaultSpecError(f"slow_seconds must be between 0 and {MAX_SLOW_SECONDS:.0f}")
        object.__setattr__(self, "slow_seconds", float(slow))

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> FaultRules:
        if not isinstance(spec, Mapping):
            raise FaultSpecError("expected a mapping of read, write, all and slow_seconds")
        unknown = set(spec) - {*KINDS, "all", "slow_seconds"}
        if unknown:
            raise FaultSpecError(
                f"unknown key {sorted(map(str, unknown))[0]!r}; known: read, write, all, "
                "slow_seconds"
            )
        shared = _probabilities("all", spec.get("all", {}))
        kinds = {}
        for kind in KINDS:
            own = _probabilities(kind, spec.get(kind, {}))
            kinds[kind] = {
                fault: shared.get(fault, 0.0) + own.get(fault, 0.0)
                for fault in FAULTS
                if fault in shared or fault in own
            }
        return cls(kinds["read"], kinds["write"], spec.get("slow_seconds", DEFAULT_SLOW_SECONDS))

    def chances(self, kind: str) -> Mapping[str, float]:
        return self.read if kind == "read" else self.write


def _probabilities(kind: str, given: Any) -> dict[str, float]:
    if not isinstance(given, Mapping):
        raise FaultSpecError(f"{kind}: expected a mapping of fault to probability")
    chances: dict[str, float] = {}
    for name, chance in given.items():
        fault = ALIASES.get(str(name), str(name))
        if fault not in FAULTS:
            raise FaultSpecError(
                f"{kind}: unknown fault {name!r}; known: 429, 503, {', '.join(FAULTS[2:])}"
            )
        if isinstance(chance, bool) or not isinstance(chance, int | float):
            raise FaultSpecError(f"{kind}: the probability of {name} must be a number")
        if not (math.isfinite(chance) and 0 <= chance <= 1):
            raise FaultSpecError(f"{kind}: the probability of {name} must be between 0 and 1")
        chances[fault] = chances.get(fault, 0.0) + float(chance)
    return chances


def parse_fault_spec(text: str) -> FaultRules:
    """Rules from JSON (the mapping of FaultRules) or the compact form of the command line.

    Compact: sections split by ``;``, each ``read:``, ``write:`` or ``all:`` followed by
    ``fault=probability`` pairs split by ``,``, or ``slow_seconds=N``; e.g.
    ``read:503=0.1,slow=0.1,drop=0.05;write:drop_after=0.1;slow_seconds=1.5``.
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise FaultSpecError(f"not valid JSON: {exc}") from None
        return FaultRules.from_mapping(spec)

    spec: dict[str, Any] = {}
    for section in filter(None, (part.strip() for part in text.split(";"))):
        kind, colon, pairs = section.partition(":")
        kind = kind.strip()
        if not colon:
            name, equals, value = section.partition("=")
            if name.strip() != "slow_seconds" or not equals:
                raise FaultSpecError(f"{section!r}: expected read:, write:, all: or slow_seconds=N")
            spec["slow_seconds"] = _number(section, value)
            continue
        if kind not in (*KINDS, "all"):
            raise FaultSpecError(f"{section!r}: the section must start with read:, write: or all:")
        chances = spec.setdefault(kind, {})
        for pair in filter(None, (part.strip() for part in pairs.split(","))):
            name, equals, value = pair.partition("=")
            if not equals:
                raise FaultSpecError(f"{pair!r}: expected fault=probability")
            chances[name.strip()] = chances.get(name.strip(), 0.0) + _number(pair, value)
    if not spec:
        raise FaultSpecError("the spec is empty")
    return FaultRules.from_mapping(spec)


def _number(part: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FaultSpecError(f"{part!r}: {text.strip()!r} is not a number") from None


def is_read(service: str, method: str, body: bytes) -> bool:
    """A read is a GET on amoCRM, or one of Moizvonki's listing actions; the rest are writes."""
    if service == "amocrm":
        # HEAD reads as well: it changes nothing, like GET.
        return method in ("GET", "HEAD")
    return _moizvonki_action(body) in MOIZVONKI_READS


def _moizvonki_action(body: bytes) -> str | None:
    try:
        text = body.decode("utf-8")
        if not text.lstrip().startswith("{"):
            # The form the official example posts: request_data holds the JSON.
            text = parse_qs(text).get("request_data", [""])[0]
        payload = json.loads(text)
    except ValueError:
        # What cannot be read is treated as a write: the cautious side for a client's retries.
        return None
    action = payload.get("action") if isinstance(payload, dict) else None
    return action if isinstance(action, str) else None


@dataclass
class _HttpRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes


class _Unreadable(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


class FaultProxy:
    """A loopback proxy in front of one emulator; one request per connection (Connection: close).

    `rules` is a FaultRules or its mapping. One draw per request, seeded per kind, so the n-th
    read gets the same outcome for the same seed whatever the writes in between. `counts` holds
    each outcome's tally and `outcomes` every (kind, outcome) in arrival order.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        seed: int,
        rules: FaultRules | Mapping[str, Any],
        service: str = "amocrm",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if service not in SERVICES:
            raise ValueError(f"service must be one of {SERVICES}")
        self.target_host, self.target_port = target_host, target_port
        self.rules = rules if isinstance(rules, FaultRules) else FaultRules.from_mapping(rules)
        self.service = service
        self.host, self.port = host, port
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.outcomes: list[tuple[str, str]] = []
        self._draws = {
            kind: random.Random(f"tariti-faults:{seed}:{service}:{kind}") for kind in KINDS
        }
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on `sock` if given (bound already), else on host and port; sets `port`."""
        if sock is not None:
            self._server = await asyncio.start_server(self._connection, sock=sock, limit=HEAD_LIMIT)
        else:
            self._server = await asyncio.start_server(
                self._connection, self.host, self.port, limit=HEAD_LIMIT
            )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.debug("fault proxy for %s listening on port %d", self.service, self.port)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def draw(self, kind: str) -> str:
        """The next outcome for a request of `kind`, "read" or "write"."""
        roll = self._draws[kind].random()
        chances = self.rules.chances(kind)
        edge = 0.0
        for fault in FAULTS:
            edge += chances.get(fault, 0.0)
            if roll < edge:
                return fault
        return "pass"

    # ---- one connection -----------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            try:
                request = await _read_request(reader)
            except _Unreadable as problem:
                writer.write(_canned(problem.status, problem.text))
                await writer.drain()
                return
            if request is not None:
                await self._answer(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _answer(self, request: _HttpRequest, writer: asyncio.StreamWriter) -> None:
        kind = "read" if is_read(self.service, request.method, request.body) else "write"
        outcome = self.draw(kind)
        self.counts[outcome] += 1
        self.outcomes.append((kind, outcome))
        logger.debug(
            "fault proxy %s %s %s %s -> %s",
            self.service,
            kind,
            request.method,
            request.target.split("?", 1)[0],
            outcome,
        )

        if outcome == "error_429":
            # Like amoCRM's own 429: plain text, not JSON, with a hint when to come back.
            writer.write(_canned(429, "Too Many Requests", retry_after=1))
        elif outcome == "error_503":
            writer.write(_canned(503, "Service Unavailable"))
        elif outcome == "drop":
            return
        else:
            if outcome == "slow":
                await asyncio.sleep(self.rules.slow_seconds)
            answer = await self._forward(request)
            if outcome == "drop_after":
                return
            if outcome == "error_after":
                # Alternating rather than drawn, so the draws stay one per request.
                status = 502 if self.counts["error_after"] % 2 else 503
                answer = _canned(status, REASONS[status])
            writer.write(answer)
        await writer.drain()

    async def _forward(self, request: _HttpRequest) -> bytes:
        """Send the request to the emulator and return its whole answer, head rewritten."""
        try:
            return await asyncio.wait_for(self._exchange(request), UPSTREAM_TIMEOUT)
        except TimeoutError:
            return _canned(504, REASONS[504])
        except OSError as exc:
            logger.debug("fault proxy for %s cannot reach the emulator: %s", self.service, exc)
            return _canned(502, REASONS[502])

    async def _exchange(self, request: _HttpRequest) -> bytes:
        reader, writer = await asyncio.open_connection(self.target_host, self.target_port)
        try:
            lines = [f"{request.method} {request.target} {request.version}"]
            lines += [f"{name}: {value}" for name, value in request.headers]
            lines.append("Connection: close")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.body)
            await writer.drain()
            # The emulator closes after its answer because the request said Connection: close.
            answer = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        return _closing(answer)


async def _read_request(reader: asyncio.StreamReader) -> _HttpRequest | None:
    """One request from the client, or None when it closed without sending one."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _Unreadable(400, "Bad Request") from None
        return None
    except asyncio.LimitOverrunError:
        raise _Unreadable(431, "Request Header Fields Too Large") from None

    request_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _Unreadable(400, "Bad Request")
    headers = []
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise _Unreadable(400, "Bad Request")
        headers.append((name.strip(), value.strip()))

    names = {name.lower(): value for name, value in headers}
    if "transfer-encoding" in names:
        # The proxy's choice: both clients send a Content-Length, so chunked bodies are refused.
        raise _Unreadable(411, "Length Required")
    length_text = names.get("content-length", "0")
    if not length_text.isdigit() or int(length_text) > BODY_LIMIT:
        raise _Unreadable(400, "Bad Request")
    body = await reader.readexactly(int(length_text))
    kept = [(name, value) for name, value in headers if name.lower() not in HOP_BY_HOP]
    return _HttpRequest(parts[0], parts[1], parts[2], kept, body)


def _closing(answer: bytes) -> bytes:
    """The emulator's answer with its connection headers replaced by Connection: close."""
    head, separator, body = answer.partition(b"\r\n\r\n")
    if not separator:
        return _canned(502, REASONS[502])
    status_line, *header_lines = head.split(b"\r\n")
    kept = [
        line
        for line in header_lines
        if line.split(b":", 1)[0].strip().lower().decode("latin-1") not in HOP_BY_HOP
    ]
    return b"\r\n".join([status_line, *kept, b"Connection: close"]) + b"\r\n\r\n" + body


def _canned(status: int, text: str, retry_after: int | None = None) -> bytes:
    body = text.encode("utf-8")
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, text)}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body
