"""The catalog's held-out split as retrieval tasks that a shop's search box would pose.

Per language, two kinds of task:

- **title search**, one task per query task (``catalog_test_<lang>_<task>``: query2title, category_query2title,
  attr_query2title, desc2title, and any other task whose positive is its product's title): each distinct anchor of
  the split is a query, and it is ranked against the titles of EVERY kept product of its language (a product with
  at least one kept example, whatever its split), not only against the split's positives. Ranking a query among a
  few hundred held-out titles that were all written to match some query saturates (a 20-step static model scored
  99.3 nDCG@10); among the whole shop the other listings of the category and brand compete, as they do for a
  shopper.
- **category labels** (``catalog_test_<lang>_category``): title2category anchors ranked among the split's category
  labels, as before (a label is not a product title, so the two are never mixed).

Relevance follows the class id, the equivalence class of valid positives: a title is relevant to a query when its
product belongs to the query's class, i.e. carries any example of that class id. That is the item (brand + model)
or the product itself for item-level tasks, and the category for category_query2title, whose class is shared by
every product of the category. The query's own product is always relevant. Identical titles are one document,
relevant when any of their products is.
"""

from __future__ import annotations

from collections import defaultdict

from compass.ids import text_hash

CATEGORY_TASK = "title2category"

# Everything the title-search tasks read, in one statement: the split's title queries (a kept example whose
# positive is its product's title), the corpus (titles of kept products of the queries' languages) and class
# membership (product ids carrying each query class, from every example: membership is a fact about the product,
# not a filter decision; only an example of a superseded product version, stage 'product', no longer speaks for
# it). Parameters: split, then the optional language list.
_TITLE_SQL = """
WITH q AS (
    SELECT k.lang, k.task, k.anchor, k.class_id, k.product_id
    FROM kept_examples k
    JOIN splits s ON s.example_id = k.id
    JOIN products p ON p.id = k.product_id
    WHERE s.split = ? AND k.task <> 'title2category' AND k.positive = p.title AND p.lang = k.lang {lang_filter}
),
corpus AS (
    SELECT DISTINCT p.id AS product_id, p.lang, p.title
    FROM products p
    WHERE p.lang IN (SELECT DISTINCT lang FROM q)
      AND EXISTS (SELECT 1 FROM kept_examples k WHERE k.product_id = p.id)
),
members AS (
    SELECT DISTINCT e.class_id, e.product_id
    FROM examples e
    WHERE e.product_id IS NOT NULL AND e.class_id IN (SELECT DISTINCT class_id FROM q)
      AND NOT EXISTS (SELECT 1 FROM decisions d
                      WHERE d.example_id = e.id AND d.stage = 'product' AND NOT d.keep AND d.enforced)
)
SELECT 'q' AS part, lang, task, anchor AS text, class_id, product_id FROM q
UNION ALL SELECT 'c', lang, NULL, title, NULL, product_id FROM corpus
UNION ALL SELECT 'm', NULL, NULL, NULL, class_id, product_id FROM members
"""

_CATEGORY_SQL = """
SELECT k.lang, k.anchor, k.positive, k.class_id
FROM kept_examples k JOIN splits s ON s.example_id = k.id
WHERE s.split = ? AND k.task = 'title2category' {lang_filter}
ORDER BY k.id
"""


def _lang_filter(langs: list[str] | None) -> tuple[str, list]:
    if not langs:
        return "", []
    return f"AND k.lang IN ({', '.join('?' for _ in langs)})", list(langs)


def title_search_tasks(cat, split: str = "test", langs: list[str] | None = None) -> list[tuple[str, str, tuple]]:
    """(name, lang, (queries, corpus, qrels)) per language and query task; ids are text hashes."""
    where, params = _lang_filter(langs)
    rows = cat.query(_TITLE_SQL.format(lang_filter=where), [split, *params])
    titles: dict[str, dict[str, str]] = defaultdict(dict)  # lang -> product id -> title
    members: dict[str, set[str]] = defaultdict(set)  # class id -> product ids
    queries = [r for r in rows if r["part"] == "q"]
    for r in rows:
        if r["part"] == "c":
            titles[r["lang"]][r["product_id"]] = r["text"]
        elif r["part"] == "m":
            members[r["class_id"]].add(r["product_id"])
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in queries:
        grouped[(r["lang"], r["task"])].append(r)
    out = []
    # one corpus object per language, shared by its tasks, so an evaluator can encode it once (evaluate_model does)
    corpora = {lang: {text_hash(t): t for t in shop.values()} for lang, shop in titles.items()}
    for (lang, task), qs in sorted(grouped.items()):
        shop, corpus = titles[lang], corpora[lang]
        qtext, qrels = {}, defaultdict(set)
        for r in qs:
            qid = text_hash(r["text"])
            qtext[qid] = r["text"]
            relevant = (members[r["class_id"]] | {r["product_id"]}) & shop.keys()
            qrels[qid] |= {text_hash(shop[p]) for p in relevant}
        out.append((f"catalog_{split}_{lang}_{task}", lang, (qtext, corpus, dict(qrels))))
    return out


def category_tasks(cat, split: str = "test", langs: list[str] | None = None) -> list[tuple[str, str, tuple]]:
    """title2category per language: titles ranked among the split's category labels (a label is relevant to every
    title of its class)."""
    where, params = _lang_filter(langs)
    rows = cat.query(_CATEGORY_SQL.format(lang_filter=where), [split, *params])
    by_lang: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_lang[r["lang"]].append(r)
    out = []
    for lang, rs in sorted(by_lang.items()):
        corpus = {text_hash(r["positive"]): r["positive"] for r in rs}
        docs_of_class: dict[str, set[str]] = defaultdict(set)
        for r in rs:
            docs_of_class[r["class_id"]].add(text_hash(r["positive"]))
        queries, qrels = {}, defaultdict(set)
        for r in rs:
            qid = text_hash(r["anchor"])
            queries[qid] = r["anchor"]
            qrels[qid] |= docs_of_class[r["class_id"]]
        out.append((f"catalog_{split}_{lang}_category", lang, (queries, corpus, dict(qrels))))
    return out


def catalog_retrieval_tasks(cat, split: str = "test", langs: list[str] | None = None) -> list[tuple[str, str, tuple]]:
    """Every catalog task of a split as (name, lang, (queries, corpus, qrels)), sorted by language then name."""
    return sorted(title_search_tasks(cat, split, langs) + category_tasks(cat, split, langs), key=lambda t: (t[1], t[0]))
