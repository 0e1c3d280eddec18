"""compass train end to end on a small catalog: a static model that plain sentence-transformers loads, with its
card; the language-balanced sampler; resuming from a checkpoint gives the weights of an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import run_cli, write_jsonl

from compass.catalog.db import Catalog

WORDS = {
    "th": (["รองเท้า", "กระเป๋า", "ครีม"], ["ผ้าใบ", "หนัง", "กันแดด", "สีดำ", "สีขาว", "ผู้หญิง", "ผู้ชาย"]),
    "vi": (["giày", "túi", "kem"], ["thể thao", "da", "chống nắng", "đen", "trắng", "nữ", "nam"]),
    "id": (["sepatu", "tas", "krim"], ["olahraga", "kulit", "tabir surya", "hitam", "putih", "wanita", "pria"]),
}
CATEGORIES = ["Fashion > Shoes", "Fashion > Bags", "Beauty > Sunscreen"]


def small_products(lang: str, n: int = 24) -> list[dict]:
    nouns, adjs = WORDS[lang]
    rows = []
    for i in range(n):
        k = i % 3
        a, b = adjs[i % len(adjs)], adjs[(i * 3 + 1) % len(adjs)]
        rows.append({"id": f"{lang}-{i}", "title": f"{nouns[k]} {a} {b} Brand{i % 5} X{i}",
                     "category": CATEGORIES[k], "attributes": {"brand": f"Brand{i % 5}", "model": f"X{i}",
                                                               "colour": a},
                     "description": f"{nouns[k]} {a} {b} {nouns[k]} {b} {a} kualitas {i}"})
    return rows


@pytest.fixture
def small_catalog(tmp_path: Path, catalog: Path) -> Path:
    for lang, market in (("th", "TH"), ("vi", "VN"), ("id", "ID")):
        f = write_jsonl(tmp_path / f"{lang}.jsonl", small_products(lang, 40 if lang == "id" else 16))
        run_cli("ingest", str(f), "--lang", lang, "--market", market, catalog=catalog)
    run_cli("generate", "--route", "structured", catalog=catalog)
    return catalog


LOAD_WITHOUT_COMPASS = """
import sys
sys.modules["compass"] = None  # any import of compass now fails: the folder must stand alone
from sentence_transformers import SentenceTransformer
m = SentenceTransformer(sys.argv[1], device="cpu")
e = m.encode(["รองเท้า ผ้าใบ", "giày thể thao"])
print(e.shape)
"""


@pytest.mark.slow
def test_train_static_end_to_end(tmp_path, small_catalog):
    out = tmp_path / "model"
    proc = run_cli("train", "--out", str(out), "--max-steps", "4", "--batch-size", "16", "--save-steps", "2",
                   "--vocab-size", "400", "--embedding-dim", "32", catalog=small_catalog)
    assert "model written to" in proc.stderr
    assert "SEA" in proc.stdout and "ALL" in proc.stdout  # the per-language macro table printed
    loaded = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_COMPASS, str(out)], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert "(2, 32)" in loaded.stdout
    assert not (out / "checkpoints").exists() and not (out / ".compass-train").exists()
    card = (out / "README.md").read_text(encoding="utf-8")
    info = json.loads((out / "compass_train.json").read_text(encoding="utf-8"))
    with Catalog(small_catalog, read_only=True) as cat:
        run = cat.query("SELECT id, status, summary FROM runs WHERE command = 'train'")[0]
        gen_run = cat.scalar("SELECT id FROM runs WHERE command = 'structured'")
        n_train = cat.scalar("SELECT count(*) FROM splits WHERE split = 'train'")
    assert run["status"] == "ok" and json.loads(run["summary"])["global_step"] == 4
    assert run["id"] in card and gen_run in card  # lineage: the train run and the runs that made the examples
    assert "CAMLoss" in card and "temperature" in card and "| id |" in card and "## Evaluation" in card
    assert info["counts"]["examples"] == n_train  # every kept train example (no negative set: none dropped)
    assert set(info["counts"]["per_lang"]) == {"th", "vi", "id"}
    assert 0 <= info["evaluation"]["macro"] <= 1
    again = run_cli("train", "--out", str(out), "--max-steps", "4", catalog=small_catalog, check=False)
    assert again.returncode == 1 and "already holds a finished model" in again.stderr


def _prepared(tmp_path, small_catalog, out: str, **kw):
    from compass.train.trainer import TrainConfig, prepare

    cfg = TrainConfig(out=str(tmp_path / out), max_steps=6, batch_size=16, save_steps=3, vocab_size=400,
                      embedding_dim=32, logging_steps=1, **kw)
    with Catalog(small_catalog) as cat:
        return prepare(cat, cfg, run_id="test")


class _Kill(Exception):
    pass


@pytest.mark.slow
def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, small_catalog):
    from transformers import TrainerCallback

    from compass.train.trainer import fit

    class KillAfterStep5(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise _Kill()

    spec = _prepared(tmp_path, small_catalog, "killed")
    with pytest.raises(_Kill):
        fit(spec, callbacks=[KillAfterStep5()])
    assert (Path(spec["config"]["out"]) / "checkpoints" / "checkpoint-3").is_dir()
    resumed = fit(spec)
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["global_step"] == 6

    spec2 = _prepared(tmp_path, small_catalog, "straight")
    spec2["base"] = spec["base"]  # the same initial model (tokenizer piece scores may wobble between trainings)
    straight = fit(spec2)
    assert straight["resumed_from"] is None
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "killed" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_language_sampler_balances_and_never_repeats_a_text_in_a_batch():
    from datasets import Dataset

    from compass.train.data import LanguageBalancedBatchSampler, language_weights

    langs = ["id"] * 400 + ["th"] * 40 + ["lo"] * 4
    # duplicated positives inside the big language: the sampler must keep them apart
    ds = Dataset.from_dict({"anchor": [f"a{i}" for i in range(len(langs))],
                            "positive": [f"p{i % 200}" for i in range(len(langs))],
                            "label": [[0, 0, 0]] * len(langs)})
    w = language_weights(langs, temperature=3.0)
    assert w["lo"] > 4 / len(langs) and w["id"] < 400 / len(langs)  # low-resource up, high-resource down
    s = LanguageBalancedBatchSampler(ds, batch_size=16, drop_last=True, seed=1, langs=langs, temperature=3.0,
                                     dedup="text")
    batches = list(s)
    assert len(batches) == len(s) == len(langs) // 16
    for b in batches:
        texts = [ds[i]["anchor"] for i in b] + [ds[i]["positive"] for i in b]
        assert len(texts) == len(set(texts)) and len(b) == 16
    drawn = Counter(langs[i] for b in batches for i in b)
    total = sum(drawn.values())
    for lang, p in w.items():
        assert abs(drawn[lang] / total - p) < 0.05, (lang, drawn)
    assert batches == list(s)  # same (seed, epoch) -> same batches on every rank
    s.set_epoch(1)
    assert batches != list(s)
    uniform = LanguageBalancedBatchSampler(ds, batch_size=16, drop_last=True, seed=1, langs=langs, temperature=1.0,
                                           dedup="text")
    assert Counter(langs[i] for b in uniform for i in b)["lo"] < drawn["lo"]


def test_anchor_dedup_keeps_anchors_unique_and_lets_shared_positives_meet():
    from datasets import Dataset

    from compass.errors import CompassError
    from compass.train.data import LanguageBalancedBatchSampler, language_weights

    langs = ["id"] * 300 + ["th"] * 60 + ["lo"] * 6
    n = len(langs)
    # like title -> category rows: few labels shared by many rows; and every 7th anchor repeated on another row
    anchors = [f"a{i - 1 if i % 7 == 1 else i}" for i in range(n)]
    ds = Dataset.from_dict({"anchor": anchors, "positive": [f"cat{i % 5}" for i in range(n)],
                            "negative_1": [f"n{i % 50}" for i in range(n)], "label": [[0, 0, 0, 0, 0]] * n})
    s = LanguageBalancedBatchSampler(ds, batch_size=16, drop_last=True, seed=3, langs=langs, temperature=3.0)
    assert s.dedup == "anchor"  # the default
    batches = list(s)
    assert len(batches) == len(s) == n // 16 and all(len(b) == 16 for b in batches)
    repeated_positive = 0
    for b in batches:
        rows = [ds[i] for i in b]
        assert len({r["anchor"] for r in rows}) == 16  # no anchor, hence no identical pair, twice
        repeated_positive += len({r["positive"] for r in rows}) < 16
    assert repeated_positive == len(batches)  # 16 rows over 5 labels: shared positives meet in every batch
    drawn = Counter(langs[i] for b in batches for i in b)
    for lang, p in language_weights(langs, 3.0).items():  # the temperature weights hold in this mode too
        assert abs(drawn[lang] / sum(drawn.values()) - p) < 0.05, (lang, drawn)
    again = LanguageBalancedBatchSampler(ds, batch_size=16, drop_last=True, seed=3, langs=langs, temperature=3.0)
    assert list(again) == batches  # same seed -> same batches
    other = LanguageBalancedBatchSampler(ds, batch_size=16, drop_last=True, seed=4, langs=langs, temperature=3.0)
    assert list(other) != batches

    # text mode on the same rows: 5 labels -> at most 5 rows per batch, so it cannot fill a 16-row batch
    text = LanguageBalancedBatchSampler(ds, batch_size=16, drop_last=False, seed=3, langs=langs, temperature=3.0,
                                        dedup="text")
    for b in text:
        texts = [t for i in b for t in (ds[i]["anchor"], ds[i]["positive"], ds[i]["negative_1"])]
        assert len(texts) == len(set(texts)) and len(b) <= 5
    with pytest.raises(CompassError, match="--batch-dedup"):
        LanguageBalancedBatchSampler(ds, batch_size=16, drop_last=True, langs=langs, dedup="pair")


def test_train_config_rejects_unknown_batch_dedup():
    from compass.errors import CompassError
    from compass.train.trainer import TrainConfig

    assert TrainConfig().batch_dedup == "anchor"
    with pytest.raises(CompassError, match="--batch-dedup"):
        TrainConfig(batch_dedup="pairs")
