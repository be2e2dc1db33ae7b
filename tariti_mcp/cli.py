"""Command line: ``serve`` (the default) runs the MCP server over stdio or HTTP; ``sandbox`` runs
emulators;
``amocrm login`` authorizes the integration; ``moizvonki webhooks`` shows the account's webhook
subscriptions and changes them when asked; ``outbox`` shows and retries forwarded leads;
``sync`` fills the database from both services for dashboards.

Logging is configured here and only here. stdout belongs to the MCP protocol while serving.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hmac
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from . import __version__, logs
from .config import ConfigError, Settings, load_settings
from .store import Store

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from .amocrm.outbox import Outbox
    from .moizvonki.client import MoizvonkiClient

logger = logging.getLogger("tariti_mcp")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tariti-mcp",
        description="MCP tool server for amoCRM and Moizvonki, with a SQLite cache.",
    )
    parser.add_argument("--version", action="version", version=f"tariti-mcp {__version__}")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser(
        "serve", help="run the MCP server over stdio (the default) or streamable HTTP"
    )
    serve.add_argument("--env-file", help="env file to read (after the environment)")
    serve.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default="stdio",
        help="stdio (default) for a host that starts the server; http serves MCP at /mcp",
    )
    serve.add_argument(
        "--host",
        help="with --transport http: address to bind (default 127.0.0.1; any other needs "
        "TARITI_HTTP_TOKEN and TARITI_HTTP_ALLOWED_HOSTS)",
    )
    serve.add_argument(
        "--port",
        type=_bounded(0, 65535),
        help="with --transport http: port to listen on (default 8000; 0 picks a free one)",
    )
    serve.add_argument(
        "--stateful",
        action="store_true",
        help="with --transport http: keep MCP sessions between requests (default: stateless)",
    )
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="start local emulators of both APIs in this process and use them",
    )
    serve.add_argument("--db", help="database file (default: TARITI_DB_PATH)")
    _sandbox_options(serve)

    amocrm = commands.add_parser("amocrm", help="amoCRM account tasks")
    amocrm_commands = amocrm.add_subparsers(dest="amocrm_command", required=True)
    login = amocrm_commands.add_parser(
        "login",
        help="authorize the OAuth integration and store its tokens",
        description="Prints the consent address, takes the code (caught on a loopback "
        "redirect URI, or pasted), stores the token pair and checks it with GET /account.",
    )
    login.add_argument("--env-file", help="env file to read (after the environment)")
    login.add_argument("--db", help="database to store the tokens in (default: TARITI_DB_PATH)")
    login.add_argument("--code", default="", help="an authorization code you already have")
    login.add_argument(
        "--no-listen", action="store_true", help="ask for the code instead of listening for it"
    )
    login.add_argument(
        "--timeout", type=_bounded(10, 3600), default=300, help="seconds to wait for the redirect"
    )

    _webhooks_parser(commands)

    outbox = commands.add_parser(
        "outbox",
        help="list forwarded leads not delivered yet, and retry them",
        description=OUTBOX_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _outbox_options(outbox)
    _listing_options(outbox)
    outbox_commands = outbox.add_subparsers(dest="outbox_command", metavar="{list,retry}")
    listing = outbox_commands.add_parser(
        "list", help="the table of forwardings left to deliver (the default)"
    )
    # Given after the word, or before it on `outbox`: either way counts.
    _outbox_options(listing, argparse.SUPPRESS)
    _listing_options(listing, argparse.SUPPRESS)
    retry = outbox_commands.add_parser(
        "retry",
        help="deliver now what waits; with ids, send failed ones again",
        description="Without ids: deliver every queued forwarding now, backoff ignored; one "
        "whose create request got no answer is looked for in amoCRM before it is sent again, "
        "not before TARITI_OUTBOX_CHECK_DELAY seconds after it went out. With ids (or "
        "unique beginnings of ids): send those, failed ones included, once their cause is "
        "fixed. Exit 0 when nothing is left queued or failed, 1 otherwise.",
    )
    _outbox_options(retry, argparse.SUPPRESS)
    retry.add_argument("ids", nargs="*", metavar="ID", help="forwarding id or its beginning")

    sync = commands.add_parser(
        "sync",
        help="fill the database from both services, for dashboards (safe from cron)",
        description=SYNC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _outbox_options(sync)
    sync.add_argument(
        "--only", choices=("moizvonki", "amocrm"), help="sync one service (default: both)"
    )
    reach = sync.add_mutually_exclusive_group()
    reach.add_argument(
        "--since",
        type=_iso_day,
        metavar="YYYY-MM-DD",
        help="calls from this day on (business time zone); default: the range already synced, "
        "30 days on a first run",
    )
    reach.add_argument(
        "--days",
        type=_bounded(1, 3660),
        metavar="N",
        help="calls of the last N days, today included",
    )
    sync.add_argument(
        "--window-days",
        type=_bounded(1, 31),
        default=3,
        metavar="N",
        help="days per calls.list window while back-filling (default 3)",
    )
    sync.add_argument(
        "--amocrm-rate",
        type=_rate,
        default=2.0,
        metavar="R",
        help="amoCRM requests a second (default 2; the integration's 7 are shared with any "
        "server running beside it)",
    )
    sync.add_argument(
        "--wait",
        type=_bounded(0, 86400),
        default=60,
        metavar="SECONDS",
        help="how long to wait for another sync of the same database (default 60)",
    )
    sync.add_argument(
        "--plain", action="store_true", help="plain progress lines even on a terminal"
    )
    sync.add_argument(
        "--sandbox",
        action="store_true",
        help="sync from emulators started in this process (needs --db)",
    )
    sync.add_argument("--seed", type=int, default=1, help="sandbox seed (default 1)")
    sync.add_argument(
        "--calls", type=_bounded(0, 2_000_000), default=3000, help="sandbox calls (default 3000)"
    )
    sync.add_argument(
        "--sandbox-days",
        type=_bounded(1, 3660),
        default=60,
        metavar="N",
        help="days of sandbox call history (default 60)",
    )

    sandbox = commands.add_parser(
        "sandbox", help="run only the API emulators and print the settings that point at them"
    )
    _sandbox_options(sandbox)
    sandbox.add_argument(
        "--host", type=_loopback, default="127.0.0.1", help="loopback address to bind"
    )
    port = _bounded(0, 65535)
    sandbox.add_argument("--amocrm-port", type=port, default=0, help="0 picks a free port")
    sandbox.add_argument("--moizvonki-port", type=port, default=0, help="0 picks a free port")
    sandbox.add_argument(
        "--token-ttl",
        type=_bounded(1, 5 * 366 * 86400),
        default=86400,
        metavar="SECONDS",
        help="life of an amoCRM OAuth access token (default 86400)",
    )
    sandbox.add_argument(
        "--rate-limit",
        type=_bounded(0, 10_000),
        default=7,
        metavar="N",
        help="amoCRM API requests allowed per second, then 429 (default 7, 0 for no limit)",
    )
    sandbox.add_argument(
        "--block-after",
        type=_bounded(1, 1_000_000),
        default=None,
        metavar="N",
        help="block the amoCRM account after N 429s within a minute (default: never)",
    )

    def fault_spec(text: str):
        # Imported on use: the sandbox package pulls in the web server.
        from .sandbox.faults import FaultSpecError, parse_fault_spec

        try:
            return parse_fault_spec(text)
        except FaultSpecError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    sandbox.add_argument(
        "--faults",
        type=fault_spec,
        default=None,
        metavar="SPEC",
        help="put fault proxies in front of both emulators, e.g. "
        "'read:503=0.1,slow=0.1,drop=0.05;write:drop_after=0.1;slow_seconds=2' or JSON; "
        "faults: 429, 503, slow, drop, drop_after, error_after",
    )
    return parser


def _bounded(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def _iso_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-01") from None


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.1 <= value <= 7:
        raise argparse.ArgumentTypeError("must be between 0.1 and 7 requests a second")
    return value


def _loopback(text: str) -> str:
    # The emulators hold fake credentials and no auth worth the name: never on a network.
    try:
        if text == "localhost" or ipaddress.ip_address(text).is_loopback:
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("the sandbox binds only to loopback, e.g. 127.0.0.1")


def _sandbox_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=1, help="same seed, same data (default 1)")
    parser.add_argument(
        "--calls",
        type=_bounded(0, 2_000_000),
        default=3000,
        help="how many calls to generate (default 3000)",
    )
    parser.add_argument(
        "--days",
        type=_bounded(1, 3660),
        default=60,
        help="days of call history to generate (default 60)",
    )


OUTBOX_HELP = """\
Forwarded leads wait in the outbox (the forwarded_leads table) until amoCRM has them.

  tariti-mcp outbox [list] [--all] [--limit N] [--json]
      what is queued, being checked in amoCRM (unknown), failed, or delivered with a note
      or company still to add; --all adds delivered ones, newest first; --json prints one
      JSON object a line for scripts, its times in UTC
  tariti-mcp outbox retry
      deliver everything waiting now, backoff ignored; a forwarding whose create request
      got no answer (status unknown; the tool said "queued") is looked for in amoCRM before
      it is ever sent again, and not before TARITI_OUTBOX_CHECK_DELAY seconds (60) after it
      went out: amoCRM's search needs that long to see a new deal
  tariti-mcp outbox retry ID [ID ...]
      deliver these now (full ids or unique beginnings); a failed one is sent again, for
      a person who has fixed its cause; a delivered one is never sent twice

