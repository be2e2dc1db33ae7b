"""Every failure the tools can report, and the one place upstream answers become errors.

    TaritiError                 str(error) is exactly what the model reads
    ├── InvalidArgument         a tool argument is wrong; names it and the fix
    ├── NotConfigured           a service has no settings; lists the variables to set
    ├── WriteRefused            the server's settings forbid this write; names the setting
    └── ServiceError            amoCRM or Moizvonki failed (service, status, request id)
        ├── Unavailable         no connection, timeout or 5xx; a read may be tried again later
        │   └── OutcomeUnknown  a write was sent and no answer came: it may have landed
        ├── RateLimited         429 that outlasted the retries
        ├── AuthFailed          401, or Moizvonki refusing the login and key
        ├── AccessDenied        403 without an HTML page: no rights for this operation
        ├── AccountBlocked      amoCRM's 403 HTML page: only amoCRM support can lift it
        ├── PaymentRequired     402: the plan is unpaid or does not allow this
        ├── NotFound            404 from the API: wrong path or entity
        ├── WrongHost           404 HTML: the base URL is not the account's own host
        ├── Rejected            400/422: the request itself must change
        └── BadAnswer           a success status with a body that cannot be read

Messages never hold a secret, a full URL or a query string: they are built from the status,
the parsed problem body and the ``X-Request-Id`` only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import httpx

from .logs import MASK, redact

AMOCRM = "amoCRM"
MOIZVONKI = "Moizvonki"


class TaritiError(Exception):
    """Base class; the message is written for the model and shown to it verbatim."""


class InvalidArgument(TaritiError):
    """The model sent an argument that cannot work. The message says which and how to fix it."""


class NotConfigured(TaritiError):
    """A service is not configured. The model is told which variables the operator must set."""

    def __init__(self, service: str, variables: list[str]) -> None:
        self.service = service
        self.variables = variables
        super().__init__(
            f"{service} is not configured on this server: set {', '.join(variables)} in the "
            "server's environment or env file, then restart it."
        )


class WriteRefused(TaritiError):
    """A write this server's settings do not allow: read-only mode, an irreversible or
    account-wide action without TARITI_ALLOW_DESTRUCTIVE, or no key for the employee whose phone
    would act. Nothing was sent; the model is told which setting the operator would change."""


def read_only_refusal(service: str, what: str) -> WriteRefused:
    return WriteRefused(
        f"{what} is refused: this server is read-only (TARITI_READ_ONLY=true), so it sends no "
        f"change to {service}. Only reads are available; writes need the operator to set "
        "TARITI_READ_ONLY=false and restart the server."
    )


def destructive_refusal(what: str, why: str) -> WriteRefused:
    return WriteRefused(
        f"{what} is refused: {why}. Such actions need the operator to set "
        "TARITI_ALLOW_DESTRUCTIVE=true and restart the server; nothing was sent."
    )


class ServiceError(TaritiError):
    """An upstream failure. Carries the service, HTTP status and request id for support."""

    advice = ""

    def __init__(
        self,
        service: str,
        summary: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        details: list[str] | None = None,
        advice: str | None = None,
    ) -> None:
        self.service = service
        self.summary = summary
        self.status = status
        self.request_id = request_id
        self.details = details or []
        if advice is not None:
            self.advice = advice
        super().__init__(self._compose())

    def _compose(self) -> str:
        head = f"{self.service} error"
        if self.status:
            head += f" {self.status}"
        text = f"{head}: {self.summary}"
        if self.details:
            text += "\n" + "\n".join(f"- {line}" for line in self.details[:20])
            if len(self.details) > 20:
                text += f"\n- ... and {len(self.details) - 20} more"
        if self.advice:
            text += f"\n{self.advice}"
        if self.request_id:
            text += f"\n(request id {self.request_id})"
        return text


class Unavailable(ServiceError):
    advice = "The service did not answer properly; try again in a minute."


class OutcomeUnknown(Unavailable):
    advice = (
        "The request reached the service but its outcome is unknown: it may have been "
        "carried out. Do not send it again before checking whether it took effect."
    )


class RateLimited(ServiceError):
    advice = "Too many requests: wait a little, then ask for less data per call."


class AuthFailed(ServiceError):
    advice = "The server's credentials were refused; the operator must check them."


class AccessDenied(ServiceError):
    advice = "These credentials are not allowed to do this."


class AccountBlocked(ServiceError):
    advice = (
        "amoCRM has blocked API access for this account (usually after too many requests). "
        "Only amoCRM support can lift the block; do not retry."
    )


class PaymentRequired(ServiceError):
    advice = "The amoCRM account is unpaid or its plan does not allow this; do not retry."


class NotFound(ServiceError):
    advice = (
        "Check the path and the id: paths look like /api/v4/leads, /api/v4/leads/{id}, "
        "/api/v4/contacts, /api/v4/companies, /api/v4/leads/pipelines, /api/v4/users, "
        "/api/v4/tasks, /api/v4/events; a deleted or unknown id is 404 too."
    )


class WrongHost(ServiceError):
    advice = "The configured base URL is not the account's own host; the operator must fix it."


class Rejected(ServiceError):
    advice = "Change the request as described and send it again."


class BadAnswer(ServiceError):
    advice = "The service answered in an unexpected format."


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Upstream text bound for the model, with our secrets masked: a proxy may echo a request."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return redact(text)


# --- amoCRM -----------------------------------------------------------------------------------


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def looks_like_html(response: httpx.Response) -> bool:
    """A web page rather than an API answer, by its type or its first bytes."""
    content_type = response.headers.get("content-type", "").lower()
    head = response.content[:200].lstrip().lower()
    return "html" in content_type or head.startswith((b"<!doctype", b"<html"))


def validation_details(problem: dict[str, Any]) -> list[str]:
    """Turn amoCRM's ``validation-errors`` into lines like ``item 0, field price: detail``."""
    lines = []
    for group in problem.get("validation-errors") or []:
        if not isinstance(group, dict):
            continue
        item = group.get("request_id")
        for error in group.get("errors") or []:
            if not isinstance(error, dict):
                continue
            where = []
            if item is not None:
                where.append(f"item {item}")
            if error.get("path"):
                where.append(f"field {error['path']}")
            detail = str(error.get("detail") or "invalid value")
            code = f" [{error['code']}]" if error.get("code") else ""
            lines.append(f"{', '.join(where) or 'request'}: {detail}{code}")
    return lines


