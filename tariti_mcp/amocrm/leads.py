"""Forwarding an inbound lead into amoCRM: find the contact, create the deal once, add the note."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from .. import phones
from ..errors import AMOCRM, BadAnswer, InvalidArgument, OutcomeUnknown, ServiceError
from ..store import Store, field_values
from .client import AmoCrmClient, list_items, next_link

logger = logging.getLogger(__name__)

# A forwarding still looking for its contact after this long died with its process.
PENDING_STALE = 120
MAX_NAME = 255  # amoCRM's limit on entity names
MAX_NOTE = 10_000  # our cap on one note: longer texts are cut, and the answer says so
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class LeadRequest:
    """What the tool was asked to forward, already checked and normalised."""

    name: str = ""
    phone: str = ""
    email: str = ""
    message: str = ""
    source: str = ""
    external_id: str = ""
    price: int = 0
    pipeline_id: int = 0
    status_id: int = 0
    tags: list[str] = field(default_factory=list)
    lead_name: str = ""

    @property
    def title(self) -> str:
        if self.lead_name:
            return self.lead_name
        who = self.name or self.phone or self.email
        return f"{self.source}: {who}" if self.source else f"Заявка: {who}"


def prepare(
    *,
    name: str,
    phone: str,
    email: str,
    message: str,
    source: str,
    external_id: str,
    price: int,
    pipeline_id: int,
    status_id: int,
    tags: list[str],
    lead_name: str,
    region: str,
) -> LeadRequest:
    """Validate the tool's arguments; every refusal names the argument and the fix."""
    phone, email = phone.strip(), email.strip().lower()
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
    if price < 0:
        raise InvalidArgument("price must be zero or more (a whole number in the account currency)")
    if pipeline_id < 0 or status_id < 0:
        raise InvalidArgument("pipeline_id and status_id are positive ids, or 0 for the default")
    if status_id and not pipeline_id and status_id not in (142, 143):
        logger.debug("status given without pipeline: amoCRM will use the main pipeline")
    clean_tags = [t.strip() for t in tags if t and t.strip()]
    if len(clean_tags) > 20:
        raise InvalidArgument("at most 20 tags")
    return LeadRequest(
        name=name.strip(),
        phone=normalized,
        email=email,
        message=message.strip(),
        source=source.strip(),
        external_id=external_id.strip(),
        price=price,
        pipeline_id=pipeline_id,
        status_id=status_id,
        tags=clean_tags,
        lead_name=lead_name.strip(),
    )


# Enough pages for any real account; a search matching more contacts is not a phone search.
SEARCH_PAGES = 8


async def _search_contacts(client: AmoCrmClient, text: str) -> list[dict[str, Any]]:
    """Every contact amoCRM's full-text search finds for ``text``, over all pages."""
    found: list[dict[str, Any]] = []
    target: tuple[str, list[tuple[str, str]]] | None = (
        "/api/v4/contacts",
        [("query", text), ("limit", "250")],
    )
    for _ in range(SEARCH_PAGES):
        if target is None:
            break
        answer = await client.request("GET", target[0], target[1])
        listing = list_items(answer.body)
        if listing is None:
            break  # 204: nobody (more) matched
        found.extend(c for c in listing[1] if isinstance(c, dict))
        href = next_link(answer.body)
        target = client.follow(href) if href else None
    else:
        if target is not None:
            logger.warning("contact search matched more than %d pages", SEARCH_PAGES)
    return found


async def find_contacts(
    client: AmoCrmClient, store: Store | None, lead: LeadRequest
) -> list[dict[str, Any]]:
    """Contacts that hold the lead's phone (by last ten digits) or e-mail, newest first.

    amoCRM's ``query`` searches every field, so each hit is checked on PHONE or EMAIL itself:
    a number found in a comment belongs to someone else.
    """
    matches: dict[int, dict[str, Any]] = {}
    tail = phones.last10(lead.phone)
    if tail:
        hits = await _search_contacts(client, tail)
        if store is not None:
            store.upsert_contacts(hits)
        for contact in hits:
            if any(phones.last10(v) == tail for v in field_values(contact, "PHONE")):
                matches[contact["id"]] = contact
    if not matches and lead.email:
        hits = await _search_contacts(client, lead.email)
        if store is not None:
            store.upsert_contacts(hits)
        for contact in hits:
            if any(v.strip().lower() == lead.email for v in field_values(contact, "EMAIL")):
                matches[contact["id"]] = contact
    return sorted(
        matches.values(),
        key=lambda c: (c.get("updated_at") or 0, c.get("id") or 0),
        reverse=True,
    )


