"""Settings: the backend's variable names, env file order, and base URLs refused at start."""

import pytest

from tariti_mcp.config import (
    ConfigError,
    Settings,
    load_settings,
    normalize_amocrm_url,
    normalize_moizvonki_url,
)

SEED_NAMES = (
    "AMOCRM_BASE_URL",
    "AMOCRM_API_KEY",
    "MOIZVONKI_API_KEY",
    "MOIZVONKI_USER",
    "MOIZVONKI_BASE_URL",
    "TARITI_DB_PATH",
    "TARITI_TIMEZONE",
    "TARITI_ENV_FILE",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in SEED_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://acme.amocrm.ru", "https://acme.amocrm.ru"),
        ("acme.amocrm.ru", "https://acme.amocrm.ru"),
        ("https://acme.amocrm.ru/api/v4/", "https://acme.amocrm.ru"),
        ("https://ACME.amocrm.com", "https://acme.amocrm.com"),
        ("https://acme.kommo.com/", "https://acme.kommo.com"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
        ("http://localhost:9000", "http://localhost:9000"),
    ],
)
def test_amocrm_url_accepted(raw, expected):
    assert normalize_amocrm_url(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "http://acme.amocrm.ru",  # no TLS
        "https://www.amocrm.ru",  # the common host answers HTML 404
        "https://evil.com",
        "https://acme.amocrm.ru.evil.com",
        "https://acme.amocrm.ru/leads",
        "https://user:pw@acme.amocrm.ru",
        "https://acme.amocrm.ru?x=1",
        "ftp://127.0.0.1:21",
    ],
)
def test_amocrm_url_refused(raw):
    with pytest.raises(ConfigError, match="AMOCRM_BASE_URL"):
        normalize_amocrm_url(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "https://app.moizvonki.ru/api/v1"),
        ("acme", "https://acme.moizvonki.ru/api/v1"),
        ("acme.moizvonki.ru", "https://acme.moizvonki.ru/api/v1"),
        ("https://acme.moizvonki.ru/api/v1", "https://acme.moizvonki.ru/api/v1"),
        ("https://acme.moizvonki.ru/api/v1/", "https://acme.moizvonki.ru/api/v1"),
        ("http://127.0.0.1:8124/api/v1", "http://127.0.0.1:8124/api/v1"),
        ("http://localhost:8124", "http://localhost:8124/api/v1"),
    ],
)
def test_moizvonki_url_accepted(raw, expected):
    assert normalize_moizvonki_url(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "https://moizvonki.evil.ru/api/v1",
        "http://acme.moizvonki.ru/api/v1",
        "https://acme.moizvonki.ru/other",
        "https://10.0.0.5/api/v1",
    ],
)
def test_moizvonki_url_refused(raw):
    with pytest.raises(ConfigError, match="MOIZVONKI_BASE_URL"):
        normalize_moizvonki_url(raw)


def test_backend_names_are_read_from_environment(monkeypatch):
    monkeypatch.setenv("AMOCRM_BASE_URL", "https://acme.amocrm.ru")
    monkeypatch.setenv("AMOCRM_API_KEY", "long-lived-token-value\n")
    monkeypatch.setenv("MOIZVONKI_USER", " boss@acme.ru ")
    monkeypatch.setenv("MOIZVONKI_API_KEY", "mzkey-123456 ")
    monkeypatch.setenv("MOIZVONKI_BASE_URL", "acme")
    settings = load_settings()
    assert settings.amocrm_base_url == "https://acme.amocrm.ru"
    assert settings.amocrm_api_key.get_secret_value() == "long-lived-token-value"
    assert settings.moizvonki_user == "boss@acme.ru"
    assert settings.moizvonki_api_key.get_secret_value() == "mzkey-123456"
    assert settings.moizvonki_base_url == "https://acme.moizvonki.ru/api/v1"
    assert settings.timezone == "Europe/Moscow"
    assert settings.amocrm_configured and settings.moizvonki_configured


