"""`compass publish` (dataset folder -> Hugging Face Hub) and `compass export` (folder only, Parquet or JSONL)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from compass.catalog.db import Catalog
from compass.cli_common import CatalogOpt, LangsOpt, console, print_table
from compass.langs import parse_langs

SplitOpt = Annotated[bool, typer.Option("--split-from-catalog", help="Use the catalog's train/dev/test splits "
                                                                    "(default: everything is train).")]
NegOpt = Annotated[bool, typer.Option("--with-negatives", help="Add a `negatives` column (list of strings).")]
NegSetOpt = Annotated[str, typer.Option("--negatives", help="Negative set id, or latest.")]
MaxNegOpt = Annotated[Optional[int], typer.Option("--max-negatives", help="Keep at most N negatives per row.")]
RowsOpt = Annotated[int, typer.Option("--max-rows-per-shard", help="Rows per shard at most.")]
MbOpt = Annotated[int, typer.Option("--max-shard-mb", help="Uncompressed MiB per shard at most.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the files of a folder compass made even "
                                           "if edited or joined by other files (those are kept).")]
LicenseOpt = Annotated[str, typer.Option("--license", help="License id for the card (Hub ids: apache-2.0, "
                                                          "cc-by-4.0, cc-by-sa-4.0, other...).")]


def _options(langs, split_from_catalog, with_negatives, negatives, max_negatives, fmt, rows, mb, license,
             repo_id):
    from compass.publish import BuildOptions

    return BuildOptions(langs=parse_langs(langs), split_from_catalog=split_from_catalog,
                        with_negatives=with_negatives, negatives=negatives, max_negatives=max_negatives, fmt=fmt,
                        max_rows_per_shard=rows, max_shard_bytes=mb * 2**20, license=license, repo_id=repo_id)


def _report(res) -> None:
    print_table([{"lang": lang, **splits} for lang, splits in res.rows.items()], title=f"rows in {res.folder}")
    for lang, n in res.unassigned.items():
        console.print(f"{lang}: {n} kept examples have no split row and were left out (run `compass split`)")


def publish(
    repo_id: Annotated[str, typer.Argument(help="Hub dataset repo, OWNER/NAME.")],
    langs: LangsOpt = None,
    split_from_catalog: SplitOpt = False,
    with_negatives: NegOpt = False,
    negatives: NegSetOpt = "latest",
    max_negatives: MaxNegOpt = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    to_dir: Annotated[Optional[Path], typer.Option("--to-dir", help="Write the folder here and stop (offline).")]
    = None,
    overwrite: OverwriteOpt = False,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of pushing to main.")]
    = False,
    license: LicenseOpt = "other",
    max_rows_per_shard: RowsOpt = 100_000,
    max_shard_mb: MbOpt = 256,
    catalog: CatalogOpt = None,
) -> None:
    """Build the dataset folder (one config per language, provenance card) and upload it to the Hub."""
    from compass.publish import build_folder

    opts = _options(langs, split_from_catalog, with_negatives, negatives, max_negatives, "parquet",
                    max_rows_per_shard, max_shard_mb, license, repo_id)
    with Catalog(catalog, read_only=True) as cat:
        if to_dir is not None:
            res = build_folder(cat, to_dir, opts, overwrite=overwrite)
            _report(res)
            console.print(f"wrote {len(res.files)} files to {to_dir} (not uploaded: --to-dir)")
            return
        with tempfile.TemporaryDirectory(prefix="compass-publish-") as tmp:
            res = build_folder(cat, Path(tmp) / "dataset", opts)
            _report(res)
            from compass.publish_hub import HfHubClient, upload_folder

            up = upload_folder(res.folder, repo_id, HfHubClient(), private=private, create_pr=create_pr)
    p = up.plan
    if p.empty:
        console.print(f"{repo_id}: up to date ({len(p.unchanged)} files unchanged), nothing uploaded")
    else:
        console.print(f"{repo_id}: uploaded {len(p.add)} files, deleted {len(p.delete)}, {len(p.unchanged)} "
                      f"unchanged -> {up.url}")


def export(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (new, empty, or one compass made).")],
    overwrite: OverwriteOpt = False,
    fmt: Annotated[str, typer.Option("--format", help="parquet | jsonl")] = "parquet",
    langs: LangsOpt = None,
    split_from_catalog: SplitOpt = False,
    with_negatives: NegOpt = False,
    negatives: NegSetOpt = "latest",
    max_negatives: MaxNegOpt = None,
    license: LicenseOpt = "other",
    max_rows_per_shard: RowsOpt = 100_000,
    max_shard_mb: MbOpt = 256,
    catalog: CatalogOpt = None,
) -> None:
    """Write the kept examples as a dataset folder (Parquet or JSON Lines, one folder per language), no upload."""
    from compass.publish import build_folder

    opts = _options(langs, split_from_catalog, with_negatives, negatives, max_negatives, fmt, max_rows_per_shard,
                    max_shard_mb, license, None)
    with Catalog(catalog, read_only=True) as cat:
        res = build_folder(cat, out, opts, overwrite=overwrite)
    _report(res)
    console.print(f"wrote {len(res.files)} files to {out}")


def register(app: typer.Typer) -> None:
    app.command()(publish)
    app.command()(export)
