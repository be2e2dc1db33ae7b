"""An inbound lead as amoCRM should get it: checked, its names turned into ids, its contact and
company found, and the requests that create the deal. The outbox (outbox.py) decides when."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .. import phones
from ..errors import AMOCRM, BadAnswer, InvalidArgument
from ..http import RetryPolicy
from ..store import Store, field_values
from .catalog import MAX_FIELD_VALUES, Catalog, Resolved
from .client import AmoCrmClient

logger = logging.getLogger(__name__)

MAX_NAME = 255  # amoCRM's limit on entity names
MAX_NOTE = 10_000  # our cap on one note: longer texts are cut, and the answer says so
MAX_TAGS = 20
MAX_PRICE = 10**12
# Enough pages for any real account; a search matching more contacts is not a phone search.
SEARCH_PAGES = 8
UTM = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class LeadRequest:
    """What the tool was asked to forward, checked and normalised; names not resolved yet."""

    name: str = ""
    phone: str = ""
    email: str = ""
    message: str = ""
    source: str = ""
    external_id: str = ""
    company: str = ""
    price: int = 0
    pipeline: str = ""
    status: str = ""
    responsible: str = ""
    tags: list[str] = field(default_factory=list)
    utm: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    lead_name: str = ""

    @property
    def title(self) -> str:
        if self.lead_name:
            return self.lead_name[:MAX_NAME]
        who = self.name or self.phone or self.email
        return (f"{self.source}: {who}" if self.source else f"Заявка: {who}")[:MAX_NAME]

    @property
    def dedupe_key(self) -> str:
        """The same person (by phone, else e-mail) with the same name: one lead per window.

        Names compare as people read them: case, ё/е, Unicode forms, invisible characters and
        runs of spaces do not matter.
        """
        who = "|".join((self.phone or self.email, _plain_name(self.name)))
        return "person:" + hashlib.sha256(who.encode()).hexdigest()[:32]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> LeadRequest:
        data = json.loads(text or "{}")
        known = {f.name for f in fields(cls)}
        # Rows written by version 2 named pipeline and status by id only.
        if data.get("pipeline_id") and not data.get("pipeline"):
            data["pipeline"] = str(data["pipeline_id"])
        if data.get("status_id") and not data.get("status"):
            data["status"] = str(data["status_id"])
        return cls(**{k: v for k, v in data.items() if k in known})


def _plain_name(name: str) -> str:
    text = unicodedata.normalize("NFKC", name)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc"))
    return " ".join(text.replace("ё", "е").replace("Ё", "Е").split()).casefold()


def _text(value: Any, name: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise InvalidArgument(f"{name} must be text")
    text = str(value).strip()
    if len(text) > limit:
        raise InvalidArgument(f"{name} is longer than {limit} characters")
    return text


def prepare(
    *,
    region: str,
    name: str = "",
    phone: str = "",
    email: str = "",
    message: str = "",
    source: str = "",
    external_id: str = "",
    company: str = "",
    price: int = 0,
    pipeline: str | int = "",
    status: str | int = "",
    responsible: str | int = "",
    tags: list[str] | None = None,
    utm: dict[str, str] | None = None,
    custom_fields: dict[str, Any] | None = None,
    lead_name: str = "",
) -> LeadRequest:
    """Check the tool's arguments without asking amoCRM; every refusal names the argument."""
    phone, email = _text(phone, "phone", 100), _text(email, "email", 254).lower()
    if not phone and not email:
        raise InvalidArgument(
            "give phone or email (or both): a lead needs a way to reach the person"
        )
    normalized = ""
    if phone:
        normalized = phones.normalize(phone, region) or ""
        if not normalized:
            raise InvalidArgument(
                f"phone {phone!r} is not a valid phone number: give it with the country code, "
                "e.g. +7 916 123-45-67"
            )
    if email and not _EMAIL.match(email):
        raise InvalidArgument(f"email {email!r} is not a valid e-mail address")
    if isinstance(price, bool) or not isinstance(price, int) or not 0 <= price <= MAX_PRICE:
        raise InvalidArgument(
            f"price must be a whole number from 0 to {MAX_PRICE} in the account currency"
        )
    if len(tags or []) > MAX_TAGS * 5:
        raise InvalidArgument(f"at most {MAX_TAGS} tags")
    clean_tags: list[str] = []
    seen: set[str] = set()
    for tag in tags or []:
        text = _text(tag, "tags", 255)
        if text and text.casefold() not in seen:
            seen.add(text.casefold())
            clean_tags.append(text)
    if len(clean_tags) > MAX_TAGS:
        raise InvalidArgument(f"at most {MAX_TAGS} tags")
    clean_utm = {}
    for key, value in (utm or {}).items():
        if key not in UTM:
            raise InvalidArgument(f"unknown UTM field {key!r}; known: {', '.join(UTM)}")
        text = _text(value, key, 1_000)
        if text:
            clean_utm[key] = text
    clean_fields: dict[str, Any] = {}
    if len(custom_fields or {}) > MAX_FIELD_VALUES:
        raise InvalidArgument(f"at most {MAX_FIELD_VALUES} custom fields on one lead")
    for key, value in (custom_fields or {}).items():
        label = str(key).strip()
        if not label:
            raise InvalidArgument("custom_fields has an empty field name")
        if len(label) > MAX_NAME:
            raise InvalidArgument(
                f"custom_fields: a field name is longer than {MAX_NAME} characters"
            )
        values = value if isinstance(value, list) else [value]
        if len(values) > 100:
            raise InvalidArgument(f"custom_fields[{label[:50]!r}]: at most 100 values")
        for one in values:
            if isinstance(one, str) and len(one) > 10_000:
                raise InvalidArgument(
                    f"custom_fields[{label[:50]!r}]: a value is longer than 10000 characters"
                )
            if isinstance(one, dict | list):
                raise InvalidArgument(
                    f"custom_fields[{label[:50]!r}] must be a value or a list of values"
                )
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, dict):
            raise InvalidArgument(
                f"custom_fields[{label!r}] must be a value or a list of values, not an object"
            )
        clean_fields[label] = value
    if len(clean_fields) + len(clean_utm) > MAX_FIELD_VALUES:
        raise InvalidArgument(f"at most {MAX_FIELD_VALUES} custom fields on one lead")
    return LeadRequest(
        name=_text(name, "name", MAX_NAME),
        phone=normalized,
        email=email,
        message=_text(message, "message", 100_000),
        source=_text(source, "source", MAX_NAME),
        external_id=_text(external_id, "external_id", 255),
        company=_text(company, "company", MAX_NAME),
        price=price,
        pipeline=_text(pipeline, "pipeline", MAX_NAME),
        status=_text(status, "status", MAX_NAME),
        responsible=_text(responsible, "responsible", MAX_NAME),
        tags=clean_tags,
        utm=clean_utm,
        fields=clean_fields,
        lead_name=_text(lead_name, "lead_name", 10_000),
    )


