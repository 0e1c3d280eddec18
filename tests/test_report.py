"""`compass report`: works on an empty catalog, after ingest only, and after a full small run; the full run's page
is opened in headless Chromium (Debian's `chromium`, driven by Playwright without its own browsers) and checked as
a person would look at it: every section there, no console error, every chart drawn with data marks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import run_cli, write_jsonl

from compass.catalog.db import Catalog
from compass.report import summary_lines, write_report
from compass.report_data import generation

SECTIONS = ["overview", "funnel", "rejects", "generation", "negatives", "training", "evaluation", "lineage"]
STAGE_SECTIONS = ["funnel", "rejects", "generation", "negatives", "training", "evaluation"]

WORDS = {
    "th": (["รองเท้า", "กระเป๋า", "ครีม"], ["ผ้าใบ", "หนัง", "กันแดด", "สีดำ", "สีขาว", "ผู้หญิง", "ผู้ชาย"]),
    "vi": (["giày", "túi", "kem"], ["thể thao", "da", "chống nắng", "đen", "trắng", "nữ", "nam"]),
    "id": (["sepatu", "tas", "krim"], ["olahraga", "kulit", "tabir surya", "hitam", "putih", "wanita", "pria"]),
}
CATEGORIES = ["Fashion > Shoes", "Fashion > Bags", "Beauty > Sunscreen"]


def products(lang: str, n: int) -> list[dict]:
    """n products, plus what filters reject: two listings with one title (dedup) and an English title (langid)."""
    nouns, adjs = WORDS[lang]
    rows = []
    for i in range(n):
        k = i % 3
        a, b = adjs[i % len(adjs)], adjs[(i * 3 + 1) % len(adjs)]
        rows.append({"id": f"{lang}-{i}", "title": f"{nouns[k]} {a} {b} Brand{i % 5} X{i}", "category": CATEGORIES[k],
                     "attributes": {"brand": f"Brand{i % 5}", "model": f"X{i}", "colour": a},
                     "description": f"{nouns[k]} {a} {b} {nouns[k]} {b} {a} {i}"})
    rows.append({**rows[0], "id": f"{lang}-dup"})
    rows.append({"id": f"{lang}-en", "title": "Waterproof hiking backpack with laptop sleeve and rain cover",
                 "category": CATEGORIES[1], "description": "A large backpack for travel and daily use"})
    return rows


def section_states(html: str) -> dict[str, str]:
    import re

    return dict(re.findall(r'<section id="([a-z]+)" class="report-section" data-status="([a-z-]+)"', html))


def test_report_on_an_empty_catalog_says_not_run(tmp_path, catalog):
    proc = run_cli("report", "--out", str(tmp_path / "r.html"), catalog=catalog)
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    states = section_states(html)
    assert list(states) == SECTIONS
    assert all(states[s] == "not-run" for s in STAGE_SECTIONS), states
    assert "not run" in html and "Traceback" not in proc.stderr
    assert "report: " in proc.stderr and "eval: not run" in proc.stderr
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")  # no network


def test_report_after_ingest_only(tmp_path, catalog):
    f = write_jsonl(tmp_path / "th.jsonl", products("th", 6))
    run_cli("ingest", str(f), "--lang", "th", "--market", "TH", catalog=catalog)
    out = write_report(catalog, tmp_path / "r.html")
    states = section_states(out.read_text(encoding="utf-8"))
    assert all(states[s] == "not-run" for s in STAGE_SECTIONS), states
    lines = summary_lines(catalog)
    assert lines[0].startswith(f"catalog {catalog.name}: 8 products in 1 languages; 0 examples")
    assert any("funnel: not run" in line for line in lines)


def test_report_refuses_to_overwrite_a_file_it_did_not_write(tmp_path, catalog):
    mine = tmp_path / "notes.html"
    mine.write_text("<p>my notes</p>", encoding="utf-8")
    bad = run_cli("report", "--out", str(mine), catalog=catalog, check=False)
    assert bad.returncode == 1 and "not a compass report" in bad.stderr and "Traceback" not in bad.stderr
    assert mine.read_text(encoding="utf-8") == "<p>my notes</p>"
    ok = tmp_path / "r.html"
    run_cli("report", "--out", str(ok), catalog=catalog)
    run_cli("report", "--out", str(ok), catalog=catalog)  # its own report: rewritten
    bad = run_cli("report", "--artefact", str(tmp_path / "missing"), catalog=catalog, check=False)
    assert bad.returncode == 1 and "no such file" in bad.stderr


def test_generation_accounting_per_cell(tmp_path, catalog):
    """requested = valid + rejects + failed per cell; kept examples per 1k tokens from the kept examples of the
    valid requests (rows written as the LLM route writes them)."""
    with Catalog(catalog) as cat, cat.transaction() as con:
        for i, (status, toks) in enumerate([("ok", 400), ("ok", 600), ("reject", 300), ("failed", 0)]):
            con.execute("INSERT INTO generations (request_id, route, lang, persona, task, status, reject_reason, "
                        "prompt_tokens, completion_tokens, attempts) VALUES (?, 'grounded', 'th', 'budget', "
                        "'search_query', ?, ?, ?, ?, 1)",
                        [f"r{i}", status, None if status == "ok" else "parse:invalid_json", toks // 2, toks // 2])
        for j in range(3):
            con.execute("INSERT INTO examples (id, route, lang, task, anchor, positive, class_id, request_id) "
                        "VALUES (?, 'grounded', 'th', 'query2title', ?, 'title', 'c', ?)",
                        [f"e{j}", f"q{j}", "r0" if j < 2 else "r1"])
    with Catalog(catalog, read_only=True) as cat:
        g = generation(cat)
    (cell,) = g["cells"]
    assert (cell["requests"], cell["valid"], cell["rejects"], cell["failed"]) == (4, 2, 1, 1)
    assert cell["tokens"] == 1300 and cell["kept"] == 3
    assert cell["kept_per_1k_tokens"] == round(3000 / 1300, 2)
    assert g["reasons"][0]["reason"] == "parse:invalid_json"


def _chromium() -> str:
    """The system Chromium (Debian's package); .ci/run installs it. Playwright's own browsers are not used."""
    for name in (os.environ.get("COMPASS_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH: install Debian's `chromium` package (.ci/run does) to check the report in a "
                "browser")


def classification_task(folder: Path) -> Path:
    """A small product-category classification task (train/test.jsonl) for the eval's classification side."""
    task = folder / "th_category"
    task.mkdir(parents=True)
    rows = [{"text": p["title"], "label": p["category"]} for lang in WORDS for p in products(lang, 12)[:12]]
    write_jsonl(task / "train.jsonl", rows[::2])
    write_jsonl(task / "test.jsonl", rows[1::2])
    return folder


def look_in_chromium(chromium: str, html: Path, shot: Path) -> dict:
    """Open the page as a person would (1280 px wide), collect console errors, page errors and any network request,
    what each section and chart drew, and save a full-page screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: errors.append(f"network request {r.url}") if not r.url.startswith("file:")
                else None)
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        sections = page.evaluate("""() => [...document.querySelectorAll('section.report-section')].map(s => ({
            id: s.id, status: s.dataset.status, title: s.querySelector('h2').innerText,
            what: s.querySelector('p.what').innerText, height: s.getBoundingClientRect().height}))""")
        charts = page.evaluate("""() => [...document.querySelectorAll('figure.chart')].map(f => {
            const svg = f.querySelector('svg'), box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
            const marks = svg ? [...svg.querySelectorAll('[id^="mark-"]')] : [];
            const drawn = marks.filter(m => {
                const b = m.getBoundingClientRect(); return b.width > 0 || b.height > 0;
            });
            return {name: f.dataset.chart, section: f.closest('section').id, width: box.width, height: box.height,
                    marks: marks.length, drawn: drawn.length};
        })""")
        examples = page.locator("table.reasons ul.examples li").count()
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    return {"errors": errors, "sections": sections, "charts": charts, "examples": examples}


@pytest.mark.slow
def test_full_run_report_in_chromium(tmp_path):
    chromium = _chromium()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cat = run_dir / "compass.duckdb"
    run_cli("init", catalog=cat)
    for lang, market in (("th", "TH"), ("vi", "VN"), ("id", "ID")):
        f = write_jsonl(tmp_path / f"{lang}.jsonl", products(lang, 24))
        run_cli("ingest", str(f), "--lang", lang, "--market", market, catalog=cat)
    run_cli("generate", "--route", "structured", catalog=cat)
    run_cli("filter", catalog=cat)
    run_cli("split", "--test", "0.2", "--dev", "0.1", catalog=cat)
    run_cli("mine", "--model", "minilm", "--per-example", "2", "--quiet", catalog=cat)
    tasks = classification_task(tmp_path / "tasks")
    model = run_dir / "model"
    run_cli("train", "--out", str(model), "--max-steps", "30", "--batch-size", "16", "--eval-tasks", str(tasks),
            catalog=cat)
    run_cli("eval", "minilm", "--tasks", str(tasks), "--json", str(run_dir / "eval_minilm.json"), catalog=cat)
    run_cli("publish", "my-org/report-test", "--to-dir", str(run_dir / "dataset"), "--split-from-catalog",
            catalog=cat)
    out = tmp_path / "report.html"
    proc = run_cli("report", "--out", str(out), catalog=cat)
    assert f"report: {out}" in proc.stderr
    assert "Δ = model - baseline minilm" in proc.stderr, proc.stderr
    lines = summary_lines(cat)
    assert len(lines) <= 10 and lines[1].split() == ["examples", "id", "th", "vi", "all"]
    kept = next(line for line in lines if line.split()[0] == "kept").split()
    with Catalog(cat, read_only=True) as c:
        assert int(kept[-1]) == c.scalar("SELECT count(*) FROM kept_examples")

    html = out.read_text(encoding="utf-8")
    assert "<script" not in html and "src=\"http" not in html and "href=\"http" not in html  # self-contained
    history = json.loads((model / "compass_train.json").read_text(encoding="utf-8"))["fit"]["log_history"]
    # CAM's masked share is logged with the loss (a one-row batch masks nothing: 0 is a possible value)
    assert [h["step"] for h in history][:2] == [1, 10] and all(0 <= h["masked_share"] < 1 for h in history)
    assert any(h["masked_share"] > 0 for h in history)

    shot = tmp_path / "report.png"
    seen = look_in_chromium(chromium, out, shot)
    errors, sections, charts, examples = seen["errors"], seen["sections"], seen["charts"], seen["examples"]
    print(f"report screenshot: {shot}")
    assert not errors, errors
    assert [s["id"] for s in sections] == SECTIONS
    states = {s["id"]: s["status"] for s in sections}
    assert states["generation"] == "not-run"  # the structured route makes no LLM requests
    assert all(v == "ok" for k, v in states.items() if k != "generation"), states
    assert all(s["what"] and s["height"] > 40 for s in sections), sections
    names = {c["name"] for c in charts}
    assert {"funnel", "reasons", "similarity", "refusals", "training", "eval-retrieval",
            "eval-classification"} <= names, names
    for c in charts:
        assert c["width"] > 200 and c["height"] > 80 and c["drawn"] >= 1, c
    assert examples >= 3  # sampled rejected examples under their reasons
    assert shot.stat().st_size > 50_000
