"""The model card (README.md) of a trained model folder: how to load it, what it was trained on, how it scores.

Written by compass rather than by sentence-transformers' card generator because the facts that matter here
(catalog runs, split policy, negative set, per-language counts, CAM config) are ours; the YAML header keeps the
Hub's fields so the folder publishes as a normal sentence-transformers model.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from compass import __version__


def _md_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    cols = list(rows[0])
    fmt = lambda v: "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# One product phrase per language ("white sports shoes"), for the usage example: the card shows text in languages
# the model was trained on (a catalog-learnt tokenizer reads other scripts as [UNK]), never catalog text.
USAGE_PHRASES = {
    "th": "รองเท้าผ้าใบ สีขาว", "vi": "giày thể thao trắng", "id": "sepatu olahraga putih",
    "ms": "kasut sukan putih", "fil": "puting sapatos pang-isports", "my": "အဖြူရောင် အားကစားဖိနပ်",
    "km": "ស្បែកជើងកីឡាពណ៌ស", "lo": "ເກີບກິລາສີຂາວ", "en": "white sports shoes",
}


def usage_texts(per_lang: dict[str, int], n: int = 2) -> list[str]:
    """Phrases of the n languages with the most training examples (English when none is known)."""
    langs = [lang for lang, _ in sorted(per_lang.items(), key=lambda kv: (-kv[1], kv[0])) if lang in USAGE_PHRASES]
    return [USAGE_PHRASES[lang] for lang in langs[:n]] or [USAGE_PHRASES["en"]]


def card_text(cfg, spec: dict, fit: dict, evaluation: dict | None) -> str:
    from compass.train.evaluate import result_tables

    counts, lineage = spec["counts"], spec["lineage"]
    langs = sorted(counts.get("per_lang", {}))
    header = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
              "tags:", "- sentence-transformers", "- sentence-similarity", "- e-commerce", "- compass",
              "language:", *[f"- {lang}" for lang in langs], "---", ""]
    base = "StaticEmbedding (tokenizer trained on the catalog's train split)" if cfg.base == "static" else cfg.base
    loss_cfg = json.dumps(fit.get("loss_config", {}), ensure_ascii=False, sort_keys=True, default=str)
    body = [
        "# Multilingual e-commerce embedding model (compass)", "",
        f"Trained by compass (`pip install compass-embed`) {__version__} from a product catalog; base: {base}.", "",
        "## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
        'model = SentenceTransformer("path/to/this/folder")',
        *(["queries = model.encode_query(" + json.dumps(usage_texts(counts.get("per_lang", {}))[:1],
                                                        ensure_ascii=False) + ")",
            "documents = model.encode_document(" + json.dumps(usage_texts(counts.get("per_lang", {})),
                                                             ensure_ascii=False) + ")"]
          if fit.get("prompts") else
          ["embeddings = model.encode(" + json.dumps(usage_texts(counts.get("per_lang", {})), ensure_ascii=False)
           + ")"]), "```", "",
        *([f"Queries take the prompt `{fit['prompts'].get('anchor', '')}` and documents "
           f"`{fit['prompts'].get('positive', '')}` (`encode_query` / `encode_document` add them), as in training.",
           ""] if fit.get("prompts") else []),
        *([f"Serve it with vLLM (pooling and normalization as here; prepend the prompts yourself on "
           f"`/v1/embeddings`, or use `/v2/embed` with `input_type`): `{fit['vllm']['command']}`"
           + ("" if not fit["vllm"].get("problems") else
              f". vLLM would not reproduce: {'; '.join(fit['vllm']['problems'])}"), ""]
          if fit.get("vllm") else []),
        "## Training", "",
        _md_table([{"base": cfg.base, "loss": fit.get("loss_class"), "batch": cfg.batch_size,
                    "processes": cfg.nproc, "steps": fit.get("global_step"), "lr": cfg.learning_rate,
                    "seed": cfg.seed, "lang temperature": cfg.lang_temperature,
                    "batch dedup": getattr(cfg, "batch_dedup", "text"),
                    "final loss": fit.get("final_loss"), "device": fit.get("device"),
                    "precision": fit.get("precision"), "max tokens": fit.get("train_max_seq_length"),
                    "frozen params": fit.get("frozen_parameters")}]),
        f"Loss config: `{loss_cfg}`", "",
        f"Full command config: `{json.dumps(asdict(cfg), ensure_ascii=False, sort_keys=True, default=str)}`", "",
        "## Data", "",
        f"Catalog `{lineage['catalog']}`, train run `{lineage['train_run']}`; examples from catalog runs "
        f"{', '.join(f'`{r}`' for r in lineage['example_runs']) or '(none recorded)'}; negative set "
        f"`{lineage['negative_set'] or 'none'}` (run `{lineage['negative_set_run'] or '-'}`).", "",
        f"Split policy: `{json.dumps(lineage['split_policy'], sort_keys=True)}` (groups = product / item / "
        "translation group; no group straddles train and test).", "",
        f"{counts['examples']} training examples ({counts.get('dropped_missing_negatives', 0)} dropped for "
        f"missing negatives; {counts.get('fewer_negatives', 0)} trained with fewer mined negatives than asked, "
        "in batches of their own).", "",
        *[f"- note: {line}" for line in spec.get("notes", [])], "",
        _md_table([{"lang": k, "examples": v} for k, v in counts.get("per_lang", {}).items()]), "",
        _md_table([{"task": k, "examples": v} for k, v in counts.get("per_task", {}).items()]), "",
    ]
    if evaluation:
        tasks, per_lang = result_tables(evaluation)
        body += ["## Evaluation", "", "Main score x100: nDCG@10 for retrieval, accuracy for classification. "
                 "`catalog_test_<lang>_<task>` = the catalog's held-out test queries ranked against every product "
                 "title of their language (`_category`: titles ranked among category labels).", "",
                 _md_table(tasks), "", "Macros per language: retrieval (nDCG@10), classification (accuracy), and "
                 "over all tasks:", "", _md_table(per_lang), ""]
    return "\n".join(header + body)


def write_card(out: Path, cfg, spec: dict, fit: dict, evaluation: dict | None) -> Path:
    path = Path(out) / "README.md"
    path.write_text(card_text(cfg, spec, fit, evaluation), encoding="utf-8")
    return path