@dataclass(frozen=True)
class Defaults:
    """Where a lead lands when it does not say: the server's settings."""

    pipeline: str = ""
    status: str = ""
    responsible: str = ""


async def resolve(catalog: Catalog, lead: LeadRequest, defaults: Defaults) -> Resolved:
    """Turn the names a lead gives into the account's ids, or say which names are valid: every
    wrong name at once, so that one corrected call is enough."""
    resolved = Resolved()
    problems: list[str] = []

    async def checked(step: Awaitable[Any]) -> Any:
        try:
            return await step
        except InvalidArgument as exc:
            problems.append(str(exc))
            return None

    pipeline_given = lead.pipeline or defaults.pipeline
    status_given = lead.status or (defaults.status if not lead.pipeline else "")
    pipeline = await checked(catalog.pipeline(pipeline_given))
    if pipeline is not None:
        status = await checked(catalog.status(status_given, pipeline))
        resolved.pipeline_id = int(pipeline["id"])
        resolved.pipeline_name = str(pipeline.get("name"))
        if status is not None:
            resolved.status_id, resolved.status_name = int(status["id"]), str(status.get("name"))
    responsible = lead.responsible or defaults.responsible
    if responsible:
        user = await checked(catalog.user(responsible))
        if user is not None:
            resolved.responsible_user_id = int(user["id"])
            resolved.responsible_name = str(user.get("name") or "")
    written: dict[int, dict[str, Any]] = {}
    for key, value in lead.utm.items():
        definition = await catalog.lead_field(key.upper())
        if definition is None:
            resolved.notes.append(
                f"the account has no {key.upper()} lead field: {key} is kept in the note"
            )
            resolved.unsaved_utm[key] = value
            continue
        values = await checked(catalog.field_value(definition, value))
        if values is not None:
            written[int(definition["id"])] = {"field_id": int(definition["id"]), "values": values}
    for key, value in lead.fields.items():
        definition = await catalog.lead_field(key)
        if definition is None:
            names = [str(f.get("code") or f.get("name")) for f in await catalog.lead_fields()]
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            more = f" and {len(names) - 40} more" if len(names) > 40 else ""
            problems.append(
                f"custom_fields: the account has no lead field {key!r}.{hint} Lead fields: "
                + ", ".join(repr(n) for n in names[:40])
                + more
            )
            continue
        if int(definition["id"]) in written:
            problems.append(f"custom_fields: field {key!r} is given twice")
            continue
        values = await checked(catalog.field_value(definition, value))
        if values is not None:
            written[int(definition["id"])] = {"field_id": int(definition["id"]), "values": values}
    if len(problems) == 1:
        raise InvalidArgument(problems[0])
    if problems:
        raise InvalidArgument(
            f"{len(problems)} problems: "
            + " ".join(f"({n}) {problem}" for n, problem in enumerate(problems, start=1))
        )
    resolved.custom_fields_values = list(written.values())
    return resolved


