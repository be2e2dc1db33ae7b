"""The outbox: every forwarded lead is a row in the store before anything is sent, and moves
queued -> sending -> delivered, or -> unknown (checked in amoCRM before it is ever sent again),
or -> failed with amoCRM's reason. The tool delivers at once when it can; the running server
delivers the rest in the background, and ``tariti-mcp outbox`` shows and retries them."""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import anyio
from filelock import AsyncFileLock

from ..errors import (
    AMOCRM,
    AccessDenied,
    AccountBlocked,
    AuthFailed,
    BadAnswer,
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    Rejected,
    ServiceError,
    TaritiError,
)
from ..http import RetryPolicy
from ..store import Store
from .catalog import Catalog, CatalogUnavailable, Resolved
from .client import AmoCrmClient
from .leads import (
    Defaults,
    LeadRequest,
    create_request,
    created_ids,
    find_company,
    find_contacts,
    followups,
    holds_lead,
    missing_details,
    resolve,
    resolved_from_json,
    resolved_to_json,
)

logger = logging.getLogger(__name__)

# The outbox gives up on a request sooner than a tool call does: it comes back later anyway.
OUTBOX_RETRY = RetryPolicy(attempts=3, first_wait=0.5, max_wait=2.0, total=8.0)
LEASE = 300  # seconds a process holds a forwarding it works on; a crashed one lets go by then
FIRST_BACKOFF = 2.0
WAIT_FOR_EARLIER = 30.0  # a repeat waits this long for the first call's delivery to finish
RECOVERY_PAGES = 20
# What a person or a model must fix: sending the same request again would only fail again.
PERMANENT = (Rejected, AccessDenied, NotFound, InvalidArgument)

Progress = Callable[[float, float | None, str], Awaitable[None]]


class ForwardingFailed(TaritiError):
    """amoCRM refused the lead for good; the message carries its reason and the fix."""


def _iso(moment: float | None) -> str | None:
    if not moment:
        return None
    return dt.datetime.fromtimestamp(moment, dt.UTC).isoformat(timespec="seconds")


