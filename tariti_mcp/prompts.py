"""MCP prompts: short, tested recipes that tell the model which tools to call, in what order, and
what never to do, for the tasks a sales team asks for most."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.prompts.base import Prompt
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS
from pydantic import Field

from .moizvonki.analytics import PERIODS

# A pasted message longer than this is not one lead's message; the prompt echoes it whole.
MAX_ARGUMENT = 20_000


def _invalid(message: str) -> MCPError:
    # The SDK replaces any other exception from a prompt with "Error rendering prompt NAME".
    return MCPError(code=INVALID_PARAMS, message=message)


def _day(text: str) -> str:
    given = text.strip()
    if not given:
        return ""
    try:
        return dt.date.fromisoformat(given).isoformat()
    except ValueError:
        raise _invalid(
            f"date must be an ISO date like 2026-05-14, or empty for today (got {given[:40]!r})"
        ) from None


def _period(text: str) -> str:
    given = text.strip() or "today"
    if given not in PERIODS:
        raise _invalid(f"period must be one of {', '.join(PERIODS)} (got {given[:40]!r})")
    return given


def daily_call_report(
    date: Annotated[str, Field(description="The day, ISO (2026-05-14); empty: today.")] = "",
    employee: Annotated[
        str, Field(description="Only this employee: Moizvonki id, e-mail or name; empty: all.")
    ] = "",
) -> str:
    day = _day(date)
    when = f'date_from="{day}" and date_to="{day}"' if day else 'period="today"'
    who = f' and employee="{employee.strip()}"' if employee.strip() else ""
    scope = f"for {employee.strip()} " if employee.strip() else ""
    return f"""Write the daily call report {scope}for {day or "today"}.

1. Call get_moizvonki_analytics with {when}{who}, include=["by_employee", "by_hour"] and \
compare_to="previous_period".
2. Report, in this order:
   - any `warnings` first (e.g. the Moizvonki key is not an administrator's: other employees \
then look idle);
   - totals: calls, incoming and outgoing, answered and missed, talk time, average wait of \
incoming calls, each with its change from the previous period;
   - a table by employee: calls, answered, missed, missed_not_called_back, talk time;
   - the busiest hours and the hours with most missed calls (local time of `period.timezone`);
   - the action item: `not_called_back` missed clients still waiting for a call.
3. Say how fresh the data is (`synced_at`). Use only numbers the tool returned; if it returns an \
error, show it and stop."""


def missed_calls_follow_up(
    period: Annotated[str, Field(description=f"One of: {', '.join(PERIODS)}.")] = "today",
) -> str:
    chosen = _period(period)
    return f"""List the missed clients nobody has called back ({chosen}) and who should call them.

1. Call get_moizvonki_analytics with period="{chosen}" and \
include=["waiting_clients", "by_employee"]. `not_called_back` is how many clients wait; \
`waiting_clients` lists them, longest waiting first, with the number, the name if known, when \
the last missed call was, how many times they rang unanswered and the employee whose phone it \
rang on; `missed_not_called_back` per employee sums them up.
2. If `cut` says the list was cut, say how many more wait and offer the same call filtered by \
employee.
3. Show one line per client: number, name, time of the missed call, times rung, and the \
employee who should call back. Use only what the tool returned.
4. Do not dial. calls.make_call rings a real phone: only when the user asks, and only with \
employee=<that employee's Moizvonki login e-mail or id> named. Never repeat a make_call or \
send_sms whose outcome was unknown or that returned an error: ask the user first."""


def forward_lead_from_message(
    message: Annotated[str, Field(description="The message as received: form, chat or e-mail.")],
    source: Annotated[
        str, Field(description="Where it came from, e.g. 'site form', 'Telegram'.")
    ] = "",
) -> str:
    origin = source.strip() or "not given: infer it from the message, or leave it empty"
    return f"""Turn this pasted message into an amoCRM deal.

Source: {origin}
Message:
<<<
{message}
>>>

1. Extract the name, phone, e-mail, company and any UTM values (utm_source, utm_medium, \
utm_campaign, utm_content, utm_term) that the message states. Never invent or complete a phone \
number or e-mail: leave out what is not there. At least a phone or an e-mail is needed; without \
either, ask the user and stop.
2. Call forward_lead_to_amocrm with those fields, message=<the message text>, source, and \
dry_run=true. Show the user what would be created and any error; fix only what the error names.
3. Then call it again with the same fields, dry_run=false and an external_id that identifies this \
message (e.g. the chat or form id, or a short hash of the text), so a repeat creates nothing.
4. Report status, lead_url and whether the contact already existed. "queued" means the server \
delivers it later by itself: never send it again another way."""


class _Prompt(Prompt):
    """A prompt whose missing argument is named to the client: the SDK answers it with a bare
    "Internal server error" and a traceback in the log."""

    async def render(self, arguments: dict[str, Any] | None, context: Any) -> Any:
        given = arguments or {}
        known = [argument.name for argument in self.arguments or []]
        unknown = sorted(str(name)[:40] for name in given if name not in known)
        if unknown:
            raise _invalid(
                f"{self.name} does not take {', '.join(map(repr, unknown))}; it takes: "
                f"{', '.join(known) or 'no arguments'}"
            )
        for argument in self.arguments or []:
            value = str(given.get(argument.name) or "")
            if argument.required and not value.strip():
                raise _invalid(f"{self.name} needs the argument {argument.name!r}")
            if len(value) > MAX_ARGUMENT:
                raise _invalid(
                    f"{argument.name} is {len(value)} characters; a prompt takes at most "
                    f"{MAX_ARGUMENT}: paste the part that matters"
                )
        return await super().render(arguments, context)


def register_prompts(server: MCPServer, *, read_only: bool = False) -> dict[str, str]:
    """Add the prompts to ``server``; a read-only server has no forwarding to prompt for.
    Returns the prompts left out, each with why, for a client that asks for one anyway."""
    prompts = (
        (
            daily_call_report,
            "Daily call report",
            "How to build a day's call report from Moizvonki with get_moizvonki_analytics.",
        ),
        (
            missed_calls_follow_up,
            "Missed calls to return",
            "List missed clients not called back, with their numbers and who should call.",
        ),
        (
            forward_lead_from_message,
            "Forward a lead from a message",
            "Extract a lead from a pasted message and forward it to amoCRM, dry run first.",
        ),
    )
    withheld = {}
    for function, title, description in prompts:
        if read_only and function is forward_lead_from_message:
            withheld[function.__name__] = (
                "this server is read-only (TARITI_READ_ONLY=true) and forwards no leads"
            )
            continue
        server.add_prompt(_Prompt.from_function(function, title=title, description=description))
    return withheld
