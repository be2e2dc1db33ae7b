"""Read-only MCP resources: what an agent reads before it acts (the account, its pipelines, users
and fields, one deal or contact, the Moizvonki employees, how fresh the store is), as compact
JSON. Lists come from the store while younger than ``TARITI_CATALOG_TTL``; one deal or contact
is always read anew."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

from .amocrm.catalog import LOST, MAX_PAGES, UNSORTED, WON, CatalogUnavailable
from .amocrm.client import AmoCrmClient
from .answers import bounded
from .errors import InvalidArgument, NotFound, ServiceError, TaritiError
from .moizvonki.sync import EMPLOYEES, sync_employees, sync_warnings
from .store import Store

if TYPE_CHECKING:
    from .server import AppState

logger = logging.getLogger(__name__)

JSON = "application/json"
ENTITIES = ("leads", "contacts", "companies")
PIPELINES = "amocrm.pipelines"  # the sync_state names `tariti-mcp sync` uses for whole lists
USERS = "amocrm.users"
# Tables a dashboard or an agent asks about; the token tables are secrets and stay out.
COUNTED_TABLES = (
    "amocrm_leads",
    "amocrm_contacts",
    "amocrm_companies",
    "amocrm_pipelines",
    "amocrm_statuses",
    "amocrm_users",
    "forwarded_leads",
    "moizvonki_calls",
    "moizvonki_employees",
)
_ID = re.compile(r"^[0-9]{1,15}$")

# Answers with no table of their own (the account, custom fields), kept per amoCRM client: for
# as long as the server's session lives.
_HELD: WeakKeyDictionary[AmoCrmClient, dict[str, tuple[float, Any]]] = WeakKeyDictionary()


def _dump(payload: Any) -> str:
    if isinstance(payload, dict):
        payload = bounded(payload)
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)


@contextmanager
def _as_resource_errors(uri: str) -> Iterator[None]:
    """Our errors as the client should see them: a wrong URI part is the caller's to fix
    (invalid params), anything else a failed read with the service's own explanation."""
    try:
        yield
    except InvalidArgument as exc:
        raise MCPError(code=INVALID_PARAMS, message=str(exc), data={"uri": uri}) from None
    except NotFound as exc:
        raise ResourceNotFoundError(str(exc)) from None
    except TaritiError as exc:
        raise ResourceError(str(exc)) from None
    except CatalogUnavailable as exc:
        raise ResourceError(f"{exc}; try again in a minute") from None


def _fresh_since(store: Store, stream: str, ttl: float) -> int | None:
    """When the whole list was last read, if that was less than ``ttl`` seconds ago."""
    synced = store.sync_state(stream).get("last_synced_at")
    if synced and time.time() - synced < ttl:
        return int(synced)
    return None


async def _held(
    client: AmoCrmClient, name: str, ttl: float, fetch: Callable[[], Awaitable[Any]]
) -> Any:
    """``fetch()``'s answer, kept ``ttl`` seconds; when a refetch fails the copy held is used."""
    parts = _HELD.setdefault(client, {})
    held = parts.get(name)
    if held is not None and time.monotonic() - held[0] < ttl:
        return held[1]
    try:
        value = await fetch()
    except ServiceError as exc:
        if held is None:
            raise
        logger.info("amoCRM %s could not be read again (%s); using the copy held", name, exc)
        return held[1]
    parts[name] = (time.monotonic(), value)
    return value


def _strip_links(value: Any) -> Any:
    """HAL ``_links`` only repeat an entity's own address; they cost tokens and say nothing."""
    if isinstance(value, dict):
        return {k: _strip_links(v) for k, v in value.items() if k != "_links"}
    if isinstance(value, list):
        return [_strip_links(v) for v in value]
    return value


# --- amoCRM: the account -----------------------------------------------------------------------

ACCOUNT_FIELDS = (
    "id",
    "name",
    "subdomain",
    "country",
    "currency",
    "currency_symbol",
    "current_user_id",
    "customers_mode",
    "is_unsorted_on",
    "is_loss_reason_enabled",
)


