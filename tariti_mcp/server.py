"""The MCP server: four thin tools over the amoCRM and Moizvonki services and the store."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from weakref import WeakKeyDictionary

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, ValidationError

from . import __version__
from .amocrm import leads as amocrm_leads
from .amocrm.api import GuardedClient, call_api
from .amocrm.client import METHODS, AmoCrmClient
from .amocrm.outbox import Outbox, outbox_for
from .amocrm.tokens import amocrm_credentials
from .answers import bounded
from .config import Settings
from .errors import (
    AMOCRM,
    MOIZVONKI,
    InvalidArgument,
    NotConfigured,
    TaritiError,
    read_only_refusal,
)
from .http import Gate
from .logs import redact
from .moizvonki import analytics
from .moizvonki.api import PhoneOwners, analytics_report, call_action, parse_user_map
from .moizvonki.client import ACTIONS, DESTRUCTIVE, MoizvonkiClient
from .prompts import register_prompts
from .resources import register_resources
from .store import Store

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
Tools for a sales team's amoCRM account and its Moizvonki call log.
- call_amocrm_api: any amoCRM API v4 request. Lists come back as items with paging facts.
- forward_lead_to_amocrm: turn an inbound lead into an amoCRM deal with its contact, once.
- call_moizvonki_api: any Moizvonki action; credentials are added by the server.
- get_moizvonki_analytics: call statistics for a period; prefer it over listing calls.
Errors say what to change; a write whose outcome is unknown must be checked before resending."""

READ_ONLY_INSTRUCTIONS = """\
Tools for a sales team's amoCRM account and its Moizvonki call log. This server is read-only:
it changes nothing in either service.
- call_amocrm_api: any amoCRM API v4 GET request. Lists come back as items with paging facts.
- call_moizvonki_api: Moizvonki's read actions; credentials are added by the server.
- get_moizvonki_analytics: call statistics for a period; prefer it over listing calls.
Errors say what to change."""

AMOCRM_WRITES = (
    "POST/PATCH/DELETE change the CRM: never repeat one whose outcome was unknown without "
    "checking first."
)
AMOCRM_NO_DELETE = " DELETE is refused unless the operator allows destructive actions."
AMOCRM_READ_ONLY = "This server is read-only: only GET is accepted, nothing in amoCRM changes."
MOIZVONKI_WRITES = (
    "make_call and send_sms act on the real phone of the employee you name in `employee`: "
    "never repeat one whose outcome was unknown."
)
MOIZVONKI_READ_ONLY = "This server is read-only: only the read actions are accepted."

Period = Literal[
    "",
    "today",
    "yesterday",
    "this_week",
    "last_week",
    "last_7_days",
    "this_month",
    "last_month",
    "last_30_days",
]
Breakdown = Literal[
    "by_day", "by_hour", "by_weekday", "by_month", "by_employee", "top_clients", "waiting_clients"
]


# The structured payload goes out once as data and once as compact text for clients that read
# only `content`; the SDK's default text is indented JSON, a third longer for the model.
Answer = Annotated[CallToolResult, dict[str, Any]]


def _choice(values: list[str], description: str, default: Any = ...) -> Any:
    """A text argument offered as a fixed list that depends on the server's settings.

    Annotations are read in module scope, so the list travels in the default's Field. The type
    stays plain text: a value outside the list reaches the service code, which refuses it with
    its own message (read-only mode, say) rather than a generic validation error.
    """
    return Field(default, description=description, json_schema_extra={"enum": values})


def _answer(payload: dict[str, Any]) -> CallToolResult:
    payload = bounded(payload)
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
    clean = redact(text)
    if clean != text:
        # A configured secret came back inside an API's answer (a hook URL, an echoed key): the
        # model gets the masked copy, in both the text and the structured content.
        text = clean
        payload = json.loads(clean)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=payload)


@dataclass
class AppState:
    """What every tool call reaches through the lifespan context."""

    settings: Settings
    store: Store
    amocrm: AmoCrmClient | None
    moizvonki: MoizvonkiClient | None
    outbox: Outbox | None = None
    phone_owners: PhoneOwners | None = None

    def require_amocrm(self) -> AmoCrmClient:
        if self.amocrm is None:
            raise NotConfigured(AMOCRM, self.settings.missing_amocrm())
        return self.amocrm

    def require_outbox(self) -> Outbox:
        if self.settings.read_only:
            raise read_only_refusal(AMOCRM, "forwarding a lead")
        if self.outbox is None:
            raise NotConfigured(AMOCRM, self.settings.missing_amocrm())
        return self.outbox

    def require_moizvonki(self) -> MoizvonkiClient:
        if self.moizvonki is None:
            raise NotConfigured(MOIZVONKI, self.settings.missing_moizvonki())
        return self.moizvonki


