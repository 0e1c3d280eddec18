"""`compass mine`: hard negatives for the kept examples, into a negative set of the catalog."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from compass.catalog.db import Catalog
from compass.cli_common import CatalogOpt, LangsOpt, console, print_table
from compass.errors import CompassError
from compass.langs import parse_langs


def _window(value: str) -> tuple[int, int] | str:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        lo, hi = (int(x) for x in value.split(":"))
    except ValueError:
        raise CompassError(f"--rank-window {value!r}: write it as LO:HI, e.g. 10:100") from None
    return lo, hi


def mine_cmd(
    model: Annotated[str, typer.Option(help="Encoder: e5-small (multilingual, the default), minilm, a "
                                            "sentence-transformers folder, or a hub id with a network.")] = "e5-small",
    langs: LangsOpt = None,
    pool: Annotated[str, typer.Option(help="positives: candidates are kept positives; products: also every "
                                           "product text of the same language and market.")] = "positives",
    top_k: Annotated[int, typer.Option(help="Candidates retrieved per example (search depth).")] = 100,
    rank_window: Annotated[str, typer.Option(help="LO:HI ranks eligible as negatives (0 = nearest text other "
                                                  "than the positive); HI is capped at --top-k. auto: per task "
                                                  "(10:100; 0:100 for title2category, category_query2title).")
                           ] = "auto",
    margin: Annotated[Optional[float], typer.Option(
        help="Refuse candidates scoring above MARGIN x the positive's score (NV-Retriever TopK-PercPos); 0 "
             "disables. Default per task: 0.95; off for title2category.")] = None,
    per_example: Annotated[int, typer.Option(help="Negatives stored per example, best first.")] = 5,
    near_dup: Annotated[float, typer.Option(help="Refuse near-duplicates of the positive (shingle Jaccard >= this); "
                                                 "0 keeps only the exact-duplicate check.")] = 0.8,
    class_guard: Annotated[bool, typer.Option("--class-guard/--no-class-guard",
                                              help="Refuse candidates that are positives of the same class id "
                                                   "or translation group.")] = True,
    pool_by: Annotated[str, typer.Option(help="task: candidates share the example's language and task; lang: "
                                              "its language only.")] = "task",
    cross_lingual: Annotated[bool, typer.Option("--cross-lingual", help="Candidates from every selected language."
                                                )] = False,
    ann_min: Annotated[int, typer.Option(help="Pools of at least this many texts are searched with an IVF index "
                                              "(approximate, O(sqrt n) a query); 0 (default): exact search for "
                                              "every pool.")] = 0,
    nprobe: Annotated[int, typer.Option(help="IVF lists searched per query (a pool of n texts has 4 sqrt(n)); more "
                                             "is closer to exact and slower.")] = 32,
    batch_size: Annotated[int, typer.Option(help="Encoder batch size.")] = 64,
    mine_batch: Annotated[int, typer.Option(help="Examples per transaction.")] = 2048,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (auto: CUDA when present).")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """Mine hard negatives for kept examples: nearest-neighbour search (exact; IVF for large pools) + guards
    (near-dup, class, margin, rank window)."""
    from compass.devices import resolve_device
    from compass.filters.mine import MineConfig, mine

    device = resolve_device(device)
    cfg = MineConfig(model=model, langs=parse_langs(langs), top_k=top_k, rank_window=_window(rank_window),
                     margin="auto" if margin is None else (margin or None), pool=pool, per_example=per_example,
                     near_dup=near_dup or None,
                     class_guard=class_guard, pool_by=pool_by, cross_lingual=cross_lingual, ann_min=ann_min,
                     nprobe=nprobe, batch_size=batch_size,
                     mine_batch=mine_batch, device=device, progress=not quiet)
    cfg.validate()
    config = cfg.model_dump(mode="json", exclude={"progress", "block", "cand_chunk", "duckdb_memory"})
    with Catalog(catalog) as cat:
        if not cat.scalar("SELECT count(*) FROM kept_examples"):
            raise CompassError("no kept examples to mine: run `compass generate` (and `compass filter`) first")
        with cat.run("mine", config) as run:
            res = mine(cat, cfg, run)     # the encode and mine stages, through the runner, under this record
            run.summary.update(res)
    prompts = ", ".join(f"{r} {p!r}" for r, p in res.get("prompts", {}).items()) or "none"
    console.print(f"negative set {res['set_id']}: {res['pending']} examples mined ({res['encoded']} texts encoded; "
                  f"prompts: {prompts}), "
                  f"{res['negatives']} negatives, {res['examples_with_negatives']} examples with at least one",
                  highlight=False)
    if res.get("ivf_pools"):
        console.print(f"approximate search (IVF, --nprobe {nprobe}) in the pools of at least {ann_min:,} texts: "
                      + ", ".join(f"{k} ({n:,})" for k, n in res["ivf_pools"].items()), highlight=False)
    print_table([{"guard": g, "refused": n} for g, n in res["refused"].items()], title="refused candidates")


def register(app: typer.Typer) -> None:
    app.command("mine")(mine_cmd)
