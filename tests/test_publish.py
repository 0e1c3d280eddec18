"""`compass publish --to-dir` / `compass export` on a small catalog built here the way the stages build it:
ingest + structured route through the real CLI, then decisions, a negative set and splits in SQL as the filter,
mining and split stages write them. The folder must load with `datasets` per language, carry a parseable card
listing every config, leave rejected examples out, hold no secret, and be byte-identical when rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from compass.catalog.db import Catalog
from compass.cli import app

SECRETS = {
    "HF_TOKEN": "hf_FAKEhubTOKEN0123456789abcdef",
    "OPENAI_API_KEY": "sk-FAKEopenaiKEY0123456789abcdef",
    "COMPASS_API_KEY": "cmp-FAKEcompassKEY0123456789",
}
URL_PASSWORD = "s3cr3tPASSinURL42"
QUERY_TOKEN = "qTOKENinQUERY0987"

PRODUCTS = {  # (source id, title, category, attributes, description)
    ("th", "TH"): [
        ("th1", "รองเท้าผ้าใบ Nike Air Zoom สีดำ ส่งฟรี", "แฟชั่น > รองเท้า > ผ้าใบ",
         {"brand": "Nike", "model": "Air Zoom", "color": "ดำ"},
         "รองเท้าผ้าใบสำหรับวิ่ง น้ำหนักเบา ระบายอากาศได้ดี ใส่สบาย"),
        ("th2", "หม้อหุงข้าว Sharp 1.8 ลิตร รุ่นใหม่", "เครื่องใช้ไฟฟ้า > ครัว > หม้อหุงข้าว",
         {"brand": "Sharp", "model": "KS-18", "size": "1.8L"},
         "หม้อหุงข้าวไฟฟ้าขนาด 1.8 ลิตร เคลือบสารกันติด ทำความสะอาดง่าย"),
        ("th3", "เสื้อยืดคอกลม ผ้าฝ้าย 100% สีขาว", "แฟชั่น > เสื้อผ้า > เสื้อยืด",
         {"brand": "Uniqlo", "color": "ขาว"}, "เสื้อยืดผ้าฝ้ายแท้ นุ่ม ใส่สบาย ไม่ร้อน เหมาะกับทุกวัน"),
    ],
    ("vi", "VN"): [
        ("vi1", "Giày thể thao Adidas Ultraboost màu trắng chính hãng", "Thời trang > Giày > Thể thao",
         {"brand": "Adidas", "model": "Ultraboost", "color": "trắng"},
         "Giày chạy bộ êm ái, đế boost đàn hồi, phù hợp tập luyện"),
        ("vi2", "Nồi cơm điện Toshiba 1.0 lít giá rẻ", "Điện gia dụng > Nhà bếp > Nồi cơm",
         {"brand": "Toshiba", "model": "RC-10", "size": "1.0L"},
         "Nồi cơm điện dung tích 1 lít, lòng nồi chống dính dễ vệ sinh"),
    ],
    ("fil", "PH"): [
        ("ph1", "Samsung Galaxy A15 cellphone 128GB black", "Electronics > Phones > Smartphones",
         {"brand": "Samsung", "model": "A15", "storage": "128GB"},
         "Bagong cellphone na may malaking baterya at magandang camera"),
        ("ph2", "Rice cooker Hanabishi 1.5 liters murang mura", "Appliances > Kitchen > Rice cookers",
         {"brand": "Hanabishi", "model": "HRC-15", "size": "1.5L"},
         "Rice cooker na madaling linisin at matibay para sa pamilya"),
    ],
}


def invoke(args: list[str]) -> str:
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture
def secret_env(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def demo_catalog(tmp_path, secret_env) -> Path:
    db = tmp_path / "c.duckdb"
    invoke(["init", "--catalog", str(db)])
    for (lang, market), rows in PRODUCTS.items():
        f = tmp_path / f"{lang}.jsonl"
        f.write_text("".join(json.dumps({"id": i, "title": t, "category": c, "attributes": a, "description": d},
                                        ensure_ascii=False) + "\n" for i, t, c, a, d in rows), encoding="utf-8")
        invoke(["ingest", str(f), "--lang", lang, "--market", market, "--catalog", str(db)])
    invoke(["generate", "--route", "structured", "--catalog", str(db)])
    with Catalog(db) as cat:
        # A filter run and an LLM run whose configs carry secrets the way a careless user would pass them.
        with cat.run("filter", {"stages": ["langid", "dedup"], "dedup": {"threshold": 0.8, "num_perm": 128},
                                "api_key": SECRETS["COMPASS_API_KEY"]}) as frun:
            pass
        with cat.run("generate", {"route": "grounded", "model": "qwen3-8b",
                                  "base_url": f"https://user:{URL_PASSWORD}@llm.example.com/v1?token={QUERY_TOKEN}",
                                  "note": f"key was {SECRETS['OPENAI_API_KEY']}"}) as grun:
            pass
        with cat.run("mine", {"model": "minilm", "k": 3}) as mrun:
            pass
        with cat.run("split", {"test": 0.3, "dev": 0.0, "seed": 0}) as srun:
            pass
        ex = cat.query("SELECT id, lang, task, anchor, product_id, class_id FROM examples ORDER BY id")
        with cat.transaction() as con:
            # one grounded generation, with a secret in its sampling / messages as a leak trap
            con.execute("INSERT INTO generations (request_id, run_id, route, template_id, template_version, lang, "
                        "task, model, backend, messages, sampling, status, prompt_tokens, completion_tokens) VALUES "
                        "('req1', ?, 'grounded', 'grounded_query', '3', 'th', 'query2title', 'qwen3-8b', 'vllm', "
                        "?, ?, 'ok', 120, 30)",
                        [grun.id, json.dumps([{"role": "user", "content": "hi"}]),
                         json.dumps({"temperature": 0.7, "max_tokens": 256, "api_key": SECRETS["OPENAI_API_KEY"],
                                     "extra_headers": {"Authorization": "Bearer " + SECRETS["HF_TOKEN"]}})])
            # reject: one thai and one vi example (langid) + one dedup reject; keep everything else explicitly
            rejected = {[e for e in ex if e["lang"] == "th"][0]["id"], [e for e in ex if e["lang"] == "vi"][0]["id"]}
            dup = [e for e in ex if e["lang"] == "fil"][0]["id"]
            for e in ex:
                bad = e["id"] in rejected
                con.execute("INSERT INTO decisions (example_id, stage, keep, reason, score, params_hash, run_id) "
                            "VALUES (?, 'langid', ?, ?, 0.9, 'lid00', ?)",
                            [e["id"], not bad, "langid:wrong_lang:en" if bad else "ok", frun.id])
                con.execute("INSERT INTO decisions (example_id, stage, keep, reason, params_hash, run_id) "
                            "VALUES (?, 'dedup', ?, ?, 'dd00', ?)",
                            [e["id"], e["id"] != dup, f"dedup:near_dup_of:{ex[0]['id']}" if e["id"] == dup else "ok",
                             frun.id])
            con.execute("INSERT INTO negative_sets (set_id, model, params, run_id) VALUES ('negset1', 'minilm', ?, ?)",
                        [json.dumps({"k": 3, "guards": {"same_class": True, "margin": 0.95},
                                     "hf_token": SECRETS["HF_TOKEN"]}), mrun.id])
            kept = [e for e in ex if e["id"] not in rejected | {dup}]
            for e in kept:
                others = [o["anchor"] for o in kept if o["lang"] == e["lang"] and o["class_id"] != e["class_id"]][:2]
                for r, txt in enumerate(others):
                    con.execute("INSERT INTO negatives (set_id, example_id, rank, negative_text, run_id) VALUES "
                                "('negset1', ?, ?, ?, ?)", [e["id"], r + 1, txt, mrun.id])
            # what the mining, dedup and split stages record next to their main tables
            con.execute("INSERT INTO encoder_models (model_fp, model, dim, run_id) VALUES ('minilm', "
                        "'all-MiniLM-L6-v2', 384, ?)", [mrun.id])
            for e in kept:
                con.execute("INSERT INTO mined_examples VALUES ('negset1', ?, ?, ?, 10, 2, 3, 1, 4, 0, true, ?)",
                            [e["id"], e["lang"], e["lang"], mrun.id])
            con.execute("INSERT INTO dedup_members (example_id, field, scope, text_hash, shingling, sig_params, seq, "
                        "cluster_id, dup_of, exact, run_id) VALUES (?, 'anchor', 'fil/x', 'h', 'word2', 'sig128', 1, "
                        "'anchor:a', ?, false, ?)", [dup, ex[0]["id"], frun.id])
            con.execute("INSERT INTO split_policies (policy_hash, test, dev, seed, grouping, run_id) VALUES "
                        "('pol1', 0.3, 0.0, 0, 'product-v1', ?)", [srun.id])
            products = sorted({e["product_id"] for e in ex})
            for e in ex:
                # split by product, the way the split stage groups: 7 products -> train, train, test, dev, ...
                split = ("train", "train", "test", "dev")[products.index(e["product_id"]) % 4]
                con.execute("INSERT INTO splits (example_id, split, group_id, policy_hash, run_id) VALUES "
                            "(?, ?, ?, 'pol1', ?)", [e["id"], split, e["product_id"], srun.id])
    return db


def expected(db: Path) -> dict:
    with Catalog(db, read_only=True) as cat:
        rows = cat.query("SELECT e.id, e.lang, s.split FROM kept_examples e JOIN splits s ON s.example_id = e.id")
        rejected = {r["example_id"] for r in cat.query("SELECT example_id FROM decisions WHERE NOT keep")}
        negs = {r["example_id"]: r["n"] for r in cat.query(
            "SELECT example_id, list(negative_text ORDER BY rank) AS n FROM negatives GROUP BY example_id")}
    out: dict = {"rejected": rejected, "negs": negs, "by": {}}
    for r in rows:
        out["by"].setdefault(r["lang"], {}).setdefault(r["split"], set()).add(r["id"])
    assert {s for v in out["by"].values() for s in v} == {"train", "dev", "test"}  # the fixture covers all three
    return out


def read_card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    return meta, text


def assert_no_secrets(folder: Path) -> None:
    needles = list(SECRETS.values()) + [URL_PASSWORD, QUERY_TOKEN]
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for p in files:
        data = p.read_bytes()
        for s in needles:
            assert s.encode() not in data, f"{s} leaked into {p}"


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_publish_to_dir_loads_per_language(demo_catalog, tmp_path):
    import datasets

    out = tmp_path / "pub"
    invoke(["publish", "me/compass-demo", "--to-dir", str(out), "--split-from-catalog", "--with-negatives",
            "--license", "cc-by-4.0", "--catalog", str(demo_catalog)])
    exp = expected(demo_catalog)
    meta, text = read_card(out)
    assert meta["license"] == "cc-by-4.0"
    assert meta["language"] == ["th", "vi", "fil"]
    assert {"sentence-similarity", "text-retrieval", "feature-extraction"} <= set(meta["task_categories"])
    assert meta["size_categories"] == ["n<1K"]
    assert [c["config_name"] for c in meta["configs"]] == ["th", "vi", "fil"]
    for cfg in meta["configs"]:
        assert {d["split"] for d in cfg["data_files"]} == set(exp["by"][cfg["config_name"]])

    for lang, splits in exp["by"].items():
        ds = datasets.load_dataset(str(out), lang, cache_dir=str(tmp_path / "hf"))
        assert set(ds) == set(splits)
        for split, ids in splits.items():
            d = ds[split]
            assert d.column_names[:3] == ["anchor", "positive", "negatives"]
            assert {"task", "persona", "market", "class_id", "route", "example_id", "product_id", "template_id",
                    "template_version", "request_id", "run_id", "translation_group"} <= set(d.column_names)
            got = d["example_id"]
            assert got == sorted(ids)  # right rows, sorted, nothing extra
            assert not set(got) & exp["rejected"]
            assert set(d["lang"]) == {lang}
            for row in d:
                assert row["negatives"] == exp["negs"].get(row["example_id"], [])
    # provenance: funnel, filters, LID license, miner params, templates, run ids, version
    assert "CC BY-SA 3.0" in text and "lid.176" in text
    assert "| langid |" in text and "| dedup |" in text and "langid:wrong_lang" in text
    assert '"margin": 0.95' in text and "minilm" in text
    assert "qwen3-8b" in text and "vllm" in text and "structured" in text
    assert '"threshold":0.8' in text  # dedup parameters via the filter run config
    assert "| fil | anchor | word2 | sig128 | 1 | 0 | 1 | 1 |" in text  # dedup clusters
    assert "all-MiniLM-L6-v2" in text and "refused_margin" in text  # encoder + guard refusals
    assert "product-v1" in text  # split policy
    prov = json.loads((out / "compass_provenance.json").read_text())
    funnel = {r["lang"]: r for r in prov["funnel"]}
    assert funnel["th"]["rejected:langid"] == 1 and funnel["fil"]["rejected:dedup"] == 1
    assert funnel["th"]["kept"] == funnel["th"]["generated"] - 1
    assert sum(funnel[x]["published"] for x in funnel) == sum(len(v) for s in exp["by"].values() for v in s.values())
    assert {r["command"] for r in prov["runs"]} >= {"generate", "filter", "mine", "split"}
    assert prov["sampling"][0]["sampling"]["max_tokens"] == 256  # a token count is not a secret
    assert_no_secrets(out)


def test_republish_is_byte_identical_and_card_has_no_clock(demo_catalog, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--split-from-catalog", "--with-negatives", "--catalog", str(demo_catalog)]
    invoke(["publish", "me/x", "--to-dir", str(a), *args])
    first = tree_bytes(a)
    invoke(["publish", "me/x", "--to-dir", str(a), *args])  # over its own previous build
    invoke(["publish", "me/x", "--to-dir", str(b), *args])
    assert tree_bytes(a) == first == tree_bytes(b)
    assert "generated at" not in first["README.md"].decode().lower()


def test_without_splits_everything_is_train_and_shards_are_bounded(demo_catalog, tmp_path):
    import datasets

    out = tmp_path / "o"
    invoke(["publish", "me/x", "--to-dir", str(out), "--langs", "th", "--max-rows-per-shard", "2",
            "--catalog", str(demo_catalog)])
    shards = sorted(p.name for p in (out / "data" / "th").iterdir())
    with Catalog(demo_catalog, read_only=True) as cat:
        kept = cat.scalar("SELECT count(*) FROM kept_examples WHERE lang = 'th'")
    n = -(-kept // 2)
    assert shards == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    sizes = [pq.read_metadata(out / "data" / "th" / s).num_rows for s in shards]
    assert sum(sizes) == kept and max(sizes) <= 2 and min(sizes) >= 1
    ds = datasets.load_dataset(str(out), "th", cache_dir=str(tmp_path / "hf"))
    assert list(ds) == ["train"] and ds["train"].num_rows == kept
    assert "negatives" not in ds["train"].column_names
    assert not (out / "data" / "vi").exists()
    # a smaller rebuild leaves no stale shard behind
    invoke(["publish", "me/x", "--to-dir", str(out), "--langs", "th", "--catalog", str(demo_catalog)])
    assert sorted(p.name for p in (out / "data" / "th").iterdir()) == ["train-00000-of-00001.parquet"]


def test_export_jsonl_loads_with_datasets(demo_catalog, tmp_path):
    import datasets

    out = tmp_path / "j"
    invoke(["export", "--format", "jsonl", "--out", str(out), "--split-from-catalog", "--with-negatives",
            "--negatives", "negset1", "--max-negatives", "1", "--catalog", str(demo_catalog)])
    exp = expected(demo_catalog)
    meta, _ = read_card(out)
    assert all(d["path"].endswith(".jsonl") for c in meta["configs"] for d in c["data_files"])
    ds = datasets.load_dataset(str(out), "vi", cache_dir=str(tmp_path / "hf"))
    assert set(ds) == set(exp["by"]["vi"])
    for split, ids in exp["by"]["vi"].items():
        assert ds[split]["example_id"] == sorted(ids)
        assert all(len(x) <= 1 for x in ds[split]["negatives"])
    first = (out / "data" / "vi" / "train-00000-of-00001.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert list(json.loads(first))[:3] == ["anchor", "positive", "negatives"]
    assert_no_secrets(out)


def test_user_errors_are_one_line(demo_catalog, tmp_path):
    runner = CliRunner()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    cases = [
        (["publish", "me/x", "--to-dir", str(junk)], "did not write"),
        (["publish", "me/x", "--to-dir", str(tmp_path / "n"), "--langs", "km"], "no kept examples in km"),
        (["publish", "me/x", "--to-dir", str(tmp_path / "n"), "--with-negatives", "--negatives", "nope"],
         "no such negative set"),
        (["export", "--out", str(tmp_path / "n"), "--format", "csv"], "use parquet or jsonl"),
    ]
    for args, msg in cases:
        res = runner.invoke(app, [*args, "--catalog", str(demo_catalog)])
        assert res.exit_code != 0
        assert msg in str(res.exception), (args, res.exception)
    assert (junk / "notes.txt").read_text() == "mine"


def test_shard_count_bounds_rows_and_bytes():
    import pyarrow as pa

    from compass.publish import BuildOptions, shard_count

    t = pa.table({"anchor": ["x" * 1000] * 4})
    assert shard_count(t, BuildOptions()) == 1
    assert shard_count(t, BuildOptions(max_rows_per_shard=3)) == 2
    assert shard_count(t, BuildOptions(max_shard_bytes=2100)) == 2        # ~4 KB of strings -> 2 shards
    assert shard_count(t, BuildOptions(max_shard_bytes=1)) == 4           # never more shards than rows
    assert shard_count(t.slice(0, 0), BuildOptions()) == 1


def err(res) -> str:
    return f"{res.output}{res.exception}"


def test_user_folder_is_refused_and_left_untouched(demo_catalog, tmp_path):
    """Issue 14.1: a folder holding only names compass uses (data/, README.md) but not made by compass was wiped."""
    runner = CliRunner()
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "precious.csv").write_text("id,price\n1,9.99\n")
    (proj / "README.md").write_text("# my project\n")
    before = tree_bytes(proj)
    for args in (["publish", "me/x", "--to-dir", str(proj)], ["export", "--out", str(proj)],
                 ["publish", "me/x", "--to-dir", str(proj), "--overwrite"], ["export", "--out", str(proj),
                                                                              "--overwrite"]):
        res = runner.invoke(app, [*args, "--catalog", str(demo_catalog)])
        assert res.exit_code == 1, (args, res.output)
        assert "compass did not make it" in err(res) and "new or empty folder" in err(res)
        assert tree_bytes(proj) == before
        assert sorted(p.relative_to(proj).as_posix() for p in proj.rglob("*")) == ["README.md", "data",
                                                                                     "data/precious.csv"]


def test_compass_folder_is_rebuilt_removing_only_manifest_files(demo_catalog, tmp_path):
    from compass.publish_folder import MARKER
    from compass.publish_hub import local_files

    runner = CliRunner()
    out, cat = tmp_path / "o", ["--catalog", str(demo_catalog)]
    invoke(["export", "--out", str(out), "--langs", "th", "--max-rows-per-shard", "1", *cat])
    man = json.loads((out / MARKER).read_text())["files"]
    assert set(man) == {p for p in tree_bytes(out) if p != MARKER} and len(man) > 3
    assert MARKER not in local_files(out)  # bookkeeping is never uploaded

    # unchanged compass folder: rebuilt without a flag, stale shards removed
    invoke(["export", "--out", str(out), "--langs", "th", *cat])
    assert sorted(p.name for p in (out / "data" / "th").iterdir()) == ["train-00000-of-00001.parquet"]

    # a user file inside a compass folder: refused, nothing changes; --overwrite rebuilds and keeps it
    (out / "data" / "th" / "notes.csv").write_text("mine")
    before = tree_bytes(out)
    res = runner.invoke(app, ["export", "--out", str(out), "--langs", "vi", *cat])
    assert res.exit_code == 1 and "data/th/notes.csv was not written by compass" in err(res)
    assert "--overwrite" in err(res) and tree_bytes(out) == before
    invoke(["export", "--out", str(out), "--langs", "vi", "--overwrite", *cat])
    assert (out / "data" / "th" / "notes.csv").read_text() == "mine"
    assert sorted(p.relative_to(out).as_posix() for p in (out / "data").rglob("*.parquet")) == [
        "data/vi/train-00000-of-00001.parquet"]
    assert "data/th/notes.csv" not in json.loads((out / MARKER).read_text())["files"]

    # an edited card: refused; --overwrite replaces it
    (out / "data" / "th" / "notes.csv").unlink()
    (out / "README.md").write_text("my notes")
    res = runner.invoke(app, ["publish", "me/x", "--to-dir", str(out), *cat])
    assert res.exit_code == 1 and "README.md changed since compass wrote it" in err(res)
    assert (out / "README.md").read_text() == "my notes"
    invoke(["publish", "me/x", "--to-dir", str(out), "--overwrite", *cat])
    assert (out / "README.md").read_text().startswith("---")


def test_manifest_cannot_be_used_to_remove_other_files(demo_catalog, tmp_path):
    """A tampered manifest listing a path outside the folder removes nothing outside it."""
    from compass.publish_folder import MARKER

    out, victim = tmp_path / "o", tmp_path / "victim.txt"
    victim.write_text("keep")
    invoke(["export", "--out", str(out), "--langs", "th", "--catalog", str(demo_catalog)])
    doc = json.loads((out / MARKER).read_text())
    doc["files"]["../victim.txt"] = None
    (out / MARKER).write_text(json.dumps(doc))
    invoke(["export", "--out", str(out), "--langs", "th", "--catalog", str(demo_catalog)])
    assert victim.read_text() == "keep"
