"""Regressions of the lead outbox found by an adversarial review: each test is named after the
bug it pins and replays its reproduction against the amoCRM emulator."""

from __future__ import annotations

import itertools
import json
import random
import re
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import sqlite_utils
from mcp import Client

from tariti_mcp import phones
from tariti_mcp.amocrm import outbox as outbox_module
from tariti_mcp.amocrm.client import AmoCrmClient
from tariti_mcp.amocrm.leads import LeadRequest, prepare
from tariti_mcp.amocrm.outbox import Outbox
from tariti_mcp.config import Settings
from tariti_mcp.http import Gate, RetryPolicy
from tariti_mcp.server import create_server
from tariti_mcp.store import MIGRATIONS, Store, field_values

pytestmark = pytest.mark.anyio

QUICK = RetryPolicy(attempts=2, first_wait=0.05, max_wait=0.1, total=1.0)
_numbers = itertools.count(9994700000)
COMPLEX = r"/api/v4/leads/complex"
# Either create request: /leads for a known contact, /leads/complex with a new one.
CREATE = r"/api/v4/leads(/complex)?"


# --- helpers ------------------------------------------------------------------------------------


def unique() -> str:
    return uuid.uuid4().hex[:8]


def fresh_phone(sandbox) -> str:
    """Ten digits no contact of the shared emulator holds yet."""
    taken = {
        phones.last10(v)
        for c in list(sandbox.amocrm.contacts.values())
        for v in field_values(c, "PHONE")
    }
    while True:
        number = str(next(_numbers))
        if number not in taken:
            return number


def lead(**arguments: Any) -> LeadRequest:
    return prepare(region="RU", **arguments)


def deals(sandbox, title: str) -> list[int]:
    return sorted(d["id"] for d in list(sandbox.amocrm.leads.values()) if d["name"] == title)


def holders(sandbox, national: str) -> list[int]:
    return sorted(
        c["id"]
        for c in list(sandbox.amocrm.contacts.values())
        if any(phones.last10(v) == national for v in field_values(c, "PHONE"))
    )


def holders_of_number(sandbox, e164: str) -> list[int]:
    """Contacts holding exactly this number, whatever its length."""
    return sorted(
        c["id"]
        for c in list(sandbox.amocrm.contacts.values())
        if any(phones.digits(v) == phones.digits(e164) for v in field_values(c, "PHONE"))
    )


def companies_named(sandbox, name: str) -> list[int]:
    return sorted(c["id"] for c in list(sandbox.amocrm.companies.values()) if c["name"] == name)


def notes_on(sandbox, lead_id: int) -> list[str]:
    return [
        n["params"].get("text")
        for n in list(sandbox.amocrm.notes.values())
        if n["entity_type"] == "leads" and n["entity_id"] == lead_id
    ]


def pipeline_id(sandbox, name: str) -> int:
    return next(p["id"] for p in sandbox.amocrm.pipelines.values() if p["name"] == name)


class Wire(httpx.AsyncBaseTransport):
    """The real connection to the emulator, recording every request, with chosen faults.

    A fault is (method, path pattern, kind), and strikes once: "lose" sends the request and
    drops the answer; "drop" never sends it but looks the same (a read timeout); "503" answers
    503 without sending; "predelay:N" waits N seconds before sending; "delay:N" holds the
    answer N seconds.
    """

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[tuple[str, str, Any]] = []
        self.faults: list[tuple[str, str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = ""
        for rule in self.faults:
            method, pattern, kind = rule
            if request.method == method and re.fullmatch(pattern, request.url.path):
                fault = kind
                self.faults.remove(rule)
                break
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.method, request.url.path, body))
        if fault == "drop":
            raise httpx.ReadTimeout("dropped before it reached amoCRM", request=request)
        if fault == "503":
            return httpx.Response(503, text="Service Unavailable", request=request)
        if fault.startswith("predelay:"):
            await anyio.sleep(float(fault.split(":")[1]))
        response = await self.inner.handle_async_request(request)
        if fault == "lose":
            await response.aread()
            await response.aclose()
            raise httpx.ReadTimeout("the answer was lost on the way back", request=request)
        if fault.startswith("delay:"):
            await response.aread()
            await anyio.sleep(float(fault.split(":")[1]))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def posts(self, pattern: str) -> list[tuple[str, Any]]:
        return [(p, b) for m, p, b in self.sent if m == "POST" and re.fullmatch(pattern, p)]

    def gets(self, path: str) -> int:
        return sum(1 for m, p, _ in self.sent if m == "GET" and p == path)


