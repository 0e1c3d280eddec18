"""`compass report`: one self-contained HTML page about a run, built from the catalog and the run's artefacts.

Python API (the recipe runner calls these):
    write_report(catalog, out=None, artefacts=()) -> Path   the HTML file (default: report.html beside the catalog)
    summary_lines(cat, artefacts=()) -> list[str]          ~10 lines for a terminal: the funnel per language and
                                                            the trained model against its base on the held-out eval
Sections: overview, funnel, reject reasons, generation, hard negatives, training, evaluation, lineage. A stage
that did not run makes its section "not run"; the page works on a catalog fresh from `compass init`.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from importlib import metadata
from pathlib import Path

from compass import __version__
from compass import report_data as data
from compass.catalog.db import Catalog, catalog_path
from compass.errors import CompassError
from compass.filters.base import STAGE_ORDER
from compass.report_artefacts import Artefacts, collect, eval_models, loss_history
from compass.report_html import GENERATOR, render

VERSIONED = ("duckdb", "polars", "torch", "sentence-transformers", "transformers", "tokenizers", "matplotlib")
RUN_COLS = ["command", "id", "status", "compass_version", "started_at", "seconds", "result"]


def _section(id: str, title: str, what: str, status: str = "ok", **kw) -> dict:
    return {"id": id, "title": title, "what": what, "status": status, "notes": [], "summary": [], "charts": [],
            "reasons": [], "samples": data.SAMPLES_PER_REASON, "tables": [], "pre": [], **kw}


def _table(title: str, rows: list[dict], cols: list[str] | None = None) -> dict:
    return {"title": title, "cols": cols or (list(rows[0]) if rows else []), "rows": rows}


def _chart(name: str, svg: str, caption: str = "") -> dict:
    return {"name": name, "svg": svg, "caption": caption}


def _open(cat: Catalog | str | os.PathLike | None) -> tuple[Catalog, bool]:
    return (cat, False) if isinstance(cat, Catalog) else (Catalog(cat, read_only=True), True)


# -- the short summary ---------------------------------------------------------------------------------------------
def _headline(models: list[dict]) -> tuple[dict | None, dict | None]:
    trained = next((m for m in models if m["role"] == "trained"), None)
    ref = next((m for m in models if m["role"] == "base"), None) or \
        next((m for m in models if m["role"] == "baseline"), None)
    return trained, ref


def _row(label: str, vals: list, width: int = 7) -> str:
    return f"  {label:<11}" + "".join(f"{'-' if v is None else v:>{width}}" for v in vals)


def summary_from(funnel: list[dict], counts: dict, models: list[dict], history: list[dict], cat_name: str) -> list[str]:
    """At most ten lines: the funnel as a table (a column per language), the trained model's held-out macro per
    language and its difference from the base (else the first baseline), the loss."""
    ran = [s for s in STAGE_ORDER if funnel and funnel[0].get(s) is not None]
    pct = f"{100 * counts['kept'] / counts['examples']:.0f}%" if counts["examples"] else "-"
    lines = [f"catalog {cat_name}: {counts['products']} products in {counts['languages']} languages; "
             f"{counts['examples']} examples, {counts['kept']} kept ({pct})"]
    langs = sorted({r["lang"] for r in funnel})
    if funnel:
        lines.append(_row("examples", [*langs, "all"]))
        for stage in ["generated", *ran, "kept"]:
            per = [sum(r[stage] for r in funnel if r["lang"] == lang) for lang in langs]
            lines.append(_row(stage, [*per, sum(per)]))
    else:
        lines.append("funnel: not run (compass generate, then compass filter)")
    trained, ref = _headline(models)
    if trained is None:
        lines.append("eval: not run (compass train, or compass eval MODEL --json FILE)")
    else:
        t = trained["result"]

        def macro(res: dict, lang: str):
            v = res.get("macro") if lang == "all" else (res["languages"].get(lang) or {}).get("macro")
            return None if v is None else 100 * v

        cols = [lang for lang in langs if lang in t["languages"]] or sorted(t["languages"])
        label = "held-out eval, macro x100 (nDCG@10 / accuracy)"
        label += (f"; Δ = {trained['label']} - {ref['role']} {ref['label']}:" if ref is not None
                  else ": (no base or baseline evaluated to compare with)")
        lines.append(label)
        lines.append(_row(trained["label"][:11], [f"{v:.1f}" if v is not None else None
                                                  for v in (macro(t, c) for c in [*cols, "all"])]))
        if ref is not None:
            deltas = [(macro(t, c), macro(ref["result"], c)) for c in [*cols, "all"]]
            lines.append(_row("Δ " + ref["label"][:9], [f"{a - b:+.1f}" if a is not None and b is not None else None
                                                        for a, b in deltas]))
    if history and len(lines) < 10:
        lines.append(f"training: {history[-1]['step']} steps, loss {history[0]['loss']:.3g} -> "
                     f"{history[-1]['loss']:.3g}")
    return lines[:10]


def summary_lines(cat: Catalog | str | os.PathLike | None, artefacts=()) -> list[str]:
    """About ten lines for the end of a run: examples per language through the funnel, the training loss, and the
    trained model against its base (else the first baseline) on the held-out eval where eval results exist."""
    c, own = _open(cat)
    try:
        funnel, counts, runs = data.funnel(c), data.counts(c), data.runs(c)
        art = collect(Path(c.path), runs, list(artefacts))
    finally:
        if own:
            c.close()
    history = loss_history(art.models[-1]) if art.models else []
    return summary_from(funnel, counts, eval_models(art), history, Path(c.path).name)


# -- sections ------------------------------------------------------------------------------------------------------
def _funnel_sections(c: Catalog, charts) -> list[dict]:
    rows = data.funnel(c)
    ran = data.stages_run(c)
    sec = _section("funnel", "Funnel", "Examples per language and task, generated → langid → quality → dedup → "
                   "leakage → kept: look for a language or task that loses far more than the others, and at which "
                   "stage.")
    if not rows:
        sec.update(status="not-run", notes=["not run: no examples yet (compass generate)"])
    else:
        if not ran:
            sec["notes"].append("filters: not run (compass filter); every generated example counts as kept")
        missing = [s for s in STAGE_ORDER if s not in ran]
        if ran and missing:
            sec["notes"].append("stages not run: " + ", ".join(missing))
        sec["charts"].append(_chart("funnel", charts.funnel(rows, ran), "bar length = generated; green = kept, "
                                    "other colours = examples lost at that stage"))
        sec["tables"].append(_table("examples left after each stage", rows,
                                    ["lang", "task", "generated", *ran, "kept"]))
    reasons = data.reject_reasons(c)
    rsec = _section("rejects", "Reject reasons", "Why filters rejected examples, with sampled rejects: look for "
                    "reasons that reject good examples (a filter set too strict) or one reason dominating a language.")
    if not reasons:
        rsec.update(status="not-run", notes=["not run: no filter rejected anything yet (compass filter)"
                                             if ran else "not run: compass filter has not run"])
    else:
        rsec["charts"].append(_chart("reasons", charts.reasons(reasons), "rejected examples per reason, coloured "
                                     "by stage"))
        rsec["reasons"] = reasons
    return [sec, rsec]


def _generation_section(c: Catalog, charts) -> dict:
    g = data.generation(c)
    sec = _section("generation", "Generation", "LLM requests per language and cell (requests = valid + rejects + "
                   "failed), tokens and kept examples per 1k tokens: look for cells with many rejects or few kept "
                   "examples per token.")
    if g["cells"]:
        sec["charts"].append(_chart("generation", charts.generation(g["cells"]), "requests per language"))
        sec["tables"].append(_table("per language, task and persona", g["cells"]))
        if g["reasons"]:
            sec["tables"].append(_table("why requests were rejected or failed", g["reasons"]))
    else:
        sec["status"] = "not-run"
        sec["notes"].append("LLM generation: not run (no requests in the catalog; the structured route needs none)")
    if g["routes"]:
        sec["tables"].append(_table("examples per route and language", g["routes"]))
    return sec


def _negatives_section(c: Catalog, charts) -> dict:
    n = data.negatives(c)
    sec = _section("negatives", "Hard negatives", "Similarity to the anchor of the positive (green) and of the mined "
                   "hard negatives (red), per task, and what the guards refused: hard negatives should sit close to "
                   "the positives; many above them suggests false negatives.")
    if n is None:
        sec.update(status="not-run", notes=["not run: no negative set (compass mine)"])
        return sec
    s = n["set"]
    sec["notes"].append(f"negative set {s['set_id']} (model {s['model']}, run {s['run_id']}): {s['negatives']} "
                        f"negatives for {s['mined']} mined examples")
    if n["similarity"]:
        sec["charts"].append(_chart("similarity", charts.similarity(n["similarity"]),
                                    f"densities (an example has one positive and several negatives); up to "
                                    f"{data.SIMILARITY_SAMPLE} of each per task"))
    else:
        sec["notes"].append("no negative survived the guards in this set")
    if n["refusals"]:
        sec["charts"].append(_chart("refusals", charts.refusals(n["refusals"], data.GUARDS),
                                    "near-dup: same near-duplicate cluster as the positive; class: same class "
                                    "(a valid positive); margin: scores too close to the positive's; rank: outside "
                                    "the rank window"))
        sec["tables"].append(_table("mining per task", n["refusals"]))
    if n["score_stats"]:
        sec["tables"].append(_table("similarity per task", n["score_stats"]))
    return sec


def _training_section(art: Artefacts, charts) -> dict:
    sec = _section("training", "Training", "Loss per logged step and CAM's share of masked in-batch pairs: the loss "
                   "should fall and flatten; a high masked share means batches hold many same-class pairs.")
    curves = [(m["name"], loss_history(m)) for m in art.models]
    with_hist = [(name, h) for name, h in curves if h]
    if not art.models:
        sec.update(status="not-run", notes=["not run: no trained model folder found (compass train --out DIR)"])
        return sec
    if with_hist:
        sec["charts"].append(_chart("training", charts.training(with_hist)))
        if not any("masked_share" in h for _, hist in with_hist for h in hist):
            sec["notes"].append("masked share: not recorded (loss other than cam)")
    else:
        sec["notes"].append("loss curve: not recorded (model trained before compass kept the loss history)")
    rows = []
    for m in art.models:
        t = m["train"]
        cfg, fit = t.get("config") or {}, t.get("fit") or {}
        rows.append({"model": m["path"], "base": cfg.get("base"), "loss": cfg.get("loss"), "steps":
                     fit.get("global_step"), "batch": cfg.get("batch_size"), "final_loss": fit.get("final_loss"),
                     "examples": (t.get("counts") or {}).get("examples"), "device": fit.get("device"),
                     "seconds": fit.get("train_runtime_s")})
    sec["tables"].append(_table("trained models", rows))
    return sec


def _eval_section(art: Artefacts, charts) -> dict:
    sec = _section("evaluation", "Evaluation", "Trained model against its base and the baselines evaluated, per "
                   "language; retrieval (nDCG@10) and classification (accuracy) apart: the trained model's bars should "
                   "top the others in every language.")
    models = eval_models(art)
    if not models:
        sec.update(status="not-run", notes=["not run: no eval results (compass train evaluates the catalog's test "
                                            "split; compass eval MODEL --json FILE for bases and baselines)"])
        return sec
    for kind, label in (("retrieval", "retrieval (nDCG@10)"), ("classification", "classification (accuracy)")):
        have = [m for m in models if m["result"].get(f"{kind}_macro") is not None]
        if have:
            sec["charts"].append(_chart(f"eval-{kind}", charts.eval_bars(have, kind), f"{label}, x100, per language"))
        else:
            sec["notes"].append(f"{label}: not run (no {kind} task evaluated)")
    names = [m["label"] for m in models]
    tasks = sorted({t for m in models for t in m["result"]["tasks"]})
    rows = []
    for t in tasks:
        first = next(m["result"]["tasks"][t] for m in models if t in m["result"]["tasks"])
        row = {"task": t, "type": first["type"], "lang": first["lang"]}
        for m, name in zip(models, names):
            v = m["result"]["tasks"].get(t)
            row[name] = None if v is None else round(100 * v["main"], 2)
        rows.append(row)
    sec["tables"].append(_table("main score per task (x100)", rows))
    sec["tables"].append(_table("models", [{"model": m["label"], "role": m["role"], "from": m["source"]}
                                           for m in models]))
    return sec


def _result(r: dict) -> str:
    s = r.get("summary")
    if not isinstance(s, dict):
        return ""
    keep = [(k, v) for k, v in s.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return ", ".join(f"{k}={v}" for k, v in keep[:6])


def _lineage_section(runs: list[dict], art: Artefacts) -> dict:
    sec = _section("lineage", "Lineage", "Recipe, versions, runs and the dataset card's checks: what produced this "
                   "catalog, so a run can be repeated; look for failed or interrupted runs.")
    if not runs:
        sec["notes"].append("runs: not run (no command has written to this catalog)")
    sec["tables"].append(_table("runs (oldest first)", [{**r, "result": _result(r)} for r in runs], RUN_COLS))
    versions = {"compass": __version__, "python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    sec["tables"].append(_table("versions (this report)", [versions]))
    for r in art.recipes:
        sec["pre"].append({"title": f"recipe {r['path']}", "text": r["text"]})
    if not art.recipes:
        sec["notes"].append("recipe: none recorded (compass run RECIPE records it; or pass it to compass report)")
    for d in art.datasets:
        checks = d["provenance"].get("filters") or []
        sec["tables"].append(_table(f"dataset card checks ({d['path']})", checks,
                                    ["stage", "params_hash", "enforced", "checked", "rejected"]))
    if not art.datasets:
        sec["notes"].append("dataset card: not run (compass publish --to-dir DIR)")
    return sec


def build_context(c: Catalog, artefacts=()) -> dict:
    from compass.report_plots import Charts

    charts = Charts()
    runs = data.runs(c)
    art = collect(Path(c.path), runs, list(artefacts))
    counts = data.counts(c)
    funnel_secs = _funnel_sections(c, charts)
    training, evaluation = _training_section(art, charts), _eval_section(art, charts)
    history = loss_history(art.models[-1]) if art.models else []
    overview = _section("overview", "Overview", "The run in ten lines: examples per language through the funnel and "
                        "the trained model against its base.",
                        summary=summary_from(data.funnel(c), counts, eval_models(art), history, Path(c.path).name))
    if counts["splits"]:
        overview["tables"].append(_table("kept examples per split", counts["splits"]))
    sections = [overview, *funnel_secs, _generation_section(c, charts), _negatives_section(c, charts), training,
                evaluation, _lineage_section(runs, art)]
    return {"sections": sections, "catalog": str(c.path), "catalog_name": Path(c.path).name, "version": __version__,
            "written_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def default_out(catalog: str | os.PathLike | None) -> Path:
    return catalog_path(catalog).parent / "report.html"


def write_report(catalog: str | os.PathLike | Catalog | None, out: str | os.PathLike | None = None,
                 artefacts=()) -> Path:
    """Write the report of `catalog` (a path or an open Catalog) to `out` and return its path. `artefacts`: extra
    model folders, eval JSONs, dataset folders or recipe files (the catalog's train/publish runs and eval JSONs
    beside the catalog are found without them). Refuses to overwrite a file compass did not write."""
    c, own = _open(catalog)
    try:
        path = Path(out) if out is not None else Path(c.path).parent / "report.html"
        if path.is_dir():
            raise CompassError(f"--out {path} is a folder: give a file name, e.g. {path / 'report.html'}")
        if path.exists() and GENERATOR not in path.read_text(encoding="utf-8", errors="replace")[:2000]:
            raise CompassError(f"--out {path} exists and is not a compass report: give another --out "
                               "(compass overwrites only its own reports)")
        html = render(build_context(c, artefacts))
    finally:
        if own:
            c.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a page
    return path