Both read --env-file and --db as serve does; the list names the database it read (a server
started with --sandbox keeps a scratch database of its own, which no other command sees). retry
needs amoCRM configured and exits 0 when nothing it covered is left queued or failed, 1
otherwise."""


SYNC_HELP = """\
Fill the database from both services for dashboards: Moizvonki employees and calls (new calls
by from_id, late uploads included; with --since or --days, older days back-filled window by
window), amoCRM pipelines, statuses and users, and leads, contacts and companies changed since
the last run.

Safe from cron beside a running server on the same database: one sync at a time per service
(a second one waits --wait seconds, then exits 1), WAL and a busy timeout for the rest. Each
stream saves its place as it goes: after Ctrl-C or a failure, run it again to go on. Progress
goes to stderr (a bar on a terminal), one summary line per service to stdout. Exit 0 when every
service synced, 1 when one could not (the other still synced), 2 for bad settings."""


def _outbox_options(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument(
        "--env-file", default=default, help="env file to read (after the environment)"
    )
    parser.add_argument("--db", default=default, help="database file (default: TARITI_DB_PATH)")


def _listing_options(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument(
        "--all",
        action="store_true",
        default=False if default is None else default,
        help="add delivered forwardings, newest first",
    )
    parser.add_argument(
        "--limit",
        type=_bounded(1, 1_000_000),
        default=50 if default is None else default,
        metavar="N",
        help="show at most N forwardings, those still waiting first (default 50)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if default is None else default,
        help="one JSON object per forwarding and line, for scripts",
    )


def _fail(message: str) -> int:
    sys.stderr.write(f"tariti-mcp: {message}\n")
    sys.stderr.flush()
    return 2


def _configured(env_file: str | None) -> Settings:
    """Settings read and logging set up, as every command needs; ConfigError is one line."""
    settings = load_settings(env_file)
    logs.configure(settings.log_level, settings.secrets())
    return settings


def _server_database(settings: Settings, db: str | None, otherwise: str) -> Settings:
    """The settings with the database a command shares with the server: ``--db`` if given.
    Settings that point at local emulators give every process a scratch database of its own,
    so such a command needs one named."""
    if db:
        return Settings(**{**settings.model_dump(), "db_path": Path(db)})
    if settings.scratch_db:
        raise ConfigError(
            "the settings point at local emulators, and each process then gets a scratch "
            f"database of its own: {otherwise}. Name the server's database with --db or "
            "TARITI_DB_PATH"
        )
    return settings


def _open_store(settings: Settings) -> Store:
    try:
        return Store(settings.db_path)
    except (sqlite3.Error, OSError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot open the database {str(settings.db_path)!r} (TARITI_DB_PATH): {exc}"
        ) from None


# After SIGTERM, how long the server has to stop by itself before it is left.
STOP_GRACE = 3.0


class _Cleanup:
    """What stopping ``serve`` must undo, run exactly once: by the normal way out, or by
    :func:`_terminate_like_interrupt` when the normal way is stuck."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: list[Callable[[], object]] = []
        self._done = False

    def add(self, step: Callable[[], object]) -> None:
        self._steps.append(step)

    def run(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            for step in reversed(self._steps):
                try:
                    step()
                except Exception as exc:  # one failed step must not skip the others
                    logger.warning("while stopping: %s", exc)


@contextmanager
def _terminate_like_interrupt(cleanup: _Cleanup | None = None) -> Iterator[None]:
    """SIGTERM (a service manager, ``kill``, a host closing its server) stops us the way Ctrl-C
    does, so the same cleanup runs: the store closed, the sandbox's scratch database deleted.

    Over stdio the SDK reads stdin in a worker thread that only end-of-input ends, and a host
    that signals us may keep stdin open; so after :data:`STOP_GRACE` seconds ``cleanup`` runs
    from a timer and the process leaves without waiting for that thread."""

    def leave() -> None:
        if cleanup is not None:
            cleanup.run()
        logging.shutdown()
        os._exit(0)

    received = threading.Event()

    def interrupt(signum: int, frame: object) -> None:
        if received.is_set():
            return  # already stopping: a second signal must not break the cleanup under way
        received.set()
        if cleanup is not None:
            timer = threading.Timer(STOP_GRACE, leave)
            timer.daemon = True
            timer.start()
        if signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, signal.SIG_DFL, None):
            # The event loop's own Ctrl-C handler cancels the server cleanly; hand it over.
            signal.raise_signal(signal.SIGINT)
        else:
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        # Once stopping, the process is on its way out: a late signal changes nothing.
        signal.signal(signal.SIGTERM, signal.SIG_IGN if received.is_set() else previous)