async def account(state: AppState) -> dict[str, Any]:
    client = state.require_amocrm()

    async def fetch() -> dict[str, Any]:
        answer = await client.request("GET", "/api/v4/account", [("with", "datetime_settings")])
        body = answer.body if isinstance(answer.body, dict) else {}
        shown = {key: body[key] for key in ACCOUNT_FIELDS if key in body}
        zone = (body.get("_embedded") or {}).get("datetime_settings") or {}
        if zone.get("timezone"):
            shown["timezone"] = zone["timezone"]
        if zone.get("timezone_offset"):
            shown["timezone_offset"] = zone["timezone_offset"]
        return shown

    return await _held(client, "account", state.settings.catalog_ttl, fetch)


# --- amoCRM: pipelines and users, stored whole -------------------------------------------------


async def _whole_list(
    state: AppState, stream: str, fetch: Callable[[AmoCrmClient], Awaitable[None]]
) -> tuple[int, list[str]]:
    """Make sure the store holds the whole list; return since when its rows are current, and
    notes for the reader. A refetch that fails falls back on the stored copy, saying so."""
    client = state.require_amocrm()
    store = state.store
    since = _fresh_since(store, stream, state.settings.catalog_ttl)
    if since is not None:
        return since, []
    started = int(time.time())
    try:
        await fetch(client)
    except ServiceError as exc:
        stored = store.sync_state(stream).get("last_synced_at")
        if not stored:
            raise
        age = int(time.time()) - int(stored)
        return int(stored), [
            f"amoCRM could not be read now ({exc.summary}): this copy is {age}s old"
        ]
    store.save_sync_state(stream, last_synced_at=started, last_error=None)
    return started, []


async def _fetch_pipelines(state: AppState, client: AmoCrmClient) -> None:
    items, _ = await client.walk("/api/v4/leads/pipelines", [], MAX_PAGES)
    state.store.upsert_pipelines(items)


async def _fetch_users(state: AppState, client: AmoCrmClient) -> None:
    items, more = await client.walk("/api/v4/users", [("limit", "250")], MAX_PAGES)
    if more:
        logger.warning("amoCRM users run past %d pages; the rest is not stored", MAX_PAGES)
    state.store.upsert_users(items)


async def pipelines(state: AppState) -> dict[str, Any]:
    since, notes = await _whole_list(
        state, PIPELINES, lambda client: _fetch_pipelines(state, client)
    )
    store = state.store
    # Rows the last whole read did not touch were deleted in amoCRM since.
    statuses: dict[int, list[dict[str, Any]]] = {}
    for row in store.query(
        "SELECT pipeline_id, id, name, sort, type FROM amocrm_statuses WHERE fetched_at >= ? "
        "ORDER BY pipeline_id, sort, id",
        [since],
    ):
        statuses.setdefault(row.pop("pipeline_id"), []).append(row)
    listed = []
    for row in store.query(
        "SELECT id, name, sort, is_main, is_archive FROM amocrm_pipelines WHERE fetched_at >= ? "
        "ORDER BY sort, id",
        [since],
    ):
        row["is_main"], row["is_archive"] = bool(row["is_main"]), bool(row["is_archive"])
        listed.append({**row, "statuses": statuses.get(row["id"], [])})
    answer: dict[str, Any] = {
        "pipelines": listed,
        "status_meaning": {
            str(WON): "won (closed successfully), in every pipeline",
            str(LOST): "lost (closed unsuccessfully), in every pipeline",
            f"type {UNSORTED}": "the incoming-leads stage; the API cannot move a deal into it",
        },
        "as_of": since,
    }
    if notes:
        answer["notes"] = notes
    return answer


async def users(state: AppState) -> dict[str, Any]:
    since, notes = await _whole_list(state, USERS, lambda client: _fetch_users(state, client))
    rows = [
        {**row, "is_admin": bool(row["is_admin"]), "is_active": bool(row["is_active"])}
        for row in state.store.query(
            "SELECT id, name, email, is_admin, is_active FROM amocrm_users WHERE fetched_at >= ? "
            "ORDER BY id",
            [since],
        )
    ]
    answer: dict[str, Any] = {"users": rows, "as_of": since}
    if notes:
        answer["notes"] = notes
    return answer


# --- amoCRM: custom fields ---------------------------------------------------------------------


def _entity_name(entity: str) -> str:
    text = entity.strip().lower()
    if text not in ENTITIES:
        raise InvalidArgument(
            f"unknown entity {entity[:40]!r} in amocrm://custom-fields/{{entity}}: use one of "
            + ", ".join(f"amocrm://custom-fields/{name}" for name in ENTITIES)
        )
    return text


