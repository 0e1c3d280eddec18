"""The template library: templates composed from data files, rendered in a sandbox.

A template is one (task, persona, language) combination, composed from four YAML files under `templates/`:
`base.yaml` (the frame of the system and user messages), `tasks/<task>.yaml` (instruction, request, JSON
schema of the answer, the pair type its answers become), `personas/<persona>.yaml` (role and voice) and
`langs/<lang>.yaml` (language name, writing instructions, one sample product and 1-3 example answers per task
in that language). Composing instead of writing 9 x 5 x 5 files by hand keeps one fact in one place: fixing
the Thai instructions fixes the 25 Thai templates.

Id: `task/persona/lang` (e.g. `search_query/budget_shopper/th`); version: `base.task.persona.lang`, the
`version:` fields of the four files (e.g. `1.1.2.1`). Bump a file's version whenever a change alters a rendered
message, a schema or an example; `compass prompts lint` compares each file with `versions.lock.yaml` and fails
on a change without a bump (`--update-lock` records the new state).

Grounding data is untrusted (sellers write titles): it goes inside a `<product>` block as JSON with every `<`
escaped as \\u003c, so nothing inside can close the block or open a fake one, and the system message says the
block is data, never instructions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from compass.errors import CompassError
from compass.langs import LANGS
from compass.yamlfile import load_mapping

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
DESCRIPTION_CHARS = 600  # long descriptions cost tokens and add little to a query or a question


def templates_dir() -> Path:
    return Path(str(resources.files("compass.prompts") / "templates"))


def data_json(obj: Any) -> str:
    """JSON for the inside of a delimited block: `<` escaped so data can never close or open a block."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True).replace("<", "\\u003c")


@lru_cache(maxsize=512)
def _compile(source: str):
    return _ENV.from_string(source)


def _render(source: str, where: str, variables: dict) -> str:
    try:
        return _compile(source).render(**variables).strip()
    except TemplateError as e:
        raise CompassError(f"{where}: template error: {e} (check the {{{{ ... }}}} names used there)") from None


def _need(data: dict, key: str, path: Path, kind: type = str) -> Any:
    if key not in data or data[key] is None:
        raise CompassError(f"{path}: missing key {key!r}")
    if not isinstance(data[key], kind):
        raise CompassError(f"{path}: key {key!r} must be a {kind.__name__}")
    return data[key]


@dataclass(frozen=True)
class Template:
    """One (task, persona, language) template; `render` turns a context into chat messages."""

    id: str
    version: str
    task: dict
    persona: dict
    lang: dict
    base: dict
    files: tuple[str, ...] = field(default=())

    @property
    def route(self) -> str:
        return self.task["route"]

    @property
    def schema(self) -> dict:
        return self.task["schema"]

    @property
    def examples(self) -> list[dict]:
        """[{'context': ..., 'answer': ..., 'source_lang': ...}] in this template's language."""
        out = []
        for ex in self.lang["examples"].get(self.task["task"], []):
            if self.task["context"] == "product":
                out.append({"context": self.lang["example_product"], "answer": ex, "source_lang": None})
            else:
                out.append({"context": ex.get("source"), "answer": ex.get("answer"),
                            "source_lang": ex.get("source_lang")})
        return out

    def sample_context(self) -> tuple[dict, str | None]:
        """A context to render with when no real one is given (lint, `prompts show`)."""
        ex = self.examples[0]
        return ex["context"], ex["source_lang"]

    def render(self, context: dict, *, source_lang: str | None = None, compact: bool = False) -> list[dict]:
        """Messages for one request: system, the examples as user/assistant turns (unless compact), user."""
        lang = {**self.lang, "code": self.lang["lang"]}
        src_name = LANGS[source_lang]["name"] if source_lang else "the source language"
        variables = {"lang": lang, "persona": self.persona, "source_lang_name": src_name}
        task = {**self.task, "instruction": _render(self.task["instruction"], f"{self.id}: instruction", variables)}
        variables.update(task=task, schema_json=json.dumps(self.schema, ensure_ascii=False, sort_keys=True))
        system = _render(self.base["system"], f"{self.id}: system", variables)
        msgs = [{"role": "system", "content": system}]
        if not compact:
            for ex in self.examples:
                ex_vars = {**variables, "source_lang_name": LANGS[ex["source_lang"]]["name"] if ex["source_lang"]
                           else src_name, "context_json": data_json(ex["context"])}
                msgs.append({"role": "user", "content": _render(self.base["user"], f"{self.id}: example", ex_vars)})
                msgs.append({"role": "assistant", "content": json.dumps(ex["answer"], ensure_ascii=False)})
        msgs.append({"role": "user", "content": _render(self.base["user"], f"{self.id}: user",
                                                        {**variables, "context_json": data_json(context)})})
        return msgs