def _contact_fields(lead: LeadRequest) -> list[dict[str, Any]]:
    fields = []
    if lead.phone:
        fields.append(
            {"field_code": "PHONE", "values": [{"value": lead.phone, "enum_code": "WORK"}]}
        )
    if lead.email:
        fields.append(
            {"field_code": "EMAIL", "values": [{"value": lead.email, "enum_code": "WORK"}]}
        )
    return fields


def _lead_body(lead: LeadRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"name": lead.title[:MAX_NAME]}
    if lead.price:
        body["price"] = lead.price
    if lead.pipeline_id:
        body["pipeline_id"] = lead.pipeline_id
    if lead.status_id:
        body["status_id"] = lead.status_id
    embedded: dict[str, Any] = {}
    if lead.tags:
        embedded["tags"] = [{"name": tag} for tag in lead.tags]
    if embedded:
        body["_embedded"] = embedded
    return body


def _note_text(lead: LeadRequest) -> str:
    lines = []
    if lead.source:
        lines.append(f"Источник: {lead.source}")
    if lead.message:
        lines.append(lead.message)
    return "\n".join(lines)


async def _create(
    client: AmoCrmClient, lead: LeadRequest, contact: dict[str, Any] | None
) -> tuple[int, int]:
    """Create the deal (and the contact when new). Returns lead id and contact id."""
    body = _lead_body(lead)
    if contact is not None:
        # Linking an existing contact through /leads/complex is unreliable; /leads is not.
        body.setdefault("_embedded", {})["contacts"] = [{"id": contact["id"]}]
        answer = await client.request("POST", "/api/v4/leads", body=[body])
        created = ((answer.body or {}).get("_embedded") or {}).get("leads") or []
        if not created or not isinstance(created[0], dict) or "id" not in created[0]:
            raise BadAnswer(
                AMOCRM, "creating the lead returned no id", request_id=answer.request_id
            )
        return int(created[0]["id"]), int(contact["id"])

    new_contact: dict[str, Any] = {"name": (lead.name or lead.phone or lead.email)[:MAX_NAME]}
    fields = _contact_fields(lead)
    if fields:
        new_contact["custom_fields_values"] = fields
    body.setdefault("_embedded", {})["contacts"] = [new_contact]
    answer = await client.request("POST", "/api/v4/leads/complex", body=[body])
    # The complex endpoint answers with a bare array, not the usual _embedded envelope.
    created = answer.body if isinstance(answer.body, list) else []
    if not created or not isinstance(created[0], dict) or "id" not in created[0]:
        raise BadAnswer(AMOCRM, "creating the lead returned no id", request_id=answer.request_id)
    return int(created[0]["id"]), int(created[0].get("contact_id") or 0)


async def forward(
    client: AmoCrmClient, store: Store, lead: LeadRequest, lock: anyio.Lock | None = None
) -> dict[str, Any]:
    """Forward one lead, exactly once per ``external_id``; return what the model should see.

    ``lock`` serialises forwardings in this process: two submissions of one new person at
    once would otherwise both miss the contact and create it twice.
    """
    async with lock or anyio.Lock():
        return await _forward(client, store, lead)


