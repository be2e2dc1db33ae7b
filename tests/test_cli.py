"""The command line: one clear line and exit 2 for a bad setting; the sandbox's settings lines."""

import os
import subprocess
import sys

import pytest


def run(args, env_extra=None, timeout=60, **kwargs):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AMOCRM_", "MOIZVONKI_", "TARITI_"))
    }
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "tariti_mcp", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AMOCRM_BASE_URL", "https://www.amocrm.ru"),
        ("MOIZVONKI_BASE_URL", "https://evil.ru"),
        ("TARITI_TIMEZONE", "Mars/Base"),
    ],
)
def test_bad_setting_stops_start_with_one_line(tmp_path, variable, value):
    done = run(["serve"], {variable: value}, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and variable in done.stderr


def test_unreadable_database_is_one_line(tmp_path):
    bad = tmp_path / "not.db"
    bad.write_text("this is not sqlite")
    done = run(["serve"], {"TARITI_DB_PATH": str(bad)}, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert "cannot open the database" in done.stderr.splitlines()[-1]


def test_sandbox_flags_are_checked():
    for flags in (
        ["--days", "0"],
        ["--amocrm-port", "99999"],
        ["--calls", "-5"],
        ["--host", "0.0.0.0"],
    ):
        done = run(["sandbox", *flags])
        assert done.returncode == 2 and "error: argument" in done.stderr


def test_sandbox_prints_exactly_the_nine_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMOCRM_", "MOIZVONKI_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "tariti_mcp", "sandbox", "--calls", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        lines = [process.stdout.readline().strip() for _ in range(9)]
    finally:
        process.terminate()
        process.wait(timeout=20)
        rest = process.stdout.read()
        process.stdout.close()
    assert rest == ""
    settings = dict(line.split("=", 1) for line in lines)
    assert list(settings) == [
        "AMOCRM_BASE_URL",
        "AMOCRM_API_KEY",
        "MOIZVONKI_BASE_URL",
        "MOIZVONKI_USER",
        "MOIZVONKI_API_KEY",
        "AMOCRM_CLIENT_ID",
        "AMOCRM_CLIENT_SECRET",
        "AMOCRM_REDIRECT_URI",
        "AMOCRM_REFRESH_TOKEN",
    ]
    assert lines[0].startswith("AMOCRM_BASE_URL=http://127.0.0.1:")
    assert len(settings["AMOCRM_CLIENT_SECRET"]) >= 32
    assert settings["AMOCRM_REDIRECT_URI"].startswith("http://127.0.0.1:")
    assert all(settings.values())
