"""The CLI as a user meets it: help everywhere, stats and sql answer from the catalog."""

from __future__ import annotations

import json

from conftest import run_cli


def _commands() -> list[list[str]]:
    from compass.cli import app
    import typer.main

    group = typer.main.get_command(app)
    out = []
    for name, cmd in group.commands.items():
        out.append([name])
        for sub in getattr(cmd, "commands", {}) or {}:
            out.append([name, sub])
    return out


def test_every_command_has_help():
    top = run_cli("--help")
    cmds = _commands()
    assert {"init", "ingest", "stats", "sql", "generate"} <= {c[0] for c in cmds}
    for c in cmds:
        assert c[0] in top.stdout
        proc = run_cli(*c, "--help")
        assert "Usage" in proc.stdout and "--" in proc.stdout, c


def test_stats_json_and_sql_answer_from_catalog(catalog, products_file):
    run_cli("ingest", str(products_file), "--lang", "th", "--market", "TH", catalog=catalog)
    run_cli("generate", "--route", "structured", catalog=catalog)
    stats = json.loads(run_cli("stats", "--json", catalog=catalog).stdout)
    assert stats["products"]["total"] == 3
    assert stats["products"]["groups"] == [{"lang": "th", "market": "TH", "count": 3}]
    assert stats["examples"]["total"] > 3
    rows = json.loads(run_cli("sql", "SELECT lang, count(*) AS n FROM products GROUP BY lang", "--json",
                              catalog=catalog).stdout)
    assert rows == [{"lang": "th", "n": 3}]
    csv_out = run_cli("sql", "SELECT source_id FROM products ORDER BY source_id", "--csv", catalog=catalog).stdout
    assert csv_out.split() == ["source_id", "th-1", "th-2", "th-3"]


def test_sql_is_read_only_unless_write(catalog):
    proc = run_cli("sql", "DELETE FROM products", catalog=catalog, check=False)
    assert proc.returncode == 1 and "--write" in proc.stderr and "Traceback" not in proc.stderr
    run_cli("sql", "DELETE FROM products", "--write", catalog=catalog)


def test_catalog_from_environment(tmp_path, products_file):
    env = {"COMPASS_CATALOG": str(tmp_path / "env.duckdb")}
    run_cli("init", env=env)
    run_cli("ingest", str(products_file), "--lang", "th", "--market", "TH", env=env)
    assert json.loads(run_cli("stats", "--json", env=env).stdout)["products"]["total"] == 3


def test_stats_by_unknown_column_is_clear(catalog):
    proc = run_cli("stats", "--by", "colour", catalog=catalog, check=False)
    assert proc.returncode == 1 and "--by 'colour'" in proc.stderr
