"""LLM-route pieces that need no engine: answer parsing, pair mapping and class ids, plans, retry timing.
(The backends themselves run against real vLLM in test_datagen_vllm.py.)"""

from __future__ import annotations

import json
import random

from conftest import run_cli

from compass.catalog.db import Catalog
from compass.datagen.answers import grounded_pairs, parse_answer
from compass.datagen.openai_backend import OpenAIBackend, retry_after_seconds
from compass.datagen.plan import plan_grounded
from compass.prompts.library import bundled_library

SCHEMA = bundled_library().get("search_query/budget_shopper/th").schema
PRODUCT = {"id": "p1", "lang": "th", "title": "Nike Air Max 270 สีดำ",
           "attributes": '{"brand": "Nike", "model": "Air Max 270"}'}


def test_parse_answer_reasons():
    assert parse_answer('{"queries": ["a b"]}', "stop", SCHEMA) == ({"queries": ["a b"]}, None)
    assert parse_answer('{"queries": ["a', "length", SCHEMA) == (None, "parse:truncated")
    assert parse_answer('{"queries": ["a"\x01]}', "stop", SCHEMA) == (None, "parse:invalid_json")
    assert parse_answer('{"queries": []}', "stop", SCHEMA) == (None, "schema:minItems:queries")
    assert parse_answer('{"q": ["ab"]}', "stop", SCHEMA)[1].startswith("schema:")


def test_pairs_and_class_ids_follow_the_structured_route():
    pairs = grounded_pairs("search_query", {"queries": ["nike 270", "NIKE  270", "Nike Air Max 270 สีดำ"]}, PRODUCT)
    assert pairs == [("query2title", "nike 270", PRODUCT["title"], "item:th:nike|air max 270")]  # dupes/title dropped
    bare = {**PRODUCT, "attributes": '{"brand": "Nike"}'}
    assert grounded_pairs("title_rewrite", {"title": "รองเท้า Nike"}, bare)[0][3] == "product:p1"
    qa = grounded_pairs("attribute_qa", {"attribute": "size", "question": "มีไซส์ 42 ไหม", "answer": "มี"}, PRODUCT)
    assert qa[0][:3] == ("attr_question2title", "มีไซส์ 42 ไหม", PRODUCT["title"])


def test_retry_after_and_backoff():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert 0 <= retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({}) is None
    be = OpenAIBackend("m", base_url="http://x", backoff_base=1.0, backoff_max=10.0)
    rng = random.Random(0)
    delays = [be._delay(a, None, rng) for a in (1, 2, 3, 4, 5, 6)]
    assert all(0.5 * min(10, 2 ** (a - 1)) <= d <= min(10, 2 ** (a - 1)) for a, d in zip(range(1, 7), delays))
    assert be._delay(1, 7.0, rng) == 7.0  # Retry-After wins over a shorter backoff


def test_plan_is_deterministic_and_dry_run_sends_nothing(tmp_path, catalog, products_file):
    run_cli("ingest", str(products_file), "--lang", "th", "--market", "TH", catalog=catalog)
    with Catalog(catalog) as cat:
        a = plan_grounded(cat, bundled_library(), model="m", n=7, seed=3)
        b = plan_grounded(cat, bundled_library(), model="m", n=7, seed=3)
        c = plan_grounded(cat, bundled_library(), model="m2", n=7, seed=3)
    assert [p.request_id for p in a] == [p.request_id for p in b] and len({p.request_id for p in a}) == 7
    assert not {p.request_id for p in a} & {p.request_id for p in c}  # the model is part of the id
    out = run_cli("generate", "--route", "grounded", "--n", "7", "--model", "m", "--dry-run", catalog=catalog)
    assert "7 requests" in out.stdout
    counted = run_cli("sql", "SELECT count(*) AS n FROM generations", "--json", catalog=catalog)
    assert json.loads(counted.stdout)[0]["n"] == 0
    bad = run_cli("generate", "--route", "grounded", "--personas", "pirate", "--model", "m", catalog=catalog,
                  check=False)
    assert bad.returncode == 1 and "--personas 'pirate'" in bad.stderr
    nokey = run_cli("generate", "--route", "grounded", "--n", "1", "--model", "m", catalog=catalog, check=False,
                    env={"OPENAI_API_KEY": "", "COMPASS_API_KEY": ""})
    assert nokey.returncode == 1 and "OPENAI_API_KEY" in nokey.stderr