class LaggingSearch(Wire):
    """amoCRM's contact search index behind by ``lag`` seconds: a contact made since is not
    found by a query, though it is by its id."""

    lag = 30

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        searching = request.url.path == "/api/v4/contacts" and "query" in request.url.params
        if request.method != "GET" or not searching:
            return response
        await response.aread()
        if response.status_code != 200:
            return response
        body = json.loads(response.content)
        old = [
            c
            for c in body["_embedded"]["contacts"]
            if c.get("created_at", 0) < time.time() - self.lag
        ]
        if not old:
            return httpx.Response(204, request=request)
        body["_embedded"]["contacts"] = old
        return httpx.Response(
            200, json=body, headers={"content-type": "application/hal+json"}, request=request
        )


@asynccontextmanager
async def outbox_to(
    sandbox, store: Store, transport: Wire | None = None, **options: Any
) -> AsyncIterator[Outbox]:
    client = AmoCrmClient(
        sandbox.amocrm_url, sandbox.amocrm_token, gate=Gate(1000), transport=transport
    )
    settings = {"check_delay": 0.2, "max_backoff": 0.5, "interval": 0.2, "policy": QUICK}
    try:
        yield Outbox(client, store, **{**settings, **options})
    finally:
        await client.aclose()


@pytest.fixture
def store():
    database = Store()
    yield database
    database.close()


@pytest.fixture
def two_stores(tmp_path):
    """Two connections to one database file, as two server processes hold."""
    path = tmp_path / "shared.db"
    first, second = Store(path), Store(path)
    yield first, second
    first.close()
    second.close()


def settled(row: dict[str, Any]) -> bool:
    return row["status"] == "delivered" and row.get("followups") in (None, "", "[]")


async def deliver_until(outboxes, store: Store, forwarding_ids, seconds=8.0):
    """Run the outboxes' passes until every forwarding is settled; return the rows."""
    if isinstance(outboxes, Outbox):
        outboxes = [outboxes]
    with anyio.move_on_after(seconds):
        while not all(settled(store.forwarding(f)) for f in forwarding_ids):
            for outbox in outboxes:
                await outbox.deliver_due()
            await anyio.sleep(0.05)
    return [store.forwarding(f) for f in forwarding_ids]


async def make_contact(outbox: Outbox, name: str, phone_values: list[str]) -> int:
    values = [
        {"field_code": "PHONE", "values": [{"value": v, "enum_code": "MOB"} for v in phone_values]}
    ]
    answer = await outbox.client.request(
        "POST", "/api/v4/contacts", body=[{"name": name, "custom_fields_values": values}]
    )
    return int(answer.body["_embedded"]["contacts"][0]["id"])


def tool_settings(sandbox, tmp_path, **extra: Any) -> Settings:
    env = {key.lower(): value for key, value in sandbox.env.items()}
    env.update(extra)
    return Settings(
        _env_file=None,
        db_path=tmp_path / "t.db",
        outbox_check_delay=0.2,
        outbox_max_backoff=0.5,
        outbox_interval=0.2,
        **env,
    )


async def call_tool(client: Client, arguments: dict[str, Any]) -> tuple[bool, str]:
    result = await client.call_tool("forward_lead_to_amocrm", arguments)
    return result.is_error, result.content[0].text


