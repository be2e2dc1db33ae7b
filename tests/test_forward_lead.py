"""Forwarding a lead through the outbox, against the amoCRM emulator: each deal once, names
resolved, contacts and companies reused, and lost or refused writes delivered exactly once."""

from __future__ import annotations

import copy
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from mcp import Client

from tariti_mcp import phones
from tariti_mcp.amocrm.client import AmoCrmClient
from tariti_mcp.amocrm.leads import LeadRequest, prepare
from tariti_mcp.amocrm.outbox import ForwardingFailed, Outbox
from tariti_mcp.config import Settings
from tariti_mcp.errors import InvalidArgument
from tariti_mcp.http import Gate, RetryPolicy
from tariti_mcp.sandbox.faults import FaultProxy, FaultRules
from tariti_mcp.server import create_server
from tariti_mcp.store import Store, field_values

pytestmark = pytest.mark.anyio

# The outbox tries again soon, so a test waits fractions of a second, not minutes.
QUICK = RetryPolicy(attempts=2, first_wait=0.05, max_wait=0.1, total=1.0)
_numbers = itertools.count(9993100000)


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


def companies_named(sandbox, name: str) -> list[int]:
    return sorted(c["id"] for c in list(sandbox.amocrm.companies.values()) if c["name"] == name)


def notes_on(sandbox, lead_id: int) -> list[str]:
    return [
        n["params"].get("text")
        for n in list(sandbox.amocrm.notes.values())
        if n["entity_type"] == "leads" and n["entity_id"] == lead_id
    ]


def writes_since(sandbox, mark: int) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _, _ in sandbox.amocrm.requests[mark:] if m != "GET"]


def emulator_port(sandbox) -> int:
    port = urlsplit(sandbox.amocrm_url).port
    assert port is not None
    return port


