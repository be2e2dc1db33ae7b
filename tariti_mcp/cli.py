"""Command line: ``serve`` (the default) runs the MCP server over stdio; ``sandbox`` runs emulators.

Logging is configured here and only here. stdout belongs to the MCP protocol while serving.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import shutil
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path

from . import __version__, logs
from .config import ConfigError, Settings, load_settings
from .store import Store

logger = logging.getLogger("tariti_mcp")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tariti-mcp",
        description="MCP tool server for amoCRM and Moizvonki, with a SQLite cache.",
    )
    parser.add_argument("--version", action="version", version=f"tariti-mcp {__version__}")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the MCP server over stdio (the default)")
    serve.add_argument("--env-file", help="env file to read (after the environment)")
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
    login.add_argument("--code", default="", help="an authorization code you already have")
    login.add_argument(
        "--no-listen", action="store_true", help="ask for the code instead of listening for it"
    )
    login.add_argument(
        "--timeout", type=_bounded(10, 3600), default=300, help="seconds to wait for the redirect"
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


def _fail(message: str) -> int:
    sys.stderr.write(f"tariti-mcp: {message}\n")
    sys.stderr.flush()
    return 2


def _configured(env_file: str | None) -> Settings:
    """Settings read and logging set up, as every command needs; ConfigError is one line."""
    settings = load_settings(env_file)
    logs.configure(settings.log_level, settings.secrets())
    return settings


def _open_store(settings: Settings) -> Store:
    try:
        return Store(settings.db_path)
    except (sqlite3.Error, OSError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot open the database {str(settings.db_path)!r} (TARITI_DB_PATH): {exc}"
        ) from None


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = _configured(args.env_file)
    except ConfigError as exc:
        return _fail(str(exc))

    sandbox = None
    scratch = None
    if args.sandbox:
        from .sandbox import Sandbox

        sandbox = Sandbox(seed=args.seed, calls=args.calls, days=args.days)
        sandbox.start()
        scratch = Path(tempfile.mkdtemp(prefix="tariti-sandbox-"))
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
        if sandbox is not None:
            sandbox.stop()
        return _fail(str(exc))
    try:
        create_server(settings, store=store).run()
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
        if settings.scratch_db:
            for suffix in ("", "-wal", "-shm", ".amocrm.lock", ".migrate.lock"):
                Path(f"{settings.db_path}{suffix}").unlink(missing_ok=True)
        if sandbox is not None:
            sandbox.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _lower(env: dict[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in env.items()}


def _sandbox(args: argparse.Namespace) -> int:
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
        settings = _configured(args.env_file)
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


COMMANDS = ("serve", "sandbox", "amocrm")


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or (words[0] not in COMMANDS and words[0] not in ("-h", "--help", "--version")):
        words = ["serve", *words]
    args = _parser().parse_args(words)
    if args.command == "sandbox":
        return _sandbox(args)
    if args.command == "amocrm":
        return _login(args)
    return _serve(args)
