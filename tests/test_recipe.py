"""`compass run RECIPE`: validation names the file, line, key and the nearest valid one; finished steps are skipped
by their parameters; --from / --force; the whole chain on a small catalog (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PRODUCTS_TH, REPO, run_cli, write_jsonl

from compass.catalog.db import Catalog
from compass.errors import CompassError
from compass.recipe import load, run


def _recipe(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text, encoding="utf-8")
    return p


CHEAP = """\
out: {out}
report: false
steps:
  - ingest: {{files: ["{products}"], lang: th, market: TH}}
  - generate: {{route: structured, seed: 1}}
  - split: {{test: 0.2, dev: 0.2}}
"""


@pytest.fixture
def cheap(tmp_path: Path) -> Path:
    products = write_jsonl(tmp_path / "th.jsonl", PRODUCTS_TH)
    return _recipe(tmp_path, CHEAP.format(out=tmp_path / "out", products=products))


def _runs(catalog: Path) -> list[tuple[str, str]]:
    with Catalog(catalog, read_only=True) as cat:
        return [(r["command"], r["status"]) for r in cat.query("SELECT command, status FROM runs ORDER BY started_at")]


def _lines(lines: list[str]):
    return lambda line: lines.append(line)


# -- validation -------------------------------------------------------------------------------------------------

def test_unknown_step_key_names_file_line_and_nearest(cheap):
    bad = _recipe(cheap.parent, cheap.read_text().replace("seed: 1", "sed: 1"))
    with pytest.raises(CompassError) as e:
        load(bad)
    assert str(e.value) == f"{bad}:5: steps[1].generate.sed: unknown key 'sed' (did you mean 'seed'?)"


def test_unknown_step_kind_and_top_key_name_the_nearest(cheap):
    with pytest.raises(CompassError,
                       match=r"r.yaml:6: steps\[2\].splt: unknown step 'splt' \(did you mean 'split'\?\)"):
        load(_recipe(cheap.parent, cheap.read_text().replace("- split:", "- splt:")))
    with pytest.raises(CompassError, match=r"r.yaml:1: outt: unknown key 'outt' \(did you mean 'out'\?\)"):
        load(_recipe(cheap.parent, cheap.read_text().replace("out:", "outt:")))


def test_bad_value_and_missing_required_option_are_named(tmp_path):
    with pytest.raises(CompassError, match=r"r.yaml:3: steps\[0\].split.test: .*valid number.*'lots'"):
        load(_recipe(tmp_path, "out: o\nsteps:\n  - split: {test: lots}\n"))
    with pytest.raises(CompassError, match=r"steps\[0\].train.out: missing \(required\)"):
        load(_recipe(tmp_path, "out: o\nsteps:\n  - train: {max_steps: 3}\n"))
    with pytest.raises(CompassError, match="a second 'split' step: give it an `id:`"):
        load(_recipe(tmp_path, "out: o\nsteps:\n  - split: {}\n  - split: {seed: 2}\n"))


def test_options_are_the_commands_flags(tmp_path):
    r = load(_recipe(tmp_path, 'out: o\nsteps:\n  - filter: {stages: [langid, quality]}\n'
                               '  - eval: {id: eval-base, model: minilm, json: "{out}/e.json"}\n'))
    assert [s.argv() for s in r.steps] == [["compass", "filter", "--stages", "langid,quality"],
                                           ["compass", "eval", "minilm", "--json", "o/e.json"]]
    assert r.catalog == Path("o/compass.duckdb") and r.steps[1].id == "eval-base"


def test_report_step_in_the_list_replaces_the_closing_report(tmp_path):
    assert load(_recipe(tmp_path, "out: o\nsteps:\n  - split: {}\n")).report == Path("o/report.html")
    r = load(_recipe(tmp_path, 'out: o\nsteps:\n  - split: {}\n  - report: {out: "{out}/r.html"}\n'))
    assert r.report is None and r.steps[-1].outputs() == [Path("o/r.html")]
    assert load(_recipe(tmp_path, "out: o\nreport: false\nsteps:\n  - split: {}\n")).report is None


def test_demo_recipe_is_valid():
    r = load(REPO / "recipes" / "demo.yaml", out="x")
    assert [s.kind for s in r.steps][:2] == ["ingest", "generate"] and r.report == Path("x/report.html")
    assert r.catalog == Path("x/compass.duckdb")


# -- skipping ------------------------------------------------------------------------------------------------

def test_second_run_does_nothing_and_says_so(cheap):
    out: list[str] = []
    first = run(cheap, echo=_lines(out))
    assert [r.action for r in first if r.id != "report"] == ["ran", "ran", "ran"]
    cat = cheap.parent / "out" / "compass.duckdb"
    before = _runs(cat)
    assert ("recipe:split", "ok") in before and ("split", "ok") in before
    again: list[str] = []
    second = run(cheap, echo=_lines(again))
    assert all(r.action == "skipped" for r in second)
    assert any(line.startswith("nothing to do") for line in again)
    assert _runs(cat) == before  # not one run record more


def test_changed_parameter_reruns_that_step_and_the_rest(cheap):
    run(cheap, echo=_lines([]))
    changed = _recipe(cheap.parent, cheap.read_text().replace("seed: 1", "seed: 2"))
    res = run(changed, echo=_lines([]))
    assert [(r.id, r.action) for r in res if r.id != "report"] == [("ingest", "skipped"), ("generate", "ran"),
                                                                    ("split", "ran")]


def test_force_and_from(cheap):
    run(cheap, echo=_lines([]))
    res = run(cheap, force=["generate"], echo=_lines([]))
    assert [r.action for r in res if r.id != "report"] == ["skipped", "ran", "ran"]
    res = run(cheap, from_step="split", echo=_lines([]))
    assert [r.action for r in res if r.id != "report"] == ["skipped", "skipped", "ran"]
    with pytest.raises(CompassError, match=r"no step 'spilt'.*did you mean 'split'"):
        run(cheap, force=["spilt"], echo=_lines([]))


def test_failed_step_is_recorded_and_retried(tmp_path):
    recipe = _recipe(tmp_path, f"out: {tmp_path / 'o'}\nsteps:\n  - ingest: {{files: [{tmp_path / 'none.jsonl'}], "
                               "lang: th, market: TH}\n")
    with pytest.raises(CompassError, match=r"step ingest \(1/1\): .*none.jsonl"):
        run(recipe, echo=_lines([]))
    assert ("recipe:ingest", "failed") in _runs(tmp_path / "o" / "compass.duckdb")
    write_jsonl(tmp_path / "none.jsonl", PRODUCTS_TH)
    assert run(recipe, echo=_lines([]))[0].action == "ran"


def test_cli_run_twice_prints_nothing_to_do(cheap):
    run_cli("run", str(cheap))
    proc = run_cli("run", str(cheap))
    assert "nothing to do" in proc.stderr and "Traceback" not in proc.stderr
    bad = run_cli("run", str(cheap), "--from", "splitt", check=False)
    assert bad.returncode == 1 and "did you mean 'split'" in bad.stderr and "Traceback" not in bad.stderr


# -- the chain -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_whole_chain_then_nothing_to_do(tmp_path):
    """ingest -> generate -> filter -> split -> train (static, 4 steps) -> eval -> export, then skip all; a missing
    output (the eval JSON) re-runs that step and the ones after it."""
    from test_train import small_products

    files = []
    for lang, market in (("th", "TH"), ("vi", "VN")):
        src = write_jsonl(tmp_path / f"{lang}.jsonl", small_products(lang, 20))
        files.append(f"  - ingest: {{id: ingest-{lang}, files: [{src}], "
                     f"lang: {lang}, market: {market}}}")
    recipe = _recipe(tmp_path, f"out: {tmp_path / 'o'}\nreport: false\nsteps:\n" + "\n".join(files) + """
  - generate: {route: structured}
  - filter: {stages: quality}
  - split: {test: 0.2, dev: 0.1}
  - train: {out: "{out}/model", max_steps: 4, batch_size: 16, vocab_size: 400, embedding_dim: 32}
  - eval: {model: "{out}/model", json: "{out}/eval.json"}
  - export: {out: "{out}/dataset", split_from_catalog: true}
""")
    first = run(recipe, echo=_lines([]))
    assert all(r.action == "ran" for r in first), [(r.id, r.action) for r in first]
    o = tmp_path / "o"
    assert (o / "model" / "compass_train.json").is_file() and (o / "dataset" / ".compass-manifest.json").is_file()
    assert json.loads((o / "eval.json").read_text())["macro"]
    lines: list[str] = []
    assert all(r.action == "skipped" for r in run(recipe, echo=_lines(lines)))
    assert lines[0].startswith("nothing to do")
    (o / "eval.json").unlink()
    again = run(recipe, echo=_lines([]))
    assert [(r.id, r.action) for r in again][-2:] == [("eval", "ran"), ("export", "ran")]
    assert [r.action for r in again][:-2] == ["skipped"] * (len(again) - 2)
    # train re-run by --force replaces the model it wrote before (train alone refuses a finished folder)
    assert [r.action for r in run(recipe, force=["train"], echo=_lines([]))][-3:] == ["ran"] * 3