# --- 1. recovery of a lost answer takes only its own deal ---------------------------------------


@pytest.mark.parametrize("person", ["known contact", "new contact"])
async def test_recovery_does_not_take_another_lead_of_the_same_person(sandbox, store, person):
    """Lead A never reached amoCRM and B's answer was lost: A is sent again, B finds its own
    deal. With a known contact B goes out at once, so A's search meets B's deal."""
    tag, national = unique(), fresh_phone(sandbox)
    name = f"Пётр {tag}"
    wire = Wire()
    wire.faults += [("POST", CREATE, "drop"), ("POST", CREATE, "lose")]
    async with outbox_to(sandbox, store, transport=wire) as outbox:
        known = None
        if person == "known contact":
            known = await make_contact(outbox, name, ["+7" + national])
        a = await outbox.submit(
            lead(
                name=name,
                phone="+7" + national,
                external_id=f"A-{tag}",
                pipeline="Тендеры",
                price=500000,
                message=f"A: тендер {tag}",
            )
        )
        b = await outbox.submit(
            lead(
                name=name,
                phone="+7" + national,
                external_id=f"B-{tag}",
                price=1000,
                message=f"B: расходники {tag}",
            )
        )
        assert (a["status"], b["status"]) == ("queued", "queued")
        if known:
            assert len(deals(sandbox, f"Заявка: {name}")) == 1  # B's, its answer lost
        await anyio.sleep(0.25)  # past check_delay
        await outbox.deliver(a["forwarding_id"])  # A, the older, is looked for first
        row_a, row_b = await deliver_until(outbox, store, [a["forwarding_id"], b["forwarding_id"]])
    assert row_a["status"] == row_b["status"] == "delivered"
    assert row_a["lead_id"] != row_b["lead_id"]
    assert deals(sandbox, f"Заявка: {name}") == sorted([row_a["lead_id"], row_b["lead_id"]])
    deal_a = sandbox.amocrm.leads[row_a["lead_id"]]
    deal_b = sandbox.amocrm.leads[row_b["lead_id"]]
    assert (deal_a["price"], deal_a["pipeline_id"]) == (500000, pipeline_id(sandbox, "Тендеры"))
    assert deal_b["price"] == 1000
    assert deal_b["pipeline_id"] == pipeline_id(sandbox, "Основная воронка")
    assert notes_on(sandbox, row_a["lead_id"]) == [f"A: тендер {tag}"]
    assert notes_on(sandbox, row_b["lead_id"]) == [f"B: расходники {tag}"]
    # One dropped, one lost but made, one more: three requests, two deals, one person.
    assert len(wire.posts(CREATE)) == 3
    assert holders(sandbox, national) == [row_a["contact_id"]] == [row_b["contact_id"]]
    if known:
        assert row_a["contact_id"] == known


