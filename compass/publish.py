"""Build the dataset folder a user publishes (or keeps): one config per language, deterministic shards, a card.

The folder is the unit of truth: `compass publish --to-dir` stops after writing it, `compass publish` uploads
exactly it, `compass export` writes it as Parquet or JSON Lines. Layout:

    README.md                               card: YAML metadata (configs per language) + provenance
    compass_provenance.json                 the same provenance, machine-readable
    data/<lang>/<split>-00000-of-0000N.<ext>
    .compass-manifest.json                  what compass wrote (sha256 each): the only files a rebuild removes

Same catalog in, same bytes out: rows are sorted by example id, the Parquet writer settings are fixed, and
nothing time-dependent (no "generated at") is written. That is what lets a re-publish upload nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compass.catalog.db import Catalog
from compass.errors import CompassError
from compass.langs import LANGS

SPLIT_ORDER = ("train", "dev", "test")
FORMATS = ("parquet", "jsonl")
CARD = "README.md"
PROVENANCE = "compass_provenance.json"

# Column order of every shard: the pair, what it is, then lineage back to the prompt that produced it.
LINEAGE = ["example_id", "product_id", "template_id", "template_version", "request_id", "run_id",
           "translation_group", "source_example_id"]
BASE_COLUMNS = ["anchor", "positive", "task", "persona", "lang", "market", "class_id", "route", *LINEAGE]
COLUMN_DOCS = {
    "anchor": "query / source text", "positive": "the matching text", "negatives": "hard negatives, best first",
    "task": "query2title, title2category, ...", "persona": "shopper persona (null for the structured route)",
    "lang": "language code", "market": "ISO 3166 market", "class_id": "equivalence class of valid positives",
    "route": "structured | grounded | translate", "example_id": "catalog example id (content hash)",
    "product_id": "source product", "template_id": "prompt template", "template_version": "template version",
    "request_id": "LLM request (generations table)", "run_id": "compass run that wrote the example",
    "translation_group": "shared by a source pair and its translations",
    "source_example_id": "the example a translation was made from",
}


@dataclass
class BuildOptions:
    langs: list[str] | None = None          # None: every language with kept examples
    split_from_catalog: bool = False        # False: every kept example goes to train
    with_negatives: bool = False
    negatives: str = "latest"               # negative set id, or latest
    max_negatives: int | None = None
    fmt: str = "parquet"
    max_rows_per_shard: int = 100_000
    max_shard_bytes: int = 256 * 2**20     # uncompressed Arrow bytes; the Hub suggests shards well under 1 GB
    license: str = "other"
    repo_id: str | None = None

    def validate(self) -> None:
        if self.fmt not in FORMATS:
            raise CompassError(f"--format {self.fmt!r}: use parquet or jsonl")
        if self.max_rows_per_shard < 1 or self.max_shard_bytes < 1:
            raise CompassError("--max-rows-per-shard and --max-shard-mb must be positive")
        if self.max_negatives is not None and self.max_negatives < 1:
            raise CompassError("--max-negatives must be at least 1")


@dataclass
class BuildResult:
    folder: Path
    files: list[str]                                          # relative paths, sorted
    rows: dict[str, dict[str, int]] = field(default_factory=dict)  # lang -> split -> rows
    negative_set: str | None = None
    unassigned: dict[str, int] = field(default_factory=dict)  # lang -> kept examples without a split row

    def summary(self) -> dict:
        d = asdict(self)
        d["folder"] = str(self.folder)
        return d


def schema(with_negatives: bool) -> pa.Schema:
    cols = BASE_COLUMNS[:2] + (["negatives"] if with_negatives else []) + BASE_COLUMNS[2:]
    return pa.schema([(c, pa.list_(pa.string()) if c == "negatives" else pa.string()) for c in cols])


def resolve_negative_set(cat: Catalog, name: str) -> str:
    """`latest` -> the newest set that has negatives; otherwise check the id exists."""
    if name == "latest":
        from compass.filters.mine_stats import latest_negative_set  # the one rule, shared with train

        set_id = latest_negative_set(cat)
        if set_id is None:
            raise CompassError("--with-negatives: the catalog has no negative set with negatives: run "
                               "`compass mine` first, or publish without --with-negatives")
        return set_id
    if not cat.scalar("SELECT count(*) FROM negative_sets WHERE set_id = ?", [name]):
        known = [r["set_id"] for r in cat.query("SELECT set_id FROM negative_sets ORDER BY set_id")]
        raise CompassError(f"--negatives {name!r}: no such negative set (known: {', '.join(known) or 'none'}; "
                           "or use latest)")
    return name


def select_langs(cat: Catalog, langs: list[str] | None) -> list[str]:
    have = [r["lang"] for r in cat.query("SELECT DISTINCT lang FROM kept_examples ORDER BY lang")]
    if langs is None:
        out = have
    else:
        missing = [x for x in langs if x not in have]
        if missing:
            raise CompassError(f"--langs: no kept examples in {', '.join(missing)} (the catalog has "
                               f"{', '.join(have) or 'none'}): generate and filter them first, or drop them")
        out = list(langs)
    if not out:
        raise CompassError("nothing to publish: the catalog has no kept examples (run `compass generate` first)")
    # Hub / card order: compass's language order, not alphabetical.
    return sorted(out, key=lambda x: list(LANGS).index(x) if x in LANGS else len(LANGS))


def rows_for_lang(cat: Catalog, lang: str, opts: BuildOptions, set_id: str | None) -> pa.Table:
    """Kept examples of one language with their split (and negatives), sorted by example id."""
    split_sql = "s.split" if opts.split_from_catalog else "'train'"
    join = "JOIN splits s ON s.example_id = e.id" if opts.split_from_catalog else ""
    neg_cols, neg_join, params = "", "", []
    if set_id is not None:
        limit = "" if opts.max_negatives is None else "QUALIFY row_number() OVER (PARTITION BY example_id " \
                                                      "ORDER BY rank) <= ?"
        neg_join = ("LEFT JOIN (SELECT example_id, list(negative_text ORDER BY rank) AS negatives FROM "
                    f"(SELECT * FROM negatives WHERE set_id = ? {limit}) GROUP BY example_id) n "
                    "ON n.example_id = e.id")
        neg_cols = ", coalesce(n.negatives, []::VARCHAR[]) AS negatives"
        params += [set_id] + ([opts.max_negatives] if opts.max_negatives is not None else [])
    sql = (f"SELECT {split_sql} AS split, e.id AS example_id, e.anchor, e.positive, e.task, e.persona, e.lang, "
           "e.market, e.class_id, e.route, e.product_id, e.template_id, e.template_version, e.request_id, "
           "e.run_id, e.translation_group, e.source_example_id" + neg_cols +
           f" FROM kept_examples e {join} {neg_join} WHERE e.lang = ? ORDER BY e.id")
    return cat.con.execute(sql, params + [lang]).to_arrow_table()


def shard_count(table: pa.Table, opts: BuildOptions) -> int:
    """Shards needed so none exceeds the row or (uncompressed) byte bound."""
    if table.num_rows == 0:
        return 1
    by_rows = math.ceil(table.num_rows / opts.max_rows_per_shard)
    by_bytes = math.ceil(table.nbytes / opts.max_shard_bytes)
    return max(1, min(table.num_rows, max(by_rows, by_bytes)))


def write_shard(table: pa.Table, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        # Fixed settings = same bytes for the same rows (pyarrow stamps only its own version, no time).
        pq.write_table(table, path, compression="zstd", compression_level=9, use_dictionary=True,
                       write_statistics=True, version="2.6", data_page_version="1.0",
                       row_group_size=50_000, store_schema=True)
    else:
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_folder(cat: Catalog, folder: str | Path, opts: BuildOptions, overwrite: bool = False) -> BuildResult:
    """Write the dataset folder for the catalog's kept examples; returns what was written.

    The folder must be new, empty or compass-made (see publish_folder); `overwrite` replaces a compass folder's
    files even when edited or accompanied by user files, which are kept."""
    from compass.publish_card import collect_provenance, render_card, write_provenance
    from compass.publish_folder import Manifest

    opts.validate()
    folder = Path(folder)
    langs = select_langs(cat, opts.langs)
    set_id = resolve_negative_set(cat, opts.negatives) if opts.with_negatives else None
    if opts.split_from_catalog and not cat.scalar("SELECT count(*) FROM splits"):
        raise CompassError("--split-from-catalog: the catalog has no splits: run `compass split` first, or drop "
                           "the flag to publish everything as train")
    man = Manifest(folder, overwrite=overwrite)
    res = BuildResult(folder=folder, files=[], negative_set=set_id)
    want = schema(set_id is not None)
    data_files: dict[str, dict[str, list[str]]] = {}
    for lang in langs:
        table = rows_for_lang(cat, lang, opts, set_id)
        if opts.split_from_catalog:
            total = cat.scalar("SELECT count(*) FROM kept_examples WHERE lang = ?", [lang])
            if total > table.num_rows:
                res.unassigned[lang] = total - table.num_rows
        splits = sorted(set(table.column("split").to_pylist()),
                        key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER))
        if not splits:
            raise CompassError(f"{lang}: no kept example has a split row: run `compass split` again, or drop "
                               "--split-from-catalog")
        data_files[lang] = {}
        res.rows[lang] = {}
        for split in splits:
            part = table.filter(pc.equal(table.column("split"), split)).select(want.names).cast(want)
            n = shard_count(part, opts)
            names = []
            for i in range(n):  # even cut: shard sizes differ by at most one row, none is empty
                lo, hi = i * part.num_rows // n, (i + 1) * part.num_rows // n
                rel = f"data/{lang}/{split}-{i:05d}-of-{n:05d}.{opts.fmt}"
                write_shard(part.slice(lo, hi - lo), man.path(rel), opts.fmt)
                names.append(rel)
            data_files[lang][split] = names
            res.rows[lang][split] = part.num_rows
            res.files += names
    prov = collect_provenance(cat, langs, opts, res)
    man.path(CARD).write_text(render_card(prov, data_files, opts), encoding="utf-8", newline="\n")
    write_provenance(man.path(PROVENANCE), prov)
    man.finish()
    res.files = sorted(res.files + [CARD, PROVENANCE])
    return res