def test_env_file_order(monkeypatch, tmp_path):
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / ".env").write_text(
        "AMOCRM_API_KEY=from-backend\nMOIZVONKI_USER=backend@acme.ru\nTARITI_TIMEZONE=Asia/Omsk\n"
    )
    (tmp_path / ".env").write_text("AMOCRM_API_KEY=from-dotenv\nMOIZVONKI_USER=dot@acme.ru\n")
    named = tmp_path / "named.env"
    named.write_text("AMOCRM_API_KEY=from-named\n")
    monkeypatch.setenv("MOIZVONKI_USER", "env@acme.ru")

    settings = load_settings(named)
    assert settings.amocrm_api_key.get_secret_value() == "from-named"  # named beats .env
    assert settings.moizvonki_user == "env@acme.ru"  # environment beats every file
    assert settings.timezone == "Asia/Omsk"  # backend/.env still fills the rest

    monkeypatch.setenv("TARITI_ENV_FILE", str(named))
    assert load_settings().amocrm_api_key.get_secret_value() == "from-named"


def test_missing_env_file_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.env")


def test_bad_url_refused_with_one_line(monkeypatch):
    monkeypatch.setenv("AMOCRM_BASE_URL", "https://www.amocrm.ru")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "\n" not in str(info.value)
    assert "AMOCRM_BASE_URL" in str(info.value)


def test_bad_timezone_refused(monkeypatch):
    monkeypatch.setenv("TARITI_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigError, match="TARITI_TIMEZONE"):
        load_settings()


def test_unconfigured_service_lists_variables():
    settings = Settings(_env_file=None, amocrm_base_url="https://acme.amocrm.ru")
    assert not settings.amocrm_configured
    assert settings.missing_amocrm()[0].startswith("AMOCRM_API_KEY (or AMOCRM_CLIENT_ID")
    assert settings.missing_moizvonki() == ["MOIZVONKI_USER", "MOIZVONKI_API_KEY"]


@pytest.mark.parametrize(
    "raw", ["http://127.attacker.example", "http://127.0.0.1.nip.io:8000", "http://localhost.evil"]
)
def test_loopback_means_a_loopback_address_not_a_name_starting_with_127(raw):
    with pytest.raises(ConfigError, match="AMOCRM_BASE_URL"):
        normalize_amocrm_url(raw)
    with pytest.raises(ConfigError, match="MOIZVONKI_BASE_URL"):
        normalize_moizvonki_url(raw)


def test_settings_pointing_at_emulators_use_a_separate_database(monkeypatch):
    monkeypatch.setenv("AMOCRM_BASE_URL", "http://127.0.0.1:8123")
    settings = load_settings()
    assert settings.db_path.name.startswith("tariti-sandbox-") and settings.scratch_db
    monkeypatch.setenv("TARITI_DB_PATH", "/tmp/chosen.db")
    assert str(load_settings().db_path) == "/tmp/chosen.db"
    monkeypatch.setenv("AMOCRM_BASE_URL", "https://acme.amocrm.ru")
    monkeypatch.delenv("TARITI_DB_PATH")
    assert load_settings().db_path.name == "tariti.db"


def test_credentials_in_base_url_are_named_plainly():
    with pytest.raises(ConfigError, match="user name or password"):
        normalize_amocrm_url("https://user:pw@acme.amocrm.ru")


def test_unknown_region_refused_at_start(monkeypatch):
    monkeypatch.setenv("TARITI_DEFAULT_REGION", "XX")
    with pytest.raises(ConfigError, match="TARITI_DEFAULT_REGION"):
        load_settings()


def test_oauth_mode_needs_id_secret_and_redirect(monkeypatch):
    monkeypatch.setenv("AMOCRM_BASE_URL", "https://acme.amocrm.ru")
    monkeypatch.setenv("AMOCRM_CLIENT_ID", "client-1")
    monkeypatch.setenv("AMOCRM_CLIENT_SECRET", "secret-0123456789")
    assert not load_settings().amocrm_configured
    monkeypatch.setenv("AMOCRM_REDIRECT_URI", "http://127.0.0.1:8765/callback")
    settings = load_settings()
    assert settings.amocrm_oauth and settings.amocrm_configured
    monkeypatch.setenv("AMOCRM_API_KEY", "long-lived-0123456789")
    assert not load_settings().amocrm_oauth  # the long-lived token wins