async def test_recovery_in_one_process_does_not_claim_a_deal_another_is_still_recording(
    sandbox, two_stores
):
    """Process 1 looks for its lost A while process 2's B has been made but not recorded."""
    first_store, second_store = two_stores
    tag, national = unique(), fresh_phone(sandbox)
    name = f"Ева {tag}"
    first_wire, second_wire = Wire(), Wire()
    first_wire.faults.append(("POST", CREATE, "drop"))
    second_wire.faults.append(("POST", CREATE, "delay:2"))
    async with (
        outbox_to(sandbox, first_store, transport=first_wire) as first,
        outbox_to(sandbox, second_store, transport=second_wire) as second,
    ):
        known = await make_contact(first, name, ["+7" + national])
        a = await first.submit(
            lead(name=name, phone="+7" + national, external_id=f"A-{tag}", price=777, message="A")
        )
        assert a["status"] == "queued"
        await anyio.sleep(0.3)  # past check_delay: A is due to be looked for
        answers: dict[str, Any] = {}

        async def send_b() -> None:
            answers["b"] = await second.submit(
                lead(name=name, phone="+7" + national, external_id=f"B-{tag}", price=5, message="B")
            )

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send_b)
            with anyio.fail_after(5):
                while not deals(sandbox, f"Заявка: {name}"):
                    await anyio.sleep(0.02)
            # B's deal is in amoCRM and its answer is on the way: process 1 looks for A now.
            assert "b" not in answers
            await first.deliver_due()
        b = answers["b"]
        row_a, row_b = await deliver_until(
            [first, second], first_store, [a["forwarding_id"], b["forwarding_id"]]
        )
    assert b["status"] == "delivered" and b["lead_id"] == row_b["lead_id"]
    assert row_a["status"] == "delivered" and row_a["lead_id"] != row_b["lead_id"]
    assert deals(sandbox, f"Заявка: {name}") == sorted([row_a["lead_id"], row_b["lead_id"]])
    assert sandbox.amocrm.leads[row_a["lead_id"]]["price"] == 777
    assert sandbox.amocrm.leads[row_b["lead_id"]]["price"] == 5
    assert notes_on(sandbox, row_a["lead_id"]) == ["A"]
    assert notes_on(sandbox, row_b["lead_id"]) == ["B"]
    assert row_a["contact_id"] == row_b["contact_id"] == known


# --- 2. and 3. phones of other countries ----------------------------------------------------------


def fresh_short_phone(sandbox) -> str:
    """A Greenland mobile number (six digits), valid and held by no contact yet."""
    while True:
        number = f"+299 2{random.randrange(10000, 99999)}"
        if phones.normalize(number) and not holders_of_number(sandbox, phones.normalize(number)):
            return number


async def test_short_phone_lost_answer_makes_no_second_deal(sandbox, store):
    tag, number = unique(), fresh_short_phone(sandbox)
    wire = Wire()
    wire.faults.append(("POST", COMPLEX, "lose"))
    async with outbox_to(sandbox, store, transport=wire) as outbox:
        first = await outbox.submit(
            lead(name=f"Aputsiaq {tag}", phone=number, external_id=f"gl-{tag}")
        )
        assert first["status"] == "queued" and "no answer" in first["reason"]
        [row] = await deliver_until(outbox, store, [first["forwarding_id"]])
    assert row["status"] == "delivered"
    assert deals(sandbox, f"Заявка: Aputsiaq {tag}") == [row["lead_id"]]
    assert len(wire.posts(COMPLEX)) == 1
    assert holders_of_number(sandbox, phones.normalize(number)) == [row["contact_id"]]


async def test_short_phone_leads_of_one_person_reuse_one_contact(sandbox, store):
    tag, number = unique(), fresh_short_phone(sandbox)
    async with outbox_to(sandbox, store) as outbox:
        results = [
            await outbox.submit(lead(name=f"Nuka {tag}", phone=number, external_id=f"{tag}-{i}"))
            for i in range(3)
        ]
    assert [r["status"] for r in results] == ["delivered"] * 3
    assert len({r["contact_id"] for r in results}) == 1
    assert [r["contact_existed"] for r in results] == [False, True, True]
    assert holders_of_number(sandbox, phones.normalize(number)) == [results[0]["contact_id"]]


async def test_us_lead_is_not_linked_to_a_uk_contact_with_the_same_last_ten_digits(sandbox, store):
    while True:
        tail = f"{random.randrange(1000):03d}"
        if not holders(sandbox, "2079460" + tail):
            break
    uk, us = f"+44 20 7946 0{tail}", f"+1 207 946 0{tail}"
    assert phones.last10(uk) == phones.last10(us)
    async with outbox_to(sandbox, store) as outbox:
        london = await make_contact(outbox, f"John Smith {tail}", [uk])
        result = await outbox.submit(
            lead(name=f"Mary Jones {tail}", phone=us, external_id=f"us-{unique()}")
        )
    assert result["status"] == "delivered"
    assert result["contact_existed"] is False and result["contact_id"] != london
    assert holders_of_number(sandbox, phones.normalize(us)) == [result["contact_id"]]
    assert field_values(sandbox.amocrm.contacts[london], "PHONE") == [uk]


