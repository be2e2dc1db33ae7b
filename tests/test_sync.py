"""Call sync: from_id is inclusive, the cursor is last id + 1, late uploads arrive once."""

import time

import pytest

from tariti_mcp.moizvonki.client import MoizvonkiClient
from tariti_mcp.moizvonki.sync import CALLS, sync_calls
from tariti_mcp.sandbox import Sandbox
from tariti_mcp.store import Store


@pytest.mark.anyio
async def test_from_id_inclusive_cursor_brings_late_uploads_once(tmp_path):
    with Sandbox(seed=41, calls=400, days=5) as sandbox:
        env = sandbox.env
        client = MoizvonkiClient(
            env["MOIZVONKI_BASE_URL"], env["MOIZVONKI_USER"], env["MOIZVONKI_API_KEY"]
        )
        store = Store()
        since = int(sandbox.data.now) - 3 * 86400
        first = await sync_calls(client, store, since=since)
        newest = max(r["db_call_id"] for r in store.query("SELECT db_call_id FROM moizvonki_calls"))
        assert store.sync_state(CALLS)["cursor"] == newest + 1

        # Nothing new: one request, and the newest call is not fetched again.
        again = await sync_calls(client, store, since=since)
        assert (again.requests, again.calls) == (1, 0)

        # A phone that was offline uploads a call from two days ago: it gets a new, higher id.
        late = sandbox.moizvonki.record_call(
            sandbox.moizvonki_manager_user,
            0,
            "+79160001122",
            int(time.time()) - 2 * 86400,
            answered=True,
            duration=42,
            wait=5,
        )
        third = await sync_calls(client, store, since=since)
        assert third.calls == 1
        ids = [r["db_call_id"] for r in store.query("SELECT db_call_id FROM moizvonki_calls")]
        assert late.db_call_id in ids and len(ids) == len(set(ids))
        assert first.calls + 1 == len(ids)
        await client.aclose()
