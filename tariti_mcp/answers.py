"""Keeping tool answers to a size a model can read: the one place lists are cut."""

from __future__ import annotations

import json
from typing import Any

from .logs import redact

# Well under what a context can take, and what some hosts accept in one message.
MAX_ANSWER_CHARS = 60_000


def size(value: Any) -> int:
    """Characters of ``value`` as compact JSON, as the model will read it."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))


def cut_list(answer: dict[str, Any], key: str, limit: int = MAX_ANSWER_CHARS) -> int | None:
    """Shorten ``answer[key]`` from the end until the answer fits; return how many were kept.

    None when it already fits. The caller says how to continue from the number kept.
    """
    if size(answer) <= limit:
        return None
    items = answer[key]
    budget = limit - size({**answer, key: []}) - 500  # room for the caller's note
    kept, used = 0, 0
    for item in items:
        used += size(item) + 1
        if used > budget:
            break
        kept += 1
    answer[key] = items[:kept]
    return kept


def preview(value: Any, limit: int = MAX_ANSWER_CHARS - 2000) -> str:
    """The beginning of ``value``'s JSON, for a single value too large to show whole. Secrets
    are masked before the cut: a cut through one would leave a piece no mask recognises."""
    return redact(json.dumps(value, ensure_ascii=False, default=str))[:limit]


def bounded(answer: dict[str, Any], limit: int = MAX_ANSWER_CHARS) -> dict[str, Any]:
    """The answer as it may go to the model: never longer than ``limit`` characters.

    The tools cut their own lists where they know how to continue (a page, a skip, a shorter
    period); this is the last guard for whatever they did not foresee. The longest list is
    shortened first; if that is not enough, the answer becomes a preview of itself. Either way
    the answer says it was cut and what to ask instead.
    """
    if size(answer) <= limit:
        return answer
    answer = dict(answer)
    lists = [key for key, value in answer.items() if isinstance(value, list) and value]
    if lists:
        longest = max(lists, key=lambda key: size(answer[key]))
        total = len(answer[longest])
        kept = cut_list(answer, longest, limit) or 0
        answer["truncated"] = True
        answer["note"] = (
            f"answer cut to fit: {kept} of {total} {longest} shown; ask for a later page or "
            "narrow the filter"
        )
        if size(answer) <= limit:
            return answer
    return {
        "truncated": True,
        "note": "answer too large to show whole: narrow the request (fewer fields, a filter, "
        "a smaller limit)",
        "preview": preview(answer, limit - 1000),
    }