@contextmanager
def _as_tool_errors() -> Iterator[None]:
    """Every anticipated failure reaches the model as its own message, marked as an error."""
    try:
        yield
    except TaritiError as exc:
        raise ToolError(str(exc)) from None


def _state(ctx: Context) -> AppState:
    return ctx.request_context.lifespan_context


# The state each server's lifespan built, for routes outside MCP (webhooks, health) to share.
_STATES: WeakKeyDictionary[MCPServer, AppState] = WeakKeyDictionary()


def current_state(server: MCPServer) -> AppState | None:
    """The running server's state (store, clients), or None before its lifespan started."""
    return _STATES.get(server)


def _progress(ctx: Context):
    """A progress reporter for one tool call. MCP wants each value larger than the last, and
    pages fetched and retry waits report from different counts, so values only move up."""
    last = -1.0

    async def report(done: float, total: float | None, message: str) -> None:
        nonlocal last
        if done <= last:
            done = last + 1
        if total is not None and done > total:
            total = None
        last = done
        await ctx.report_progress(done, total, message)

    return report


def _json_argument(value: Any, name: str) -> Any:
    """Models sometimes send an object as JSON text; read it back rather than refuse."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise InvalidArgument(f"{name} must be a JSON object or array, not text") from None
    return value


class _Server(MCPServer):
    """The SDK's server, with the client's mistakes answered as such: an unknown or withheld
    prompt is invalid params naming the prompts there are (the SDK makes it an internal error
    with a traceback), and arguments that fail a tool's schema come back one line per
    argument (the SDK gives pydantic's report)."""

    # Prompts the settings leave out, with why: asked for anyway, the client is told.
    withheld_prompts: dict[str, str] = {}  # replaced per server, never changed in place

    async def get_prompt(self, name: str, arguments=None, context=None):  # type: ignore[override]
        if name in self.withheld_prompts:
            raise MCPError(
                code=INVALID_PARAMS, message=f"{name} is not offered: {self.withheld_prompts[name]}"
            )
        known = sorted(prompt.name for prompt in await self.list_prompts())
        if name not in known:
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"unknown prompt {name[:60]!r}; the prompts are: {', '.join(known)}",
            )
        return await super().get_prompt(name, arguments, context)

    async def call_tool(self, name: str, arguments: dict[str, Any], context=None):  # type: ignore[override]
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(_invalid_arguments(name, exc.__cause__)) from exc.__cause__
            raise


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # an integer too long to print, say
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 60 else text[:59] + "…"


def _invalid_arguments(tool: str, error: ValidationError) -> str:
    """Pydantic's report for the model: each argument, what is wrong, what was given; no
    error-type codes or documentation links, which only cost the model tokens."""
    problems = []
    for item in error.errors(include_url=False)[:10]:
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        problem = f"{where}: {item['msg']}"
        if item["type"] != "missing":
            problem += f" (got {_shown(item.get('input'))})"
        problems.append(problem)
    return redact(f"invalid arguments for {tool}: {'; '.join(problems)}. Fix them and call again.")


