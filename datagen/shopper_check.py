"""`compass generate --check`: validate the rule files and replay every rule on its own example.

A rule whose example output is not among the strings the rule can produce from the example input is reported with
the file and key, so the data and the code cannot drift apart silently.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from compass.datagen.shopper import (
    Shopper,
    _replace_variants,
    casefold_variants,
    leaf_words,
    neighbours,
    punctuation_variants,
    strip_variants,
    typo_variants,
    unit_variants,
    word_order_variants,
)
from compass.datagen.shopper_rules import RULES_DIR, parse_rule_file


def rule_checks(lang: str, rules_dir: Path | str | None = None) -> list[tuple[str, str, str, str, list[str]]]:
    """(file, key, example input, example output, what the rule produces) for every rule that applies to `lang`."""
    folder = Path(rules_dir or RULES_DIR)
    sh = Shopper(lang, folder)
    r = sh.rules
    own_path = folder / f"{lang}.yaml"
    own = parse_rule_file(own_path) if own_path.exists() else None
    generic = parse_rule_file(folder / "generic.yaml")

    def src(key_owner) -> str:
        return own_path.name if own is not None and key_owner else "generic.yaml"

    out = []
    for sm in r.strip_marks:
        mine = own is not None and sm in own.strip_marks
        out.append((src(mine), f"strip_marks.{sm.id}", *sm.example, strip_variants(sm.example[0], sm)))
    for fam in ("abbreviations", "code_switch"):
        for e in getattr(r, fam):
            mine = own is not None and e in getattr(own, fam)
            out.append((src(mine), f"{fam}.{e.src}", *e.example,
                        _replace_variants(e.example[0], e.src, e.to, sh.spaces)))
    if r.brands:
        b_file = src(own is not None and own.brands is not None)
        ex = r.brands.example
        out.append((b_file, "brands.example", *ex, [v for _, vs in sh.brand_variants(ex[0]) for v in vs]))
        for b in r.brands.table:  # every spelling must be found and produced, both ways
            for spelling in b.local:
                got = [v for _, vs in sh.brand_variants(f"{b.latin} 1") for v in vs]
                out.append((b_file, f"brands.{b.latin}", f"{b.latin} 1", f"{spelling} 1", got))
                back = [v for _, vs in sh.brand_variants(f"{spelling} 1") for v in vs]
                out.append((b_file, f"brands.{b.latin}", f"{spelling} 1", f"{b.latin} 1", back))
    groups = {g.id: g for g in r.units}
    for f, file_rules in (("generic.yaml", generic), (own_path.name, own)):
        for u in (file_rules.units if file_rules else []):
            out.append((f, f"units.{u.id}", *u.example, unit_variants(u.example[0], groups[u.id])))
    for f, file_rules in (("generic.yaml", generic), (own_path.name, own)):
        t = file_rules.typos if file_rules else None
        for kb in (t.keyboards if t else []):
            out.append((f, f"typos.keyboards.{kb.id}", *kb.example,
                        typo_variants(kb.example[0], "neighbour", neighbours(kb.rows))))
        if t and t.drop_example:
            out.append((f, "typos.drop_example", *t.drop_example, typo_variants(t.drop_example[0], "drop", {})))
        if t and t.double_example:
            out.append((f, "typos.double_example", *t.double_example,
                        typo_variants(t.double_example[0], "double", {})))
    def owner(name: str) -> str:
        return own_path.name if own is not None and getattr(own, name) is not None else "generic.yaml"

    if r.word_order:
        inp, want = r.word_order.example  # input parts separated by " | "
        got = [" ".join(v) for v in word_order_variants([p.strip() for p in inp.split("|")])]
        out.append((owner("word_order"), "word_order", inp, want, got))
    if r.casefold:
        out.append((owner("casefold"), "casefold", *r.casefold.example, casefold_variants(r.casefold.example[0])))
    if r.punctuation:
        out.append((owner("punctuation"), "punctuation", *r.punctuation.example,
                    punctuation_variants(r.punctuation.example[0], r.punctuation)))
    if r.category_query and r.category_query.example:
        path, want = r.category_query.example
        sides = {leaf_words(path, random.Random(i)) for i in range(16)}
        out.append((owner("category_query"), "category_query", path, want, sorted(sides)))
    if r.item_query:
        for p in r.item_query.patterns:
            bad = set(re.findall(r"{(\w+)}", p)) - {"brand", "model", "noun", "attr"}
            if bad:
                out.append((owner("item_query"), "item_query.patterns", p, "", [f"unknown field {{{sorted(bad)[0]}}}"]))
    return out


def check_folder(rules_dir: Path | str | None = None, langs: list[str] | None = None) -> tuple[list[str], int]:
    """(problems, rules checked) for the folder: every file parses, every rule reproduces its example."""
    folder = Path(rules_dir or RULES_DIR)
    files = sorted(folder.glob("*.yaml"))
    for f in files:
        parse_rule_file(f)  # raises, naming file, key and fix
    langs = langs or [f.stem for f in files if f.stem != "generic"]
    problems, n = [], 0
    for lang in langs:
        for file, key, inp, want, got in rule_checks(lang, folder):
            n += 1
            if want not in got:
                shown = ", ".join(repr(g) for g in got[:3]) or "nothing: the rule does not match the input"
                problems.append(f"{folder / file}: key {key!r}: example {inp!r} -> {want!r} is not what the rule "
                                f"produces ({shown}): fix the example or the rule")
    return list(dict.fromkeys(problems)), n