def resolved_to_json(resolved: Resolved) -> dict[str, Any]:
    return asdict(resolved)


def resolved_from_json(data: dict[str, Any] | None) -> Resolved | None:
    if not data:
        return None
    known = {f.name for f in fields(Resolved)}
    return Resolved(**{k: v for k, v in data.items() if k in known})


# --- contacts and companies -------------------------------------------------------------------


async def _search(
    client: AmoCrmClient, path: str, text: str, policy: RetryPolicy | None
) -> list[dict[str, Any]]:
    found, more = await client.walk(
        path, [("query", text), ("limit", "250")], SEARCH_PAGES, policy=policy
    )
    if more:
        logger.warning("a search of %s matched more than %d pages", path, SEARCH_PAGES)
    return found


async def find_contacts(
    client: AmoCrmClient,
    store: Store | None,
    lead: LeadRequest,
    policy: RetryPolicy | None = None,
    region: str = "RU",
) -> list[dict[str, Any]]:
    """Contacts that hold the lead's phone (by last ten digits) or e-mail, newest first.

    amoCRM's ``query`` searches every field, so each hit is checked on PHONE or EMAIL itself:
    a number found in a comment belongs to someone else.
    """
    matches: dict[int, dict[str, Any]] = {}
    key = phones.match_key(lead.phone) if lead.phone else ""
    if key:
        hits = await _search(client, "/api/v4/contacts", key, policy)
        if store is not None:
            store.upsert_contacts(hits)
        for contact in hits:
            if holds_lead(contact, lead, region):
                matches[contact["id"]] = contact
    if not matches and lead.email:
        hits = await _search(client, "/api/v4/contacts", lead.email, policy)
        if store is not None:
            store.upsert_contacts(hits)
        for contact in hits:
            if holds_lead(contact, lead, region, by_phone=False):
                matches[contact["id"]] = contact
    if not matches and store is not None:
        # amoCRM's search index may not hold a contact created seconds ago; the contacts our
        # own deliveries created are known, so one of those is checked before making another.
        for contact in await _delivered_contacts(client, store, lead, policy, region):
            matches[contact["id"]] = contact
    return sorted(
        matches.values(),
        key=lambda c: (c.get("updated_at") or 0, c.get("id") or 0),
        reverse=True,
    )


def holds_lead(
    contact: dict[str, Any], lead: LeadRequest, region: str = "RU", by_phone: bool = True
) -> bool:
    """The contact holds the lead's phone (on its PHONE field) or, failing that, its e-mail."""
    if by_phone and lead.phone:
        if any(phones.holds(lead.phone, v, region) for v in field_values(contact, "PHONE")):
            return True
    return bool(lead.email) and lead.email in (
        v.strip().lower() for v in field_values(contact, "EMAIL")
    )


async def _delivered_contacts(
    client: AmoCrmClient,
    store: Store,
    lead: LeadRequest,
    policy: RetryPolicy | None,
    region: str,
) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT contact_id FROM forwarded_leads WHERE status = 'delivered' "
        "AND contact_id IS NOT NULL "
        "AND ((phone = ? AND phone != '') OR (email = ? AND email != '')) "
        "GROUP BY contact_id ORDER BY MAX(delivered_at) DESC LIMIT 3",
        [lead.phone, lead.email],
    )
    found = []
    for row in list(rows):
        answer = await client.request(
            "GET", f"/api/v4/contacts/{int(row['contact_id'])}", policy=policy
        )
        contact = answer.body if isinstance(answer.body, dict) else None
        if contact is None or "id" not in contact:
            continue  # deleted since
        if holds_lead(contact, lead, region):
            found.append(contact)
    return found


def _fold(text: str) -> str:
    return " ".join(str(text).split()).casefold()


async def find_company(
    client: AmoCrmClient, lead: LeadRequest, policy: RetryPolicy | None = None
) -> dict[str, Any] | None:
    """The company whose name is the lead's company name (case and spacing aside), if any."""
    if not lead.company:
        return None
    hits = await _search(client, "/api/v4/companies", " ".join(lead.company.split()), policy)
    same = [c for c in hits if _fold(c.get("name") or "") == _fold(lead.company)]
    if not same:
        return None
    return max(same, key=lambda c: (c.get("updated_at") or 0, c.get("id") or 0))