def create_server(settings: Settings, *, store: Store | None = None) -> MCPServer:
    """Build the server. ``store`` overrides ``settings.db_path`` (tests pass an in-memory one)."""
    redact.add(settings.secrets())

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[AppState]:
        own_store = store is None
        database = store if store is not None else Store(settings.db_path)
        amocrm = None
        if settings.amocrm_configured:
            gate = Gate(settings.amocrm_rate_limit)
            credentials = await amocrm_credentials(settings, database, gate)
            amocrm = GuardedClient(
                settings.amocrm_base_url,
                credentials,
                timeout=settings.http_timeout,
                gate=gate,
                read_only=settings.read_only,
                allow_destructive=settings.allow_destructive,
            )
        moizvonki = None
        phone_owners = None
        if settings.moizvonki_configured:
            moizvonki = MoizvonkiClient(
                settings.moizvonki_base_url,
                settings.moizvonki_user,
                settings.moizvonki_api_key.get_secret_value(),
                timeout=settings.http_timeout,
                read_only=settings.read_only,
                allow_destructive=settings.allow_destructive,
            )
            phone_owners = PhoneOwners(
                moizvonki.login,
                settings.employee_keys(),
                parse_user_map(settings.moizvonki_user_map),
            )
        logger.info(
            "server started: amoCRM %s, Moizvonki %s, database %s",
            "configured" if amocrm else "not configured",
            "configured" if moizvonki else "not configured",
            database.path,
        )
        outbox = None
        if amocrm is not None and settings.read_only:
            logger.info(
                "read-only mode: the outbox is not delivered; %d forwarded leads waiting in it "
                "stay queued",
                len(database.pending_leads()),
            )
        elif amocrm is not None:
            outbox = outbox_for(amocrm, database, settings)
        try:
            async with anyio.create_task_group() as background:
                if outbox is not None:
                    # Leads that could not be delivered when they came go out from here.
                    background.start_soon(outbox.run)
                state = AppState(settings, database, amocrm, moizvonki, outbox, phone_owners)
                _STATES[server] = state
                try:
                    yield state
                finally:
                    _STATES.pop(server, None)
                    background.cancel_scope.cancel()
        finally:
            if amocrm is not None:
                await amocrm.credentials.aclose()
            for client in (amocrm, moizvonki):
                if client is not None:
                    await client.aclose()
            if own_store:
                database.close()

    read_only = settings.read_only
    server = _Server(
        "tariti-mcp",
        version=__version__,
        instructions=READ_ONLY_INSTRUCTIONS if read_only else INSTRUCTIONS,
        lifespan=lifespan,
        log_level=settings.log_level,  # type: ignore[arg-type]
    )

    def _tool(*, more: str = "", **options: Any):
        # The docstring is the model's description, followed by what depends on the settings.
        def register(function):
            description = inspect.cleandoc(function.__doc__)
            if more:
                description += " " + more
            server.add_tool(function, description=description, **options)
            return function

        return register

    # Tools that can write say so; in read-only mode nothing they do reaches a service.
    api_annotations = ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=not read_only,
        idempotent_hint=read_only,
        open_world_hint=True,
    )
    if read_only:
        methods = ["GET"]
        method_help = "HTTP method: only GET, since this server is read-only."
        amocrm_more = AMOCRM_READ_ONLY
    else:
        methods = list(METHODS)
        method_help = (
            "HTTP method. GET reads; POST creates; PATCH updates; DELETE removes "
            "(only when the server allows destructive actions)."
        )
        amocrm_more = AMOCRM_WRITES + ("" if settings.allow_destructive else AMOCRM_NO_DELETE)

    amocrm_more += f" all_pages stops after {settings.amocrm_max_pages} pages at most."

    @_tool(title="amoCRM API request", annotations=api_annotations, more=amocrm_more)
    async def call_amocrm_api(
        *,
        method: str = _choice(methods, method_help, "GET"),
        path: Annotated[
            str,
            Field(
                description="API path under /api/v4/, e.g. /api/v4/leads or /api/v4/leads/123. "
                "No host, no query string."
            ),
        ],
        query: Annotated[
            dict[str, Any],
            Field(
                description='Query parameters, e.g. {"limit": 50, "query": "Иванов", '
                '"with": "contacts", "filter[statuses][0][pipeline_id]": 123, '
                '"filter[statuses][0][status_id]": 456}. Lists become key[]=v.',
                default_factory=dict,
            ),
        ],
        body: Annotated[
            Any,
            Field(
                description="JSON body for POST/PATCH. Collections (/api/v4/leads, "
                "/api/v4/leads/123/notes...) take an array of objects (a single object is "
                "wrapped); one entity (PATCH /api/v4/leads/123) takes an object."
            ),
        ] = None,
        all_pages: Annotated[
            bool,
            Field(description="For lists: follow _links.next over all pages, up to max_pages."),
        ] = False,
        max_pages: Annotated[
            int,
            Field(
                description="Page cap when all_pages is true; the server's AMOCRM_MAX_PAGES "
                "(said in this tool's description) caps it too.",
                ge=1,
                le=200,
            ),
        ] = 10,
        skip: Annotated[
            int,
            Field(
                description="Drop this many items from the start of a list answer; a cut "
                "answer's `resume` says which page, limit and skip continue it.",
                ge=0,
                le=250,
            ),
        ] = 0,
        ctx: Context,
    ) -> Answer:
        """Send one request to the amoCRM API v4 (leads, contacts, companies, pipelines, users,
        tasks, notes...). Lists return `items` plus `has_more`/`next_page`; to get more, call
        again with query page=N or set all_pages; an answer cut for size gives `resume` (page,
        limit and skip to continue). Limit is at most 250 per page. 204 means
        nothing matched and is not an error. Lead status filter: filter[statuses][0][pipeline_id]
        and filter[statuses][0][status_id]. All timestamps are Unix seconds. Send only the
        fields you change in PATCH."""
        state = _state(ctx)
        with _as_tool_errors():
            client = state.require_amocrm()
            cap = min(max_pages, state.settings.amocrm_max_pages)
            capped_by = "max_pages" if cap == max_pages else "the server's AMOCRM_MAX_PAGES"
            return _answer(
                await call_api(
                    client,
                    state.store,
                    method,
                    path,
                    query,
                    _json_argument(body, "body"),
                    all_pages=all_pages,
                    max_pages=cap,
                    capped_by=capped_by,
                    skip=skip,
                    zone=state.settings.zone,
                    progress=_progress(ctx),
                    read_only=state.settings.read_only,
                    allow_destructive=state.settings.allow_destructive,
                )
            )

    async def forward_lead_to_amocrm(
        *,
        name: Annotated[str, Field(description="The person's name.")] = "",
        phone: Annotated[
            str, Field(description="Phone in any common format: +7 916 123-45-67, 8 916 ...")
        ] = "",
        email: Annotated[str, Field(description="E-mail address.")] = "",
        message: Annotated[
            str, Field(description="What the person wrote or asked; saved as a note on the deal.")
        ] = "",
        source: Annotated[
            str, Field(description="Where the lead came from, e.g. 'site form', 'Telegram'.")
        ] = "",
        external_id: Annotated[
            str,
            Field(
                description="Your id for this lead (form submission id, chat id). The "
                "same external_id forwarded again returns the first result and creates "
                "nothing. Strongly recommended."
            ),
        ] = "",
        company: Annotated[
            str, Field(description="Company name; an existing company of that name is reused.")
        ] = "",
        price: Annotated[
            int,
            Field(
                description="Deal value, whole units of the account's currency.",
                ge=0,
                le=10**12,
            ),
        ] = 0,
        pipeline: Annotated[
            str,
            Field(description="Pipeline name or id, e.g. 'Продажи'; empty = the default one."),
        ] = "",
        status: Annotated[
            str,
            Field(
                description="Status (stage) name or id within that pipeline; empty = its first "
                "stage."
            ),
        ] = "",
        responsible: Annotated[
            str, Field(description="Responsible manager: amoCRM user id, e-mail or name.")
        ] = "",
        tags: Annotated[
            list[str], Field(description="Tag names for the deal.", default_factory=list)
        ],
        utm_source: Annotated[str, Field(description="UTM source, e.g. yandex.")] = "",
        utm_medium: Annotated[str, Field(description="UTM medium, e.g. cpc.")] = "",
        utm_campaign: Annotated[str, Field(description="UTM campaign.")] = "",
        utm_content: Annotated[str, Field(description="UTM content.")] = "",
        utm_term: Annotated[str, Field(description="UTM term.")] = "",
        custom_fields: Annotated[
            dict[str, Any],
            Field(
                description='Other deal fields by code or name, e.g. {"Источник": "Сайт"}; '
                "choice fields take the choice's label, multi-choice a list of labels.",
                default_factory=dict,
            ),
        ],
        lead_name: Annotated[
            str,
            Field(
                description="Deal title; default '<source>: <name>', or 'Заявка: <name>' "
                "without a source."
            ),
        ] = "",
        dry_run: Annotated[
            bool,
            Field(description="Check everything and return the exact requests; send nothing."),
        ] = False,
        ctx: Context,
    ) -> Answer:
        """Turn an inbound lead into an amoCRM deal linked to its contact, exactly once. Needs
        phone or email. An existing contact with the same phone (compared by its last 10 digits,
        so +7/8 formats match) or e-mail is reused and never modified; otherwise one is created.
        Pipeline, status, manager and fields may be given by name. Answers status "delivered"
        with lead_id, contact_id and lead_url (the deal in amoCRM's web app), or "queued" when
        amoCRM cannot take it now: the server then delivers it by itself, so never resend it
        another way. The same external_id (or, without one, the same phone/e-mail and name
        within a day) returns the first result with duplicate=true."""
        state = _state(ctx)
        with _as_tool_errors():
            outbox = state.require_outbox()
            utm = {
                "utm_source": utm_source,
                "utm_medium": utm_medium,
                "utm_campaign": utm_campaign,
                "utm_content": utm_content,
                "utm_term": utm_term,
            }
            lead = amocrm_leads.prepare(
                region=state.settings.default_region,
                name=name,
                phone=phone,
                email=email,
                message=message,
                source=source,
                external_id=external_id,
                company=company,
                price=price,
                pipeline=pipeline,
                status=status,
                responsible=responsible,
                tags=tags,
                utm=utm,
                custom_fields=_json_argument(custom_fields, "custom_fields") or {},
                lead_name=lead_name,
            )
            return _answer(await outbox.submit(lead, dry_run=dry_run))

    if not read_only:
        # Hidden in read-only mode: a client sees only what the server can do.
        _tool(
            title="Forward a lead to amoCRM",
            annotations=ToolAnnotations(
                read_only_hint=False,
                destructive_hint=False,
                idempotent_hint=False,
                open_world_hint=True,
            ),
        )(forward_lead_to_amocrm)

    if read_only:
        actions = [action for action, reads in ACTIONS.items() if reads]
        action_help = (
            "The Moizvonki action; only reads, since this server is read-only. company.* and "
            "webhook.* need an administrator."
        )
        employee_help = "Not used: this server is read-only, so nothing rings or sends."
        moizvonki_more = MOIZVONKI_READ_ONLY
    else:
        actions = list(ACTIONS)
        action_help = (
            "The Moizvonki action. calls.make_call rings the phone of `employee`; "
            "calls.send_sms sends from it; company.* and webhook.* need an administrator. "
            + (
                "company.delete_employee deletes the user AND all their calls; webhook.subscribe "
                "replaces the account's URL for that event."
                if settings.allow_destructive
                else f"Refused unless the operator allows destructive actions: "
                f"{', '.join(DESTRUCTIVE)}."
            )
        )
        employee_help = (
            "Required for calls.make_call and calls.send_sms, unused otherwise: whose phone "
            "rings or sends. A Moizvonki login e-mail or employee id, or an amoCRM user id or "
            "e-mail the server maps to one."
        )
        moizvonki_more = MOIZVONKI_WRITES

    @_tool(title="Moizvonki API action", annotations=api_annotations, more=moizvonki_more)
    async def call_moizvonki_api(
        *,
        action: str = _choice(actions, action_help),
        params: Annotated[
            dict[str, Any],
            Field(
                description="Action parameters at top level, without credentials. calls.list: "
                "from_date/to_date (Unix seconds, or ISO date/datetime read in the business time "
                "zone, TARITI_TIMEZONE), or from_id (a db_call_id, "
                "inclusive); from_offset; max_results 1-100. calls.make_call: to. "
                "calls.send_sms: to, text.",
                default_factory=dict,
            ),
        ],
        all_pages: Annotated[
            bool,
            Field(
                description="For list actions: follow results_next_offset over all "
                "pages, up to max_pages."
            ),
        ] = False,
        max_pages: Annotated[int, Field(description="Page cap for all_pages.", ge=1, le=500)] = 20,
        employee: str = Field("", description=employee_help),
        ctx: Context,
    ) -> Answer:
        """Run one Moizvonki API action; the server adds the login and key. Calls: direction 0
        is incoming, 1 outgoing; `answered` (not duration) says whether it was answered; times
        are Unix seconds UTC. For counts and durations use get_moizvonki_analytics instead of
        listing calls."""
        state = _state(ctx)
        with _as_tool_errors():
            client = state.require_moizvonki()
            return _answer(
                await call_action(
                    client,
                    state.store,
                    action,
                    _json_argument(params, "params") or {},
                    state.settings.zone,
                    all_pages=all_pages,
                    max_pages=max_pages,
                    region=state.settings.default_region,
                    progress=_progress(ctx),
                    employee=employee,
                    owners=state.phone_owners,
                )
            )

    @_tool(
        title="Call analytics (Moizvonki)",
        annotations=ToolAnnotations(
            read_only_hint=True,
            destructive_hint=False,
            idempotent_hint=True,
            open_world_hint=True,
        ),
    )
    async def get_moizvonki_analytics(
        *,
        period: Annotated[
            Period,
            Field(
                description="A named period in the business time zone, instead of dates: "
                "this_week starts on Monday, last_week is the previous Monday..Sunday, "
                "last_7_days and last_30_days end today."
            ),
        ] = "",
        date_from: Annotated[
            str,
            Field(
                description="First day, ISO date (2026-12-01), inclusive; or a date and time "
                "(2026-12-01T09:30) as an exact start. Empty: today, or date_to's day when only "
                "date_to is given."
            ),
        ] = "",
        date_to: Annotated[
            str,
            Field(
                description="Last day, ISO date, inclusive; or a date and time as an exact end "
                "(calls before it). Empty: today."
            ),
        ] = "",
        employee: Annotated[
            str,
            Field(description="Only this employee's calls: Moizvonki id, e-mail or name."),
        ] = "",
        direction: Annotated[
            Literal["", "incoming", "outgoing"], Field(description="Only these calls.")
        ] = "",
        client: Annotated[
            str,
            Field(description="Only calls with this phone number, in any format (+7/8...)."),
        ] = "",
        include: Annotated[
            list[Breakdown],
            Field(
                description="Breakdowns to add; empty: by_day and by_employee. by_hour is "
                "0-23 local time; top_clients by number of calls; waiting_clients: the missed "
                "clients not called back, longest waiting first, with number and employee.",
                default_factory=list,
            ),
        ],
        compare_to: Annotated[
            Literal["", "previous_period"],
            Field(
                description="previous_period: add the same totals for the preceding period of "
                "equal length and the change in each (percent null when it was 0)."
            ),
        ] = "",
        callback_window_hours: Annotated[
            float,
            Field(
                description="How long after a missed call an outgoing call still counts as a "
                "callback.",
                ge=analytics.MIN_CALLBACK_WINDOW_HOURS,
                le=analytics.MAX_CALLBACK_WINDOW_HOURS,
            ),
        ] = analytics.CALLBACK_WINDOW_HOURS,
        top_clients_limit: Annotated[
            int,
            Field(description="Entries in top_clients.", ge=1, le=analytics.MAX_TOP_CLIENTS),
        ] = analytics.TOP_CLIENTS,
        ctx: Context,
    ) -> Answer:
        """Call statistics from the synced Moizvonki log in the business time zone (a call
        counts when it started). Give period or date_from/date_to (none: today; at most 366
        days). answered/missed come from the answered flag only (missed = not answered, either
        direction). internal_calls (to the company's own numbers) count in totals, never as
        clients. unique_clients: distinct numbers (last 10 digits). total/avg/median duration:
        talk time of answered calls. avg_wait_seconds: answer delay of answered incoming calls.
        missed_clients: clients whose last incoming call in the period was missed;
        callback_attempted / callback_reached: someone called them after that, within
        callback_window_hours (and got through); not_called_back = missed_clients -
        callback_attempted (a later incoming call is no callback). Breakdown entries carry
        missed_not_called_back, placed by the missed call. truncated/cut say what a breakdown
        left out: ask a shorter period or a filter. synced_at: how fresh the data is."""
        state = _state(ctx)
        with _as_tool_errors():
            client_api = state.require_moizvonki()
            return _answer(
                await analytics_report(
                    client_api,
                    state.store,
                    state.settings.zone,
                    period=period,
                    date_from=date_from,
                    date_to=date_to,
                    employee=employee,
                    direction=direction,
                    client_number=client,
                    include=list(include) or None,
                    compare_to=compare_to,
                    callback_window_hours=callback_window_hours,
                    top_clients_limit=top_clients_limit,
                    freshness=state.settings.analytics_freshness,
                    progress=_progress(ctx),
                )
            )

    register_resources(server)
    server.withheld_prompts = register_prompts(server, read_only=settings.read_only)
    return server
