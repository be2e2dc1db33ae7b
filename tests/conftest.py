"""Fixtures that build real objects: a running sandbox of both APIs and settings pointing at it."""

from __future__ import annotations

import pytest

from tariti_mcp.config import Settings
from tariti_mcp.sandbox import Sandbox


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def sandbox():
    """Both emulators on loopback, shared by the session; tests must not rely on a clean state."""
    with Sandbox(seed=7, calls=1500, days=30) as running:
        yield running


@pytest.fixture
def sandbox_settings(sandbox, tmp_path) -> Settings:
    env = {key.lower(): value for key, value in sandbox.env.items()}
    return Settings(_env_file=None, db_path=tmp_path / "tariti.db", log_level="DEBUG", **env)