def _serve(args: argparse.Namespace) -> int:
    cleanup = _Cleanup()
    try:
        with _terminate_like_interrupt(cleanup):
            return _serve_until_stopped(args, cleanup)
    except KeyboardInterrupt:
        return 0  # stopped while starting: nothing was served, what was started is undone
    finally:
        cleanup.run()


def _serve_until_stopped(args: argparse.Namespace, cleanup: _Cleanup) -> int:
    try:
        settings = _configured(args.env_file)
        listener = _http_listener(settings, args)
    except ConfigError as exc:
        return _fail(str(exc))
    if listener is not None:
        cleanup.add(listener.close)
    elif sys.stdin is None or sys.stdout is None:
        return _fail(
            "serving over stdio needs stdin and stdout open; an MCP host starts the server "
            "with both as pipes (or use --transport http)"
        )

    if args.sandbox:
        from .sandbox import Sandbox

        sandbox = Sandbox(seed=args.seed, calls=args.calls, days=args.days)
        sandbox.start()
        cleanup.add(sandbox.stop)
        scratch = Path(tempfile.mkdtemp(prefix="tariti-sandbox-"))
        cleanup.add(lambda: shutil.rmtree(scratch, ignore_errors=True))
        # Sandbox data never goes into the real database.
        db_path = Path(args.db) if args.db else scratch / "sandbox.db"
        settings = Settings(**{**settings.model_dump(), **_lower(sandbox.env), "db_path": db_path})
        logs.configure(settings.log_level, settings.secrets())
        logger.warning(
            "sandbox mode: amoCRM emulator at %s, Moizvonki emulator at %s, database %s",
            sandbox.amocrm_url,
            sandbox.moizvonki_url,
            db_path,
        )
    elif args.db:
        settings = Settings(**{**settings.model_dump(), "db_path": Path(args.db)})

    from .server import create_server

    for service, missing in (
        ("amoCRM", settings.missing_amocrm()),
        ("Moizvonki", settings.missing_moizvonki()),
    ):
        if missing:
            logger.warning(
                "%s is not configured (set %s); its tools will say so", service, ", ".join(missing)
            )
    try:
        store = _open_store(settings)
    except ConfigError as exc:
        return _fail(str(exc))
    if settings.scratch_db:

        def forget_scratch() -> None:
            for suffix in ("", "-wal", "-shm", ".amocrm.lock", ".migrate.lock"):
                Path(f"{settings.db_path}{suffix}").unlink(missing_ok=True)

        cleanup.add(forget_scratch)
    cleanup.add(store.close)
    try:
        server = create_server(settings, store=store)
        if listener is None:
            server.run()
        else:
            return _serve_http(server, settings, listener, args)
    except KeyboardInterrupt:
        pass
    return 0


def _http_listener(settings: Settings, args: argparse.Namespace) -> socket.socket | None:
    """For --transport http: the settings checked for the bind and its socket, before anything
    else starts, so a refusal or a taken port costs nothing. None for stdio."""
    if args.transport != "http":
        if args.host is not None or args.port is not None or args.stateful:
            raise ConfigError("--host, --port and --stateful go with --transport http")
        return None
    from . import web

    args.host = args.host or "127.0.0.1"
    args.port = 8000 if args.port is None else args.port
    web.check_exposure(settings, args.host)
    try:
        return web.listen(args.host, args.port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {args.host} port {args.port}: {exc.strerror or exc}"
        ) from None