async def test_russian_lead_still_finds_a_contact_stored_with_the_trunk_eight(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    async with outbox_to(sandbox, store) as outbox:
        contact_id = await make_contact(
            outbox, f"Семён {tag}", [f"8 {national[:3]} {national[3:6]}-{national[6:]}"]
        )
        result = await outbox.submit(lead(name=f"Семён {tag}", phone="+7" + national))
    assert result["contact_existed"] is True and result["contact_id"] == contact_id
    assert holders(sandbox, national) == [contact_id]


# --- 4. a schema-v2 'unknown' row -----------------------------------------------------------------


def v2_database(path, row: dict[str, Any]) -> None:
    """A database as version 2 left it: its two migrations (unchanged since), one row."""
    db = sqlite_utils.Database(path)
    for migrate in MIGRATIONS[:2]:
        migrate(db)
    db.execute("PRAGMA user_version = 2")
    db["forwarded_leads"].insert(row)
    db.conn.commit()
    db.conn.close()


@pytest.mark.parametrize("case", ["upgraded a second later", "old row, first search refused"])
async def test_v2_unknown_row_is_looked_for_and_delivered_after_migration(sandbox, tmp_path, case):
    tag, national = unique(), fresh_phone(sandbox)
    name, phone = f"Старый {tag}", "+7" + national
    # A second ago: the upgrade comes within check_delay of the lost answer.
    sent = int(time.time()) - (86400 if case.startswith("old") else 1)
    forwarding_id = uuid.uuid4().hex
    v2_request = {
        "name": name,
        "phone": phone,
        "email": "",
        "message": "hi",
        "source": "",
        "external_id": f"v2-{tag}",
        "price": 0,
        "pipeline_id": 0,
        "status_id": 0,
        "tags": [],
        "lead_name": "",
    }
    path = tmp_path / "v2.db"
    v2_database(
        path,
        {
            "id": forwarding_id,
            "external_id": f"v2-{tag}",
            "status": "unknown",
            "name": name,
            "phone": phone,
            "email": "",
            "source": "",
            "attempts": 1,
            "last_error": "amoCRM error: the lead may or may not have been created",
            "request": json.dumps(v2_request, ensure_ascii=False),
            "created_at": sent,
            "updated_at": sent,
        },
    )
    store = Store(path)
    assert store.schema_version >= 3
    wire = Wire()
    if case.startswith("old"):
        wire.faults += [("GET", r"/api/v4/leads", "503")] * 2  # both tries of the first search
    try:
        async with outbox_to(sandbox, store, transport=wire, check_delay=2) as outbox:
            # The deal version 2 made before its answer was lost.
            contact = {
                "name": name,
                "custom_fields_values": [
                    {"field_code": "PHONE", "values": [{"value": phone, "enum_code": "WORK"}]}
                ],
            }
            answer = await outbox.client.request(
                "POST",
                COMPLEX,
                body=[
                    {
                        "name": f"Заявка: {name}",
                        "price": 0,
                        "created_at": sent,
                        "_embedded": {"contacts": [contact]},
                    }
                ],
            )
            made = int(answer.body[0]["id"])
            [row] = await deliver_until(outbox, store, [forwarding_id], seconds=10)
    finally:
        store.close()
    assert row["status"] == "delivered" and row["lead_id"] == made
    assert deals(sandbox, f"Заявка: {name}") == [made]
    assert [p for p, _ in wire.posts(r"/api/v4/leads.*")] == [COMPLEX]  # the emulated v2 one
    assert wire.gets("/api/v4/leads") == (3 if case.startswith("old") else 1)


# --- 5. a lease that runs out while its process still works -------------------------------------


async def test_lease_expiry_does_not_let_a_second_process_send_the_lead_again(
    sandbox, two_stores, monkeypatch
):
    first_store, second_store = two_stores
    monkeypatch.setattr(outbox_module, "LEASE", 1)
    tag, national = unique(), fresh_phone(sandbox)
    title = f"Лиса {tag}"
    slow, other = Wire(), Wire()
    slow.faults.append(("GET", r"/api/v4/contacts", "predelay:3.5"))
    async with (
        outbox_to(sandbox, first_store, transport=slow) as first,
        outbox_to(sandbox, second_store, transport=other) as second,
    ):
        answers: dict[str, Any] = {}

        async def send() -> None:
            answers["a"] = await first.submit(
                lead(name=title, phone="+7" + national, external_id=f"l-{tag}", lead_name=title)
            )

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send)
            with anyio.fail_after(10):
                while True:
                    row = second_store.forwarding_by_external_id(f"l-{tag}")
                    # Lapsed as the store reckons it, in whole seconds.
                    if row and row["claimed_until"] and row["claimed_until"] < int(time.time()):
                        break
                    await anyio.sleep(0.05)
            assert "a" not in answers  # the first process is still looking for the contact
            worked = await second.deliver_due()
    a = answers["a"]
    row = second_store.forwarding(a["forwarding_id"])
    assert worked == 1  # the second process did take the lapsed forwarding
    assert a["status"] == "delivered" and row["status"] == "delivered"
    assert row["lead_id"] == a["lead_id"]
    assert deals(sandbox, title) == [a["lead_id"]]
    assert other.posts(COMPLEX) == [] and len(slow.posts(COMPLEX)) == 1