class Outbox:
    """Delivers forwardings from the store to one amoCRM account, each exactly once."""

    def __init__(
        self,
        client: AmoCrmClient,
        store: Store,
        *,
        catalog: Catalog | None = None,
        defaults: Defaults | None = None,
        window: float = 24 * 3600,
        add_details: bool = False,
        max_backoff: float = 900.0,
        check_delay: float = 60.0,
        interval: float = 30.0,
        policy: RetryPolicy = OUTBOX_RETRY,
        region: str = "RU",
    ) -> None:
        self.client = client
        self.store = store
        self.policy = policy
        self.catalog = catalog or Catalog(client, store, policy=policy)
        self.defaults = defaults or Defaults()
        self.window = window
        self.add_details = add_details
        self.max_backoff = max_backoff
        self.check_delay = check_delay
        self.interval = interval
        self.region = region
        # One delivery at a time in this process, and across processes while a contact is
        # looked for and created: two deliveries of one new person would both miss the contact.
        self.lock = anyio.Lock()
        self._file_lock: AbstractAsyncContextManager[Any] = (
            AsyncFileLock(store.path + ".forward.lock", timeout=120)
            if store.path != ":memory:"
            else nullcontext()
        )
        self.down_until = 0.0
        self.down_reason = ""
        self._failures = 0
        self._wakeup = anyio.Event()

    # --- the tool's entry -----------------------------------------------------------------

    async def submit(self, lead: LeadRequest, *, dry_run: bool = False) -> dict[str, Any]:
        """Accept a lead, deliver it now if amoCRM answers, and say what became of it."""
        earlier = self.store.find_forwarding(lead.external_id, lead.dedupe_key, self.window)
        if not dry_run and earlier is not None and earlier["status"] != "failed":
            # A repeat gets the first result, whatever has been renamed in amoCRM since.
            return await self._repeat(earlier, lead)
        resolved = await self._resolve_now(lead)
        if dry_run:
            return await self._dry_run(lead, resolved)
        forwarding_id = uuid.uuid4().hex
        record = {
            "id": forwarding_id,
            "external_id": lead.external_id or None,
            "dedupe_key": lead.dedupe_key,
            "name": lead.name,
            "phone": lead.phone,
            "email": lead.email,
            "source": lead.source,
            "request": _request_json(lead, resolved),
        }
        row, new = self.store.accept_forwarding(record, self.window)
        if not new:
            if row["status"] != "failed":
                return await self._repeat(row, lead)
            # A refused lead given again (same external_id) goes out with the new details; one
            # that failed after a create request went out is looked for in amoCRM first.
            self.store.update_forwarding(
                row["id"],
                status="unknown" if row.get("sent_at") else "queued",
                request=record["request"],
                name=lead.name,
                phone=lead.phone,
                email=lead.email,
                source=lead.source,
                next_attempt_at=0,
                last_error=None,
            )
            forwarding_id = row["id"]
        unchecked = {} if resolved is not None else {"names_checked": False}
        if self.offline:
            self.store.update_forwarding(
                forwarding_id, last_error=self.down_reason, next_attempt_at=int(self.down_until)
            )
            self.wake()
            return self.answer(self._row(forwarding_id), extras=unchecked)
        extras = await self.deliver(forwarding_id)
        return self.answer(self._row(forwarding_id), extras={**unchecked, **extras})

    async def _repeat(self, row: dict[str, Any], lead: LeadRequest) -> dict[str, Any]:
        """The answer to a lead given again: the first one's result, brought up to date, and
        what differs when the same external_id came with other details."""
        differs = _differences(row, lead)
        if (row.get("claimed_until") or 0) > time.time():
            # Being delivered by an earlier call in this process: wait for its result.
            with anyio.move_on_after(WAIT_FOR_EARLIER):
                async with self.lock:
                    pass
            row = self._row(row["id"])
            extras: dict[str, Any] = {}
        elif (
            row["status"] in ("queued", "unknown", "sending")
            and (row.get("next_attempt_at") or 0) <= time.time()
            and not self.offline
        ):
            # Asked again while it waits and is due: this is a good moment to try.
            extras = await self.deliver(row["id"])
            row = self._row(row["id"])
        else:
            extras = {}
        if differs:
            extras.setdefault("notes", []).append(
                f"external_id {lead.external_id!r} was forwarded before with another "
                f"{' and '.join(differs)}; this call sent nothing and the first lead stands. A "
                "different lead needs an external_id of its own"
            )
        return self.answer(row, duplicate=True, extras=extras)

    async def _resolve_now(self, lead: LeadRequest) -> Resolved | None:
        """Names checked now when amoCRM (or what is held of it) can tell; None: later."""
        self.catalog.offline = self.offline
        try:
            return await resolve(self.catalog, lead, self.defaults)
        except CatalogUnavailable:
            return None
        except ServiceError as exc:
            if isinstance(exc, PERMANENT):
                raise
            self._went_down(exc)
            return None
        finally:
            self.catalog.offline = False

    async def _dry_run(self, lead: LeadRequest, resolved: Resolved | None) -> dict[str, Any]:
        if resolved is None:
            raise InvalidArgument(
                "dry_run needs amoCRM to check the lead, and amoCRM is not answering now "
                f"({self.down_reason or 'unreachable'}); try again later"
            )
        contacts = await find_contacts(self.client, None, lead, region=self.region)
        contact = contacts[0] if contacts else None
        company = await find_company(self.client, lead)
        path, body = create_request(lead, resolved, contact, company)
        steps = followups(lead, resolved, contact, company, self.add_details)
        earlier = None
        if lead.external_id:
            earlier = self.store.forwarding_by_external_id(lead.external_id)
        else:
            since = time.time() - self.window
            earlier = next(
                self.store.query(
                    "SELECT * FROM forwarded_leads WHERE dedupe_key = ? AND created_at >= ? "
                    "AND status != 'failed' ORDER BY created_at DESC LIMIT 1",
                    [lead.dedupe_key, since],
                ),
                None,
            )
        result: dict[str, Any] = {
            "dry_run": True,
            "sent": False,
            "requests": [{"method": "POST", "path": path, "body": body}],
            "then": [_describe_step(step) for step in steps],
            "pipeline": resolved.pipeline_name,
            "stage": resolved.status_name,
            "contact_existed": contact is not None,
        }
        if contact is not None:
            result["contact_id"] = int(contact["id"])
        if len(contacts) > 1:
            result["other_matching_contacts"] = [int(c["id"]) for c in contacts[1:10]]
        if resolved.responsible_name:
            result["responsible"] = resolved.responsible_name
        if earlier is not None and earlier["status"] != "failed":
            result["duplicate_of"] = earlier["id"]
            result["note"] = (
                "a forwarding of this lead exists already: a real call would return it and "
                "send nothing"
            )
        if resolved.notes:
            result["notes"] = list(resolved.notes)
        return result

    # --- delivering one forwarding --------------------------------------------------------

    @property
    def offline(self) -> bool:
        return time.time() < self.down_until

    def wake(self) -> None:
        self._wakeup.set()

    def _row(self, forwarding_id: str) -> dict[str, Any]:
        row = self.store.forwarding(forwarding_id)
        assert row is not None
        return row

    async def deliver(self, forwarding_id: str) -> dict[str, Any]:
        """Move one forwarding as far as it can go now; returns notes for the answer."""
        async with self.lock:
            row = self.store.take_forwarding(forwarding_id, LEASE)
            if row is None:
                return {}  # another process is working on it
            held = row["claimed_until"]
            try:
                return await self._advance(row)
            except Exception as exc:
                # A bug must neither lose the lead nor spin on it: note it and come back later.
                logger.exception("forwarding %s: unexpected error", forwarding_id)
                current = self._row(forwarding_id)
                self.store.update_forwarding(
                    forwarding_id,
                    status="unknown" if current["status"] == "sending" else current["status"],
                    last_error=f"internal error ({type(exc).__name__}); the server tries again",
                    next_attempt_at=int(time.time() + self.max_backoff),
                )
                return {}
            finally:
                self.store.release_forwarding(forwarding_id, held)

    async def _advance(self, row: dict[str, Any]) -> dict[str, Any]:
        status = row["status"]
        try:
            if status in ("sending", "unknown"):
                # Sent, with no answer (or its process died mid-send): look before resending.
                checked_after = (row.get("sent_at") or row["created_at"]) + self.check_delay
                if status == "sending":
                    self.store.update_forwarding(row["id"], status="unknown")
                if time.time() < checked_after:
                    self.store.update_forwarding(row["id"], next_attempt_at=int(checked_after))
                    return {}
                try:
                    # Under the lock deliveries hold until they record their deal, so a deal
                    # another process has just made is never taken for this one.
                    async with self._file_lock:
                        found = await self._recover(self._row(row["id"]))
                except ServiceError as exc:
                    # Whatever stopped the search, the deal may exist: stay unknown, look later.
                    self._postpone(row["id"], exc, prefix="could not look for the deal: ")
                    return {}
                self._came_back()
                if found:
                    await self._follow_up(row["id"])
                    return {"recovered": True}
                status = "queued"
            if status == "queued":
                return await self._send(self._row(row["id"]))
            if status == "delivered":
                await self._follow_up(row["id"])
            return {}
        except PERMANENT as exc:
            self._fail(row["id"], exc)
            return {}
        except ServiceError as exc:
            self._postpone(row["id"], exc)
            return {}

    async def _send(self, row: dict[str, Any]) -> dict[str, Any]:
        request = json.loads(row.get("request") or "{}")
        lead = LeadRequest.from_json(json.dumps(request.get("lead", request)))
        resolved = resolved_from_json(request.get("resolved"))
        if resolved is None:
            resolved = await resolve(self.catalog, lead, self.defaults)
        async with self._file_lock:
            current = self._row(row["id"])
            if current["status"] != "queued" or current.get("claimed_until") != row.get(
                "claimed_until"
            ):
                return {}  # another process took it over while this one waited for the lock
            contacts = await find_contacts(self.client, self.store, lead, self.policy, self.region)
            if not contacts and self._same_person_unconfirmed(row["id"], lead):
                # An earlier lead of this person got no answer and may have made the contact;
                # amoCRM's search may not show it yet. Wait for that one to be confirmed.
                self.store.update_forwarding(
                    row["id"],
                    last_error="waiting until an earlier lead of the same person is confirmed, "
                    "so the contact is not made twice",
                    next_attempt_at=int(time.time() + self.check_delay + 1),
                )
                return {}
            contact = contacts[0] if contacts else None
            company = await find_company(self.client, lead, self.policy)
            path, body = create_request(lead, resolved, contact, company)
            steps = followups(lead, resolved, contact, company, self.add_details)
            # From here on amoCRM may create the deal even if we never hear back.
            self.store.update_forwarding(
                row["id"],
                status="sending",
                sent_at=int(time.time()),
                attempts=int(row.get("attempts") or 0) + 1,
                request=_request_json(lead, resolved),
                contact_id=int(contact["id"]) if contact else None,
                contact_existed=int(contact is not None),
                company_id=int(company["id"]) if company else None,
                amocrm_pipeline_id=resolved.pipeline_id,
                amocrm_status_id=resolved.status_id,
                responsible_user_id=resolved.responsible_user_id,
                followups=json.dumps(steps, ensure_ascii=False) if steps else None,
            )
            try:
                answer = await self.client.request("POST", path, body=body, policy=self.policy)
                lead_id, contact_id, company_id = created_ids(path, answer.body, answer.request_id)
            except (OutcomeUnknown, BadAnswer) as exc:
                self._unknown(row["id"], exc)
                return {}
            except PERMANENT as exc:
                # A refusal means nothing was created: a corrected lead may go out directly.
                self._fail(row["id"], exc, sent_at=None)
                return {}
            except ServiceError as exc:
                # Refused before it was carried out (429, unreachable, login needed): resend.
                self.store.update_forwarding(row["id"], status="queued")
                self._postpone(row["id"], exc)
                return {}
            except BaseException:
                # Cancelled while the request was out: it may have landed.
                self.store.update_forwarding(
                    row["id"], status="unknown", last_error="cancelled while creating the lead"
                )
                raise
            # Recorded before the lock is let go, so no search for a lost deal takes this one.
            self.store.update_forwarding(
                row["id"],
                status="delivered",
                lead_id=lead_id,
                contact_id=contact_id or (int(contact["id"]) if contact else None),
                company_id=company_id or (int(company["id"]) if company else None),
                lead_url=self._url(lead_id),
                delivered_at=int(time.time()),
                next_attempt_at=0,
                last_error=None,
            )
        self._came_back()
        extras: dict[str, Any] = {}
        if len(contacts) > 1:
            extras["other_matching_contacts"] = [int(c["id"]) for c in contacts[1:10]]
            extras.setdefault("notes", []).append(
                f"{len(contacts)} contacts hold this phone or e-mail; the lead was linked to the "
                f"most recently updated one ({int(contacts[0]['id'])})."
            )
        if resolved.notes:
            extras.setdefault("notes", []).extend(resolved.notes)
        if len(lead.message) > 10_000:
            extras.setdefault("notes", []).append(
                "the message was cut to its first 10000 characters in the note"
            )
        await self._follow_up(row["id"])
        return extras

    def _same_person_unconfirmed(self, forwarding_id: str, lead: LeadRequest) -> bool:
        """Another forwarding of this phone or e-mail was sent with no answer yet."""
        row = next(
            self.store.query(
                "SELECT 1 FROM forwarded_leads WHERE id != ? AND status IN ('unknown', 'sending') "
                "AND COALESCE(contact_existed, 0) = 0 "
                "AND ((phone = ? AND phone != '') OR (email = ? AND email != '')) LIMIT 1",
                [forwarding_id, lead.phone, lead.email],
            ),
            None,
        )
        return row is not None

    def _url(self, lead_id: int) -> str:
        return f"{self.client.base_url}/leads/detail/{lead_id}"

    # --- outcomes -------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        delay = min(self.max_backoff, FIRST_BACKOFF * 2 ** min(max(attempt - 1, 0), 20))
        return delay * random.uniform(0.8, 1.0)

    def _went_down(self, exc: ServiceError) -> None:
        self._failures += 1
        self.down_until = time.time() + self._backoff(self._failures)
        self.down_reason = _reason(exc)
        logger.info(
            "amoCRM cannot take leads now (%s); next try in %.0fs",
            exc.summary,
            self.down_until - time.time(),
        )

    def _came_back(self) -> None:
        if self._failures:
            logger.info("amoCRM answers again; delivering the outbox")
        self._failures = 0
        self.down_until = 0.0
        self.down_reason = ""

    def _postpone(self, forwarding_id: str, exc: ServiceError, prefix: str = "") -> None:
        self._went_down(exc)
        self.store.update_forwarding(
            forwarding_id,
            last_error=prefix + _reason(exc),
            next_attempt_at=int(self.down_until) + 1,
        )

    def _unknown(self, forwarding_id: str, exc: ServiceError) -> None:
        logger.warning(
            "forwarding %s: no answer to the create request (%s)", forwarding_id, exc.summary
        )
        self.store.update_forwarding(
            forwarding_id,
            status="unknown",
            last_error=f"no answer to the create request ({exc.summary}); "
            "amoCRM is checked for the deal before anything is sent again",
            next_attempt_at=int(time.time() + self.check_delay),
        )

    def _fail(self, forwarding_id: str, exc: TaritiError, **fields: Any) -> None:
        reason = exc.summary if isinstance(exc, ServiceError) else str(exc)
        if isinstance(exc, ServiceError) and exc.details:
            reason += ": " + "; ".join(exc.details[:5])
        logger.warning("forwarding %s failed: %s", forwarding_id, reason)
        self.store.update_forwarding(forwarding_id, status="failed", last_error=reason, **fields)

    # --- looking for a deal whose answer was lost ----------------------------------------

    async def _recover(self, row: dict[str, Any]) -> bool:
        """Find in amoCRM the deal an attempt with no answer created; mark it delivered.

        The deal is looked for by creation time and the title that was sent, among deals no
        other forwarding owns, linked to the contact that was used (or, for a new contact, to
        one holding the lead's phone or e-mail). Not found: the forwarding may be sent again.
        """
        request = json.loads(row.get("request") or "{}")
        lead = LeadRequest.from_json(json.dumps(request.get("lead", request)))
        resolved = resolved_from_json(request.get("resolved")) or Resolved()
        sent_at = int(row.get("sent_at") or row["created_at"])
        query = [
            ("filter[created_at][from]", str(sent_at - 120)),
            ("filter[created_at][to]", str(int(time.time()) + 60)),
            ("with", "contacts"),
            ("limit", "250"),
        ]
        deals, _ = await self.client.walk(
            "/api/v4/leads", query, RECOVERY_PAGES, policy=self.policy
        )
        candidates = [
            d
            for d in deals
            if _as_sent(d, lead, resolved) and not self.store.lead_claimed(d["id"], row["id"])
        ]
        linked = {
            d["id"]: [int(c["id"]) for c in (d.get("_embedded") or {}).get("contacts") or []]
            for d in candidates
        }
        if row.get("contact_existed") and row.get("contact_id"):
            candidates = [d for d in candidates if int(row["contact_id"]) in linked[d["id"]]]
        elif candidates:
            ids = sorted({c for d in candidates for c in linked[d["id"]]})
            owners = set()
            if ids:
                contacts, _ = await self.client.walk(
                    "/api/v4/contacts",
                    [("filter[id][]", str(i)) for i in ids[:250]] + [("limit", "250")],
                    2,
                    policy=self.policy,
                )
                owners = {int(c["id"]) for c in contacts if holds_lead(c, lead, self.region)}
            candidates = [d for d in candidates if owners & set(linked[d["id"]])]
        if not candidates:
            logger.info(
                "forwarding %s: no deal found after a lost answer; sending it again", row["id"]
            )
            self.store.update_forwarding(
                row["id"],
                status="queued",
                last_error="the last attempt got no answer and created no deal; sending again",
            )
            return False
        # The closest to the moment it was sent, and in the stage it was sent to if several.
        found = min(
            candidates,
            key=lambda d: (
                d.get("status_id") != resolved.status_id,
                abs((d.get("created_at") or 0) - sent_at),
                d["id"],
            ),
        )
        contact_ids = linked[found["id"]]
        contact_id = row.get("contact_id") if row.get("contact_existed") else None
        self.store.update_forwarding(
            row["id"],
            status="delivered",
            lead_id=int(found["id"]),
            contact_id=contact_id or (contact_ids[0] if contact_ids else None),
            lead_url=self._url(int(found["id"])),
            delivered_at=int(time.time()),
            next_attempt_at=0,
            last_error=None,
        )
        logger.info("forwarding %s: the lost answer's deal %s was found", row["id"], found["id"])
        return True

    # --- what follows the deal ------------------------------------------------------------

    async def _follow_up(self, forwarding_id: str) -> None:
        """The note, company and contact details, each made once; a step whose answer was
        lost is checked before it is made again."""
        # Under the cross-process lock: a company looked for and then created by two
        # processes at once would be created twice.
        async with self._file_lock:
            await self._follow_up_locked(forwarding_id)

    async def _follow_up_locked(self, forwarding_id: str) -> None:
        row = self._row(forwarding_id)
        steps = json.loads(row.get("followups") or "[]")
        problems: list[str] = []
        while steps:
            step = steps[0]
            try:
                await self._step(row, step, steps)
            except OutcomeUnknown as exc:
                step["sent"] = True
                self._save_steps(forwarding_id, steps, f"{step['step']}: {exc.summary}")
                self.store.update_forwarding(
                    forwarding_id, next_attempt_at=int(time.time() + self.check_delay)
                )
                return
            except PERMANENT as exc:
                problems.append(f"{step['step']} refused: {exc}")
                logger.warning("forwarding %s: %s refused: %s", forwarding_id, step["step"], exc)
            except ServiceError as exc:
                self._save_steps(forwarding_id, steps, f"{step['step']}: {exc.summary}")
                self._postpone(forwarding_id, exc)
                return
            steps.pop(0)
            self._save_steps(forwarding_id, steps, "; ".join(problems) or None)

    def _save_steps(
        self, forwarding_id: str, steps: list[dict[str, Any]], error: str | None
    ) -> None:
        self.store.update_forwarding(
            forwarding_id,
            followups=json.dumps(steps, ensure_ascii=False) if steps else None,
            last_error=error,
        )

    async def _step(
        self, row: dict[str, Any], step: dict[str, Any], steps: list[dict[str, Any]]
    ) -> None:
        lead_id = int(row["lead_id"])
        kind = step["step"]
        if kind == "note":
            if step.get("sent") and await self._note_exists(lead_id, step["text"]):
                return
            step["sent"] = True
            self._save_steps(row["id"], steps, row.get("last_error"))
            await self.client.request(
                "POST",
                f"/api/v4/leads/{lead_id}/notes",
                body=[{"note_type": "common", "params": {"text": step["text"]}}],
                policy=self.policy,
            )
        elif kind == "link_company":
            await self._link_company(lead_id, int(step["company_id"]))
        elif kind == "create_company":
            lead = LeadRequest(company=step["name"])
            company = await find_company(self.client, lead, self.policy)
            if company is None:
                if step.get("sent"):
                    # A company sent with no answer and not found: the search may lag, so the
                    # deal goes without it rather than risk a second company.
                    raise Rejected(
                        AMOCRM,
                        f"company {step['name']!r} may not have been created; link it by hand",
                    )
                step["sent"] = True
                self._save_steps(row["id"], steps, row.get("last_error"))
                answer = await self.client.request(
                    "POST", "/api/v4/companies", body=[{"name": step["name"]}], policy=self.policy
                )
                created = ((answer.body or {}).get("_embedded") or {}).get("companies") or []
                if not created:
                    raise Rejected(AMOCRM, "creating the company returned no id")
                company = created[0]
            self.store.update_forwarding(row["id"], company_id=int(company["id"]))
            await self._link_company(lead_id, int(company["id"]))
        elif kind == "contact_details":
            await self._add_details(int(step["contact_id"]), step["add"])

    async def _note_exists(self, lead_id: int, text: str) -> bool:
        notes, _ = await self.client.walk(
            f"/api/v4/leads/{lead_id}/notes",
            [("filter[note_type]", "common"), ("limit", "250")],
            4,
            policy=self.policy,
        )
        return any((n.get("params") or {}).get("text") == text for n in notes)

    async def _link_company(self, lead_id: int, company_id: int) -> None:
        # Linking what is linked already changes nothing, so this may be repeated.
        await self.client.request(
            "POST",
            f"/api/v4/leads/{lead_id}/link",
            body=[{"to_entity_id": company_id, "to_entity_type": "companies"}],
            policy=self.policy,
        )

    async def _add_details(self, contact_id: int, add: dict[str, list[str]]) -> None:
        """Add a phone or e-mail the contact lacks; what it holds is sent back unchanged."""
        answer = await self.client.request(
            "GET", f"/api/v4/contacts/{contact_id}", policy=self.policy
        )
        contact = answer.body if isinstance(answer.body, dict) else {}
        lead = LeadRequest(phone=(add.get("PHONE") or [""])[0], email=(add.get("EMAIL") or [""])[0])
        missing = missing_details(lead, contact)
        if not missing:
            return
        changes = []
        for code, new in missing.items():
            held = [
                {"value": v.get("value"), "enum_code": v.get("enum_code") or "WORK"}
                for f in contact.get("custom_fields_values") or []
                if f.get("field_code") == code
                for v in f.get("values") or []
            ]
            changes.append(
                {
                    "field_code": code,
                    "values": held + [{"value": value, "enum_code": "WORK"} for value in new],
                }
            )
        await self.client.request(
            "PATCH",
            f"/api/v4/contacts/{contact_id}",
            body={"custom_fields_values": changes},
            policy=self.policy,
        )

    # --- the background ------------------------------------------------------------------

    async def deliver_due(self, progress: Progress | None = None) -> int:
        """One pass over what is due now; returns how many forwardings were worked on."""
        done = 0
        rows = self.store.due_forwardings()
        for row in rows:
            if self.offline:
                break
            await self.deliver(row["id"])
            done += 1
            if progress is not None:
                await progress(done, len(rows), f"forwarding {row['id']}")
        return done

    def next_due(self) -> float | None:
        row = next(
            self.store.query(
                "SELECT MIN(MAX(COALESCE(next_attempt_at, 0), COALESCE(claimed_until, 0))) "
                "AS due FROM forwarded_leads "
                "WHERE status IN ('queued', 'unknown', 'sending') "
                "OR (status = 'delivered' AND followups IS NOT NULL AND followups != '[]')"
            )
        )
        return None if row["due"] is None else float(row["due"])

    async def run(self) -> None:
        """Deliver the outbox for as long as the server runs."""
        while True:
            try:
                await self.deliver_due()
            except Exception:  # a bug must not stop deliveries for good
                logger.exception("outbox pass failed")
            due = self.next_due()
            now = time.time()
            wait = self.interval
            if due is not None:
                wait = min(wait, max(due - now, 0.05))
            if self.offline:
                wait = max(wait, self.down_until - now)
            self._wakeup = anyio.Event()
            with anyio.move_on_after(max(wait, 0.05)):
                await self._wakeup.wait()

    # --- answers -------------------------------------------------------------------------

    def answer(
        self, row: dict[str, Any], *, duplicate: bool = False, extras: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """What the model reads about a forwarding; a refused one is raised as an error."""
        extras = dict(extras or {})
        status = row["status"]
        if status == "failed":
            raise ForwardingFailed(
                f"amoCRM refused the lead (forwarding {row['id']}): {row.get('last_error')}. "
                "Correct the arguments and forward it again"
                + (" with the same external_id." if row.get("external_id") else ".")
            )
        result: dict[str, Any] = {"forwarding_id": row["id"], "duplicate": duplicate}
        if status == "delivered":
            result.update(
                status="delivered",
                lead_id=row["lead_id"],
                contact_id=row["contact_id"],
                contact_existed=bool(row.get("contact_existed")),
                lead_url=row["lead_url"],
            )
            if row.get("company_id"):
                result["company_id"] = row["company_id"]
            placed = _placed(row)
            if placed:
                result.update(placed)
            if extras.pop("recovered", False):
                extras.setdefault("notes", []).append(
                    "the answer to the create request was lost, but the deal was found in "
                    "amoCRM; nothing was created twice"
                )
            if duplicate:
                result["note"] = "this lead was forwarded already; nothing new was created"
            if row.get("followups") and row["followups"] != "[]":
                extras.setdefault("notes", []).append(
                    "the note or company is still being added; the server finishes it"
                )
            if row.get("last_error"):
                extras.setdefault("notes", []).append(row["last_error"])
        else:
            busy = (row.get("claimed_until") or 0) > time.time()
            result.update(
                status="queued",
                reason=row.get("last_error")
                or ("being delivered right now" if busy else "waiting for its turn"),
                next_attempt_at=_iso(row.get("next_attempt_at")),
                note="the lead is saved and the server delivers it by itself, checking amoCRM "
                "first if an attempt got no answer. Do not create it another way; forward it "
                "again with the same details to see how it went.",
            )
        extras.pop("recovered", None)
        result.update(extras)
        return result


def _differences(row: dict[str, Any], lead: LeadRequest) -> list[str]:
    """Which of name, phone and e-mail a repeat by external_id gives otherwise than the first;
    a repeat by phone or e-mail and name is the same lead by definition."""
    if not lead.external_id or row.get("external_id") != lead.external_id:
        return []
    return [
        label
        for label, given, first in (
            ("name", lead.name, row.get("name")),
            ("phone", lead.phone, row.get("phone")),
            ("e-mail", lead.email, row.get("email")),
        )
        if _folded(given) != _folded(first)
    ]


def _folded(text: str | None) -> str:
    return " ".join((text or "").split()).casefold()


def _request_json(lead: LeadRequest, resolved: Resolved | None) -> str:
    return json.dumps(
        {
            "lead": json.loads(lead.to_json()),
            "resolved": resolved_to_json(resolved) if resolved else None,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _reason(exc: ServiceError) -> str:
    """Why a lead waits, as a person (or the model) should read it."""
    if isinstance(exc, AccountBlocked):
        return (
            "amoCRM has blocked API access for this account; the lead is kept and goes out "
            "once amoCRM support has lifted the block and the server is restarted"
        )
    if isinstance(exc, AuthFailed):
        return f"{exc.summary}; the lead goes out once the operator has fixed the login " + (
            "(tariti-mcp amocrm login)"
        )
    return exc.summary


def _as_sent(deal: dict[str, Any], lead: LeadRequest, resolved: Resolved) -> bool:
    """The deal carries what the lost request set: title, price, pipeline, manager, tags.

    The stage is not required: automations may move a new deal at once.
    """
    if deal.get("name") != lead.title or int(deal.get("price") or 0) != lead.price:
        return False
    if resolved.pipeline_id and deal.get("pipeline_id") != resolved.pipeline_id:
        return False
    wanted_user = resolved.responsible_user_id
    if wanted_user and deal.get("responsible_user_id") != wanted_user:
        return False
    tags = {
        str(t.get("name", "")).casefold() for t in (deal.get("_embedded") or {}).get("tags") or []
    }
    return {t.casefold() for t in lead.tags} <= tags


def _placed(row: dict[str, Any]) -> dict[str, str]:
    """The pipeline and stage names the deal was sent to, as the account named them then."""
    try:
        resolved = json.loads(row.get("request") or "{}").get("resolved") or {}
    except ValueError:
        return {}
    names = {"pipeline": resolved.get("pipeline_name"), "stage": resolved.get("status_name")}
    return {key: value for key, value in names.items() if value}


def _describe_step(step: dict[str, Any]) -> dict[str, Any]:
    kind = step["step"]
    if kind == "note":
        return {"add_note": step["text"]}
    if kind == "link_company":
        return {"link_company": step["company_id"]}
    if kind == "create_company":
        return {"create_company": step["name"]}
    return {"add_to_contact": {"contact_id": step["contact_id"], **step["add"]}}


def outbox_for(client: AmoCrmClient, store: Store, settings: Any) -> Outbox:
    """The outbox as the settings describe it."""
    return Outbox(
        client,
        store,
        catalog=Catalog(client, store, ttl=settings.catalog_ttl, policy=OUTBOX_RETRY),
        defaults=Defaults(
            settings.forward_pipeline, settings.forward_status, settings.forward_responsible
        ),
        window=settings.dedupe_window_hours * 3600,
        add_details=settings.add_contact_details,
        max_backoff=settings.outbox_max_backoff,
        check_delay=settings.outbox_check_delay,
        interval=settings.outbox_interval,
        region=settings.default_region,
    )
