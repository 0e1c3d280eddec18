"""Shopper-query rules: the YAML schema (pydantic), loading, merging and validation.

Rules are data: `datagen/rules/<lang>.yaml` per language plus `generic.yaml`, which every language inherits
(rates, typo keyboard, word order, case folding, punctuation, unit groups, query patterns). A language file adds its
own tables and may override any rate. Every rule carries a real `example: [input, output]`; a test applies each rule
to its example, so the data cannot drift from what the code does.

A language without a file gets the generic rules and one warning naming the missing file. A malformed file raises
CompassError naming the file, the key and the fix (unknown keys are named with the nearest valid one).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compass.errors import CompassError
from compass.yamlfile import load_mapping

RULES_DIR = Path(__file__).parent / "rules"
log = logging.getLogger("compass.datagen.shopper")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Example = tuple[str, str]  # (input, output): a real shopper string before and after the rule


class Rates(_Strict):
    """Probabilities; per query unless noted. generic.yaml documents the defaults, a language file overrides."""

    units: float | None = Field(None, ge=0, le=1)          # rewrite one number+unit ("1kg" -> "1000 g")
    abbreviations: float | None = Field(None, ge=0, le=1)  # per matching table entry
    code_switch: float | None = Field(None, ge=0, le=1)    # per matching table entry
    brands: float | None = Field(None, ge=0, le=1)         # brand in the other script, when the table has it
    word_order: float | None = Field(None, ge=0, le=1)
    casefold: float | None = Field(None, ge=0, le=1)
    punctuation: float | None = Field(None, ge=0, le=1)
    typo: float | None = Field(None, ge=0, le=1)           # one typo event in the query
    typo_neighbour: float | None = Field(None, ge=0)       # relative weights of the typo kinds
    typo_drop: float | None = Field(None, ge=0)
    typo_double: float | None = Field(None, ge=0)


class StripMarks(_Strict):
    """Drop diacritics / tone marks: NFD, remove `drop` characters (or every combining mark with all_marks), map."""

    id: str
    all_marks: bool = False
    drop: str = ""
    map: dict[str, str] = Field(default_factory=dict)
    rate: float = Field(ge=0, le=1)
    example: Example


class Replace(_Strict):
    """A table entry: `src` in the query becomes one of `to` (abbreviation, slang or an English word)."""

    src: str
    to: list[str] = Field(min_length=1)
    example: Example


class Brand(_Strict):
    """Latin name <-> local-script spellings shoppers type (first = most common)."""

    latin: str
    local: list[str] = Field(min_length=1)


class Brands(_Strict):
    source: str  # how the list was chosen (e.g. the most common brands of the bundled samples)
    example: Example
    table: list[Brand] = Field(min_length=1)


class UnitGroup(_Strict):
    """One dimension (mass, volume, ...): `factors` to its base unit; `aliases` spell each unit."""

    id: str
    factors: dict[str, float] = Field(default_factory=dict)
    aliases: dict[str, list[str]]
    example: Example


class Keyboard(_Strict):
    """Key rows of the layout, unshifted, left to right; each row sits half a key right of the one above."""

    id: str
    rows: list[str] = Field(min_length=2)
    example: Example


class Typos(_Strict):
    keyboards: list[Keyboard] = Field(default_factory=list)
    drop_example: Example | None = None
    double_example: Example | None = None


class Simple(_Strict):
    example: Example


class Punctuation(_Strict):
    drop: str = ""   # removed ("levi's" -> "levis")
    space: str = ""  # become a space ("me-o" -> "me o")
    example: Example


class CategoryQuery(_Strict):
    """Category-level query: the leaf category's words + 0-2 attribute values (class = the category)."""

    max_attributes: int | None = Field(None, ge=0, le=2)
    attribute_keys: list[str] | None = None
    attribute_format: dict[str, str] = Field(default_factory=dict)  # key -> "size {v}"
    example: Example | None = None


class ItemQuery(_Strict):
    """Item-level query patterns over {brand} {model} {noun} {attr}; a pattern whose fields are missing is skipped."""

    patterns: list[str] = Field(min_length=1)


