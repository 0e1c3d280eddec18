"""The catalog spine: migrations, transactions, locking, secrets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest
from conftest import run_cli

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
                con.execute("INSERT INTO products (id, lang, market, title, category) "
                            "VALUES ('p', 'th', 'TH', 't', 'c')")
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


def test_second_writer_gets_clear_lock_message(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPASS_LOCK_WAIT", "0.5")
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


def _holder(path: Path, body: str) -> subprocess.Popen:
    """A real second process holding the catalog through the Python API; it prints 'ready' when it holds it."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from compass.catalog import Catalog
        cat = Catalog({str(path)!r})
    """) + textwrap.dedent(body)], stdout=subprocess.PIPE, text=True)


def _add_products(cat: Catalog, n: int, start: int = 0, lang: str = "th") -> None:
    with cat.transaction() as con:
        con.execute("INSERT INTO products (id, lang, market, title, category) SELECT 'p' || (range + ?), ?, 'TH', "
                    "'title ' || md5((range + ?)::VARCHAR), 'c' FROM range(?)", [start, lang, start, n])


def test_killed_run_is_marked_interrupted_on_next_open(tmp_path):
    path, _ = init_catalog(tmp_path / "k.duckdb")
    proc = _holder(path, """
        with cat.run("generate", {"n": 1}):
            print("ready", flush=True)
            time.sleep(120)
    """)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    with Catalog(path, read_only=True) as cat:  # a reader changes nothing
        assert cat.query("SELECT status FROM runs") == [{"status": "running"}]
    with Catalog(path) as cat:
        assert cat.query("SELECT command, status FROM runs") == [{"command": "generate", "status": "interrupted"}]
        with cat.run("mine", {}) as live:
            with Catalog(path) as second:  # a second open in the same process leaves its live run alone
                assert second.scalar("SELECT status FROM runs WHERE id = ?", [live.id]) == "running"
        assert cat.scalar("SELECT status FROM runs WHERE id = ?", [live.id]) == "ok"


def test_readers_see_committed_state_while_a_writer_runs(tmp_path):
    path, _ = init_catalog(tmp_path / "w.duckdb")
    proc = _holder(path, """
        def add(n, start, lang):
            with cat.transaction() as con:
                con.execute("INSERT INTO products (id, lang, market, title, category) SELECT 'p' || (range + ?), "
                            "?, 'TH', 'title ' || md5((range + ?)::VARCHAR), 'c' FROM range(?)",
                            [start, lang, start, n])
        with cat.run("ingest", {}):
            add(500, 0, "th")
            print("ready", flush=True)
            for i in range(1, 100000):   # keeps committing while the readers read (until the test kills it)
                add(10, 100000 + 10 * i, "vi")
                time.sleep(0.05)
    """)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    try:
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(3):
            out = run_cli("stats", "--json", catalog=path, env=env)
            st = json.loads(out.stdout)
            assert st["products"]["total"] >= 500 and st["products"]["total"] % 10 == 0
            assert {"command": "ingest", "status": "running", "count": 1} in st["runs"]
            assert f"PID {proc.pid}" in out.stderr and "last committed state" in out.stderr
        rows = run_cli("sql", "SELECT count(*) AS n FROM products WHERE lang = 'th'", "--json", catalog=path, env=env)
        assert json.loads(rows.stdout) == [{"n": 500}]
        assert not list(tmp.iterdir()), "the snapshot copy was not removed"
        assert proc.poll() is None, "the writer was disturbed"
        w = run_cli("sql", "--write", "DELETE FROM products", catalog=path, check=False,
                    env={"COMPASS_LOCK_WAIT": "0.3"})
        assert w.returncode == 1 and "held by another compass process" in w.stderr
    finally:
        proc.kill()
        proc.wait()


def test_writer_waits_for_a_short_reader(tmp_path):
    path, _ = init_catalog(tmp_path / "r.duckdb")
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, duckdb
        con = duckdb.connect({str(path)!r}, read_only=True)
        print("ready", flush=True)
        time.sleep(1.5)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        with Catalog(path) as cat:
            _add_products(cat, 3)
        assert time.monotonic() - t0 >= 0.5
    finally:
        reader.kill()
        reader.wait()


def _big_catalog(tmp_path: Path) -> Path:
    path, _ = init_catalog(tmp_path / "big.duckdb")
    with Catalog(path) as cat, cat.run("ingest", {}):
        _add_products(cat, 200_000)
    return path


def test_truncated_catalog_is_one_line_naming_it_damaged(tmp_path):
    path = _big_catalog(tmp_path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    for args in (["stats"], ["sql", "SELECT count(*) FROM products"], ["generate"]):
        r = run_cli(*args, catalog=path, check=False)
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert str(path) in lines[0] and "is damaged" in lines[0] and "README" in lines[0]


def _flip_a_data_block(path: Path, tmp_path: Path) -> Path:
    """Flip bytes in a block that holds product data: the file opens, reading the products fails (checksum)."""
    size, block = path.stat().st_size, 256 * 1024
    for off in range(size - block // 2, 3 * 4096, -block):
        bad = tmp_path / "flipped.duckdb"
        shutil.copyfile(path, bad)
        with open(bad, "r+b") as f:
            f.seek(off)
            b = f.read(8)
            f.seek(off)
            f.write(bytes(x ^ 0xFF for x in b))
        probe = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys
            con = duckdb.connect({str(bad)!r}, read_only=True)
            con.execute("SELECT * FROM schema_migrations").fetchall()
            try:
                con.execute("SELECT * FROM products").fetchall()
            except duckdb.Error as e:
                sys.exit(3 if "checksum" in str(e) else 4)
        """)], capture_output=True, text=True)
        if probe.returncode == 3:
            return bad
    raise AssertionError("no block of product data found to damage")


def test_checksum_error_in_a_used_block_is_one_line_and_check_says_which_table(tmp_path):
    bad = _flip_a_data_block(_big_catalog(tmp_path), tmp_path)
    for args in (["sql", "SELECT * FROM products"],
                 ["sql", "SELECT * FROM products ORDER BY id DESC LIMIT 1", "--write"]):
        r = run_cli(*args, catalog=bad, check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert str(bad) in lines[0] and "is damaged" in lines[0] and "checksum" in lines[0]
    chk = run_cli("check", catalog=bad, check=False)
    assert chk.returncode == 1
    assert "products: damaged" in chk.stdout and "runs: ok" in chk.stdout, chk.stdout
    good = run_cli("check", catalog=tmp_path / "big.duckdb")
    assert "products: ok (200000 rows)" in good.stdout
    new = tmp_path / "salvaged.duckdb"
    sal = run_cli("check", "--salvage", str(new), catalog=bad, check=False)
    assert sal.returncode == 1 and "not copied (damaged): products" in sal.stdout
    with Catalog(new) as cat:
        assert cat.scalar("SELECT count(*) FROM runs") == 1 and cat.scalar("SELECT count(*) FROM products") == 0
        assert cat.pending_migrations() == []
    again = run_cli("check", "--salvage", str(new), catalog=bad, check=False)
    assert again.returncode == 1 and "nothing is overwritten" in again.stderr
