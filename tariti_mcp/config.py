"""Settings from the environment and env files, with the names the TaritiGPT backend uses.

Precedence: process environment, then the file named by ``--env-file`` or ``TARITI_ENV_FILE``,
then ``.env``, then ``backend/.env`` in the working directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
import platformdirs
from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

AMOCRM_HOST_SUFFIXES = (".amocrm.ru", ".amocrm.com", ".kommo.com")
MOIZVONKI_DEFAULT_URL = "https://app.moizvonki.ru/api/v1"

_SUBDOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class ConfigError(ValueError):
    """A setting that cannot work; its message is one line naming the variable and the fix."""


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("tariti-mcp", appauthor=False)) / "tariti.db"


def _is_loopback(host: str) -> bool:
    """Only a loopback IP address or ``localhost``: ``127.attacker.example`` is a remote host."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(url: str) -> str:
    """The URL as safe to echo in an error: scheme, host and path, no user info or query."""
    parts = urlsplit(url if "://" in url else "//" + url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme + '://' if parts.scheme else ''}{host}{port}{parts.path}"


@dataclass(frozen=True)
class _Address:
    scheme: str
    host: str
    port: int | None
    loopback_origin: str  # scheme://host[:port] when the host is loopback, else ""


def _address(text: str, variable: str, api_path: str, example: str) -> _Address:
    """Split a base URL both services accept, refusing what neither can use."""
    parts = urlsplit(text if "://" in text else "https://" + text)
    try:
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{variable} has an invalid port ({_describe(text)!r})") from exc
    if parts.username or parts.password:
        raise ConfigError(f"{variable} must not contain a user name or password")
    if parts.path.rstrip("/") not in ("", api_path) or parts.query or parts.fragment:
        raise ConfigError(f"{variable} must look like {example} (got {_describe(text)!r})")
    origin = ""
    if _is_loopback(host):
        if parts.scheme not in ("http", "https"):
            raise ConfigError(f"{variable} must use http or https (got {_describe(text)!r})")
        netloc = f"[{host}]" if ":" in host else host
        origin = f"{parts.scheme}://{netloc}{f':{port}' if port else ''}"
    elif parts.scheme != "https" or port not in (None, 443):
        raise ConfigError(f"{variable} must use https on port 443 (got {_describe(text)!r})")
    return _Address(parts.scheme, host, port, origin)


def normalize_amocrm_url(raw: str) -> str:
    """Return ``https://sub.amocrm.ru`` style origin, or raise ConfigError.

    Accepts the account host with or without scheme and a trailing ``/api/v4``; loopback over
    plain http is allowed for the sandbox and tests.
    """
    text = raw.strip()
    if not text:
        return ""
    address = _address(text, "AMOCRM_BASE_URL", "/api/v4", "https://mycompany.amocrm.ru")
    if address.loopback_origin:
        return address.loopback_origin
    suffix = next((s for s in AMOCRM_HOST_SUFFIXES if address.host.endswith(s)), None)
    subdomain = address.host[: -len(suffix)] if suffix else ""
    if not suffix or not _SUBDOMAIN.match(subdomain) or subdomain == "www":
        raise ConfigError(
            "AMOCRM_BASE_URL must be your account's own host, https://<subdomain>.amocrm.ru, "
            f".amocrm.com or .kommo.com (got {_describe(text)!r})"
        )
    return f"https://{address.host}"