# --- 6. too many tags -----------------------------------------------------------------------------


async def test_thirty_thousand_tags_are_refused_at_once(sandbox, tmp_path):
    store = Store()
    async with Client(
        create_server(tool_settings(sandbox, tmp_path), store=store), mode="legacy"
    ) as client:
        started = time.perf_counter()
        is_error, text = await call_tool(
            client,
            {"phone": "+7" + fresh_phone(sandbox), "tags": [f"tag{i}" for i in range(30_000)]},
        )
        elapsed = time.perf_counter() - started
    rows = list(store.query("SELECT id FROM forwarded_leads"))
    store.close()
    assert is_error and "at most 20 tags" in text
    assert elapsed < 1.0
    assert rows == []


# --- 7. a repeat after a rename in amoCRM -------------------------------------------------------


async def test_repeat_after_the_pipeline_was_renamed_returns_the_first_result(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    arguments = {
        "name": f"Ира {tag}",
        "phone": "+7" + national,
        "external_id": f"rename-{tag}",
        "pipeline": "Тендеры",
        "status": "Заявка подана",
    }
    async with outbox_to(sandbox, store) as outbox:
        first = await outbox.submit(lead(**arguments))
    pipeline = sandbox.amocrm.pipelines[pipeline_id(sandbox, "Тендеры")]
    pipeline["name"] = f"Тендеры {tag}"
    try:
        # A fresh catalog, as after a restart: it holds the new name only.
        async with outbox_to(sandbox, store) as outbox:
            again = await outbox.submit(lead(**arguments))
    finally:
        pipeline["name"] = "Тендеры"
    assert first["status"] == "delivered" and first["duplicate"] is False
    assert again["status"] == "delivered" and again["duplicate"] is True
    assert again["lead_id"] == first["lead_id"]
    assert again["forwarding_id"] == first["forwarding_id"]
    assert again["pipeline"] == "Тендеры"  # as the deal was placed
    assert deals(sandbox, f"Заявка: Ира {tag}") == [first["lead_id"]]


# --- 8. one new company named by two processes --------------------------------------------------


async def test_two_processes_naming_one_new_company_create_it_once(sandbox, two_stores):
    first_store, second_store = two_stores
    tag, national = unique(), fresh_phone(sandbox)
    company = f"ЗАО Лютик {tag}"
    wires = [Wire(), Wire()]
    for wire in wires:
        wire.faults.append(("POST", r"/api/v4/companies", "predelay:1"))
    async with (
        outbox_to(sandbox, first_store, transport=wires[0]) as first,
        outbox_to(sandbox, second_store, transport=wires[1]) as second,
    ):
        contact_id = await make_contact(first, f"Ян {tag}", ["+7" + national])
        answers: dict[int, Any] = {}

        async def send(index: int, outbox: Outbox) -> None:
            answers[index] = await outbox.submit(
                lead(
                    name=f"Ян {tag}",
                    phone="+7" + national,
                    external_id=f"{tag}-{index}",
                    company=company,
                )
            )

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send, 0, first)
            tasks.start_soon(send, 1, second)
        rows = await deliver_until(
            [first, second], first_store, [answers[i]["forwarding_id"] for i in (0, 1)]
        )
    [company_id] = companies_named(sandbox, company)
    assert [r["status"] for r in rows] == ["delivered", "delivered"]
    assert rows[0]["lead_id"] != rows[1]["lead_id"]
    for row in rows:
        assert row["contact_id"] == contact_id and row["company_id"] == company_id
        linked = sandbox.amocrm.leads[row["lead_id"]]["_embedded"]["companies"]
        assert linked == [{"id": company_id}]
    assert (
        len(wires[0].posts(r"/api/v4/companies")) + len(wires[1].posts(r"/api/v4/companies")) == 1
    )