# What to change for the validation codes clients most often trip on.
_VALIDATION_HINTS = {
    "FieldNotExpected": "Send only the fields you change, in the minimal shape: drop read-only "
    "keys such as field_name, field_type, created_by, account_id and _links.",
    "NotSupportedChoice": "A field id or enum value does not belong here: list this entity's "
    "own fields with GET /api/v4/<leads|contacts|companies>/custom_fields.",
}


def amocrm_error(
    response: httpx.Response, *, write: bool = False, secrets: Iterable[str] = ()
) -> ServiceError:
    """Map a non-success amoCRM answer to the error the model should read.

    A 5xx to a write means the request reached amoCRM and may have been carried out.
    """
    status = response.status_code
    request_id = response.headers.get("x-request-id")
    problem = _json_body(response)
    problem = problem if isinstance(problem, dict) else {}
    detail = scrub(str(problem.get("detail") or problem.get("title") or "").strip(), secrets)[:500]
    hint = scrub(str(problem.get("hint") or "").strip(), secrets)[:200]
    kwargs: dict[str, Any] = {"status": status, "request_id": request_id}

    if status == 400 or status == 422:
        if hint:  # the token endpoint puts the useful reason here
            detail = f"{detail} ({hint})" if detail else hint
        details = [scrub(line, secrets)[:500] for line in validation_details(problem)]
        codes = {line.rsplit("[", 1)[-1].rstrip("]") for line in details if line.endswith("]")}
        hints = [_VALIDATION_HINTS[code] for code in sorted(codes) if code in _VALIDATION_HINTS]
        if hints:
            kwargs["advice"] = " ".join(hints)
        return Rejected(AMOCRM, detail or "the request was rejected", details=details, **kwargs)
    if status == 401:
        reason = hint or detail or "unauthorized"
        if "revoked" in reason.lower():
            return AuthFailed(AMOCRM, f"the token was revoked ({reason})", **kwargs)
        return AuthFailed(AMOCRM, f"the token is invalid or expired ({reason})", **kwargs)
    if status == 402:
        return PaymentRequired(AMOCRM, detail or "payment required", **kwargs)
    if status == 403:
        if looks_like_html(response) or not problem:
            return AccountBlocked(AMOCRM, "the account is blocked", **kwargs)
        return AccessDenied(AMOCRM, detail or "forbidden", **kwargs)
    if status == 404:
        if looks_like_html(response):
            return WrongHost(AMOCRM, "the host answered with a web page, not the API", **kwargs)
        return NotFound(AMOCRM, detail or "not found", **kwargs)
    if status == 405:
        return Rejected(
            AMOCRM,
            "this method is not allowed on this path",
            advice="Check the amoCRM API reference for the methods this path takes.",
            **kwargs,
        )
    if 300 <= status < 400:
        # Following it would replay the token and the body to another address.
        return WrongHost(
            AMOCRM, "the host answered with a redirect, which is not followed", **kwargs
        )
    if status == 429:
        return RateLimited(AMOCRM, "too many requests", **kwargs)
    if status >= 500 and write:
        return OutcomeUnknown(
            AMOCRM, f"amoCRM failed while handling the write ({status})", **kwargs
        )
    if status == 504:
        return Unavailable(
            AMOCRM,
            "the request timed out on amoCRM's side",
            advice="Ask for fewer records per page (a smaller limit) and try again.",
            **kwargs,
        )
    if status >= 500:
        return Unavailable(AMOCRM, detail or "server error", **kwargs)
    return BadAnswer(AMOCRM, detail or f"unexpected status {status}", **kwargs)


