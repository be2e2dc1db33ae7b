"""The store: owner-only file, versioned schema, one row per id, tolerant call rows."""

import os
import stat

import pytest

from tariti_mcp.store import SCHEMA_VERSION, Store


def test_file_is_owner_only(tmp_path):
    path = tmp_path / "deep" / "tariti.db"
    store = Store(path)
    store.upsert_calls([{"db_call_id": 1, "start_time": 10}])
    store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for extra in ("tariti.db-wal", "tariti.db-shm"):
        if (path.parent / extra).exists():
            assert stat.S_IMODE(os.stat(path.parent / extra).st_mode) & 0o077 == 0


def test_schema_is_versioned_and_reopen_keeps_data(tmp_path):
    path = tmp_path / "t.db"
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    store.upsert_leads([{"id": 5, "name": "Сделка", "price": "1500", "status_id": 142}])
    store.close()
    again = Store(path)
    assert next(again.query("SELECT name, price FROM amocrm_leads")) == {
        "name": "Сделка",
        "price": 1500,
    }


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "t.db"
    store = Store(path)
    store.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store.close()
    with pytest.raises(RuntimeError, match="upgrade tariti-mcp"):
        Store(path)


def test_one_row_per_call_and_bad_rows_skipped(caplog):
    store = Store()
    count, top = store.upsert_calls(
        [
            {
                "db_call_id": "7",
                "start_time": "100",
                "answered": "1",
                "direction": "0",
                "client_number": "8 (916) 123-45-67",
            },
            {"db_call_id": 7, "start_time": 100, "answered": 0, "direction": 0},
            {"start_time": 5},
        ]
    )
    assert (count, top) == (2, 7)
    rows = list(store.query("SELECT db_call_id, answered, client_last10 FROM moizvonki_calls"))
    assert rows == [{"db_call_id": 7, "answered": 0, "client_last10": None}]
    assert "skipped a call" in caplog.text


def test_contact_phones_indexed_by_last_ten_digits():
    store = Store()
    store.upsert_contacts(
        [
            {
                "id": 1,
                "name": "Иван",
                "custom_fields_values": [
                    {
                        "field_code": "PHONE",
                        "values": [{"value": "+7 (916) 123-45-67"}, {"value": "8 903 000 11 22"}],
                    },
                    {"field_code": "EMAIL", "values": [{"value": "Ivan@Example.ru"}]},
                ],
            }
        ]
    )
    row = next(store.query("SELECT phone_last10, emails FROM amocrm_contacts"))
    assert row == {"phone_last10": "9030001122 9161234567", "emails": '["ivan@example.ru"]'}


def test_forwarding_accepted_once_per_external_id():
    store = Store()
    first, new = store.accept_forwarding({"id": "a", "external_id": "f1", "dedupe_key": "k"}, 0)
    assert (first["id"], first["status"], new) == ("a", "queued", True)
    again, new = store.accept_forwarding({"id": "b", "external_id": "f1", "dedupe_key": "k"}, 0)
    assert (again["id"], new) == ("a", False)


def test_forwarding_without_external_id_is_one_per_window():
    store = Store()
    assert store.accept_forwarding({"id": "a", "dedupe_key": "p"}, 3600)[1] is True
    assert store.accept_forwarding({"id": "b", "dedupe_key": "p"}, 3600)[0]["id"] == "a"
    assert store.accept_forwarding({"id": "c", "dedupe_key": "q"}, 3600)[1] is True
    # Outside the window, or after a failure, the same person makes a new forwarding.
    store.db.execute("UPDATE forwarded_leads SET created_at = created_at - 7200 WHERE id = 'a'")
    assert store.accept_forwarding({"id": "d", "dedupe_key": "p"}, 3600)[1] is True
    store.update_forwarding("d", status="failed")
    assert store.accept_forwarding({"id": "e", "dedupe_key": "p"}, 3600)[1] is True


def test_a_forwarding_is_held_by_one_worker_at_a_time():
    store = Store()
    store.accept_forwarding({"id": "a", "dedupe_key": "p"}, 0)
    assert store.take_forwarding("a", 300)["id"] == "a"
    assert store.take_forwarding("a", 300) is None
    assert store.due_forwardings() == []
    store.release_forwarding("a")
    assert [row["id"] for row in store.due_forwardings()] == ["a"]


def test_unsupervised_read_does_not_erase_call_owner():
    store = Store()
    owned = {"db_call_id": 1, "start_time": 10, "user_id": 5, "user_account": "anna@x.ru"}
    store.upsert_calls([owned])
    store.upsert_calls([{"db_call_id": 1, "start_time": 10, "answered": 1}])
    row = next(store.query("SELECT user_id, user_account, answered FROM moizvonki_calls"))
    assert row == {"user_id": 5, "user_account": "anna@x.ru", "answered": 1}


def test_lead_read_without_contacts_keeps_its_contact():
    store = Store()
    store.upsert_leads([{"id": 1, "_embedded": {"contacts": [{"id": 9, "is_main": True}]}}])
    store.upsert_leads([{"id": 1, "name": "renamed", "_embedded": {"tags": []}}])
    assert next(store.query("SELECT name, contact_id FROM amocrm_leads")) == {
        "name": "renamed",
        "contact_id": 9,
    }
    store.upsert_leads([{"id": 1, "_embedded": {"contacts": []}}])  # unlinked since
    assert next(store.query("SELECT contact_id FROM amocrm_leads"))["contact_id"] is None


def test_servers_opening_a_new_file_together_migrate_it_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "new.db"
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: Store(path), range(4)))
    assert {store.schema_version for store in stores} == {SCHEMA_VERSION}
    for store in stores:
        store.close()
