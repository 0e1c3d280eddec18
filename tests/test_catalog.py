"""The catalog spine: migrations, transactions, locking, secrets."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import duckdb
import pytest

from compass.catalog import Catalog, init_catalog, migrations, scrub
from compass.errors import CompassError


def test_init_records_every_migration(tmp_path):
    path, applied = init_catalog(tmp_path / "a.duckdb")
    assert applied == [n for n, _ in migrations()]
    with Catalog(path) as cat:
        assert cat.applied_migrations() == applied
        assert cat.pending_migrations() == []
    _, again = init_catalog(path)
    assert again == []


def test_schema_from_blank_equals_schema_upgraded_from_first_migration(tmp_path):
    first = migrations()[0][0]
    with Catalog(tmp_path / "old.duckdb", create=True, upto=first) as old:
        assert old.applied_migrations() == [first]
        assert "examples" not in {t for t, _, _ in old.schema()}
    with Catalog(tmp_path / "old.duckdb") as upgraded:  # opening an older catalog upgrades it in place
        upgraded_schema = upgraded.schema()
        assert upgraded.applied_migrations() == [n for n, _ in migrations()]
    with Catalog(tmp_path / "new.duckdb", create=True) as blank:
        assert blank.schema() == upgraded_schema


def test_catalog_from_newer_compass_is_refused(tmp_path):
    path, _ = init_catalog(tmp_path / "n.duckdb")
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_migrations VALUES ('9999_from_the_future', now())")
    con.close()
    with pytest.raises(CompassError, match="newer compass.*9999_from_the_future"):
        Catalog(path)


def test_missing_catalog_says_run_init(tmp_path):
    with pytest.raises(CompassError, match="compass init"):
        Catalog(tmp_path / "nope.duckdb")


def test_not_a_duckdb_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.duckdb"
    bad.write_text("hello")
    with pytest.raises(CompassError, match="bad.duckdb"):
        Catalog(bad)


def test_failed_transaction_leaves_catalog_unchanged(tmp_path):
    path, _ = init_catalog(tmp_path / "t.duckdb")
    with Catalog(path) as cat:
        with pytest.raises(RuntimeError):
            with cat.transaction() as con:
                con.execute("INSERT INTO products (id, lang, market, title, category) VALUES ('p', 'th', 'TH', 't', 'c')")
                raise RuntimeError("boom")
        assert cat.scalar("SELECT count(*) FROM products") == 0


def test_run_records_status_and_scrubs_secrets(tmp_path):
    path, _ = init_catalog(tmp_path / "r.duckdb")
    with Catalog(path) as cat:
        with cat.run("x", {"api_key": "sk-secret", "base_url": "http://user:pw@host/v1", "n": 3}) as run:
            run.summary["done"] = 1
        with pytest.raises(ValueError):
            with cat.run("y", {}):
                raise ValueError
        rows = {r["command"]: r for r in cat.query("SELECT command, status, config FROM runs")}
    assert rows["x"]["status"] == "ok" and rows["y"]["status"] == "failed"
    assert "sk-secret" not in rows["x"]["config"] and "pw@" not in rows["x"]["config"]


def test_scrub():
    assert scrub({"HF_TOKEN": "hf_x", "nested": {"password": "p"}, "url": "https://a:b@h"}) == {
        "HF_TOKEN": "***", "nested": {"password": "***"}, "url": "https://***@h"}


def test_second_writer_gets_clear_lock_message(tmp_path):
    path, _ = init_catalog(tmp_path / "l.duckdb")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time, duckdb
        con = duckdb.connect({str(path)!r})
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CompassError) as e:
            Catalog(path)
        msg = str(e.value)
        assert str(path) in msg and "another compass process" in msg and f"PID {holder.pid}" in msg
    finally:
        holder.kill()
        holder.wait()
    with Catalog(path) as cat:  # the file is intact afterwards
        assert cat.pending_migrations() == []


def test_read_only_open_upgrades_an_older_catalog(tmp_path):
    first = migrations()[0][0]
    Catalog(tmp_path / "o.duckdb", create=True, upto=first).close()
    with Catalog(tmp_path / "o.duckdb", read_only=True) as cat:
        assert cat.applied_migrations() == [n for n, _ in migrations()]
        with pytest.raises(CompassError, match="read-only"):
            with cat.transaction():
                pass