def product_context(row: dict, compact: bool = False) -> dict:
    """The grounding context of a catalog product: what a shopper sees on the listing."""
    attrs = row.get("attributes")
    attrs = json.loads(attrs) if isinstance(attrs, str) else (attrs or {})
    ctx = {"title": row["title"], "category": row["category"], "attributes": attrs}
    desc = (row.get("description") or "").strip()
    if desc and not compact:
        ctx["description"] = desc[:DESCRIPTION_CHARS]
    if row.get("price") is not None and not compact:
        ctx["price"] = f"{row['price']:g} {row.get('currency') or ''}".strip()
    return ctx


@dataclass
class Library:
    """Every template composed from a templates folder."""

    root: Path
    base: dict
    tasks: dict[str, dict]
    personas: dict[str, dict]
    langs: dict[str, dict]
    hashes: dict[str, str]
    templates: dict[str, Template]

    def get(self, template_id: str) -> Template:
        if template_id not in self.templates:
            near = [t for t in self.templates if t.split("/")[0] == template_id.split("/")[0]][:3]
            hint = f" (e.g. {', '.join(near)})" if near else " (see `compass prompts list`)"
            raise CompassError(f"no template {template_id!r}: ids are task/persona/lang{hint}")
        return self.templates[template_id]

    def select(self, route: str, langs: list[str] | None = None, personas: list[str] | None = None,
               tasks: list[str] | None = None) -> list[Template]:
        """Templates of `route` in the chosen cells; unknown names fail with the known ones listed."""
        known_tasks = [t for t, d in self.tasks.items() if d["route"] == route]
        known_personas = [p for p, d in self.personas.items() if d["route"] == route]
        for name, chosen, known in (("--tasks", tasks, known_tasks), ("--personas", personas, known_personas)):
            bad = [x for x in (chosen or []) if x not in known]
            if bad:
                raise CompassError(f"{name} {bad[0]!r}: not a {route} {name[2:-1]}; use any of {', '.join(known)}")
        out = []
        for _tid, t in sorted(self.templates.items()):
            if t.route != route or (langs and t.lang["lang"] not in langs):
                continue
            if (tasks and t.task["task"] not in tasks) or (personas and t.persona["persona"] not in personas):
                continue
            out.append(t)
        return out


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_library(root: str | Path | None = None) -> Library:
    """Read and compose the templates under `root` (default: the bundled ones)."""
    root = Path(root) if root else templates_dir()
    if not (root / "base.yaml").exists():
        raise CompassError(f"{root}: no base.yaml: not a templates folder")
    base = load_mapping(root / "base.yaml")
    for k in ("system", "user"):
        _need(base, k, root / "base.yaml")
    _need(base, "version", root / "base.yaml", int)
    parts: dict[str, dict[str, dict]] = {"tasks": {}, "personas": {}, "langs": {}}
    key = {"tasks": "task", "personas": "persona", "langs": "lang"}
    hashes = {"base.yaml": _file_hash(root / "base.yaml")}
    for folder in parts:
        for path in sorted((root / folder).glob("*.yaml")):
            data = load_mapping(path)
            name = _need(data, key[folder], path)
            if name != path.stem:
                raise CompassError(f"{path}: {key[folder]}: {name!r} must match the file name {path.stem!r}")
            _need(data, "version", path, int)
            if folder == "tasks":
                for k in ("route", "context", "instruction", "request"):
                    _need(data, k, path)
                _need(data, "schema", path, dict)
            elif folder == "personas":
                for k in ("route", "role", "voice"):
                    _need(data, k, path)
            else:
                if name not in LANGS:
                    raise CompassError(f"{path}: lang {name!r} is not one of {', '.join(LANGS)}")
                for k in ("name", "native_name", "market_name", "instructions"):
                    _need(data, k, path)
                _need(data, "example_product", path, dict)
                _need(data, "examples", path, dict)
            data["_path"] = str(path)
            parts[folder][name] = data
            hashes[f"{folder}/{path.name}"] = _file_hash(path)
    templates = {}
    for tname, task in parts["tasks"].items():
        for pname, persona in parts["personas"].items():
            if persona["route"] != task["route"]:
                continue
            for lname, lang in parts["langs"].items():
                tid = f"{tname}/{pname}/{lname}"
                version = f"{base['version']}.{task['version']}.{persona['version']}.{lang['version']}"
                templates[tid] = Template(tid, version, task, persona, lang, base,
                                          (task["_path"], persona["_path"], lang["_path"]))
    return Library(root, base, parts["tasks"], parts["personas"], parts["langs"], hashes, templates)


@lru_cache(maxsize=1)
def bundled_library() -> Library:
    return load_library()