class RuleFile(_Strict):
    lang: str
    about: str | None = None
    rates: Rates = Rates()
    spaces: bool | None = None  # words separated by spaces (word-boundary matching, word-order rule)
    typos: Typos | None = None
    word_order: Simple | None = None
    casefold: Simple | None = None
    punctuation: Punctuation | None = None
    strip_marks: list[StripMarks] = Field(default_factory=list)
    abbreviations: list[Replace] = Field(default_factory=list)
    code_switch: list[Replace] = Field(default_factory=list)
    brands: Brands | None = None
    units: list[UnitGroup] = Field(default_factory=list)
    item_query: ItemQuery | None = None
    category_query: CategoryQuery | None = None

    @field_validator("strip_marks", "units")
    @classmethod
    def _unique_ids(cls, v):
        ids = [r.id for r in v]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate id {sorted(dup)[0]!r}: give every rule its own id")
        return v


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at `loc` (walks nested models; list indices are skipped)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            for inner in (cand, *getattr(cand, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
                    break
            else:
                continue
            break
    return list(model.model_fields)


def parse_rule_file(path: Path) -> RuleFile:
    """Read and validate one rule file; CompassError naming file, key and fix on any problem."""
    data = load_mapping(path, "a mapping of rule families (lang:, rates:, abbreviations: ...)")
    try:
        rf = RuleFile.model_validate(data)
    except ValidationError as e:
        # An unknown key first: a misspelt key also shows up as the missing one it was meant to be.
        err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
        loc, where = err["loc"], _where(err["loc"])
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(RuleFile, loc)
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            fix = f"did you mean {near[0]!r}?" if near else f"valid keys here: {', '.join(valid)}"
            raise CompassError(f"{path}: unknown key {where!r}: {fix}") from None
        if err["type"] == "missing":
            raise CompassError(f"{path}: key {where!r} is missing: add it (every rule needs its fields, "
                               "and `example: [input, output]`)") from None
        raise CompassError(f"{path}: key {where!r}: {err['msg']} (got {err.get('input')!r}): fix the value") from None
    if path.stem != "generic" and rf.lang != path.stem:
        raise CompassError(f"{path}: key 'lang' is {rf.lang!r} but the file is named {path.name}: make them agree")
    return rf


def _merge(generic: RuleFile, lang: RuleFile | None, code: str) -> RuleFile:
    """Language rules on top of the generic ones: rates and single families override, tables concatenate, unit
    groups merge by id (a language adds its spellings of kg, ml, ...)."""
    if lang is None:
        return generic.model_copy(update={"lang": code})
    rates = {**generic.rates.model_dump(exclude_none=True), **lang.rates.model_dump(exclude_none=True)}
    units = {u.id: u for u in generic.units}
    extra = []
    for u in lang.units:
        if u.id in units:
            g = units[u.id]
            aliases = {k: list(g.aliases.get(k, [])) for k in g.aliases}
            for k, v in u.aliases.items():
                aliases.setdefault(k, [])
                aliases[k] += [a for a in v if a not in aliases[k]]
            units[u.id] = g.model_copy(update={"aliases": aliases, "factors": {**g.factors, **u.factors}})
            extra.append(u)  # the language's own example is checked too
        else:
            units[u.id] = u
    typos = generic.typos or Typos()
    if lang.typos:
        typos = typos.model_copy(update={"keyboards": typos.keyboards + lang.typos.keyboards})
    cq = generic.category_query or CategoryQuery()
    if lang.category_query:
        cq = cq.model_copy(update={k: v for k, v in lang.category_query.model_dump(exclude_unset=True).items()})
    fields = {}
    for name in ("word_order", "casefold", "punctuation", "brands", "item_query", "spaces"):
        fields[name] = getattr(lang, name) if getattr(lang, name) is not None else getattr(generic, name)
    return RuleFile(
        lang=code, about=lang.about, rates=Rates(**rates), typos=typos, category_query=cq,
        strip_marks=generic.strip_marks + lang.strip_marks, abbreviations=generic.abbreviations + lang.abbreviations,
        code_switch=generic.code_switch + lang.code_switch, units=list(units.values()), **fields,
    )


_warned: set[str] = set()


@lru_cache(maxsize=64)
def _load(lang: str, rules_dir: str) -> tuple[RuleFile, str]:
    folder = Path(rules_dir)
    gpath = folder / "generic.yaml"
    if not gpath.exists():
        raise CompassError(f"{gpath}: the generic shopper rules are missing: restore it, or point --rules at a "
                           "folder with generic.yaml")
    generic = parse_rule_file(gpath)
    lpath = folder / f"{lang}.yaml"
    own = parse_rule_file(lpath) if lpath.exists() else None
    if own is None and str(lpath) not in _warned:
        _warned.add(str(lpath))
        log.warning("no shopper rule file %s: %s queries get the generic rules only (add %s.yaml to add "
                    "language rules)", lpath, lang, lang)
    merged = _merge(generic, own, lang)
    digest = hashlib.sha256(json.dumps(merged.model_dump(mode="json"), sort_keys=True,
                                       ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
    return merged, digest


def load_rules(lang: str, rules_dir: Path | str | None = None) -> tuple[RuleFile, str]:
    """(merged rules for `lang`, their hash). Cached per (lang, folder)."""
    return _load(lang, str(Path(rules_dir or RULES_DIR).resolve()))


def check_rules(rules_dir: Path | str | None = None) -> list[str]:
    """Validate every rule file of a folder (generic.yaml + one per language); returns the file names checked."""
    folder = Path(rules_dir or RULES_DIR)
    if not folder.is_dir():
        raise CompassError(f"--rules {folder}: no such folder: pass a folder holding generic.yaml and <lang>.yaml")
    files = sorted(folder.glob("*.yaml"))
    if not (folder / "generic.yaml").exists():
        raise CompassError(f"{folder / 'generic.yaml'}: missing: every rules folder needs generic.yaml")
    for f in files:
        parse_rule_file(f)
    return [f.name for f in files]