# --- Moizvonki --------------------------------------------------------------------------------

_BAD_CREDENTIALS = ("password", "invalid", "api_key", "user_name", "auth", "неверн", "парол")


def _short_text(response: httpx.Response, secrets: Iterable[str], limit: int = 200) -> str:
    """The start of a plain-text answer, masked before it is cut so no key survives in part."""
    if looks_like_html(response):
        return ""
    text = scrub(response.text.strip().replace("\n", " "), secrets)
    return text[:limit] + ("..." if len(text) > limit else "")


def moizvonki_error(
    response: httpx.Response, action: str, *, write: bool = False, secrets: Iterable[str] = ()
) -> ServiceError:
    """Map a non-200 Moizvonki answer. Its errors are plain text, so keywords decide."""
    status = response.status_code
    text = _short_text(response, secrets)
    lowered = text.lower()
    if status in (401, 403) and any(word in lowered for word in _BAD_CREDENTIALS):
        return AuthFailed(
            MOIZVONKI,
            "the login or API key was refused",
            advice="The operator must check MOIZVONKI_USER (the login e-mail) and "
            "MOIZVONKI_API_KEY (Settings > Integration > API in the Moizvonki cabinet); "
            "changing the key there revokes the old one.",
            status=status,
        )
    if status in (401, 403):
        return AccessDenied(
            MOIZVONKI,
            f"{action} was refused ({text or 'forbidden'})",
            advice="This action needs an administrator's login and key.",
            status=status,
        )
    if status == 404:
        return WrongHost(
            MOIZVONKI,
            "no Moizvonki account answers at the configured address",
            advice="The operator must set MOIZVONKI_BASE_URL to the account name "
            "(the part before .moizvonki.ru).",
            status=status,
        )
    if status == 429:
        return RateLimited(MOIZVONKI, "too many requests", status=status)
    if status >= 500 and write:
        return OutcomeUnknown(
            MOIZVONKI, f"{action} failed on Moizvonki's side ({status})", status=status
        )
    if status >= 500:
        return Unavailable(MOIZVONKI, text or "server error", status=status)
    return Rejected(MOIZVONKI, f"{action} was rejected: {text or 'no reason given'}", status=status)


# --- transport --------------------------------------------------------------------------------


def transport_error(
    service: str, exc: httpx.TransportError, *, may_have_landed: bool
) -> ServiceError:
    """A request that got no answer. ``str(exc)`` is never used: it can hold the full URL."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        return Unavailable(service, "could not connect")
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "the connection broke"
    if may_have_landed:
        return OutcomeUnknown(service, f"the request {what} after it was sent")
    return Unavailable(service, f"the request {what}")


def describe_json(value: Any) -> str:
    """Compact JSON for messages."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