def _field(definition: dict[str, Any]) -> dict[str, Any]:
    shown = {key: definition.get(key) for key in ("id", "name", "code", "type")}
    enums = definition.get("enums")
    if isinstance(enums, list) and enums:
        shown["enums"] = [
            {"id": enum.get("id"), "value": enum.get("value")}
            for enum in enums
            if isinstance(enum, dict)
        ]
    return shown


async def custom_fields(state: AppState, entity: str) -> dict[str, Any]:
    entity = _entity_name(entity)
    client = state.require_amocrm()
    outbox = state.outbox
    if entity == "leads" and outbox is not None:
        # The copy forward_lead_to_amocrm checks leads against: one read serves both.
        definitions = await outbox.catalog.lead_fields()
    else:

        async def fetch() -> list[dict[str, Any]]:
            # At most 50 fields come to a page, whatever the limit: every page is walked.
            path = f"/api/v4/{entity}/custom_fields"
            items, more = await client.walk(path, [("limit", "50")], MAX_PAGES)
            if more:
                logger.warning("%s has more than %d pages; the rest is not shown", path, MAX_PAGES)
            return items

        ttl = state.settings.catalog_ttl
        definitions = await _held(client, f"{entity}_fields", ttl, fetch)
    fields = [_field(d) for d in definitions if isinstance(d, dict)]
    return {"entity": entity, "count": len(fields), "fields": fields}


# --- amoCRM: one lead or contact ---------------------------------------------------------------

_SINGULAR = {"leads": "lead", "contacts": "contact"}
_UPSERT = {"leads": Store.upsert_leads, "contacts": Store.upsert_contacts}


def _entity_id(text: str, entity: str) -> int:
    given = text.strip()
    if not _ID.match(given) or int(given) == 0:
        raise InvalidArgument(
            f"the {_SINGULAR[entity]} id must be a positive whole number, like "
            f"amocrm://{entity}/12345 (got {text[:40]!r})"
        )
    return int(given)


async def one_entity(state: AppState, entity: str, text: str) -> dict[str, Any]:
    """One lead (with its contacts) or contact, read now from amoCRM and stored."""
    entity_id = _entity_id(text, entity)
    client = state.require_amocrm()
    query = [("with", "contacts")] if entity == "leads" else []
    answer = await client.request("GET", f"/api/v4/{entity}/{entity_id}", query)
    if not isinstance(answer.body, dict) or "id" not in answer.body:
        # amoCRM answers 204 for an id that does not exist (or was deleted).
        raise ResourceNotFoundError(f"amoCRM has no {_SINGULAR[entity]} with id {entity_id}")
    try:
        _UPSERT[entity](state.store, [answer.body])
    except Exception:  # the store must never fail the read it came with
        logger.exception("could not store %s %d", _SINGULAR[entity], entity_id)
    return _strip_links(answer.body)


# --- Moizvonki ---------------------------------------------------------------------------------


async def employees(state: AppState) -> dict[str, Any]:
    client = state.require_moizvonki()
    store = state.store
    notes = []
    synced = store.sync_state(EMPLOYEES).get("last_synced_at") or 0
    if time.time() - synced >= state.settings.catalog_ttl:
        try:
            await sync_employees(client, store, force=True)
        except ServiceError as exc:
            if not synced:
                raise
            notes.append(
                f"Moizvonki could not be read now ({exc.summary}): showing the copy stored"
            )
    rows = sorted(
        (
            {key: row.get(key) for key in ("id", "display_name", "email", "group_name", "role")}
            for row in store.employees()
        ),
        key=lambda row: (str(row["display_name"] or ""), row["id"]),
    )
    answer: dict[str, Any] = {
        "employees": rows,
        "count": len(rows),
        "synced_at": store.sync_state(EMPLOYEES).get("last_synced_at"),
    }
    warnings = sync_warnings(store)
    if warnings:
        answer["warnings"] = warnings
    if notes:
        answer["notes"] = notes
    return answer


# --- the store ---------------------------------------------------------------------------------


