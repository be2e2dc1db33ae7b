"""The account's pipelines, users and lead fields, fetched once and kept for a while, so a lead
can name its pipeline, status, manager and custom fields the way the sales team does."""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import InvalidArgument, ServiceError
from ..http import RetryPolicy
from ..store import Store
from .client import AmoCrmClient

logger = logging.getLogger(__name__)

UNSORTED = 1  # status type of the "incoming leads" stage, which the API does not let leads enter
WON, LOST = 142, 143
MAX_PAGES = 40  # 40 pages of 50 custom fields, or of 250 users, is more than any account has
MAX_FIELD_VALUES = 40  # amoCRM's cap on custom field values per entity in one request

# Field types a plain value can fill; the others (addresses, legal entities, catalogs...) need
# their own structures and are left to call_amocrm_api.
TEXT_TYPES = {"text", "textarea", "url", "tracking_data", "streetaddress"}
CHOICE_TYPES = {"select", "radiobutton", "category"}


def _fold(text: str) -> str:
    """How names are compared: case, ё/е and runs of spaces do not matter."""
    return " ".join(str(text).replace("ё", "е").replace("Ё", "Е").split()).casefold()


def _choices(items: list[tuple[Any, str]], limit: int = 30) -> str:
    shown = ", ".join(f"{name!r} ({ident})" for ident, name in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return shown + more


def _suggest(given: str, names: list[str]) -> str:
    close = difflib.get_close_matches(given, names, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


@dataclass
class Resolved:
    """Ids for what a lead named, checked against the account."""

    pipeline_id: int | None = None
    status_id: int | None = None
    responsible_user_id: int | None = None
    custom_fields_values: list[dict[str, Any]] = field(default_factory=list)
    pipeline_name: str = ""
    status_name: str = ""
    responsible_name: str = ""
    notes: list[str] = field(default_factory=list)
    # UTM values the account has no field for: they go into the note instead.
    unsaved_utm: dict[str, str] = field(default_factory=dict)


class Catalog:
    """Pipelines with their statuses, users and lead custom fields of one account.

    Each part is fetched on first use (all pages) and again after ``ttl`` seconds. When a
    refetch fails, the copy already held is used; with no copy the error goes to the caller.
    """

    def __init__(
        self,
        client: AmoCrmClient,
        store: Store | None = None,
        ttl: float = 600,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.ttl = ttl
        self.policy = policy
        # While amoCRM is known to be down, only what is held is used: nothing is fetched.
        self.offline = False
        self._parts: dict[str, tuple[float, Any]] = {}

    def forget(self) -> None:
        self._parts.clear()

    async def _part(self, name: str) -> Any:
        held = self._parts.get(name)
        if held is not None and (self.offline or time.monotonic() - held[0] < self.ttl):
            return held[1]
        if self.offline:
            raise CatalogUnavailable(f"amoCRM {name} are not known yet and amoCRM is unreachable")
        try:
            value = await getattr(self, f"_fetch_{name}")()
        except ServiceError as exc:
            if held is None:
                raise
            logger.info("amoCRM %s could not be refreshed (%s); using the copy held", name, exc)
            return held[1]
        self._parts[name] = (time.monotonic(), value)
        return value

    async def _walk(self, path: str, query: list[tuple[str, str]]) -> list[dict[str, Any]]:
        items, more = await self.client.walk(path, query, MAX_PAGES, policy=self.policy)
        if more:
            logger.warning("%s has more than %d pages; the rest is not used", path, MAX_PAGES)
        return items

    async def _fetch_pipelines(self) -> list[dict[str, Any]]:
        pipelines = await self._walk("/api/v4/leads/pipelines", [])
        if self.store is not None:
            self.store.upsert_pipelines(pipelines)
        return pipelines

    async def _fetch_users(self) -> list[dict[str, Any]]:
        users = await self._walk("/api/v4/users", [("limit", "250")])
        if self.store is not None:
            self.store.upsert_users(users)
        return users

    async def _fetch_lead_fields(self) -> list[dict[str, Any]]:
        # Custom fields come at most 50 to a page: every page is walked.
        return await self._walk("/api/v4/leads/custom_fields", [("limit", "50")])

    async def _fetch_zone(self) -> ZoneInfo:
        answer = await self.client.request(
            "GET", "/api/v4/account", [("with", "datetime_settings")], policy=self.policy
        )
        body = answer.body if isinstance(answer.body, dict) else {}
        settings = (body.get("_embedded") or {}).get("datetime_settings") or {}
        name = settings.get("timezone") or "Europe/Moscow"
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            logger.warning("amoCRM account time zone %r is unknown; using Europe/Moscow", name)
            return ZoneInfo("Europe/Moscow")

    # --- pipelines and statuses -----------------------------------------------------------

    async def pipeline(self, given: str) -> dict[str, Any]:
        """The pipeline named or numbered ``given``; the main one when ``given`` is empty."""
        pipelines = await self._part("pipelines")
        if not given:
            main = [p for p in pipelines if p.get("is_main")] or pipelines[:1]
            if not main:
                raise InvalidArgument("the account has no pipelines to put a lead in")
            return main[0]
        return self._pick(
            "pipeline",
            given,
            pipelines,
            lambda p: [str(p.get("name") or "")],
        )

    async def status(self, given: str, pipeline: dict[str, Any]) -> dict[str, Any]:
        """The status named or numbered ``given`` in ``pipeline``; its first stage when empty."""
        statuses = sorted(
            ((pipeline.get("_embedded") or {}).get("statuses") or []),
            key=lambda s: (s.get("sort") or 0, s.get("id") or 0),
        )
        usable = [s for s in statuses if s.get("type") != UNSORTED]
        if not given:
            if not usable:
                raise InvalidArgument(f"pipeline {pipeline.get('name')!r} has no usable stage")
            return usable[0]
        status = self._pick(
            "status",
            given,
            statuses,
            lambda s: [str(s.get("name") or "")],
            where=f" in pipeline {pipeline.get('name')!r}",
        )
        if status.get("type") == UNSORTED:
            raise InvalidArgument(
                f"status {status.get('name')!r} is the incoming-leads stage, which amoCRM does "
                "not let the API put a deal in; choose another status: "
                + _choices([(s["id"], s.get("name") or "") for s in usable])
            )
        return status

    # --- users ----------------------------------------------------------------------------

    async def user(self, given: str) -> dict[str, Any]:
        """The user with id, e-mail or name ``given``."""
        users = await self._part("users")
        return self._pick(
            "responsible user",
            given,
            users,
            lambda u: [str(u.get("name") or ""), str(u.get("email") or "")],
        )

    # --- custom fields --------------------------------------------------------------------

    async def lead_field(self, given: str) -> dict[str, Any] | None:
        """The lead custom field with code, name or id ``given``; None when there is none."""
        fields = await self._part("lead_fields")
        try:
            return self._pick(
                "lead field",
                given,
                fields,
                lambda f: [str(f.get("code") or ""), str(f.get("name") or "")],
            )
        except _NotFound:
            return None

    async def lead_fields(self) -> list[dict[str, Any]]:
        return await self._part("lead_fields")

    async def field_value(self, definition: dict[str, Any], value: Any) -> list[dict[str, Any]]:
        """The ``values`` list to write for ``value`` in the field ``definition``."""
        kind = definition.get("type")
        label = f"custom field {definition.get('name')!r}"
        values = value if isinstance(value, list) else [value]
        if kind != "multiselect" and len(values) != 1:
            raise InvalidArgument(f"{label} takes one value, not a list")
        if kind in TEXT_TYPES:
            text = _text(values[0], label)
            return [{"value": text}]
        if kind == "numeric" or kind == "monetary":
            return [{"value": _number(values[0], label)}]
        if kind == "checkbox":
            return [{"value": _flag(values[0], label)}]
        if kind in ("date", "birthday"):
            zone = await self._part("zone")
            day = _day(values[0], label)
            # A date field holds the account's local midnight, or it shows the day before.
            midnight = dt.datetime.combine(day, dt.time(), tzinfo=zone)
            return [{"value": int(midnight.timestamp())}]
        if kind == "date_time":
            return [{"value": _moment(values[0], label, await self._part("zone"))}]
        if kind in CHOICE_TYPES or kind == "multiselect":
            enums = definition.get("enums") or []
            chosen = []
            for one in values:
                enum = _enum(one, enums, label)
                chosen.append({"enum_id": enum["id"]})
            return chosen
        raise InvalidArgument(
            f"{label} is of type {kind!r}, which forward_lead_to_amocrm cannot fill; set it "
            "afterwards with call_amocrm_api (PATCH /api/v4/leads/<id>)"
        )

    def _pick(
        self,
        what: str,
        given: str,
        items: list[dict[str, Any]],
        names: Any,
        where: str = "",
    ) -> dict[str, Any]:
        text = str(given).strip()
        listing = [(i.get("id"), " / ".join(n for n in names(i) if n)) for i in items]
        if text.isdigit():
            for item in items:
                if str(item.get("id")) == text:
                    return item
        wanted = _fold(text)
        found = [i for i in items if any(wanted == _fold(n) for n in names(i) if n)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise InvalidArgument(
                f"{what} {text!r}{where} matches {len(found)}: "
                + _choices([(i.get("id"), " / ".join(n for n in names(i) if n)) for i in found])
                + "; give the id instead"
            )
        every = [n for i in items for n in names(i) if n]
        raise _NotFound(
            f"unknown {what} {text!r}{where}.{_suggest(text, every)} Valid: {_choices(listing)}"
        )


class _NotFound(InvalidArgument):
    pass


class CatalogUnavailable(Exception):
    """What a lead names cannot be checked now: amoCRM is down and nothing is held."""


def _text(value: Any, label: str) -> str:
    if isinstance(value, dict | list) or value is None:
        raise InvalidArgument(f"{label} takes text")
    text = str(value).strip()
    if not text:
        raise InvalidArgument(f"{label} is empty: leave it out instead")
    return text[:10_000]


def _number(value: Any, label: str) -> float | int:
    try:
        number = float(str(value).replace(",", ".").replace(" ", "").replace("\u00a0", ""))
    except ValueError:
        raise InvalidArgument(f"{label} takes a number, not {value!r}") from None
    if not math.isfinite(number) or abs(number) > 1e15:
        raise InvalidArgument(f"{label} takes a number between -1e15 and 1e15")
    return int(number) if number.is_integer() else number


def _flag(value: Any, label: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().casefold()
    if text in ("1", "true", "yes", "да"):
        return True
    if text in ("0", "false", "no", "нет"):
        return False
    raise InvalidArgument(f"{label} is a checkbox: give true or false")


def _day(value: Any, label: str) -> dt.date:
    try:
        day = dt.date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise InvalidArgument(f"{label} takes a date like 2026-12-31, not {value!r}") from None
    if not 1900 <= day.year <= 2100:
        raise InvalidArgument(f"{label} takes a date between 1900 and 2100")
    return day


def _moment(value: Any, label: str, zone: ZoneInfo) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not (math.isfinite(value) and 0 <= value <= 4_102_444_800):
            raise InvalidArgument(f"{label} takes Unix seconds between 1970 and 2100")
        return int(value)
    try:
        moment = dt.datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise InvalidArgument(
            f"{label} takes a date and time like 2026-12-31T15:00, not {value!r}"
        ) from None
    if not 1970 <= moment.year <= 2100:
        raise InvalidArgument(f"{label} takes a date between 1970 and 2100")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return int(moment.timestamp())


def _enum(value: Any, enums: list[dict[str, Any]], label: str) -> dict[str, Any]:
    text = str(value).strip()
    for enum in enums:
        if _fold(enum.get("value") or "") == _fold(text) or str(enum.get("id")) == text:
            return enum
    listing = [(e.get("id"), str(e.get("value") or "")) for e in enums]
    hint = _suggest(text, [name for _, name in listing])
    raise InvalidArgument(f"{label} has no choice {text!r}.{hint} Valid: {_choices(listing)}")