async def _forward(client: AmoCrmClient, store: Store, lead: LeadRequest) -> dict[str, Any]:
    forwarding_id = uuid.uuid4().hex
    record = {
        "id": forwarding_id,
        "external_id": lead.external_id or None,
        "name": lead.name,
        "phone": lead.phone,
        "email": lead.email,
        "source": lead.source,
        "request": _request_json(lead),
    }
    if lead.external_id:
        earlier = store.claim_forwarding(record)
        if earlier is not None and _outcome_unknown(earlier):
            recovered = await _recover(client, store, earlier, lead)
            if recovered is not None:
                return recovered
            earlier = store.forwarding(earlier["id"]) or earlier
        if earlier is not None:
            repeat = _repeat(store, earlier, record)
            if repeat is not None:
                return repeat
            forwarding_id = earlier["id"]
    else:
        store.claim_forwarding(record)
    store.update_forwarding(
        forwarding_id, status="pending", attempts=_attempts(store, forwarding_id)
    )

    sent = False
    try:
        contacts = await find_contacts(client, store, lead)
        contact = contacts[0] if contacts else None
        # From here on amoCRM may create the lead even if we never hear back.
        store.update_forwarding(forwarding_id, status="sending")
        sent = True
        lead_id, contact_id = await _create(client, lead, contact)
    except OutcomeUnknown as exc:
        store.update_forwarding(forwarding_id, status="unknown", last_error=str(exc))
        if lead.external_id:
            raise OutcomeUnknown(
                AMOCRM,
                f"the lead may or may not have been created (forwarding {forwarding_id})",
                advice="Forward it again with the same external_id later: the server first "
                "looks for the deal in amoCRM and creates it only if it is not there.",
            ) from None
        raise OutcomeUnknown(
            AMOCRM,
            f"the lead may or may not have been created (forwarding {forwarding_id})",
            advice="Without an external_id the server cannot tell a repeat from a new lead: "
            "look for the deal in amoCRM before forwarding it again.",
        ) from None
    except ServiceError as exc:
        store.update_forwarding(forwarding_id, status="failed", last_error=str(exc))
        raise
    except BaseException:
        # Cancelled by the client (or a bug): record what is known before unwinding.
        if sent:
            store.update_forwarding(
                forwarding_id, status="unknown", last_error="cancelled while creating the lead"
            )
        else:
            store.update_forwarding(
                forwarding_id, status="failed", last_error="cancelled before anything was sent"
            )
        raise

    lead_url = f"{client.base_url}/leads/detail/{lead_id}"
    store.update_forwarding(
        forwarding_id,
        status="delivered",
        lead_id=lead_id,
        contact_id=contact_id,
        contact_existed=int(contact is not None),
        lead_url=lead_url,
        last_error=None,
    )
    result: dict[str, Any] = {
        "forwarding_id": forwarding_id,
        "status": "delivered",
        "duplicate": False,
        "lead_id": lead_id,
        "contact_id": contact_id,
        "contact_existed": contact is not None,
        "lead_url": lead_url,
    }
    notes = []
    if len(contacts) > 1:
        result["other_matching_contacts"] = [c["id"] for c in contacts[1:10]]
        notes.append(
            f"{len(contacts)} contacts hold this phone or e-mail; the lead was linked to the most "
            f"recently updated one ({contact_id})."
        )
    if len(lead.title) > MAX_NAME:
        notes.append(f"the deal title was cut to {MAX_NAME} characters, amoCRM's limit")
    text = _note_text(lead)
    if text:
        result["note_added"] = await _add_note(client, lead_id, text[:MAX_NOTE])
        if len(text) > MAX_NOTE:
            notes.append(f"the message was cut to its first {MAX_NOTE} characters in the note")
        if not result["note_added"]:
            notes.append("the deal was created but its note could not be added; add it by hand")
    if notes:
        result["notes"] = notes
    return result


async def _add_note(client: AmoCrmClient, lead_id: int, text: str) -> bool:
    try:
        await client.request(
            "POST",
            f"/api/v4/leads/{lead_id}/notes",
            body=[{"note_type": "common", "params": {"text": text}}],
        )
    except ServiceError as exc:
        # The deal exists; a missing note is reported, never a reason to create it again.
        logger.warning("lead %d created but its note failed: %s", lead_id, exc.summary)
        return False
    return True


def _attempts(store: Store, forwarding_id: str) -> int:
    row = store.forwarding(forwarding_id) or {}
    return int(row.get("attempts") or 0) + 1


def _outcome_unknown(row: dict[str, Any]) -> bool:
    """Sent with no answer, or left mid-write by a process that is gone."""
    stale = time.time() - (row.get("updated_at") or 0) >= PENDING_STALE
    return row.get("status") == "unknown" or (row.get("status") == "sending" and stale)


