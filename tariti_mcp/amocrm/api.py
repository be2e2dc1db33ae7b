"""``call_amocrm_api``: any v4 request, with paging, limits, a bounded answer and the cache."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from ..answers import MAX_ANSWER_CHARS, cut_list, preview, size
from ..errors import AMOCRM, InvalidArgument, destructive_refusal, read_only_refusal
from ..store import Store
from .client import (
    DEFAULT_ZONE,
    METHODS,
    AmoCrmClient,
    Answer,
    api_path,
    check_query,
    flatten_query,
    list_items,
    next_link,
    wants_array,
)

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 50  # amoCRM's page size when none is asked for
Progress = Callable[[float, float | None, str], Awaitable[None]]

_UPSERTS = {
    "leads": Store.upsert_leads,
    "contacts": Store.upsert_contacts,
    "companies": Store.upsert_companies,
    "pipelines": Store.upsert_pipelines,
    "statuses": Store.upsert_statuses,
    "users": Store.upsert_users,
}
_SINGLE = [
    (re.compile(r"^/api/v4/leads/pipelines/(\d+)/statuses/\d+$"), "statuses"),
    (re.compile(r"^/api/v4/leads/pipelines/\d+$"), "pipelines"),
    (re.compile(r"^/api/v4/(leads|contacts|companies|users)/\d+$"), None),
]


def check_write(method: str, path: str, *, read_only: bool, allow_destructive: bool) -> None:
    """Refuse a request the server's settings forbid, before anything is sent."""
    method = method.upper().strip()
    if method != "GET" and read_only:
        raise read_only_refusal(AMOCRM, f"{method} {path}")
    if method == "DELETE" and not allow_destructive:
        raise destructive_refusal(
            f"DELETE {path}",
            "DELETE in amoCRM removes account-wide things (a pipeline, a custom field with its "
            "values in every deal, a webhook) that the API cannot bring back",
        )


class GuardedClient(AmoCrmClient):
    """An amoCRM client that holds every request to the server's write settings, whoever sends
    it: the tool, the outbox, or a route added later."""

    def __init__(
        self, *args: Any, read_only: bool = False, allow_destructive: bool = False, **options: Any
    ) -> None:
        super().__init__(*args, **options)
        self.read_only = read_only
        self.allow_destructive = allow_destructive

    async def request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        **options: Any,
    ) -> Answer:
        check_write(
            method, path, read_only=self.read_only, allow_destructive=self.allow_destructive
        )
        return await super().request(method, path, query, body, **options)


def _strip_links(value: Any) -> Any:
    """Drop HAL ``_links`` from items: they only repeat the item's own address."""
    if isinstance(value, dict):
        return {k: _strip_links(v) for k, v in value.items() if k != "_links"}
    if isinstance(value, list):
        return [_strip_links(v) for v in value]
    return value


def _page_of(href: str | None) -> int | None:
    if not href:
        return None
    page = parse_qs(urlsplit(href).query).get("page")
    return int(page[0]) if page and page[0].isdigit() else None


def _cache(store: Store | None, path: str, entity: str | None, items: list[Any]) -> None:
    if store is None or not items:
        return
    if entity == "statuses":
        found = re.match(r"^/api/v4/leads/pipelines/(\d+)", path)
        if found:
            items = [
                {"pipeline_id": int(found.group(1)), **i} for i in items if isinstance(i, dict)
            ]
    upsert = _UPSERTS.get(entity or "")
    if upsert is not None:
        try:
            upsert(store, [i for i in items if isinstance(i, dict)])
        except Exception:  # the cache must never fail the request it came with
            logger.exception("could not cache %s", entity)


def _single_entity(path: str) -> str | None:
    for pattern, entity in _SINGLE:
        found = pattern.match(path)
        if found:
            return entity or found.group(1)
    return None


