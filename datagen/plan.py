"""Plans for the LLM routes: which requests to send, each with a deterministic id.

A plan is a pure function of the catalog, the template library and the options (langs, personas, tasks, n,
seed, sampling, model): the same command builds the same request ids, which is what makes a rerun resume.
Request id = content_id('request', template id@version, rendered messages, sampling, seed, model).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from compass.catalog.db import Catalog
from compass.datagen.backends import LLMRequest, Sampling
from compass.errors import CompassError
from compass.ids import content_id
from compass.langs import LANGS
from compass.prompts.grid import assign, spread
from compass.prompts.library import Library, Template, product_context


@dataclass
class Planned:
    """One request plus what the answer needs to become examples."""

    request: LLMRequest
    route: str
    template: Template
    lang: str
    persona: str | None
    task: str
    row: dict                 # the product (grounded) or the source example (translate)
    model: str

    @property
    def request_id(self) -> str:
        return self.request.request_id


def request_seed(seed: int, *parts) -> int:
    return int(content_id("seed", seed, *parts), 16) % (2 ** 31 - 1)


def _make(t: Template, messages: list[dict], sampling: Sampling, seed: int, model: str) -> LLMRequest:
    rid = content_id("request", f"{t.id}@{t.version}", messages, sampling.as_dict(), seed, model)
    return LLMRequest(rid, messages, t.schema, sampling, seed, schema_name=t.task["task"])


def plan_grounded(cat: Catalog, lib: Library, *, model: str, langs: list[str] | None = None,
                  personas: list[str] | None = None, tasks: list[str] | None = None, n: int | None = None,
                  seed: int = 0, sampling: Sampling = Sampling(), compact: bool = False) -> list[Planned]:
    templates = lib.select("grounded", langs, personas, tasks)
    where, params = "", []
    if langs:
        where, params = f"WHERE lang IN ({', '.join('?' * len(langs))})", list(langs)
    products = cat.query(f"SELECT id, lang, market, title, category, attributes, description, price, currency "
                         f"FROM products {where} ORDER BY id", params)
    if not products:
        raise CompassError("no products to ground prompts on" + (f" in {', '.join(langs)}" if langs else "") +
                           ": ingest a product catalog first (`compass ingest FILE --lang .. --market ..`)")
    by_id = {p["id"]: p for p in products}
    items: dict[str, list[str]] = {}
    for p in products:
        items.setdefault(p["lang"], []).append(p["id"])
    templates = [t for t in templates if t.lang["lang"] in items]  # languages with no products get no cells
    by_cell = {(t.lang["lang"], t.persona["persona"], t.task["task"]): t for t in templates}
    counts = spread(len(products) if n is None else n, list(by_cell), seed)
    out = []
    for slot in assign(counts, items, seed):
        t, product = by_cell[slot.cell], by_id[slot.item]
        messages = t.render(product_context(product, compact), compact=compact)
        s = request_seed(seed, t.id, product["id"], slot.k)
        out.append(Planned(_make(t, messages, sampling, s, model), "grounded", t, slot.cell[0], slot.cell[1],
                           slot.cell[2], product, model))
    return out


def plan_translate(cat: Catalog, lib: Library, *, model: str, source_langs: list[str], langs: list[str] | None = None,
                   tasks: list[str] | None = None, n: int | None = None, seed: int = 0,
                   sampling: Sampling = Sampling(), compact: bool = False) -> list[Planned]:
    """Translate kept examples of `source_langs` (not themselves translations) into each target language."""
    targets = [lg for lg in (langs or list(LANGS)) if lg not in source_langs]
    if not targets:
        raise CompassError("--langs names no target language besides the source languages "
                           f"({', '.join(source_langs)}): pass e.g. --langs th,vi --source-langs en")
    where = [f"lang IN ({', '.join('?' * len(source_langs))})", "route <> 'translate'"]
    params: list = list(source_langs)
    if tasks:
        where.append(f"task IN ({', '.join('?' * len(tasks))})")
        params += tasks
    sources = cat.query(f"SELECT * FROM kept_examples WHERE {' AND '.join(where)} ORDER BY id", params)
    if not sources:
        raise CompassError(f"no kept examples in {', '.join(source_langs)} to translate"
                           + (f" for tasks {', '.join(tasks)}" if tasks else "")
                           + ": run `compass generate --route structured` (or grounded) for the source language first")
    by_id = {s["id"]: s for s in sources}
    templates = {t.lang["lang"]: t for t in lib.select("translate", targets)}
    cells = [(lg, templates[lg].persona["persona"], "translate") for lg in targets]
    counts = spread(len(sources) * len(targets) if n is None else n, cells, seed)
    ids = [s["id"] for s in sources]
    out = []
    for slot in assign(counts, {lg: ids for lg in targets}, seed):
        t, src = templates[slot.cell[0]], by_id[slot.item]
        messages = t.render({"anchor": src["anchor"], "positive": src["positive"]}, source_lang=src["lang"],
                            compact=compact)
        s = request_seed(seed, t.id, src["id"], slot.k)
        out.append(Planned(_make(t, messages, sampling, s, model), "translate", t, slot.cell[0], src["persona"],
                           src["task"], src, model))
    return out


def estimate_tokens(text: str, tokenizer=None) -> int:
    """Prompt tokens: exact with a tokenizer, else ~4 UTF-8 bytes per token (Thai/Khmer/Burmese/Lao letters
    are 3 bytes each, which BPE vocabularies of multilingual LLMs cover at roughly one token per letter
    cluster, so bytes/4 stays in the right range for every script)."""
    if tokenizer is not None:
        return len(tokenizer.encode(text).ids)
    return max(1, len(text.encode("utf-8")) // 4)


def dry_run_table(planned: list[Planned], tokenizer=None) -> list[dict]:
    """Requests and estimated prompt tokens per (lang, persona, task) cell."""
    reqs: Counter = Counter()
    toks: Counter = Counter()
    for p in planned:
        cell = (p.lang, p.template.persona["persona"], p.template.task["task"])
        reqs[cell] += 1
        toks[cell] += sum(estimate_tokens(m["content"], tokenizer) + 4 for m in p.request.messages)
    return [{"lang": c[0], "persona": c[1], "task": c[2], "requests": reqs[c], "prompt_tokens_est": toks[c]}
            for c in sorted(reqs)]


def load_tokenizer(model: str | None):
    """The model's own tokenizer.json when --model is a local folder (exact counts); else None."""
    import os

    path = os.path.join(model, "tokenizer.json") if model else None
    if not path or not os.path.exists(path):
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    return Tokenizer.from_file(path)


def market_of(lang: str) -> str:
    return LANGS[lang]["market"]