async def _recover(
    client: AmoCrmClient, store: Store, earlier: dict[str, Any], lead: LeadRequest
) -> dict[str, Any] | None:
    """Look in amoCRM for the deal an earlier attempt may have created.

    Found: the forwarding is delivered after all. Not found: it is marked failed, so it may be
    sent again. The search is by creation time and title, not by full-text search, whose
    index may lag behind a deal created moments ago.
    """
    since = int(min(earlier.get("created_at") or 0, earlier.get("updated_at") or 0)) - 120
    # The deal carries the title of the attempt that was sent, whatever this call says now.
    try:
        sent = LeadRequest(**json.loads(earlier.get("request") or "{}"))
    except (TypeError, ValueError):
        sent = lead
    title = sent.title[:MAX_NAME]
    query = [
        ("filter[created_at][from]", str(since)),
        ("filter[created_at][to]", str(int(time.time()) + 60)),
        ("with", "contacts"),
        ("limit", "250"),
    ]
    target: tuple[str, list[tuple[str, str]]] | None = ("/api/v4/leads", query)
    matches: list[dict[str, Any]] = []
    for _ in range(SEARCH_PAGES):
        if target is None:
            break
        answer = await client.request("GET", target[0], target[1])
        listing = list_items(answer.body)
        if listing is None:
            break
        matches += [d for d in listing[1] if isinstance(d, dict) and d.get("name") == title]
        href = next_link(answer.body)
        target = client.follow(href) if href else None
    if not matches:
        store.update_forwarding(
            earlier["id"],
            status="failed",
            last_error="no deal found in amoCRM after an unknown outcome; it may be sent again",
        )
        logger.info("forwarding %s: no deal found after an unknown outcome", earlier["id"])
        return None

    found = min(matches, key=lambda d: (d.get("created_at") or 0, d.get("id") or 0))
    contacts = (found.get("_embedded") or {}).get("contacts") or []
    contact_id = int(contacts[0]["id"]) if contacts and contacts[0].get("id") else 0
    lead_url = f"{client.base_url}/leads/detail/{found['id']}"
    store.update_forwarding(
        earlier["id"],
        status="delivered",
        lead_id=int(found["id"]),
        contact_id=contact_id,
        lead_url=lead_url,
        last_error=None,
    )
    return {
        "forwarding_id": earlier["id"],
        "status": "delivered",
        "duplicate": True,
        "lead_id": int(found["id"]),
        "contact_id": contact_id,
        "contact_existed": bool(earlier.get("contact_existed")),
        "lead_url": lead_url,
        "note": "the earlier attempt's answer was lost, but its deal was found in amoCRM; "
        "nothing new was created",
    }


def _repeat(store: Store, earlier: dict[str, Any], record: dict[str, Any]) -> dict[str, Any] | None:
    """The answer for an ``external_id`` seen before, or None when it may be sent again."""
    status = earlier.get("status")
    if status == "delivered":
        return {
            "forwarding_id": earlier["id"],
            "status": "delivered",
            "duplicate": True,
            "lead_id": earlier["lead_id"],
            "contact_id": earlier["contact_id"],
            "contact_existed": bool(earlier["contact_existed"]),
            "lead_url": earlier["lead_url"],
            "note": "this external_id was already forwarded; nothing new was created",
        }
    if status == "pending" and time.time() - (earlier.get("updated_at") or 0) < PENDING_STALE:
        raise InvalidArgument(
            f"external_id {record['external_id']!r} is being forwarded right now (forwarding "
            f"{earlier['id']}); call again in a minute to get its result"
        )
    if status in ("sending", "unknown"):
        raise InvalidArgument(
            f"external_id {record['external_id']!r} is being forwarded right now (forwarding "
            f"{earlier['id']}); call again in a few minutes to get its result"
        )
    # A failed forwarding may be sent again, with the caller's corrected data.
    store.update_forwarding(
        earlier["id"],
        name=record["name"],
        phone=record["phone"],
        email=record["email"],
        source=record["source"],
        request=record["request"],
    )
    return None


def _request_json(lead: LeadRequest) -> str:
    return json.dumps(asdict(lead), ensure_ascii=False)
