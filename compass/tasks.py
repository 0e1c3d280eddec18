"""The task vocabulary, in one place: every pair task compass makes, its anchor and positive, and its class rule.

A *task* names what an example pairs (`query2title`: a shopper query -> the product title). Its *class rule* says
which examples are valid positives of each other's anchors (the class id CAM masks on, mining refuses on and splits
keep together):

- `item`: the same brand + model across sellers' listings (`item:<lang>:<brand>|<model>`), else the product itself
  (`product:<id>`). Two listings of one item answer each other's queries.
- `category`: the category path in its language (`category:<lang>:<path>`): a category query (or a title's label)
  is answered by every product of the category.
- `inherit`: translations keep their source example's class (see compass.datagen.answers).

Grounded (LLM) tasks are named by their prompt template task (`search_query`) and become a pair task
(`query2title`): `template` holds that link. Adding a task = one `Task(...)` line below (plus a template for an
LLM task); datagen, splits and mining read the rules from here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compass.registry import Registry


def _attrs(row: dict) -> dict:
    attrs = row.get("attributes")
    attrs = json.loads(attrs) if isinstance(attrs, str) else (attrs or {})
    return attrs if isinstance(attrs, dict) else {}


def item_class(row: dict) -> str:
    """Same brand + model -> same item across sellers' listings; otherwise the product itself.

    `row` is a product (id, lang, attributes)."""
    attrs = _attrs(row)
    brand, model = str(attrs.get("brand") or "").strip().lower(), str(attrs.get("model") or "").strip().lower()
    if brand and model and row.get("lang"):
        return f"item:{row['lang']}:{brand}|{model}"
    return f"product:{row['id']}"


def category_class(row: dict) -> str:
    """The class of label-type and category-level tasks: the category path in its language."""
    return f"category:{row['lang']}:{row['category']}"


CLASS_RULES: dict[str, Callable[[dict], str]] = {"item": item_class, "category": category_class}


@dataclass(frozen=True)
class Task:
    name: str
    route: str                  # structured | grounded | translate (the route that makes it first)
    anchor: str                 # what the anchor is (the product field it comes from, or what the LLM writes)
    positive: str               # product field of the positive: title | category
    class_rule: str             # item | category (translations inherit their source's)
    template: str | None = None  # grounded: the prompt template task whose answers become this pair task

    def class_id(self, product: dict) -> str:
        return CLASS_RULES[self.class_rule](product)


class TaskRegistry(Registry):
    """Every task registers in this module: a lookup imports no stage module (compass.registry.load_all would)."""

    def get(self, key: str) -> Task:
        if key not in self._items:
            from compass.errors import CompassError

            raise CompassError(self.unknown(key))
        return self._items[key]

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __iter__(self):
        return iter(sorted(self._items))


tasks: Registry[Task] = TaskRegistry("task")
# Read at import time below without `tasks.items()`, which would import every stage module (some import this one).
_ALL: tuple[Task, ...] = (
    # structured route (no LLM), in the order it builds them
    Task("query2title", "structured", "shopper-style item query (brand/model/noun)", "title", "item"),
    Task("category_query2title", "structured", "shopper-style leaf category + 0-2 values", "title", "category"),
    Task("title2category", "structured", "title", "category", "category"),
    Task("attr_query2title", "structured", "brand + attribute values", "title", "item"),
    Task("desc2title", "structured", "description", "title", "item"),
    # grounded route (LLM on product context); query2title is shared with the structured route
    Task("question2title", "grounded", "a shopper's question", "title", "item", template="product_question"),
    Task("review2title", "grounded", "a short review", "title", "item", template="short_review"),
    Task("title2title", "grounded", "a rewritten title", "title", "item", template="title_rewrite"),
    Task("attr_question2title", "grounded", "a question about one attribute", "title", "item",
         template="attribute_qa"),
)
for _t in _ALL:
    tasks.register(_t)

# Small stable ids (registration order) for losses that pack the task into an integer label (CAM).
TASK_IDS: dict[str, int] = {t.name: i for i, t in enumerate(_ALL)}
STRUCTURED_TASKS: tuple[str, ...] = tuple(t.name for t in _ALL if t.route == "structured")
LEGACY_STRUCTURED_TASKS = ("query2title", "title2category", "attr_query2title", "desc2title")  # before shopper queries
# Template task -> pair task. search_query answers are item queries, the same pair task as the structured route's.
TEMPLATE_TASKS: dict[str, str] = {"search_query": "query2title",
                                  **{t.template: t.name for t in _ALL if t.template}}


def task(name: str) -> Task:
    return tasks.get(name)


def class_id(task_name: str, product: dict) -> str:
    """The class id of a pair of task `task_name` built from `product` (unknown tasks: the item rule)."""
    t = next((t for t in _ALL if t.name == task_name), None)
    return (t.class_id if t else item_class)(product)


def describe() -> list[dict[str, Any]]:
    """The vocabulary as rows (for docs and `--help`)."""
    return [{"task": t.name, "route": t.route, "anchor": t.anchor, "positive": t.positive,
             "class": t.class_rule, "template": t.template} for t in _ALL]