async def call_api(
    client: AmoCrmClient,
    store: Store | None,
    method: str,
    path: str,
    query: dict[str, Any] | None = None,
    body: Any = None,
    *,
    all_pages: bool = False,
    max_pages: int = 10,
    capped_by: str = "max_pages",
    skip: int = 0,
    zone: ZoneInfo = DEFAULT_ZONE,
    progress: Progress | None = None,
    read_only: bool = False,
    allow_destructive: bool = False,
) -> dict[str, Any]:
    """Run one API call (or a walk over its pages) and shape the answer for the model.

    ``capped_by`` names what set ``max_pages`` (the argument or the server's setting);
    ``read_only`` and ``allow_destructive`` are the server's write settings.
    """
    method = method.upper().strip()
    offered = ("GET",) if read_only else METHODS
    if method not in METHODS:
        raise InvalidArgument(f"method must be one of {', '.join(offered)} (got {method[:20]!r})")
    path = api_path(path)
    check_write(method, path, read_only=read_only, allow_destructive=allow_destructive)
    pairs, notes = check_query(path, flatten_query(query or {}), zone)
    if method == "GET" and body not in (None, {}, []):
        raise InvalidArgument("a GET request takes no body: put filters in `query`")
    if method in ("POST", "PATCH") and body is None:
        raise InvalidArgument(f"{method} needs a body: a JSON object or an array of objects")
    if body is not None and not isinstance(body, dict | list):
        raise InvalidArgument("body must be a JSON object or an array of objects")
    if method in ("POST", "PATCH") and isinstance(body, dict) and wants_array(path):
        body = [body]
        notes.append(f"the body was sent as a one-item array, as {path} requires")

    async def waiting(delay: float, message: str) -> None:
        if progress is not None:
            await progress(0, None, message)

    answer = await client.request(method, path, pairs, body, on_wait=waiting)
    result: dict[str, Any] = {"status": answer.status, "method": method, "path": path}
    if answer.request_id:
        result["request_id"] = answer.request_id

    if answer.body is None:
        result["empty"] = True
        if answer.status == 204:
            result["note"] = (
                "amoCRM answered 204 No Content: nothing matched (an empty list or no entity "
                "with that id). This is not an error."
            )
        if method == "GET":
            result["items"] = []
            result["count"] = 0
        return _finish(result, notes)

    listing = list_items(answer.body)
    if listing is None:
        if method == "GET":
            _cache(store, path, _single_entity(path), [answer.body])
        result["data"] = _strip_links(answer.body)
        return _finish(result, notes)

    entity, items = listing
    if method == "GET":
        _cache(store, path, entity, items)
    collected = list(items)
    href = next_link(answer.body)
    # The page size amoCRM applied: some lists cap lower than the limit asked for.
    page_size = len(items) if href and items else int(dict(pairs).get("limit", DEFAULT_LIMIT))
    pages = 1
    first_page = answer.body.get("_page")
    while all_pages and href and pages < max_pages and size(collected) < MAX_ANSWER_CHARS:
        target = client.follow(href)
        if target is None:
            notes.append("paging stopped: the next link left the account's host")
            break
        if progress is not None:
            await progress(pages, max_pages, f"fetched {len(collected)} {entity} in {pages} pages")
        page = await client.request("GET", target[0], target[1], on_wait=waiting)
        pages += 1
        next_listing = list_items(page.body)
        if next_listing is None:
            href = None  # 204 or an empty page: the end
            break
        _cache(store, path, entity, next_listing[1])
        collected.extend(next_listing[1])
        href = next_link(page.body)

    if skip:
        collected = collected[skip:]
    result.update({"entity": entity, "count": len(collected), "pages_fetched": pages})
    if first_page is not None:
        result["first_page"] = first_page
    result["has_more"] = bool(href)
    paging_note = None
    if href:
        next_page = _page_of(href)
        if next_page is not None:
            result["next_page"] = next_page
        if all_pages:
            result["stopped_early"] = True
            why = capped_by if pages >= max_pages else "the answer's size limit"
            paging_note = (
                f"stopped after {pages} pages ({why}); more remain: call again with "
                f"query page={next_page} or narrow the filter"
            )
        else:
            paging_note = (
                f"more {entity} remain: call again with query page={next_page} "
                "or set all_pages=true"
            )
    result["items"] = _strip_links(collected)
    start = None
    if isinstance(first_page, int):
        start = (first_page - 1) * page_size + skip
    return _finish(result, notes, start=start, page_size=page_size, paging_note=paging_note)


def _resume(offset: int, page_size: int) -> dict[str, Any]:
    """How to ask for the list from item ``offset`` on: a page, its size, items to skip."""
    return {
        "query": {"page": offset // page_size + 1, "limit": page_size},
        "skip": offset % page_size,
    }


def _finish(
    result: dict[str, Any],
    notes: list[str],
    *,
    start: int | None = None,
    page_size: int = DEFAULT_LIMIT,
    paging_note: str | None = None,
) -> dict[str, Any]:
    """Attach notes and cut the answer to a size a model can read.

    ``start`` is the list position of the first item shown, when the list is paged.
    """
    items = result.get("items")
    if isinstance(items, list) and items:
        shown = cut_list(result, "items")
        if shown == 0:
            # One item larger than a whole answer: show its beginning, then move past it.
            first = items[0]
            result["items"] = [
                {
                    "id": first.get("id") if isinstance(first, dict) else None,
                    "preview": preview(first, MAX_ANSWER_CHARS // 2),
                    "cut": True,
                }
            ]
            shown = 1
        if shown is not None:
            result["count"] = shown
            result["fetched"] = len(items)
            result["truncated"] = True
            result["has_more"] = True
            result.pop("next_page", None)
            entity = result.get("entity", "items")
            advice = "narrow the filter"
            if start is not None:
                resume = _resume(start + shown, page_size)
                result["resume"] = resume
                query = resume["query"]
                advice = (
                    f"to continue right after the last one shown, repeat the call with query "
                    f"page={query['page']} and limit={query['limit']} and skip={resume['skip']}"
                )
            notes.append(
                f"answer cut to {shown} of {len(items)} {entity} fetched, to stay readable; "
                f"{advice}"
            )
        elif paging_note:
            notes.append(paging_note)
        if notes:
            result["notes"] = notes
        return result
    if paging_note:
        notes.append(paging_note)
    if notes:
        result["notes"] = notes
    if size(result) <= MAX_ANSWER_CHARS:
        return result
    result["data_preview"] = preview(result["data"])
    result["data"] = None
    result["truncated"] = True
    result.setdefault("notes", []).append(
        "the entity was too large to show whole; data_preview holds the beginning of its JSON. "
        "Ask for fewer fields, e.g. without with=..."
    )
    return result
