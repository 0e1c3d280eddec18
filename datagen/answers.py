"""Answers -> examples: parse, validate against the template's schema, map to training pairs.

Grounded tasks and the pairs their answers become (anchor -> positive, class id):

| template task     | pair task            | anchor              | positive        | class id          |
|-------------------|----------------------|---------------------|-----------------|-------------------|
| search_query      | query2title          | each query (1-3)    | product title   | item_class        |
| product_question  | question2title       | the question        | product title   | item_class        |
| short_review      | review2title         | the review          | product title   | item_class        |
| title_rewrite     | title2title          | the rewritten title | original title  | item_class        |
| attribute_qa      | attr_question2title  | the question        | product title   | item_class        |

`item_class` is the structured route's: `item:<lang>:<brand>|<model>` when the product has both, else
`product:<id>`. For a rewritten title that is deliberately the item, not the bare product: another seller's
listing of the same brand+model is just as valid a positive, so CAM must not treat it as a negative.
Attribute QA maps the question to the title, not to the answer: answers are short attribute values ("black",
"42") shared by thousands of products, so question -> answer pairs would make every other "black" in a batch a
false negative that no class id could mask; the answer stays in `generations.parsed`.

Translations keep their source's task, persona, product and class id, and carry `translation_group` (the
source's group, or its id) and `source_example_id`. The class id is inherited rather than set to the group:
every member of a translation group then shares a class (so the group is masked as one), and the source's
wider class is kept too (other listings of the same item, every title of the same category for
title2category), which a group-only class would turn into false negatives.
"""

from __future__ import annotations

import json

from jsonschema import Draft202012Validator

from compass.ids import content_id
from compass.tasks import TEMPLATE_TASKS as PAIR_TASKS  # template task -> pair task (compass/tasks.py)
from compass.tasks import class_id
from compass.text import normalize

_VALIDATORS: dict[str, Draft202012Validator] = {}


def parse_answer(text: str | None, finish_reason: str | None, schema: dict) -> tuple[dict | None, str | None]:
    """(parsed answer, None) or (None, reason code): parse:truncated, parse:invalid_json, schema:<kw>:<path>."""
    try:
        parsed = json.loads(text or "")
    except json.JSONDecodeError:
        return None, "parse:truncated" if finish_reason == "length" else "parse:invalid_json"
    key = json.dumps(schema, sort_keys=True)
    validator = _VALIDATORS.get(key) or _VALIDATORS.setdefault(key, Draft202012Validator(schema))
    err = next(iter(sorted(validator.iter_errors(parsed), key=lambda e: list(e.absolute_path))), None)
    if err is not None:
        path = "/".join(str(p) for p in err.absolute_path) or "root"
        return None, f"schema:{err.validator}:{path}"
    return parsed, None


def _clean(s: str) -> str:
    return " ".join(str(s).split())


def grounded_pairs(task: str, parsed: dict, product: dict) -> list[tuple[str, str, str, str]]:
    """(pair task, anchor, positive, class id) for one valid answer about one product."""
    title, cls = product["title"], class_id(PAIR_TASKS[task], product) if task in PAIR_TASKS else None
    if task == "search_query":
        anchors = parsed["queries"]
    elif task == "product_question":
        anchors = [parsed["question"]]
    elif task == "short_review":
        anchors = [parsed["review"]]
    elif task == "title_rewrite":
        anchors = [parsed["title"]]
    elif task == "attribute_qa":
        anchors = [parsed["question"]]
    else:
        raise ValueError(f"unknown grounded task {task!r}")
    out, seen = [], {normalize(title)}
    for a in anchors:
        a = _clean(a)
        if a and normalize(a) not in seen:  # an anchor equal to its positive teaches nothing
            seen.add(normalize(a))
            out.append((PAIR_TASKS[task], a, title, cls))
    return out


def example_row(route: str, lang: str, market: str | None, task: str, persona: str | None, anchor: str,
                positive: str, class_id: str, **lineage) -> dict:
    return {"id": content_id("example", route, lang, task, anchor, positive), "route": route, "lang": lang,
            "market": market, "task": task, "persona": persona, "anchor": anchor, "positive": positive,
            "class_id": class_id, **lineage}


def translate_pair(parsed: dict, source: dict) -> tuple[str, str] | None:
    anchor, positive = _clean(parsed["anchor"]), _clean(parsed["positive"])
    if not anchor or not positive or normalize(anchor) == normalize(positive):
        return None
    return anchor, positive