# --- 9. a lagging contact search after a lost answer --------------------------------------------


async def test_lagging_search_after_a_lost_answer_makes_no_second_contact(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    wire = LaggingSearch()
    wire.faults.append(("POST", COMPLEX, "lose"))
    async with outbox_to(sandbox, store, transport=wire) as outbox:
        a = await outbox.submit(
            lead(name=f"Ева {tag}", phone="+7" + national, external_id=f"a-{tag}")
        )
        b = await outbox.submit(
            lead(name=f"Ева {tag}", phone="+7" + national, external_id=f"b-{tag}")
        )
        assert a["status"] == "queued"
        row_a, row_b = await deliver_until(outbox, store, [a["forwarding_id"], b["forwarding_id"]])
    assert row_a["status"] == row_b["status"] == "delivered"
    assert row_a["lead_id"] != row_b["lead_id"]
    assert row_b["contact_id"] == row_a["contact_id"]
    assert holders(sandbox, national) == [row_a["contact_id"]]
    # A's with the new contact, its answer lost; B's to the contact A made.
    assert [p for p, _ in wire.posts(CREATE)] == [COMPLEX, "/api/v4/leads"]


# --- 10. repeats within the window, typed differently -------------------------------------------


def window_pairs(sandbox, tag: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    def phone() -> str:
        return "+7" + fresh_phone(sandbox)

    nfc = unicodedata.normalize("NFC", f"Йосиф {tag}")
    pairs = []
    number = phone()
    pairs.append(
        (
            "NFC vs NFD",
            {"name": nfc, "phone": number},
            {"name": unicodedata.normalize("NFD", nfc), "phone": number},
        )
    )
    number = phone()
    pairs.append(
        (
            "ё vs е",
            {"name": f"Пётр {tag}", "phone": number},
            {"name": f"Петр {tag}", "phone": number},
        )
    )
    number = phone()
    pairs.append(
        (
            "zero-width space",
            {"name": f"Олег {tag}", "phone": number},
            {"name": f"Олег\u200b {tag}", "phone": number},
        )
    )
    number = phone()
    pairs.append(
        (
            "e-mail added on the repeat",
            {"name": f"Лиза {tag}", "phone": number},
            {"name": f"Лиза {tag}", "phone": number, "email": f"l{tag}@example.com"},
        )
    )
    number = phone()
    pairs.append(
        (
            "external_id first, then none",
            {"name": f"Глеб {tag}", "phone": number, "external_id": f"g-{tag}"},
            {"name": f"Глеб {tag}", "phone": number},
        )
    )
    return pairs


async def test_variants_of_one_lead_within_the_window_are_one_deal(sandbox, store):
    tag = unique()
    async with outbox_to(sandbox, store) as outbox:
        for label, first_arguments, second_arguments in window_pairs(sandbox, tag):
            first = await outbox.submit(lead(**first_arguments))
            second = await outbox.submit(lead(**second_arguments))
            title = f"Заявка: {lead(**first_arguments).name}"
            assert first["status"] == "delivered" and first["duplicate"] is False, label
            assert second["duplicate"] is True, label
            assert second["lead_id"] == first["lead_id"], label
            assert deals(sandbox, title) == [first["lead_id"]], label
            other_title = f"Заявка: {lead(**second_arguments).name}"
            if other_title != title:
                assert deals(sandbox, other_title) == [], label


# --- 11. what a queued lead says ------------------------------------------------------------------


async def test_lead_queued_behind_a_blocked_account_says_a_restart_is_needed(sandbox, tmp_path):
    tag = unique()
    store = Store()
    try:
        async with Client(
            create_server(tool_settings(sandbox, tmp_path), store=store), mode="legacy"
        ) as client:
            sandbox.amocrm.blocked = True
            try:
                is_error, text = await call_tool(
                    client,
                    {
                        "name": f"Блок {tag}",
                        "phone": "+7" + fresh_phone(sandbox),
                        "external_id": f"b-{tag}",
                    },
                )
            finally:
                sandbox.amocrm.blocked = False
    finally:
        rows = list(store.query("SELECT status FROM forwarded_leads"))
        store.close()
    assert not is_error, text
    answer = json.loads(text)
    assert answer["status"] == "queued"
    assert "blocked API access" in answer["reason"]
    assert "lifted the block and the server is restarted" in answer["reason"]
    assert rows == [{"status": "queued"}]
    assert deals(sandbox, f"Заявка: Блок {tag}") == []


async def test_lead_queued_with_names_unchecked_says_so(sandbox, tmp_path):
    tag = unique()
    store = Store()
    settings = tool_settings(sandbox, tmp_path, amocrm_base_url="http://127.0.0.1:9")
    try:
        async with Client(create_server(settings, store=store), mode="legacy") as client:
            is_error, text = await call_tool(
                client,
                {
                    "name": f"Имя {tag}",
                    "phone": "+7" + fresh_phone(sandbox),
                    "external_id": f"n-{tag}",
                    "pipeline": "Несуществующая воронка",
                },
            )
    finally:
        store.close()
    assert not is_error, text
    answer = json.loads(text)
    assert answer["status"] == "queued"
    assert answer["names_checked"] is False


# --- 12. giant arguments --------------------------------------------------------------------------


async def test_giant_price_gets_a_clear_validation_error(sandbox, tmp_path):
    store = Store()
    async with Client(
        create_server(tool_settings(sandbox, tmp_path), store=store), mode="legacy"
    ) as client:
        is_error, text = await call_tool(
            client, {"name": "p", "phone": "+7" + fresh_phone(sandbox), "price": 10**4400}
        )
    rows = list(store.query("SELECT id FROM forwarded_leads"))
    store.close()
    assert is_error
    assert text.startswith("invalid arguments for forward_lead_to_amocrm: price: ")
    assert "less than or equal to 1000000000000" in text
    assert len(text) < 500
    assert rows == []


async def test_a_megabyte_custom_field_name_is_refused_briefly(sandbox, tmp_path):
    async with Client(create_server(tool_settings(sandbox, tmp_path)), mode="legacy") as client:
        is_error, text = await call_tool(
            client,
            {
                "phone": "+7" + fresh_phone(sandbox),
                "custom_fields": {"я" * 1_000_000: 1},
                "dry_run": True,
            },
        )
    assert is_error
    assert "custom_fields" in text and "longer than 255 characters" in text
    assert len(text) < 500