def _serve_http(
    server: MCPServer, settings: Settings, listener: socket.socket, args: argparse.Namespace
) -> int:
    import uvicorn

    from . import web

    port = listener.getsockname()[1]
    app = web.build_app(server, settings, host=args.host, port=port, stateless=not args.stateful)
    # No access log: the webhook's URL holds its secret. uvicorn's own lines go to our handler.
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    runner = uvicorn.Server(config)
    name = f"[{args.host}]" if ":" in args.host else args.host
    where = ""
    if args.host.strip("[]") in ("0.0.0.0", "::"):
        # Not an address a client can use: say what clients reach instead.
        names = ", ".join(settings.allowed_hosts) or "this machine's names"
        where = f" (every interface: clients use {names})"
    # At the default level too: whoever starts an HTTP server needs its address.
    logger.warning("serving MCP at http://%s:%d%s%s", name, port, web.MCP_PATH, where)
    runner.run(sockets=[listener])
    if not runner.started:
        return _fail("the HTTP server did not start; the log above says why")
    return 0


def _lower(env: dict[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in env.items()}


def _sandbox(args: argparse.Namespace) -> int:
    try:
        with _terminate_like_interrupt():
            return _run_emulators(args)
    except KeyboardInterrupt:
        return 0


def _run_emulators(args: argparse.Namespace) -> int:
    from .sandbox import Sandbox

    logs.configure("INFO")
    sandbox = Sandbox(
        seed=args.seed,
        calls=args.calls,
        days=args.days,
        host=args.host,
        amocrm_port=args.amocrm_port,
        moizvonki_port=args.moizvonki_port,
        token_ttl=args.token_ttl,
        rate_limit=args.rate_limit,
        block_after=args.block_after,
        faults=args.faults,
    )
    try:
        sandbox.start()
    except OSError as exc:
        return _fail(f"cannot start the emulators: {exc.strerror or exc}")
    except KeyboardInterrupt:
        sandbox.stop()  # stopped while starting: whatever did start is stopped
        return 0
    # The OAuth lines come after the first five, which older readers take by position.
    for key, value in {**sandbox.env, **sandbox.oauth_env}.items():
        sys.stdout.write(f"{key}={value}\n")
    sys.stdout.flush()
    logger.info("emulators running; press Ctrl-C to stop")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0


def _login(args: argparse.Namespace) -> int:
    import anyio

    from .amocrm.login import LoginError, login

    try:
        settings = _server_database(
            _configured(args.env_file), args.db, "the server would never see these tokens"
        )
        store = _open_store(settings)
    except ConfigError as exc:
        return _fail(str(exc))

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def ask(prompt: str) -> str:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        return sys.stdin.readline()

    try:
        outcome = anyio.run(
            lambda: login(
                settings,
                store,
                code=args.code.strip(),
                listen=not args.no_listen,
                timeout=args.timeout,
                say=say,
                ask=ask,
            )
        )
    except LoginError as exc:
        return _fail(f"login failed: {exc}")
    except KeyboardInterrupt:
        return _fail("login cancelled")
    finally:
        store.close()
    say(outcome)
    return 0


# --- tariti-mcp moizvonki webhooks ---------------------------------------------------------

WEBHOOKS_HELP = """\
Moizvonki sends each event (call.start, call.answer, call.finish, sms.message) to one URL for the
whole account: subscribing replaces whatever another integration receives there. So this command
shows the subscriptions first, and changes them only when asked.

  tariti-mcp moizvonki webhooks
      the account's subscriptions (webhook.list), the secret end of each URL masked
  tariti-mcp moizvonki webhooks --subscribe https://your-host/webhooks/moizvonki/SECRET
      send the call events there (--events to choose); warns for each event whose URL it
      replaces, then asks (on a terminal) or needs --yes
  tariti-mcp moizvonki webhooks --unsubscribe [--events ...]
      stop sending those events anywhere; asks, or needs --yes

Needs an administrator's MOIZVONKI_USER and MOIZVONKI_API_KEY; refused when TARITI_READ_ONLY is
true. The server itself never subscribes. Exit 0 when done or nothing to do, 1 when declined or
the account did not take the change, 2 for bad settings, arguments or a refusal."""


def _webhooks_parser(commands: argparse._SubParsersAction) -> None:
    moizvonki = commands.add_parser("moizvonki", help="Moizvonki account tasks")
    tasks = moizvonki.add_subparsers(dest="moizvonki_command", required=True)
    hooks = tasks.add_parser(
        "webhooks",
        help="show the account's webhook subscriptions; subscribe or unsubscribe when asked",
        description=WEBHOOKS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hooks.add_argument("--env-file", help="env file to read (after the environment)")
    change = hooks.add_mutually_exclusive_group()
    change.add_argument(
        "--subscribe",
        metavar="URL",
        help="send the events to URL (https; http only on loopback, for the sandbox)",
    )
    change.add_argument(
        "--unsubscribe", action="store_true", help="stop sending the events to any URL"
    )
    hooks.add_argument(
        "--events",
        type=_webhook_events,
        metavar="LIST",
        help="comma-separated events to change (default call.start,call.answer,call.finish)",
    )
    hooks.add_argument(
        "--yes", action="store_true", help="confirm without a question (needed off a terminal)"
    )


def _webhook_events(text: str) -> list[str]:
    from .moizvonki.webhooks import EVENTS

    events = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [event for event in events if event not in EVENTS]
    if unknown or not events:
        raise argparse.ArgumentTypeError(
            f"unknown event {_clean(unknown[0] if unknown else text, 40)!r}: "
            f"give a comma-separated list of {', '.join(EVENTS)}"
        )
    return list(dict.fromkeys(events))


def _webhooks(args: argparse.Namespace) -> int:
    from .moizvonki.webhooks import CALL_EVENTS

    try:
        settings = _configured(args.env_file)
    except ConfigError as exc:
        return _fail(str(exc))
    if not settings.moizvonki_configured:
        return _fail(f"Moizvonki is not configured: set {', '.join(settings.missing_moizvonki())}")
    changing = args.subscribe is not None or args.unsubscribe
    if not changing and (args.events is not None or args.yes):
        return _fail("--events and --yes go with --subscribe URL or --unsubscribe")
    if changing and settings.read_only:
        return _fail(
            "refused: TARITI_READ_ONLY is true, so nothing is changed on the Moizvonki account; "
            "set TARITI_READ_ONLY=false to subscribe or unsubscribe"
        )
    if args.subscribe is not None:
        problem = _webhook_url_problem(args.subscribe.strip())
        if problem:
            return _fail(problem)
    events = args.events or list(CALL_EVENTS)

    import anyio

    try:
        return anyio.run(_webhooks_run, settings, args, events)
    except KeyboardInterrupt:
        return _fail("cancelled; nothing more was sent")


def _webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot receive Moizvonki's events, or None."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or parts.scheme not in ("http", "https"):
        return "--subscribe needs a full URL like https://your-host/webhooks/moizvonki/<secret>"
    if parts.scheme == "http" and not _is_loopback(host):
        return (
            "--subscribe needs an https URL: events carry clients' numbers (plain http only "
            "on a loopback address, for the sandbox)"
        )
    if parts.username or parts.password:
        return "--subscribe URL must not hold a user name or password"
    if not parts.path.strip("/"):
        return (
            "--subscribe URL must end with the secret: "
            "https://your-host/webhooks/moizvonki/<TARITI_WEBHOOK_SECRET>"
        )
    return None


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _masked(url: object) -> str:
    from .moizvonki.api import hidden_url

    return _clean(hidden_url(url), 200)


def _subscriptions(answer: object) -> dict[str, str]:
    """webhook.list's ``{event: url}``; anything else in the answer is left out."""
    if not isinstance(answer, dict):
        return {}
    return {
        str(event): url
        for event, url in answer.items()
        if "." in str(event) and isinstance(url, str) and url.strip()
    }


def _show_subscriptions(subscriptions: dict[str, str]) -> None:
    from .moizvonki.webhooks import EVENTS

    names = [*EVENTS, *sorted(event for event in subscriptions if event not in EVENTS)]
    width = max(len(name) for name in names)
    for event in names:
        url = subscriptions.get(event)
        _say(f"  {_clean(event, 40).ljust(width)}  {_masked(url) if url else '-'}")


def _warn(line: str) -> None:
    sys.stderr.write(f"tariti-mcp: warning: {line}\n")
    sys.stderr.flush()


def _confirmed(question: str, yes: bool) -> bool | None:
    """True to go on; False when the operator said no; None off a terminal without --yes."""
    if yes:
        return True
    if not sys.stdin.isatty():
        return None
    sys.stdout.write(f"{question} [y/N] ")
    sys.stdout.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


async def _webhooks_run(settings: Settings, args: argparse.Namespace, events: list[str]) -> int:
    from .errors import TaritiError
    from .moizvonki.client import MoizvonkiClient

    client = MoizvonkiClient(
        settings.moizvonki_base_url,
        settings.moizvonki_user,
        settings.moizvonki_api_key.get_secret_value(),
        timeout=settings.http_timeout,
        read_only=settings.read_only,
        # The operator typed this command: it is the explicit consent the MCP tool lacks.
        allow_destructive=True,
    )
    try:
        current = _subscriptions(await client.call("webhook.list"))
        _say("Moizvonki webhooks of the account (webhook.list):")
        _show_subscriptions(current)
        if args.subscribe is not None:
            return await _subscribe(
                client, settings, current, args.subscribe.strip(), events, args.yes
            )
        if args.unsubscribe:
            return await _unsubscribe(client, current, events, args.yes)
        return 0
    except TaritiError as exc:
        # Error texts name the action and status, never the key or a full URL.
        return _fail(str(exc))
    finally:
        await client.aclose()


async def _subscribe(
    client: MoizvonkiClient,
    settings: Settings,
    current: dict[str, str],
    url: str,
    events: list[str],
    yes: bool,
) -> int:
    secret = settings.webhook_secret.get_secret_value()
    last = urlsplit(url).path.rstrip("/").rpartition("/")[2]
    if not secret:
        _warn("TARITI_WEBHOOK_SECRET is not set here: a server with these settings takes no events")
    elif not hmac.compare_digest(last.encode(), secret.encode()):
        _warn(
            "the URL does not end with TARITI_WEBHOOK_SECRET: this server would refuse the events"
        )
    wanted = [event for event in events if current.get(event) != url]
    if not wanted:
        _say(f"Nothing to do: {', '.join(events)} already go to {_masked(url)}.")
        return 0
    for event in wanted:
        if current.get(event):
            _warn(
                f"{event} now goes to {_masked(current[event])}; subscribing replaces it "
                "(another integration may be receiving it there)"
            )
    answer = _confirmed(f"Send {', '.join(wanted)} to {_masked(url)}?", yes)
    if answer is None:
        return _fail("not on a terminal: nothing was changed; add --yes to subscribe")
    if not answer:
        _say("Nothing was changed.")
        return 1
    await client.call("webhook.subscribe", {"hooks": {event: url for event in wanted}})
    after = _subscriptions(await client.call("webhook.list"))
    _say("Now:")
    _show_subscriptions(after)
    missing = [event for event in wanted if after.get(event) != url]
    if missing:
        _say(f"Moizvonki does not list {', '.join(missing)} at the new URL: check the account.")
        return 1
    return 0


async def _unsubscribe(
    client: MoizvonkiClient, current: dict[str, str], events: list[str], yes: bool
) -> int:
    wanted = [event for event in events if current.get(event)]
    if not wanted:
        _say(f"Nothing to do: {', '.join(events)} are not subscribed.")
        return 0
    for event in wanted:
        _warn(f"{event} stops going to {_masked(current[event])}")
    answer = _confirmed(f"Unsubscribe {', '.join(wanted)}?", yes)
    if answer is None:
        return _fail("not on a terminal: nothing was changed; add --yes to unsubscribe")
    if not answer:
        _say("Nothing was changed.")
        return 1
    await client.call("webhook.unsubscribe", {"hooks": wanted})
    after = _subscriptions(await client.call("webhook.list"))
    _say("Now:")
    _show_subscriptions(after)
    left = [event for event in wanted if after.get(event)]
    if left:
        _say(f"Moizvonki still lists {', '.join(left)}: check the account.")
        return 1
    return 0


# --- tariti-mcp outbox ---------------------------------------------------------------------

WAITING = ("queued", "sending", "unknown")
KINDS = (*WAITING, "failed", "delivered with steps left", "delivered")
SHORT_ID = 8
# Column title and the widest a cell may be; untrusted text is cut to it.
COLUMNS = (
    ("ID", 32),
    ("STATUS", 9),
    ("TRIES", 5),
    ("AGE", 5),
    ("NEXT", 8),
    ("EXTERNAL_ID", 24),
    ("LEAD", 36),
    ("LAST_ERROR", 70),
)


def _outbox(args: argparse.Namespace) -> int:
    try:
        settings = _server_database(
            _configured(args.env_file), args.db, "this one would never hold its outbox"
        )
        if not Path(settings.db_path).exists():
            # Looking must not create: an empty new file would hide a wrong path.
            raise ConfigError(
                f"no database at {settings.db_path}: no server has used it yet. Name the "
                "server's database with --db or TARITI_DB_PATH"
            )
        store = _open_store(settings)
    except ConfigError as exc:
        return _fail(str(exc))
    try:
        if args.outbox_command == "retry":
            return _outbox_retry(args.ids, settings, store)
        # To stderr: stdout stays the table, or the JSON lines scripts read.
        sys.stderr.write(f"tariti-mcp: outbox of {_clean(settings.db_path)}\n")
        sys.stderr.flush()
        return _outbox_list(store, everything=args.all, limit=args.limit, as_json=args.json)
    finally:
        store.close()


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _steps(row: dict) -> list[str]:
    """What is still to be made after the deal (note, company, contact details)."""
    try:
        steps = json.loads(row.get("followups") or "[]")
    except ValueError:
        return []
    return [str(step.get("step")) for step in steps if isinstance(step, dict)]


def _waiting(row: dict) -> bool:
    return row["status"] in WAITING or (row["status"] == "delivered" and bool(_steps(row)))


def _clean(value: object, width: int | None = None) -> str:
    """Stored text on one line, control characters out, known secrets masked, cut to width."""
    text = "" if value is None else str(value)
    text = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in text)
    text = logs.redact(" ".join(text.split()))
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _age(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _iso(moment: object) -> str | None:
    if not moment:
        return None
    return dt.datetime.fromtimestamp(int(moment), dt.UTC).isoformat(timespec="seconds")


def _next_try(row: dict, now: float) -> str:
    if (row.get("claimed_until") or 0) > now:
        return "busy"
    if row["status"] == "failed":
        return "by hand"
    if not _waiting(row):
        return "-"
    due = row.get("next_attempt_at") or 0
    return "due" if due <= now else "in " + _age(due - now)


def _problem(row: dict) -> str:
    steps = _steps(row)
    error = row.get("last_error") or ""
    if row["status"] == "delivered" and steps:
        return f"to add: {', '.join(steps)}" + (f"; {error}" if error else "")
    return error


def _who(row: dict) -> str:
    return " ".join(str(row.get(k) or "") for k in ("name", "phone")).strip() or str(
        row.get("email") or ""
    )


def _record(row: dict, now: float) -> dict:
    """One forwarding for scripts: what the table shows, uncut, times in UTC ISO 8601."""
    return {
        "id": row["id"],
        "status": row["status"],
        "attempts": int(row.get("attempts") or 0),
        "external_id": row.get("external_id"),
        "name": row.get("name"),
        "phone": row.get("phone"),
        "email": row.get("email"),
        "source": row.get("source"),
        "created_at": _iso(row.get("created_at")),
        "updated_at": _iso(row.get("updated_at")),
        "next_attempt_at": _iso(row.get("next_attempt_at")) if _waiting(row) else None,
        "delivered_at": _iso(row.get("delivered_at")),
        "busy": (row.get("claimed_until") or 0) > now,
        "last_error": _clean(row["last_error"]) if row.get("last_error") else None,
        "steps_left": _steps(row),
        "lead_id": row.get("lead_id"),
        "contact_id": row.get("contact_id"),
        "lead_url": row.get("lead_url"),
    }


def _outbox_rows(store: Store, everything: bool, limit: int) -> tuple[list[dict], int]:
    """Forwardings to show, those still waiting first, and how many more were left out."""
    rows = store.pending_leads()
    if everything:
        rows += store.query(
            "SELECT * FROM forwarded_leads WHERE status = 'delivered' "
            "AND (followups IS NULL OR followups = '[]') "
            "ORDER BY COALESCE(delivered_at, updated_at) DESC, id LIMIT ?",
            [limit],
        )
    return rows[:limit], max(len(rows) - limit, 0)


def _outbox_list(store: Store, *, everything: bool, limit: int, as_json: bool) -> int:
    now = time.time()
    rows, left_out = _outbox_rows(store, everything, limit)
    if as_json:
        for row in rows:
            _say(json.dumps(_record(row, now), ensure_ascii=False, separators=(",", ":")))
    elif rows:
        _table(rows, now)
    if not rows:
        # stdout stays empty for scripts that read --json.
        out = sys.stderr if as_json else sys.stdout
        delivered = next(
            store.query("SELECT COUNT(*) AS n FROM forwarded_leads WHERE status = 'delivered'")
        )["n"]
        if delivered:
            every = (
                "the forwarded lead is"
                if delivered == 1
                else f"all {delivered} forwarded leads are"
            )
            out.write(
                f"Nothing waits in the outbox: {every} delivered"
                + ("" if everything else " (--all lists them).")
                + "\n"
            )
        else:
            out.write("The outbox is empty: no lead has been forwarded yet.\n")
        out.flush()
        return 0
    if left_out and not as_json:
        _say(f"... and {left_out} more; --limit shows more.")
    elif left_out:
        logger.warning("%d more forwardings not shown; --limit shows more", left_out)
    return 0


def _table(rows: list[dict], now: float) -> None:
    # The shortest id beginning that tells the rows apart; retry takes it as it is.
    size = SHORT_ID
    while size < 32 and len({row["id"][:size] for row in rows}) < len(rows):
        size += 1
    lines = [[title for title, _ in COLUMNS]] + [_cells(row, size, now) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    for line in lines:
        _say("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())

    kinds = [_kind(row) for row in rows]
    _say(", ".join(f"{kinds.count(kind)} {kind}" for kind in KINDS if kind in kinds))
    if any(_waiting(row) or row["status"] == "failed" for row in rows):
        _say("`outbox retry` delivers what waits now; `outbox retry ID` sends a failed one again.")


def _cells(row: dict, id_size: int, now: float) -> list[str]:
    cells = [
        row["id"][:id_size],
        row["status"],
        str(int(row.get("attempts") or 0)),
        _age(now - (row.get("created_at") or now)),
        _next_try(row, now),
        row.get("external_id") or "-",
        _who(row) or "-",
        _problem(row) or "-",
    ]
    return [_clean(cell, width) for cell, (_, width) in zip(cells, COLUMNS, strict=True)]


def _kind(row: dict) -> str:
    if row["status"] == "delivered" and _steps(row):
        return "delivered with steps left"
    return row["status"]


def _by_prefix(store: Store, text: str) -> dict:
    prefix = text.strip()
    if not prefix:
        raise LookupError("an empty forwarding id")
    found = list(
        store.query(
            "SELECT * FROM forwarded_leads WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT 2",
            [len(prefix), prefix],
        )
    )
    if not found:
        raise LookupError(f"no forwarding id begins with {_clean(prefix, 40)!r}")
    if len(found) > 1:
        raise LookupError(
            f"more than one forwarding id begins with {_clean(prefix, 40)!r}: give more of it"
        )
    return found[0]


def _outbox_retry(ids: list[str], settings: Settings, store: Store) -> int:
    if settings.read_only:
        return _fail(
            "outbox retry sends leads to amoCRM, and TARITI_READ_ONLY=true forbids every write: "
            "nothing was sent, the leads stay queued"
        )
    if not settings.amocrm_configured:
        return _fail(f"amoCRM is not configured: set {', '.join(settings.missing_amocrm())}")
    now = time.time()
    if ids:
        try:
            named = {row["id"]: row for row in (_by_prefix(store, text) for text in ids)}
        except LookupError as exc:
            return _fail(str(exc))
        scope = []
        for row in named.values():
            if row["status"] == "delivered" and not _steps(row):
                sys.stderr.write(
                    f"tariti-mcp: forwarding {row['id']} is delivered already (deal "
                    f"{row.get('lead_id')}); it is never sent twice\n"
                )
                continue
            _make_due(store, row, now)
            scope.append(row["id"])
        chosen: list[str] | None = scope
    else:
        rows = store.pending_leads()
        for row in rows:
            if _waiting(row):
                _make_due(store, row, now)
        scope = [row["id"] for row in rows]
        chosen = None
    if chosen != []:
        import anyio

        try:
            worked = anyio.run(_deliver_now, settings, store, chosen)
        except KeyboardInterrupt:
            return _fail("interrupted; a lead being sent then is looked for before it is resent")
        scope += [forwarding_id for forwarding_id in worked if forwarding_id not in scope]
    return _retry_summary(store, scope)


def _make_due(store: Store, row: dict, now: float) -> None:
    if (row.get("claimed_until") or 0) > now:
        return  # held by the server or another retry: it reports its own outcome
    if row["status"] == "failed":
        # A create request that went out once may have made the deal (its answer lost, then
        # a refusal while the deal was looked for): it is looked for again before resending.
        status = "unknown" if row.get("sent_at") else "queued"
        store.update_forwarding(row["id"], status=status, last_error=None, next_attempt_at=0)
        logger.info("forwarding %s: sent again by hand after it failed", row["id"])
    elif _waiting(row):
        store.update_forwarding(row["id"], next_attempt_at=0)


async def _deliver_now(settings: Settings, store: Store, chosen: list[str] | None) -> set[str]:
    """Deliver the chosen forwardings, or every due one, through the outbox as the server
    would; stops once amoCRM cannot take leads. Returns the ids worked on."""
    from .amocrm.client import AmoCrmClient
    from .amocrm.outbox import outbox_for
    from .amocrm.tokens import amocrm_credentials
    from .http import Gate

    gate = Gate(settings.amocrm_rate_limit)
    credentials = await amocrm_credentials(settings, store, gate)
    client = AmoCrmClient(
        settings.amocrm_base_url, credentials, timeout=settings.http_timeout, gate=gate
    )
    outbox = outbox_for(client, store, settings)
    worked: set[str] = set()
    try:
        while not outbox.offline:
            if chosen is None:
                due = store.due_forwardings(limit=len(worked) + 100)
                batch = [row["id"] for row in due if row["id"] not in worked]
            else:
                batch = [forwarding_id for forwarding_id in chosen if forwarding_id not in worked]
            if not batch:
                break
            for forwarding_id in batch:
                if outbox.offline:
                    break
                worked.add(forwarding_id)
                row = store.forwarding(forwarding_id)
                if row is None:
                    continue
                if (row.get("claimed_until") or 0) > time.time():
                    _say(f"{forwarding_id[:SHORT_ID]}  busy: another process is delivering it")
                    continue
                await outbox.deliver(forwarding_id)
                _say(_progress_line(store.forwarding(forwarding_id) or row))
        if outbox.offline and _wait_for_amocrm(outbox, store, chosen, worked):
            _say(f"amoCRM cannot take leads now ({_clean(outbox.down_reason)}); the rest waits")
    finally:
        await credentials.aclose()
        await client.aclose()
    return worked


def _wait_for_amocrm(outbox: Outbox, store: Store, chosen: list[str] | None, worked: set) -> int:
    """What was made due and not reached waits, as in the server, until amoCRM may answer;
    returns how many forwardings that is."""
    if chosen is None:
        chosen = [row["id"] for row in store.due_forwardings(limit=len(worked) + 10_000)]
    rest = [forwarding_id for forwarding_id in chosen if forwarding_id not in worked]
    for forwarding_id in rest:
        store.update_forwarding(
            forwarding_id, last_error=outbox.down_reason, next_attempt_at=int(outbox.down_until) + 1
        )
    return len(rest)


def _progress_line(row: dict) -> str:
    status = row["status"]
    error = _clean(row.get("last_error"), 200)
    if status == "delivered":
        text = f"delivered: deal {row.get('lead_id')} {row.get('lead_url') or ''}".rstrip()
        if _steps(row):
            text += f" ({_clean(_problem(row), 200)})"
    elif status == "failed":
        text = f"failed: {error}"
    else:
        text = f"{status}: {error or 'waiting'}; next try {_next_try(row, time.time())}"
    label = _clean(row.get("external_id") or _who(row), 40)
    return f"{row['id'][:SHORT_ID]}  {label}  {text}"


def _retry_summary(store: Store, scope: list[str]) -> int:
    rows = [row for row in (store.forwarding(i) for i in scope) if row is not None]
    delivered = [row for row in rows if row["status"] == "delivered"]
    waiting = [row for row in rows if row["status"] in WAITING]
    failed = [row for row in rows if row["status"] == "failed"]
    line = f"delivered {len(delivered)}, still queued {len(waiting)}, failed {len(failed)}"
    unfinished = sum(1 for row in delivered if _steps(row))
    if unfinished:
        line += f" ({unfinished} delivered with a note or company still to add)"
    _say(line)
    for row in waiting + failed:
        _say(
            f"  {row['status']} {row['id'][:SHORT_ID]} "
            f"{_clean(row.get('external_id') or _who(row), 40)}: "
            f"{_clean(row.get('last_error') or 'waiting', 200)}"
        )
    if failed:
        _say(
            "A failed forwarding is sent again only by hand: fix its cause, then "
            "`tariti-mcp outbox retry ID`."
        )
    return 1 if waiting or failed else 0


def _sync(args: argparse.Namespace) -> int:
    from .sync_command import Display, SyncOptions, run_sync

    try:
        settings = _configured(args.env_file)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.sandbox and not args.db:
        return _fail("--sandbox needs --db PATH: sandbox data never goes into your database")

    sandbox = None
    if args.sandbox:
        from .sandbox import Sandbox

        sandbox = Sandbox(seed=args.seed, calls=args.calls, days=args.sandbox_days).start()
        settings = Settings(**{**settings.model_dump(), **_lower(sandbox.env)})
        logs.configure(settings.log_level, settings.secrets())
    if args.db:
        settings = Settings(**{**settings.model_dump(), "db_path": Path(args.db)})

    wanted = {"moizvonki", "amocrm"} if args.only is None else {args.only}
    missing = {
        "moizvonki": settings.missing_moizvonki(),
        "amocrm": settings.missing_amocrm(),
    }
    for service in sorted(wanted):
        if missing[service] and args.only is None:
            _say(f"{service}: not configured (set {', '.join(missing[service])}), skipped")
    ready = {service for service in wanted if not missing[service]}
    try:
        if not ready:
            names = ", ".join(sorted({name for s in wanted for name in missing[s]}))
            return _fail(f"nothing to sync: set {names}")

        since = None
        zone = settings.zone
        if args.since is not None:
            since = int(dt.datetime.combine(args.since, dt.time(), zone).timestamp())
        elif args.days is not None:
            first = dt.datetime.now(zone).date() - dt.timedelta(days=args.days - 1)
            since = int(dt.datetime.combine(first, dt.time(), zone).timestamp())
        options = SyncOptions(
            moizvonki="moizvonki" in ready,
            amocrm="amocrm" in ready,
            since=since,
            window_days=args.window_days,
            amocrm_rate=args.amocrm_rate,
            lock_timeout=float(args.wait),
        )
        store = _open_store(settings)
    except ConfigError as exc:
        if sandbox is not None:
            sandbox.stop()
        return _fail(str(exc))

    import anyio

    display = Display(sys.stderr, bar=False if args.plain else None)
    try:
        code = anyio.run(run_sync, settings, store, options, display, _say)
    except KeyboardInterrupt:
        code = _fail("interrupted; run the same command again to go on from where it stopped")
    finally:
        store.close()
        if sandbox is not None:
            sandbox.stop()
    return code


COMMANDS = ("serve", "sandbox", "amocrm", "moizvonki", "outbox", "sync")


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or (words[0] not in COMMANDS and words[0] not in ("-h", "--help", "--version")):
        words = ["serve", *words]
    args = _parser().parse_args(words)
    if args.command == "sandbox":
        return _sandbox(args)
    if args.command == "amocrm":
        return _login(args)
    if args.command == "moizvonki":
        return _webhooks(args)
    if args.command == "outbox":
        return _outbox(args)
    if args.command == "sync":
        return _sync(args)
    return _serve(args)