def normalize_moizvonki_url(raw: str) -> str:
    """Return the account's API URL ``https://acct.moizvonki.ru/api/v1``, or raise ConfigError.

    Accepts a bare account name, ``acct.moizvonki.ru``, or the full API URL; loopback over plain
    http is allowed for the sandbox and tests. The key travels in request bodies, so any host
    outside moizvonki.ru is refused.
    """
    text = raw.strip()
    if not text:
        return MOIZVONKI_DEFAULT_URL
    if _SUBDOMAIN.match(text.lower()):
        return f"https://{text.lower()}.moizvonki.ru/api/v1"
    address = _address(
        text, "MOIZVONKI_BASE_URL", "/api/v1", "https://<account>.moizvonki.ru/api/v1"
    )
    if address.loopback_origin:
        return address.loopback_origin + "/api/v1"
    account = address.host.removesuffix(".moizvonki.ru")
    if account == address.host or not _SUBDOMAIN.match(account):
        raise ConfigError(
            "MOIZVONKI_BASE_URL must be on moizvonki.ru, like "
            f"https://<account>.moizvonki.ru/api/v1 (got {_describe(text)!r})"
        )
    return f"https://{address.host}/api/v1"


class Settings(BaseSettings):
    """Everything the server reads from its environment."""

    model_config = SettingsConfigDict(
        extra="ignore",
        env_ignore_empty=True,
        populate_by_name=True,
        case_sensitive=False,
    )

    amocrm_base_url: str = Field("", validation_alias="AMOCRM_BASE_URL")
    amocrm_api_key: SecretStr = Field(SecretStr(""), validation_alias="AMOCRM_API_KEY")
    amocrm_client_id: str = Field("", validation_alias="AMOCRM_CLIENT_ID")
    amocrm_client_secret: SecretStr = Field(SecretStr(""), validation_alias="AMOCRM_CLIENT_SECRET")
    amocrm_redirect_uri: str = Field("", validation_alias="AMOCRM_REDIRECT_URI")
    amocrm_refresh_token: SecretStr = Field(SecretStr(""), validation_alias="AMOCRM_REFRESH_TOKEN")
    amocrm_auth_code: SecretStr = Field(SecretStr(""), validation_alias="AMOCRM_AUTH_CODE")
    amocrm_max_pages: int = Field(20, ge=1, le=200, validation_alias="AMOCRM_MAX_PAGES")
    amocrm_rate_limit: float = Field(7.0, gt=0, le=7.0, validation_alias="AMOCRM_RATE_LIMIT")

    moizvonki_base_url: str = Field("", validation_alias="MOIZVONKI_BASE_URL")
    moizvonki_user: str = Field("", validation_alias="MOIZVONKI_USER")
    moizvonki_api_key: SecretStr = Field(SecretStr(""), validation_alias="MOIZVONKI_API_KEY")

    db_path: Path = Field(default_factory=default_db_path, validation_alias="TARITI_DB_PATH")
    timezone: str = Field("Europe/Moscow", validation_alias="TARITI_TIMEZONE")
    default_region: str = Field("RU", validation_alias="TARITI_DEFAULT_REGION")
    log_level: str = Field("WARNING", validation_alias="TARITI_LOG_LEVEL")
    http_timeout: float = Field(20.0, gt=0, le=300, validation_alias="TARITI_HTTP_TIMEOUT")
    _scratch_db: bool = PrivateAttr(False)
    # Forwarding leads: where they land, how repeats are recognised, how the outbox retries.
    forward_pipeline: str = Field("", validation_alias="TARITI_FORWARD_PIPELINE")
    forward_status: str = Field("", validation_alias="TARITI_FORWARD_STATUS")
    forward_responsible: str = Field("", validation_alias="TARITI_FORWARD_RESPONSIBLE")
    dedupe_window_hours: float = Field(
        24.0, ge=0, le=24 * 90, validation_alias="TARITI_DEDUPE_WINDOW_HOURS"
    )
    add_contact_details: bool = Field(False, validation_alias="TARITI_ADD_CONTACT_DETAILS")
    catalog_ttl: float = Field(600.0, ge=0, le=86_400, validation_alias="TARITI_CATALOG_TTL")
    outbox_interval: float = Field(30.0, gt=0, le=3_600, validation_alias="TARITI_OUTBOX_INTERVAL")
    outbox_max_backoff: float = Field(
        900.0, gt=0, le=86_400, validation_alias="TARITI_OUTBOX_MAX_BACKOFF"
    )
    # How long after a write with no answer the deal is looked for, so a request amoCRM was
    # still working on has landed before we decide it did not.
    outbox_check_delay: float = Field(
        60.0, ge=0, le=3_600, validation_alias="TARITI_OUTBOX_CHECK_DELAY"
    )
    analytics_freshness: float = Field(
        60.0, ge=0, validation_alias=AliasChoices("TARITI_ANALYTICS_FRESHNESS")
    )
    # Serving over HTTP: who may pass, and how much they may send.
    http_token: SecretStr = Field(SecretStr(""), validation_alias="TARITI_HTTP_TOKEN")
    http_allowed_hosts: str = Field("", validation_alias="TARITI_HTTP_ALLOWED_HOSTS")
    http_allowed_origins: str = Field("", validation_alias="TARITI_HTTP_ALLOWED_ORIGINS")
    http_max_body: int = Field(
        1_000_000, ge=1_024, le=50_000_000, validation_alias="TARITI_HTTP_MAX_BODY"
    )
    webhook_secret: SecretStr = Field(SecretStr(""), validation_alias="TARITI_WEBHOOK_SECRET")
    # Writes: none at all in read-only mode; account-wide or irreversible ones only when allowed.
    read_only: bool = Field(False, validation_alias="TARITI_READ_ONLY")
    allow_destructive: bool = Field(False, validation_alias="TARITI_ALLOW_DESTRUCTIVE")
    # Whose phone make_call/send_sms use, by amoCRM user: "amocrm id or e-mail=moizvonki login".
    moizvonki_user_map: str = Field("", validation_alias="TARITI_MOIZVONKI_USER_MAP")
    # Other employees' own keys ("login=key,..."): a phone rings only with its owner's key.
    moizvonki_employee_keys: SecretStr = Field(
        SecretStr(""), validation_alias="MOIZVONKI_EMPLOYEE_KEYS"
    )

    @field_validator("amocrm_base_url")
    @classmethod
    def _amocrm_url(cls, value: str) -> str:
        return normalize_amocrm_url(value)

    @field_validator("moizvonki_base_url")
    @classmethod
    def _moizvonki_url(cls, value: str) -> str:
        return normalize_moizvonki_url(value)

    @field_validator("moizvonki_user")
    @classmethod
    def _strip_user(cls, value: str) -> str:
        return value.strip()

    @field_validator(
        "amocrm_api_key",
        "moizvonki_api_key",
        "amocrm_client_secret",
        "amocrm_refresh_token",
        "amocrm_auth_code",
        "http_token",
        "webhook_secret",
        "moizvonki_employee_keys",
    )
    @classmethod
    def _strip_secret(cls, value: SecretStr) -> SecretStr:
        # A key pasted with a trailing newline is the most common auth failure.
        return SecretStr(value.get_secret_value().strip())

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(
                f"TARITI_TIMEZONE must be an IANA zone like Europe/Moscow (got {value!r})"
            ) from exc
        return value

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        if value.strip().upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(
                f"TARITI_DEFAULT_REGION must be a two-letter country code (got {value!r})"
            )
        return value.strip().upper()

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(
                f"TARITI_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR (got {value!r})"
            )
        return level

    @model_validator(mode="after")
    def _sandbox_database(self) -> Settings:
        # A server pointed at local emulators must not mix their data into the real store.
        urls = [self.amocrm_base_url, self.moizvonki_base_url]
        local = any(url and _is_loopback(urlsplit(url).hostname or "") for url in urls)
        if local and "db_path" not in self.model_fields_set:
            # The emulators make up their data anew each start: a scratch file per process.
            scratch = Path(tempfile.gettempdir()) / f"tariti-sandbox-{os.getpid()}.db"
            self.db_path = scratch
            self._scratch_db = True
        return self

    @property
    def scratch_db(self) -> bool:
        """The database is a per-process scratch file, to be removed at exit."""
        return self._scratch_db

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def amocrm_oauth(self) -> bool:
        """OAuth mode: the integration's id, secret and redirect URI, and no long-lived token."""
        return bool(
            self.amocrm_client_id
            and self.amocrm_client_secret.get_secret_value()
            and self.amocrm_redirect_uri
            and not self.amocrm_api_key.get_secret_value()
        )

    @property
    def amocrm_configured(self) -> bool:
        return bool(
            self.amocrm_base_url and (self.amocrm_api_key.get_secret_value() or self.amocrm_oauth)
        )

    @property
    def moizvonki_configured(self) -> bool:
        return bool(self.moizvonki_user and self.moizvonki_api_key.get_secret_value())

    def missing_amocrm(self) -> list[str]:
        missing = []
        if not self.amocrm_base_url:
            missing.append("AMOCRM_BASE_URL")
        if not self.amocrm_api_key.get_secret_value() and not self.amocrm_oauth:
            missing.append(
                "AMOCRM_API_KEY (or AMOCRM_CLIENT_ID, AMOCRM_CLIENT_SECRET and "
                "AMOCRM_REDIRECT_URI for OAuth)"
            )
        return missing

    def missing_moizvonki(self) -> list[str]:
        missing = []
        if not self.moizvonki_user:
            missing.append("MOIZVONKI_USER")
        if not self.moizvonki_api_key.get_secret_value():
            missing.append("MOIZVONKI_API_KEY")
        return missing

    def secrets(self) -> list[str]:
        """Every configured secret value, for log redaction."""
        return [
            value
            for value in (
                self.amocrm_api_key.get_secret_value(),
                self.moizvonki_api_key.get_secret_value(),
                self.amocrm_client_secret.get_secret_value(),
                self.amocrm_refresh_token.get_secret_value(),
                self.amocrm_auth_code.get_secret_value(),
                self.http_token.get_secret_value(),
                self.webhook_secret.get_secret_value(),
                *self.employee_keys().values(),
            )
            if value
        ]

    def employee_keys(self) -> dict[str, str]:
        """MOIZVONKI_EMPLOYEE_KEYS as {login: key}; entries without "=" are ignored."""
        keys = {}
        for item in self._items(self.moizvonki_employee_keys.get_secret_value()):
            login, sep, key = item.partition("=")
            if sep and login.strip() and key.strip():
                keys[login.strip().lower()] = key.strip()
        return keys

    @staticmethod
    def _items(text: str) -> list[str]:
        return [item.strip() for item in text.split(",") if item.strip()]

    @property
    def allowed_hosts(self) -> list[str]:
        """TARITI_HTTP_ALLOWED_HOSTS as a list (comma-separated, host or host:port)."""
        return self._items(self.http_allowed_hosts)

    @property
    def allowed_origins(self) -> list[str]:
        """TARITI_HTTP_ALLOWED_ORIGINS as a list (comma-separated, scheme://host[:port])."""
        return self._items(self.http_allowed_origins)


def env_files(
    explicit: str | os.PathLike[str] | None = None, cwd: Path | None = None
) -> list[Path]:
    """The env files to read, lowest precedence first (pydantic-settings lets later files win)."""
    base = cwd or Path.cwd()
    files = [base / "backend" / ".env", base / ".env"]
    named = explicit or os.environ.get("TARITI_ENV_FILE")
    if named:
        files.append(Path(named).expanduser())
    return files


def load_settings(env_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read settings; raise ConfigError with one line naming the bad variable."""
    files = env_files(env_file)
    named = env_file or os.environ.get("TARITI_ENV_FILE")
    if named and not Path(named).expanduser().is_file():
        raise ConfigError(f"env file {str(named)!r} does not exist")
    try:
        return Settings(_env_file=[f for f in files if f.is_file()] or None, **overrides)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, ConfigError):
        return str(cause)
    field = ".".join(str(part) for part in error["loc"]) or "setting"
    # The rejected input is not echoed: it may be a secret.
    return f"{field.upper()}: {error['msg']}"