async def sync_state(state: AppState) -> dict[str, Any]:
    """Every stream's place and freshness, and how many rows each table holds."""
    store = state.store
    now = int(time.time())
    streams = []
    for row in store.query(
        "SELECT name, cursor, covered_from, last_synced_at, last_error, info FROM sync_state "
        "ORDER BY name"
    ):
        synced = row["last_synced_at"]
        streams.append(
            {
                "name": row["name"],
                "last_synced_at": synced,
                "age_seconds": now - synced if synced else None,
                "cursor": row["cursor"],
                "covered_from": row["covered_from"],
                "unfinished": bool(row["info"]),
                "last_error": row["last_error"],
            }
        )
    present = set(store.db.table_names())
    counts = {
        table: store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in COUNTED_TABLES
        if table in present
    }
    forwarded = {
        row["status"]: row["n"]
        for row in store.query(
            "SELECT status, count(*) AS n FROM forwarded_leads GROUP BY status ORDER BY status"
        )
    }
    newest = store.db.execute("SELECT max(start_time) FROM moizvonki_calls").fetchone()[0]
    return {
        "streams": streams,
        "rows": counts,
        "forwarded_leads_by_status": forwarded,
        "newest_call_start": newest,
        "now": now,
    }


# --- registration ------------------------------------------------------------------------------


def register_resources(server: MCPServer) -> None:
    """Add the resources to ``server``. Static ones reach the running state through
    ``current_state``: the SDK gives a Context only to templated resources."""
    # Imported here: server.py imports this module to call this function.
    from .server import current_state

    def static(uri: str, title: str, description: str):
        def register(read: Callable[[AppState], Awaitable[dict[str, Any]]]):
            async def serve() -> str:
                state = current_state(server)
                if state is None:
                    raise ResourceError("the server is still starting; read the resource again")
                with _as_resource_errors(uri):
                    return _dump(await read(state))

            server.resource(
                uri, name=read.__name__, title=title, description=description, mime_type=JSON
            )(serve)
            return read

        return register

    static(
        "amocrm://account",
        "amoCRM account",
        "The amoCRM account: id, name, subdomain, country, currency and time zone.",
    )(account)
    static(
        "amocrm://pipelines",
        "amoCRM pipelines and statuses",
        "Every pipeline with its statuses (id, name, sort, type). Status 142 is won and 143 "
        "lost in every pipeline. Use these ids in lead filters and forward_lead_to_amocrm.",
    )(pipelines)
    static(
        "amocrm://users",
        "amoCRM users",
        "The account's users (id, name, email, is_admin, is_active): responsible managers "
        "for deals and tasks.",
    )(users)
    static(
        "moizvonki://employees",
        "Moizvonki employees",
        "Employees of the Moizvonki account (id, name, login e-mail, group, role), for "
        "get_moizvonki_analytics' employee filter and whose phone calls.make_call uses.",
    )(employees)
    static(
        "tariti://sync-state",
        "Store freshness",
        "When each stream (calls, employees, amoCRM lists) was last synced, its cursor and last "
        "error, and how many rows each table of the local store holds.",
    )(sync_state)

    @server.resource(
        "amocrm://custom-fields/{entity}",
        name="custom_fields",
        title="amoCRM custom fields",
        description="Custom fields of leads, contacts or companies (entity = leads|contacts|"
        "companies): id, name, code, type and the choices (enums) of choice fields.",
        mime_type=JSON,
    )
    async def read_custom_fields(entity: str, ctx: Context) -> str:
        with _as_resource_errors(f"amocrm://custom-fields/{entity}"):
            return _dump(await custom_fields(ctx.request_context.lifespan_context, entity))

    @server.resource(
        "amocrm://leads/{lead_id}",
        name="lead",
        title="amoCRM lead",
        description="One deal by id, read now from amoCRM with its contacts.",
        mime_type=JSON,
    )
    async def read_lead(lead_id: str, ctx: Context) -> str:
        with _as_resource_errors(f"amocrm://leads/{lead_id}"):
            return _dump(await one_entity(ctx.request_context.lifespan_context, "leads", lead_id))

    @server.resource(
        "amocrm://contacts/{contact_id}",
        name="contact",
        title="amoCRM contact",
        description="One contact by id, read now from amoCRM.",
        mime_type=JSON,
    )
    async def read_contact(contact_id: str, ctx: Context) -> str:
        with _as_resource_errors(f"amocrm://contacts/{contact_id}"):
            return _dump(
                await one_entity(ctx.request_context.lifespan_context, "contacts", contact_id)
            )