class Wire(httpx.AsyncBaseTransport):
    """The real connection to the emulator, recording every request, with chosen faults.

    A fault is (method, path pattern, kind): "lose" sends the request and then drops the
    answer, as a timeout after amoCRM acted would; each fault strikes once.
    """

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[tuple[str, str, Any]] = []
        self.faults: list[tuple[str, str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = None
        for rule in self.faults:
            method, pattern, kind = rule
            if request.method == method and re.fullmatch(pattern, request.url.path):
                fault = kind
                self.faults.remove(rule)
                break
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.method, request.url.path, body))
        response = await self.inner.handle_async_request(request)
        if fault == "lose":
            await response.aread()
            await response.aclose()
            raise httpx.ReadTimeout("the answer was lost on the way back", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def posts(self, pattern: str) -> list[tuple[str, Any]]:
        return [(p, b) for m, p, b in self.sent if m == "POST" and re.fullmatch(pattern, p)]


@asynccontextmanager
async def outbox_to(
    sandbox, store: Store, url: str | None = None, transport: Wire | None = None, **options: Any
) -> AsyncIterator[Outbox]:
    client = AmoCrmClient(
        url or sandbox.amocrm_url, sandbox.amocrm_token, gate=Gate(1000), transport=transport
    )
    settings = {"check_delay": 0.2, "max_backoff": 0.5, "interval": 0.2, "policy": QUICK}
    try:
        yield Outbox(client, store, **{**settings, **options})
    finally:
        await client.aclose()


@asynccontextmanager
async def fault_proxy(sandbox, rules: dict[str, Any], port: int = 0) -> AsyncIterator[FaultProxy]:
    """The sandbox's fault proxy in front of the shared emulator, on this test's event loop."""
    proxy = FaultProxy("127.0.0.1", emulator_port(sandbox), seed=3, rules=rules, port=port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def deliver_until(outbox: Outbox, store: Store, forwarding_id: str, done, seconds=6.0):
    """Run the outbox's passes until the row satisfies ``done``; return the row."""
    with anyio.move_on_after(seconds):
        while not done(store.forwarding(forwarding_id)):
            await outbox.deliver_due()
            await anyio.sleep(0.05)
    return store.forwarding(forwarding_id)


def settled(row: dict[str, Any]) -> bool:
    return row["status"] == "delivered" and row.get("followups") in (None, "", "[]")


async def make_contact(outbox: Outbox, name: str, phone_values: list[str], emails=()) -> int:
    values = [
        {"field_code": "PHONE", "values": [{"value": v, "enum_code": "MOB"} for v in phone_values]}
    ]
    if emails:
        values.append(
            {"field_code": "EMAIL", "values": [{"value": v, "enum_code": "PRIV"} for v in emails]}
        )
    answer = await outbox.client.request(
        "POST", "/api/v4/contacts", body=[{"name": name, "custom_fields_values": values}]
    )
    return int(answer.body["_embedded"]["contacts"][0]["id"])


def tool_settings(sandbox, tmp_path, url: str | None = None) -> Settings:
    env = {key.lower(): value for key, value in sandbox.env.items()}
    if url:
        env["amocrm_base_url"] = url
    return Settings(
        _env_file=None,
        db_path=tmp_path / "t.db",
        outbox_check_delay=0.2,
        outbox_max_backoff=0.5,
        outbox_interval=0.2,
        **env,
    )


async def forward(client: Client, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool("forward_lead_to_amocrm", arguments)
    assert not result.is_error, result.content[0].text
    return json.loads(result.content[0].text)


@pytest.fixture
def store():
    database = Store()
    yield database
    database.close()


# --- 1. idempotency by external_id ---------------------------------------------------------------


async def test_same_external_id_returns_the_first_deal(sandbox, tmp_path):
    tag, national = unique(), fresh_phone(sandbox)
    title = f"Заявка {tag}"
    arguments = {
        "name": f"Иван {tag}",
        "phone": "+7" + national,
        "message": f"Перезвоните {tag}",
        "external_id": f"form-{tag}",
        "lead_name": title,
    }
    store = Store()
    async with Client(
        create_server(tool_settings(sandbox, tmp_path), store=store), mode="legacy"
    ) as client:
        first = await forward(client, arguments)
        # A model repeating the call, with the details typed a little differently.
        again = await forward(
            client, {**arguments, "phone": "8" + national, "name": "Другой", "message": "ещё"}
        )
    store.close()
    assert first["status"] == "delivered" and first["duplicate"] is False
    assert again["status"] == "delivered" and again["duplicate"] is True
    assert again["lead_id"] == first["lead_id"]
    assert again["forwarding_id"] == first["forwarding_id"]
    assert deals(sandbox, title) == [first["lead_id"]]
    assert notes_on(sandbox, first["lead_id"]) == [f"Перезвоните {tag}"]
    assert holders(sandbox, national) == [first["contact_id"]]


async def test_same_external_id_with_other_details_says_the_first_lead_stands(sandbox, store):
    """A newcomer's find: a reused external_id with another person's details came back as a
    plain duplicate, and the model took the second lead as forwarded."""
    tag, national, other = unique(), fresh_phone(sandbox), fresh_phone(sandbox)
    async with outbox_to(sandbox, store) as outbox:
        first = await outbox.submit(
            lead(name=f"Иван {tag}", phone="+7" + national, external_id=f"x-{tag}")
        )
        typed_again = await outbox.submit(
            lead(name=f" иван  {tag}", phone="8" + national, external_id=f"x-{tag}")
        )
        someone_else = await outbox.submit(
            lead(name=f"Пётр {tag}", phone="+7" + other, external_id=f"x-{tag}")
        )
    assert typed_again["duplicate"] is True and "notes" not in typed_again
    assert someone_else["duplicate"] is True
    assert someone_else["lead_id"] == first["lead_id"]
    assert someone_else["notes"] == [
        f"external_id 'x-{tag}' was forwarded before with another name and phone; this call "
        "sent nothing and the first lead stands. A different lead needs an external_id of its own"
    ]
    assert holders(sandbox, other) == []


# --- 2. idempotency within the window, without external_id ---------------------------------------


async def test_same_person_and_name_within_the_window_is_one_deal(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    async with outbox_to(sandbox, store) as outbox:
        first = await outbox.submit(lead(name=f"Мария Иванова {tag}", phone="+7 " + national))
        same = await outbox.submit(
            lead(
                name=f"  мария   ИВАНОВА {tag} ",
                phone=f"8 ({national[:3]}) {national[3:6]}-{national[6:8]}-{national[8:]}",
            )
        )
        other = await outbox.submit(lead(name=f"Мария Петрова {tag}", phone=national))
    assert first["status"] == "delivered" and first["duplicate"] is False
    assert same["duplicate"] is True and same["lead_id"] == first["lead_id"]
    assert other["duplicate"] is False and other["lead_id"] != first["lead_id"]
    assert other["contact_id"] == first["contact_id"] and other["contact_existed"] is True
    assert deals(sandbox, f"Заявка: Мария Иванова {tag}") == [first["lead_id"]]
    assert deals(sandbox, f"Заявка: Мария Петрова {tag}") == [other["lead_id"]]


async def test_a_window_of_zero_makes_every_repeat_a_new_deal(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    person = {"name": f"Олег {tag}", "phone": "+7" + national}
    async with outbox_to(sandbox, store) as outbox:
        first = await outbox.submit(lead(**person))
    # The first forwarding was made a few seconds ago.
    store.update_forwarding(first["forwarding_id"], created_at=int(time.time()) - 5)
    async with outbox_to(sandbox, store, window=0) as outbox:
        second = await outbox.submit(lead(**person))
    assert second["status"] == "delivered" and second["duplicate"] is False
    assert second["lead_id"] != first["lead_id"]
    assert deals(sandbox, f"Заявка: Олег {tag}") == sorted([first["lead_id"], second["lead_id"]])
    assert holders(sandbox, national) == [first["contact_id"]]


async def test_a_window_of_zero_also_covers_a_repeat_in_the_same_second(
    sandbox, store, monkeypatch
):
    tag, national = unique(), fresh_phone(sandbox)
    person = {"name": f"Глеб {tag}", "phone": "+7" + national}
    # Both forwardings within one second of the store's clock, as a double-clicked form.
    frozen = int(time.time())
    monkeypatch.setattr("tariti_mcp.store._now", lambda: frozen)
    async with outbox_to(sandbox, store, window=0) as outbox:
        first = await outbox.submit(lead(**person))
        second = await outbox.submit(lead(**person))
    assert second["duplicate"] is False and second["lead_id"] != first["lead_id"]


# --- 3. one contact whatever the phone format ---------------------------------------------------


async def test_every_phone_format_finds_the_one_existing_contact(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    spaced = f"+7 ({national[:3]}) {national[3:6]}-{national[6:8]}-{national[8:]}"
    async with outbox_to(sandbox, store) as outbox:
        other = fresh_phone(sandbox)
        contact_id = await make_contact(outbox, f"Клиент {tag}", [spaced, "+7" + other])
        before = copy.deepcopy(sandbox.amocrm.contacts[contact_id])
        forms = [
            f"+7 {national[:3]} {national[3:]}",
            f"8 {national[:3]} {national[3:]}",
            national,
            f"8({national[:3]}){national[3:6]}-{national[6:8]}-{national[8:]}",
            f"+7-{national[:3]}-{national[3:6]}.{national[6:8]}.{national[8:]}",
            f"7 {national}",
        ]
        results = [
            await outbox.submit(
                lead(name=f"Новое имя {tag}", phone=form, external_id=f"fmt-{tag}-{i}")
            )
            for i, form in enumerate(forms)
        ]
    for result in results:
        assert result["status"] == "delivered", result
        assert result["contact_id"] == contact_id and result["contact_existed"] is True
        linked = sandbox.amocrm.leads[result["lead_id"]]["_embedded"]["contacts"]
        assert [c["id"] for c in linked] == [contact_id]
    assert len({r["lead_id"] for r in results}) == len(forms)
    assert holders(sandbox, national) == [contact_id]
    after = sandbox.amocrm.contacts[contact_id]
    for key in ("name", "first_name", "last_name", "custom_fields_values", "updated_at"):
        assert after[key] == before[key], key


async def test_contact_search_reads_every_page(sandbox, store):
    """The owner of the number comes after 260 contacts that only mention it in a comment."""
    tag, national = unique(), fresh_phone(sandbox)
    async with outbox_to(sandbox, store) as outbox:
        for first in (0, 250):
            decoys = [
                {
                    "name": f"Упоминание {tag} {n}",
                    "custom_fields_values": [
                        {"field_id": 318011, "values": [{"value": f"друг звонил с 8{national}"}]}
                    ],
                }
                for n in range(first, min(first + 250, 260))
            ]
            await outbox.client.request("POST", "/api/v4/contacts", body=decoys)
        owner = await make_contact(outbox, f"Владелец {tag}", ["8" + national])
        result = await outbox.submit(lead(name=f"Кто-то {tag}", phone="+7" + national))
    assert result["contact_existed"] is True and result["contact_id"] == owner


# --- 4. pipeline, status and manager by name ----------------------------------------------------


def status_named(sandbox, pipeline_name: str, status_name: str) -> tuple[int, int]:
    pipeline = next(p for p in sandbox.amocrm.pipelines.values() if p["name"] == pipeline_name)
    status = next(s for s in pipeline["_embedded"]["statuses"] if s["name"] == status_name)
    return pipeline["id"], status["id"]


async def test_pipeline_status_and_manager_given_by_name_land_there(sandbox, store):
    tag = unique()
    managers = [u for u in sandbox.amocrm.users.values() if not u["rights"]["is_admin"]]
    by_email, by_name = managers[0], managers[1]
    async with outbox_to(sandbox, store) as outbox:
        first = await outbox.submit(
            lead(
                name=f"Первый {tag}",
                phone="+7" + fresh_phone(sandbox),
                pipeline="  ПОВТОРНЫЕ   продажи ",
                status="счет выставлен",  # ё written as е
                responsible=by_email["email"].upper(),
            )
        )
        second = await outbox.submit(
            lead(
                name=f"Второй {tag}",
                phone="+7" + fresh_phone(sandbox),
                pipeline="тендеры",
                status="ЗАЯВКА ПОДАНА",
                responsible=by_name["name"].lower(),
            )
        )
    deal = sandbox.amocrm.leads[first["lead_id"]]
    assert (deal["pipeline_id"], deal["status_id"]) == status_named(
        sandbox, "Повторные продажи", "Счёт выставлен"
    )
    assert deal["responsible_user_id"] == by_email["id"]
    assert (first["pipeline"], first["stage"]) == ("Повторные продажи", "Счёт выставлен")
    deal = sandbox.amocrm.leads[second["lead_id"]]
    assert (deal["pipeline_id"], deal["status_id"]) == status_named(
        sandbox, "Тендеры", "Заявка подана"
    )
    assert deal["responsible_user_id"] == by_name["id"]
    # The new contact gets the same manager as its deal.
    assert sandbox.amocrm.contacts[second["contact_id"]]["responsible_user_id"] == by_name["id"]


async def test_unknown_pipeline_is_refused_with_the_valid_ones(sandbox, store):
    mark = len(sandbox.amocrm.requests)
    async with outbox_to(sandbox, store) as outbox:
        with pytest.raises(InvalidArgument) as refused:
            await outbox.submit(
                lead(name="X", phone="+7" + fresh_phone(sandbox), pipeline="Оптовые продажи")
            )
    message = str(refused.value)
    assert "unknown pipeline 'Оптовые продажи'" in message
    for pipeline in sandbox.amocrm.pipelines.values():
        assert f"{pipeline['name']!r} ({pipeline['id']})" in message
    assert writes_since(sandbox, mark) == []
    assert list(store.query("SELECT id FROM forwarded_leads")) == []


async def test_every_wrong_name_of_a_lead_is_named_in_one_error(sandbox, store):
    """A newcomer's find: a wrong responsible and a wrong custom field took two round trips,
    one error each."""
    mark = len(sandbox.amocrm.requests)
    async with outbox_to(sandbox, store) as outbox:
        with pytest.raises(InvalidArgument) as refused:
            await outbox.submit(
                lead(
                    name="X",
                    phone="+7" + fresh_phone(sandbox),
                    pipeline="Оптовые продажи",
                    responsible="nobody@nowhere.example",
                    custom_fields={"Цвет упаковки": "красный"},
                )
            )
    message = str(refused.value)
    assert message.startswith("3 problems: (1) ")
    assert "unknown pipeline 'Оптовые продажи'" in message.split("(2)")[0]
    assert "nobody@nowhere.example" in message.split("(2)")[1].split("(3)")[0]
    assert "no lead field 'Цвет упаковки'" in message.split("(3)")[1]
    assert writes_since(sandbox, mark) == []
    assert list(store.query("SELECT id FROM forwarded_leads")) == []


async def test_the_incoming_leads_stage_is_refused(sandbox, store):
    pipeline = next(p for p in sandbox.amocrm.pipelines.values() if p["is_main"])
    unsorted = next(s for s in pipeline["_embedded"]["statuses"] if s["type"] == 1)
    mark = len(sandbox.amocrm.requests)
    async with outbox_to(sandbox, store) as outbox:
        for given in (unsorted["name"].upper(), str(unsorted["id"])):
            with pytest.raises(InvalidArgument, match="incoming-leads stage") as refused:
                await outbox.submit(lead(name="X", phone="+7" + fresh_phone(sandbox), status=given))
            assert "'Первичный контакт'" in str(refused.value)  # a stage that may be chosen
    assert writes_since(sandbox, mark) == []
    assert list(store.query("SELECT id FROM forwarded_leads")) == []


# --- 5. custom fields and UTM -------------------------------------------------------------------


@pytest.fixture
def many_lead_fields(sandbox):
    """Sixty more lead fields, so the account's list of them takes two pages of 50."""
    fields = sandbox.amocrm.custom_fields["leads"]
    template = next(iter(fields.values()))
    added = []
    for index in range(60):
        definition = copy.deepcopy(template)
        definition.update(
            id=249001 + index * 2,
            name=f"Поле {index}",
            type="text",
            code=None,
            sort=600 + index,
            enums=None,
        )
        added.append(definition)
    added[-2].update(name="Промокод", code="PROMO_CODE")
    added[-1].update(
        name="Тип доставки",
        type="select",
        enums=[
            {"id": 819001, "value": "Курьер", "sort": 2},
            {"id": 819002, "value": "Самовывоз", "sort": 4},
        ],
    )
    for definition in added:
        fields[definition["id"]] = definition
    yield {d["name"]: d for d in added}
    for definition in added:
        fields.pop(definition["id"], None)


def values_of(deal: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    return {f["field_id"]: f["values"] for f in deal["custom_fields_values"] or []}


async def test_custom_fields_by_code_and_name_and_utm_land_in_their_fields(
    sandbox, store, many_lead_fields
):
    assert len(sandbox.amocrm.custom_fields["leads"]) > 50
    lead_fields = {
        d["code"] or d["name"]: d for d in sandbox.amocrm.custom_fields["leads"].values()
    }
    source = lead_fields["Источник"]
    exhibition = next(e for e in source["enums"] if e["value"] == "Выставка")
    mark = len(sandbox.amocrm.requests)
    async with outbox_to(sandbox, store) as outbox:
        result = await outbox.submit(
            lead(
                name=f"Поля {unique()}",
                phone="+7" + fresh_phone(sandbox),
                utm={"utm_source": "yandex", "utm_campaign": "весна-2026"},
                custom_fields={
                    "PROMO_CODE": "SPRING10",  # by code, on the second page
                    "тип ДОСТАВКИ": "самовывоз",  # by name, a choice by its label
                    "Источник": "выставка",
                },
            )
        )
    pages = [
        q for _, p, q, _ in sandbox.amocrm.requests[mark:] if p == "/api/v4/leads/custom_fields"
    ]
    assert len(pages) == 2 and "page=2" in pages[1]
    written = values_of(sandbox.amocrm.leads[result["lead_id"]])
    assert written[lead_fields["UTM_SOURCE"]["id"]] == [{"value": "yandex"}]
    assert written[lead_fields["UTM_CAMPAIGN"]["id"]] == [{"value": "весна-2026"}]
    assert written[lead_fields["PROMO_CODE"]["id"]] == [{"value": "SPRING10"}]
    assert written[many_lead_fields["Тип доставки"]["id"]] == [
        {"value": "Самовывоз", "enum_id": 819002, "enum_code": None}
    ]
    assert written[source["id"]] == [
        {"value": "Выставка", "enum_id": exhibition["id"], "enum_code": None}
    ]
    assert len(written) == 5


async def test_unknown_custom_field_is_refused_with_the_valid_ones(sandbox, store):
    mark = len(sandbox.amocrm.requests)
    async with outbox_to(sandbox, store) as outbox:
        with pytest.raises(InvalidArgument) as refused:
            await outbox.submit(
                lead(
                    name="X",
                    phone="+7" + fresh_phone(sandbox),
                    custom_fields={"Цвет упаковки": "красный"},
                )
            )
        with pytest.raises(InvalidArgument, match="no choice 'Билборд'") as bad_choice:
            await outbox.submit(
                lead(
                    name="X",
                    phone="+7" + fresh_phone(sandbox),
                    custom_fields={"Источник": "Билборд"},
                )
            )
    message = str(refused.value)
    assert "no lead field 'Цвет упаковки'" in message
    assert "'UTM_SOURCE'" in message and "'Источник'" in message
    assert "'Сайт'" in str(bad_choice.value)  # the choices that exist
    assert writes_since(sandbox, mark) == []


# --- 6. dry run -----------------------------------------------------------------------------------


async def test_dry_run_sends_nothing_and_shows_the_request_a_real_call_sends(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    request = lead(
        name=f"Пробный {tag}",
        phone="8" + national,
        email=f"probe-{tag}@example.org",
        message="Нужен счёт",
        source="site form",
        price=125000,
        tags=["web", "Срочно"],
        pipeline="Основная воронка",
        status="Переговоры",
        utm={"utm_medium": "cpc"},
        custom_fields={"Источник": "Сайт"},
    )
    wire = Wire()
    mark = len(sandbox.amocrm.requests)
    async with outbox_to(sandbox, store, transport=wire) as outbox:
        dry = await outbox.submit(request, dry_run=True)
        assert writes_since(sandbox, mark) == []
        assert [m for m, _, _ in wire.sent] == ["GET"] * len(wire.sent)
        assert list(store.query("SELECT id FROM forwarded_leads")) == []
        real = await outbox.submit(request)
    assert dry["dry_run"] is True and dry["sent"] is False
    assert dry["contact_existed"] is False
    assert (dry["pipeline"], dry["stage"]) == ("Основная воронка", "Переговоры")
    [shown] = dry["requests"]
    creates = wire.posts(r"/api/v4/leads(/complex)?")
    assert creates == [(shown["path"], shown["body"])]
    assert shown["path"] == "/api/v4/leads/complex"
    deal = sandbox.amocrm.leads[real["lead_id"]]
    placed = status_named(sandbox, "Основная воронка", "Переговоры")
    assert (shown["body"][0]["pipeline_id"], shown["body"][0]["status_id"]) == placed
    assert (deal["pipeline_id"], deal["status_id"]) == placed
    assert deal["price"] == 125000
    assert dry["then"] == [{"add_note": "Источник: site form\nНужен счёт"}]
    assert notes_on(sandbox, real["lead_id"]) == ["Источник: site form\nНужен счёт"]


async def test_dry_run_after_a_real_call_names_the_forwarding_it_repeats(sandbox, store):
    request = lead(name=f"Повтор {unique()}", phone="+7" + fresh_phone(sandbox))
    async with outbox_to(sandbox, store) as outbox:
        real = await outbox.submit(request)
        mark = len(sandbox.amocrm.requests)
        dry = await outbox.submit(request, dry_run=True)
    assert dry["duplicate_of"] == real["forwarding_id"]
    assert dry["contact_existed"] is True and dry["contact_id"] == real["contact_id"]
    assert dry["requests"][0]["path"] == "/api/v4/leads"
    assert writes_since(sandbox, mark) == []


# --- 7. the answer to the create request is lost -------------------------------------------------


async def test_lost_create_answer_is_found_in_amocrm_not_sent_again(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    title = f"Потерянный ответ {tag}"
    request = lead(
        name=f"Антон {tag}",
        phone="+7" + national,
        message=f"Текст {tag}",
        external_id=f"lost-{tag}",
        lead_name=title,
    )
    async with fault_proxy(sandbox, {"write": {"drop_after": 1.0}}) as proxy:
        url = f"http://127.0.0.1:{proxy.port}"
        mark = len(sandbox.amocrm.requests)
        # Long enough that a repeat at once comes before the deal is looked for.
        async with outbox_to(sandbox, store, url=url, check_delay=1.5) as outbox:
            first = await outbox.submit(request)
            # amoCRM made the deal; we never heard. Asked again at once: not checked yet.
            again = await outbox.submit(request)
            assert deals(sandbox, title) != []
            proxy.rules = FaultRules()
            row = await deliver_until(outbox, store, first["forwarding_id"], settled)
    assert first["status"] == "queued" and "no answer to the create request" in first["reason"]
    assert again["status"] == "queued" and again["duplicate"] is True
    assert row["status"] == "delivered"
    assert deals(sandbox, title) == [row["lead_id"]]
    assert holders(sandbox, national) == [row["contact_id"]]
    creates = [w for w in writes_since(sandbox, mark) if w[1] == "/api/v4/leads/complex"]
    assert creates == [("POST", "/api/v4/leads/complex")]
    assert notes_on(sandbox, row["lead_id"]) == [f"Текст {tag}"]
    async with outbox_to(sandbox, store) as outbox:
        final = await outbox.submit(request)
    assert final["status"] == "delivered" and final["lead_id"] == row["lead_id"]


class ForbidSearch(Wire):
    """The real connection, except that amoCRM refuses the deal search while ``on``."""

    on = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.on and request.method == "GET" and request.url.path == "/api/v4/leads":
            return httpx.Response(403, json={"title": "Forbidden", "detail": "no rights"})
        return await super().handle_async_request(request)


async def test_a_refused_search_for_a_lost_deal_never_leads_to_a_second_deal(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    title = f"Поиск отказан {tag}"
    request = lead(
        name=f"Гусь {tag}", phone="+7" + national, external_id=f"fs-{tag}", lead_name=title
    )
    wire = ForbidSearch()
    wire.faults.append(("POST", r"/api/v4/leads/complex", "lose"))
    async with outbox_to(sandbox, store, transport=wire, check_delay=0) as outbox:
        first = await outbox.submit(request)
        assert first["status"] == "queued" and deals(sandbox, title) != []
        wire.on = True  # looking for the deal is refused: it must stay "may exist"
        await outbox.deliver(first["forwarding_id"])
        row = store.forwarding(first["forwarding_id"])
        assert row["status"] == "unknown" and "could not look for the deal" in row["last_error"]
        wire.on = False
        outbox._came_back()
        # The model forwards it again, as it may: nothing is sent blindly.
        again = await outbox.submit(request)
        assert again["duplicate"] is True and again["status"] == "queued"
        row = await deliver_until(outbox, store, first["forwarding_id"], settled)
    assert row["status"] == "delivered" and deals(sandbox, title) == [row["lead_id"]]
    assert len(wire.posts(r"/api/v4/leads/complex")) == 1


# --- 8. amoCRM refuses or cannot be reached -----------------------------------------------------


async def test_write_refused_before_reaching_amocrm_is_delivered_once_later(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    title = f"Отказ до отправки {tag}"
    request = lead(name=f"Вера {tag}", phone="+7" + national, lead_name=title)
    async with fault_proxy(sandbox, {"write": {"error_429": 1.0}}) as proxy:
        url = f"http://127.0.0.1:{proxy.port}"
        mark = len(sandbox.amocrm.requests)
        async with outbox_to(sandbox, store, url=url) as outbox:
            first = await outbox.submit(request)
            assert writes_since(sandbox, mark) == []
            assert store.forwarding(first["forwarding_id"])["status"] == "queued"
            proxy.rules = FaultRules()
            row = await deliver_until(outbox, store, first["forwarding_id"], settled)
            assert await outbox.deliver_due() == 0
    assert first["status"] == "queued" and "too many requests" in first["reason"]
    assert row["status"] == "delivered"
    assert deals(sandbox, title) == [row["lead_id"]]
    assert writes_since(sandbox, mark) == [("POST", "/api/v4/leads/complex")]


async def test_unreachable_amocrm_gets_the_lead_from_the_server_when_back(sandbox, tmp_path):
    tag = unique()
    store = Store()
    async with fault_proxy(sandbox, {}) as proxy:
        port = proxy.port
        settings = tool_settings(sandbox, tmp_path, url=f"http://127.0.0.1:{port}")
        async with Client(create_server(settings, store=store), mode="legacy") as client:
            warm = await forward(
                client, {"name": f"Первый {tag}", "phone": "+7" + fresh_phone(sandbox)}
            )
            assert warm["status"] == "delivered"
            await proxy.close()  # amoCRM is gone: connections are refused
            national = fresh_phone(sandbox)
            arguments = {
                "name": f"Второй {tag}",
                "phone": "+7" + national,
                "external_id": f"down-{tag}",
                "lead_name": f"Недоступен {tag}",
            }
            queued = await forward(client, arguments)
            assert queued["status"] == "queued" and "could not connect" in queued["reason"]
            assert deals(sandbox, f"Недоступен {tag}") == []
            async with fault_proxy(sandbox, {}, port=port):
                with anyio.move_on_after(10):
                    while store.pending_leads():
                        await anyio.sleep(0.1)
                assert store.pending_leads() == []  # delivered by the server on its own
                again = await forward(client, arguments)
    row = store.forwarding(queued["forwarding_id"])
    store.close()
    assert row["status"] == "delivered" and row["attempts"] == 1
    assert again["status"] == "delivered" and again["duplicate"] is True
    assert again["lead_id"] == row["lead_id"]
    assert deals(sandbox, f"Недоступен {tag}") == [row["lead_id"]]
    assert holders(sandbox, national) == [row["contact_id"]]


# --- 9. amoCRM refuses the lead itself ------------------------------------------------------------


async def test_refused_lead_fails_with_the_reason_and_goes_out_when_corrected(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    pipeline = next(p for p in sandbox.amocrm.pipelines.values() if p["is_main"])
    statuses = pipeline["_embedded"]["statuses"]
    stage = {**statuses[1], "id": 41099001, "name": f"Временный этап {tag}", "sort": 25}
    title = f"Отклонённая {tag}"
    arguments = {
        "name": f"Пётр {tag}",
        "phone": "+7" + national,
        "external_id": f"refused-{tag}",
        "lead_name": title,
    }
    async with outbox_to(sandbox, store) as outbox:
        statuses.append(stage)
        try:
            await outbox.catalog.pipeline("")  # the catalog still holds the stage...
        finally:
            statuses.remove(stage)  # ...that an admin has just deleted
        with pytest.raises(ForwardingFailed) as refused:
            await outbox.submit(lead(**arguments, status=stage["name"]))
        row = store.forwarding_by_external_id(f"refused-{tag}")
        assert row["status"] == "failed"
        assert "status_id" in row["last_error"] and "NotSupportedChoice" in row["last_error"]
        assert "status_id" in str(refused.value) and "same external_id" in str(refused.value)
        assert deals(sandbox, title) == [] and holders(sandbox, national) == []

        fixed = await outbox.submit(lead(**arguments, status="Переговоры"))
    assert fixed["status"] == "delivered" and fixed["forwarding_id"] == row["id"]
    assert deals(sandbox, title) == [fixed["lead_id"]]
    deal = sandbox.amocrm.leads[fixed["lead_id"]]
    assert (deal["pipeline_id"], deal["status_id"]) == status_named(
        sandbox, pipeline["name"], "Переговоры"
    )
    assert store.forwarding(row["id"])["last_error"] is None


# --- 10. the answer to the note is lost -----------------------------------------------------------


async def test_lost_note_answer_is_checked_before_the_note_is_posted_again(sandbox, store):
    tag = unique()
    wire = Wire()
    wire.faults.append(("POST", r"/api/v4/leads/\d+/notes", "lose"))
    async with outbox_to(sandbox, store, transport=wire) as outbox:
        first = await outbox.submit(
            lead(name=f"Заметка {tag}", phone="+7" + fresh_phone(sandbox), message=f"Текст {tag}")
        )
        assert first["status"] == "delivered"
        assert any("still being added" in note for note in first["notes"])
        row = await deliver_until(outbox, store, first["forwarding_id"], settled)
    assert row["followups"] is None and row["last_error"] is None
    assert notes_on(sandbox, first["lead_id"]) == [f"Текст {tag}"]
    path = f"/api/v4/leads/{first['lead_id']}/notes"
    assert [p for p, _ in wire.posts(r".*/notes")] == [path]
    assert ("GET", path) in [(m, p) for m, p, _ in wire.sent]


# --- 11. companies --------------------------------------------------------------------------------


async def reuse_company(sandbox, store, name: str, given: str) -> tuple[int, dict[str, Any]]:
    async with outbox_to(sandbox, store) as outbox:
        answer = await outbox.client.request("POST", "/api/v4/companies", body=[{"name": name}])
        company_id = answer.body["_embedded"]["companies"][0]["id"]
        result = await outbox.submit(
            lead(name=f"Зоя {unique()}", phone="+7" + fresh_phone(sandbox), company=given)
        )
    return company_id, result


async def test_existing_company_is_reused(sandbox, store):
    name = f"ООО Ромашка {unique()}"
    company_id, result = await reuse_company(sandbox, store, name, f"  {name.upper()} ")
    assert result["company_id"] == company_id and result["contact_existed"] is False
    assert companies_named(sandbox, name) == [company_id]
    assert sandbox.amocrm.leads[result["lead_id"]]["_embedded"]["companies"] == [{"id": company_id}]


async def test_existing_company_is_reused_whatever_the_inner_spacing(sandbox, store):
    tag = unique()
    name = f"ООО Лютик {tag}"
    company_id, result = await reuse_company(sandbox, store, name, f"ООО  Лютик {tag}")
    assert result["company_id"] == company_id
    assert companies_named(sandbox, name) == [company_id]


async def test_new_company_comes_with_the_new_contact_in_one_request(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    name = f"АО Новая компания {tag}"
    mark = len(sandbox.amocrm.requests)
    async with outbox_to(sandbox, store) as outbox:
        result = await outbox.submit(lead(name=f"Лев {tag}", phone="+7" + national, company=name))
    [company_id] = companies_named(sandbox, name)
    assert result["company_id"] == company_id
    assert writes_since(sandbox, mark) == [("POST", "/api/v4/leads/complex")]
    assert sandbox.amocrm.leads[result["lead_id"]]["_embedded"]["companies"] == [{"id": company_id}]
    assert sandbox.amocrm.contacts[result["contact_id"]]["_embedded"]["companies"] == [
        {"id": company_id}
    ]


async def test_existing_contact_and_new_company_make_the_company_once(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    name = f"ИП Сидоров {tag}"
    request = lead(
        name=f"Сидоров {tag}", phone="8" + national, company=name, external_id=f"co-{tag}"
    )
    async with outbox_to(sandbox, store) as outbox:
        contact_id = await make_contact(outbox, f"Сидоров {tag}", ["+7" + national])
        result = await outbox.submit(request)
        assert await outbox.deliver_due() == 0
        again = await outbox.submit(request)
    [company_id] = companies_named(sandbox, name)
    assert result["contact_id"] == contact_id and result["contact_existed"] is True
    assert result["company_id"] == company_id
    assert again["duplicate"] is True and again["company_id"] == company_id
    assert sandbox.amocrm.leads[result["lead_id"]]["_embedded"]["companies"] == [{"id": company_id}]
    assert companies_named(sandbox, name) == [company_id]


# --- 12. adding the lead's details to a matched contact ------------------------------------------


async def test_add_details_adds_a_new_email_and_keeps_the_phones(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    second = fresh_phone(sandbox)
    async with outbox_to(sandbox, store, add_details=True) as outbox:
        contact_id = await make_contact(
            outbox, f"Ирина {tag}", ["+7" + national, "8" + second], [f"old-{tag}@example.org"]
        )
        before = copy.deepcopy(sandbox.amocrm.contacts[contact_id])
        result = await outbox.submit(
            lead(name="Ира", phone="+7" + national, email=f"New-{tag}@Example.org")
        )
        row = await deliver_until(outbox, store, result["forwarding_id"], settled)
    assert row["status"] == "delivered" and result["contact_id"] == contact_id
    after = sandbox.amocrm.contacts[contact_id]

    def phone_field(contact):
        return [f for f in contact["custom_fields_values"] if f["field_code"] == "PHONE"]

    assert phone_field(after) == phone_field(before)
    assert field_values(after, "PHONE") == ["+7" + national, "8" + second]
    assert field_values(after, "EMAIL") == [f"old-{tag}@example.org", f"new-{tag}@example.org"]
    assert after["name"] == before["name"] == f"Ирина {tag}"


async def test_without_add_details_the_contact_is_left_as_it_is(sandbox, store):
    tag, national = unique(), fresh_phone(sandbox)
    wire = Wire()
    async with outbox_to(sandbox, store, transport=wire, add_details=False) as outbox:
        contact_id = await make_contact(outbox, f"Ирина {tag}", ["+7" + national])
        before = copy.deepcopy(sandbox.amocrm.contacts[contact_id])
        result = await outbox.submit(
            lead(name="Ира", phone="+7" + national, email=f"new-{tag}@example.org")
        )
    assert result["status"] == "delivered" and result["contact_id"] == contact_id
    assert sandbox.amocrm.contacts[contact_id] | {"_embedded": None} == before | {"_embedded": None}
    assert [p for m, p, _ in wire.sent if m == "PATCH"] == []
