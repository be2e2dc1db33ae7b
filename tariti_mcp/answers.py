"""Keeping tool answers to a size a model can read: the one place lists are cut."""

from __future__ import annotations

import json
from typing import Any

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
    """The beginning of ``value``'s JSON, for a single value too large to show whole."""
    return json.dumps(value, ensure_ascii=False, default=str)[:limit]