def missing_details(lead: LeadRequest, contact: dict[str, Any]) -> dict[str, list[str]]:
    """The lead's phone or e-mail that the matched contact does not hold yet."""
    missing: dict[str, list[str]] = {}
    held_phones = field_values(contact, "PHONE")
    if lead.phone and not any(phones.holds(lead.phone, v) for v in held_phones):
        missing["PHONE"] = [lead.phone]
    held_emails = [v.strip().lower() for v in field_values(contact, "EMAIL")]
    if lead.email and lead.email not in held_emails:
        missing["EMAIL"] = [lead.email]
    return missing


# --- the requests -------------------------------------------------------------------------------


def note_text(lead: LeadRequest, resolved: Resolved | None) -> str:
    lines = []
    if lead.source:
        lines.append(f"Источник: {lead.source}")
    if resolved is not None:
        lines += [f"{key}: {value}" for key, value in resolved.unsaved_utm.items()]
    if lead.message:
        lines.append(lead.message)
    return "\n".join(lines)[:MAX_NOTE]


def lead_body(lead: LeadRequest, resolved: Resolved) -> dict[str, Any]:
    body: dict[str, Any] = {"name": lead.title}
    if lead.price:
        body["price"] = lead.price
    if resolved.pipeline_id:
        body["pipeline_id"] = resolved.pipeline_id
    if resolved.status_id:
        body["status_id"] = resolved.status_id
    if resolved.responsible_user_id:
        body["responsible_user_id"] = resolved.responsible_user_id
    if resolved.custom_fields_values:
        body["custom_fields_values"] = resolved.custom_fields_values
    if lead.tags:
        body["_embedded"] = {"tags": [{"name": tag} for tag in lead.tags]}
    return body


def create_request(
    lead: LeadRequest,
    resolved: Resolved,
    contact: dict[str, Any] | None,
    company: dict[str, Any] | None,
) -> tuple[str, list[dict[str, Any]]]:
    """The one write that creates the deal: its path and body.

    An existing contact is linked by id through /leads (linking existing entities through
    /leads/complex is unreliable); a new contact, and a new company with it, go in one
    /leads/complex request, so the deal and its contact are created together or not at all.
    """
    body = lead_body(lead, resolved)
    embedded = body.setdefault("_embedded", {})
    if contact is not None:
        embedded["contacts"] = [{"id": int(contact["id"])}]
        if company is not None:
            embedded["companies"] = [{"id": int(company["id"])}]
        return "/api/v4/leads", [body]
    person: dict[str, Any] = {"name": (lead.name or lead.phone or lead.email)[:MAX_NAME]}
    values = []
    if lead.phone:
        values.append(
            {"field_code": "PHONE", "values": [{"value": lead.phone, "enum_code": "WORK"}]}
        )
    if lead.email:
        values.append(
            {"field_code": "EMAIL", "values": [{"value": lead.email, "enum_code": "WORK"}]}
        )
    if values:
        person["custom_fields_values"] = values
    if resolved.responsible_user_id:
        person["responsible_user_id"] = resolved.responsible_user_id
    embedded["contacts"] = [person]
    if lead.company and company is None:
        embedded["companies"] = [{"name": lead.company}]
    return "/api/v4/leads/complex", [body]


def created_ids(path: str, body: Any, request_id: str | None) -> tuple[int, int, int]:
    """Lead, contact and company ids from the answer to the create request."""
    if path.endswith("/complex"):
        # The complex endpoint answers with a bare array, not the usual _embedded envelope.
        items = body if isinstance(body, list) else []
    else:
        items = (
            ((body or {}).get("_embedded") or {}).get("leads") or []
            if isinstance(body, dict)
            else []
        )
    if not items or not isinstance(items[0], dict) or not str(items[0].get("id", "")).isdigit():
        raise BadAnswer(AMOCRM, "creating the lead returned no id", request_id=request_id)
    first = items[0]
    return int(first["id"]), int(first.get("contact_id") or 0), int(first.get("company_id") or 0)


def followups(
    lead: LeadRequest,
    resolved: Resolved,
    contact: dict[str, Any] | None,
    company: dict[str, Any] | None,
    add_details: bool,
) -> list[dict[str, Any]]:
    """What is done after the deal exists: its note, its company, the contact's new details."""
    steps: list[dict[str, Any]] = []
    text = note_text(lead, resolved)
    if text:
        steps.append({"step": "note", "text": text})
    if lead.company and contact is None and company is not None:
        steps.append({"step": "link_company", "company_id": int(company["id"])})
    if lead.company and contact is not None and company is None:
        steps.append({"step": "create_company", "name": lead.company})
    if contact is not None and add_details:
        missing = missing_details(lead, contact)
        if missing:
            steps.append(
                {"step": "contact_details", "contact_id": int(contact["id"]), "add": missing}
            )
    return steps