def test_structured_stage_picks_up_new_changed_and_reparametrised_products(tmp_path):
    """The structured stage's pending rule: products whose current version has no record for these params."""
    from conftest import PRODUCTS_TH, write_jsonl

    import compass
    from compass.catalog.ingest import ingest_file
    from compass.datagen.structured_run import structured
    from compass.runner import finished_run

    f = write_jsonl(tmp_path / "th.jsonl", PRODUCTS_TH)
    with Catalog(tmp_path / "c.duckdb", create=True) as cat:
        ingest_file(cat, f, "th", "TH", None, "fail", "r")
        first = structured(cat, progress=False)
        assert first.read == 3 and first.written["examples"] > 3 and first.written["structured_products"] == 3
        assert first.run_id and finished_run(cat, "structured", first.params_hash) == first.run_id
        assert cat.scalar("SELECT count(DISTINCT run_id) FROM examples") == 1
        assert structured(cat, progress=False).nothing_to_do  # rerun: nothing pending
        assert structured(cat, {"seed": 1}, progress=False).read == 3  # another parameter: judged again
        rows = [dict(p) for p in PRODUCTS_TH] + [{"id": "th-4", "title": "กระติกน้ำสแตนเลส 750ml", "category": "บ้าน"}]
        rows[0]["title"] = "Samsung Galaxy A55 5G 8/256GB สีน้ำเงิน"
        ingest_file(cat, write_jsonl(f, rows), "th", "TH", None, "fail", "r2")
        again = compass.run(cat, "structured", {}, progress=False)  # the registered stage, as a recipe runs it
        assert again.read == 2  # the new product and the edited one
        ingest_file(cat, write_jsonl(f, PRODUCTS_TH + rows[3:]), "th", "TH", None, "fail", "r3")  # edited back
        assert compass.run(cat, "structured", {}, progress=False).read == 1
        pid = cat.scalar("SELECT id FROM products WHERE source_id = 'th-1'")
        # the first version's seed-0 examples are current again (seed 1's stay stale until a seed-1 run)
        assert cat.scalar("SELECT count(*) FROM decisions d JOIN examples e ON e.id = d.example_id WHERE "
                          "e.product_id = ? AND e.run_id = ? AND d.reason = 'product:current'", [pid, first.run_id])
        assert not cat.scalar("SELECT count(*) FROM decisions d JOIN examples e ON e.id = d.example_id WHERE "
                              "e.product_id = ? AND e.run_id = ? AND NOT d.keep", [pid, first.run_id])


def test_bad_structured_and_llm_configs_are_one_clear_line():
    import pytest
    from pydantic import ValidationError

    from compass.datagen.backends import make_backend
    from compass.datagen.generate import GenerateConfig
    from compass.datagen.structured import StructuredPairs
    from compass.errors import CompassError

    with pytest.raises(CompassError, match="--tasks 'query2tilte' is not a structured task: use any of query2title"):
        StructuredPairs(tasks=["query2tilte"])
    with pytest.raises(CompassError, match="unknown LLM backend 'vlm' .did you mean 'vllm'"):
        make_backend("vlm", "m")
    with pytest.raises(ValidationError, match="concurency"):  # an option the backend does not have
        GenerateConfig(model="m", options={"concurency": 4})
    cfg = GenerateConfig(model="m", backend="vllm", options={"engine_args": {"dtype": "float32"}})
    assert cfg.options == {"batch_size": 256, "engine_args": {"dtype": "float32"}}  # defaults spelt out


def test_one_task_vocabulary():
    from compass.datagen.answers import PAIR_TASKS
    from compass.datagen.structured import TASKS
    from compass.tasks import class_id, tasks
    from compass.train.splits import group_of

    assert set(TASKS) | set(PAIR_TASKS.values()) <= set(tasks)
    assert class_id("query2title", PRODUCT) == "item:th:nike|air max 270"
    assert class_id("title2category", {**PRODUCT, "category": "Shoes"}) == "category:th:Shoes"
    # splits group by the same item rule as the class id of item tasks; since product-v2 without the language
    row = {"id": "e", "pid": "p1", "p_lang": "th", "p_attributes": PRODUCT["attributes"]}
    assert group_of(row, "product-v1") == class_id("query2title", PRODUCT)
    assert group_of(row) == "item:*:" + class_id("query2title", PRODUCT).split(":", 2)[2]
