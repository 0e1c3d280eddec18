"""LLM-route pieces that need no engine: answer parsing, pair mapping and class ids, plans, retry timing.
(The backends themselves run against real vLLM in test_datagen_vllm.py.)"""

from __future__ import annotations

import json
import random

from compass.catalog.db import Catalog
from compass.datagen.answers import grounded_pairs, parse_answer
from compass.datagen.openai_backend import OpenAIBackend, retry_after_seconds
from compass.datagen.plan import plan_grounded
from compass.prompts.library import bundled_library
from conftest import run_cli

SCHEMA = bundled_library().get("search_query/budget_shopper/th").schema
PRODUCT = {"id": "p1", "lang": "th", "title": "Nike Air Max 270 สีดำ", "attributes": '{"brand": "Nike", "model": "Air Max 270"}'}


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
    assert json.loads(run_cli("sql", "SELECT count(*) AS n FROM generations", "--json", catalog=catalog).stdout)[0]["n"] == 0
    bad = run_cli("generate", "--route", "grounded", "--personas", "pirate", "--model", "m", catalog=catalog,
                  check=False)
    assert bad.returncode == 1 and "--personas 'pirate'" in bad.stderr
    nokey = run_cli("generate", "--route", "grounded", "--n", "1", "--model", "m", catalog=catalog, check=False,
                    env={"OPENAI_API_KEY": "", "COMPASS_API_KEY": ""})
    assert nokey.returncode == 1 and "OPENAI_API_KEY" in nokey.stderr
