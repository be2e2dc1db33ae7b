"""What both API clients share: one httpx client each, no redirects, a rate limit and retries.

Reads are retried on 429, 5xx, timeouts and broken connections with capped, jittered backoff.
A write is retried only when the connection was never made, since otherwise it may have landed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import httpx
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from . import __version__
from .errors import transport_error

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = f"tariti-mcp/{__version__}"

WaitCallback = Callable[[float, str], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How long a read keeps trying: enough attempts to ride out a bad minute, no more."""

    attempts: int = 8
    first_wait: float = 0.5
    max_wait: float = 8.0
    total: float = 90.0


DEFAULT_RETRY = RetryPolicy()


def build_client(
    base_url: str,
    timeout: float,
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        transport=transport,
        # A redirect would replay the credentials and the body to another address.
        follow_redirects=False,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        trust_env=False,
    )


def rate_limiter(per_second: float) -> AsyncLimiter:
    # A bucket of one spaces requests evenly, so no one-second window holds more than the rate;
    # the spacing is 8 % wider so a request delayed by the event loop cannot squeeze one more
    # into a window.
    return AsyncLimiter(1, 1.08 / per_second)


class Gate:
    """All of one service's traffic in this process: a rate limit, a cap on requests in flight,
    and a stop that holds back every request not yet sent.

    A request takes its place in the rate limit as the very last step before it is sent, with
    its credentials already in hand: a request that waited elsewhere after taking its place
    would go out in a burst with the others that waited too.
    """

    def __init__(self, per_second: float, in_flight: int = 4) -> None:
        self.limiter = rate_limiter(per_second)
        # Few requests queue for the limit at a time, so a token fetched before queueing is
        # still fresh when the request goes out, and a token refresh never waits long for a place.
        self.in_flight = anyio.Semaphore(in_flight)
        self.stopped: Exception | None = None

    def check(self) -> None:
        if self.stopped is not None:
            raise self.stopped

    async def turn(self) -> None:
        """Wait for a place in the rate limit; raise if the service was stopped meanwhile."""
        self.check()
        await self.limiter.acquire()
        self.check()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    return None


async def send(
    client: httpx.AsyncClient,
    request: httpx.Request | Callable[[], Awaitable[httpx.Request]],
    *,
    service: str,
    idempotent: bool,
    gate: Gate | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
    on_wait: WaitCallback | None = None,
) -> httpx.Response:
    """Send ``request`` and return the final response, whatever its status.

    Raises a :class:`~tariti_mcp.errors.ServiceError` when no answer could be had.
    """
    started = time.monotonic()
    exponential = wait_exponential_jitter(
        multiplier=policy.first_wait, max=policy.max_wait, jitter=policy.first_wait
    )

    def wait(state: RetryCallState) -> float:
        delay = exponential(state)
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            hinted = _retry_after(outcome.result())
            if hinted is not None:
                delay = max(delay, hinted)
        # Never sleep past the total budget.
        return max(0.0, min(delay, policy.total - (time.monotonic() - started)))

    def should_retry_error(exc: BaseException) -> bool:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return True
        return idempotent and isinstance(exc, httpx.TransportError)

    def retry(state: RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None:
            return False
        if outcome.failed:
            return should_retry_error(outcome.exception())
        return idempotent and outcome.result().status_code in RETRY_STATUSES

    async def before_sleep(state: RetryCallState) -> None:
        delay = state.next_action.sleep if state.next_action else 0.0
        outcome = state.outcome
        if outcome is not None and outcome.failed:
            why = type(outcome.exception()).__name__
        elif outcome is not None:
            why = f"status {outcome.result().status_code}"
        else:
            why = "unknown"
        logger.info("%s request failed (%s), retrying in %.1fs", service, why, delay)
        if on_wait is not None:
            await on_wait(delay, f"{service} answered {why}; retrying in {delay:.0f}s")

    retrying = AsyncRetrying(
        sleep=anyio.sleep,
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.total),
        wait=wait,
        retry=retry,
        before_sleep=before_sleep,
        reraise=True,
        retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
    )

    async def attempt() -> httpx.Response:
        if gate is None:
            outgoing = request if isinstance(request, httpx.Request) else await request()
            response = await client.send(outgoing)
            await response.aread()
            return response
        async with gate.in_flight:
            outgoing = request if isinstance(request, httpx.Request) else await request()
            await gate.turn()
            response = await client.send(outgoing)
            await response.aread()
            return response

    try:
        return await retrying(attempt)
    except httpx.TransportError as exc:
        connected = not isinstance(
            exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
        )
        raise transport_error(service, exc, may_have_landed=connected and not idempotent) from None
