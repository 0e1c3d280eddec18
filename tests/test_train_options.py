"""compass train options beyond the static default: query/document prompts reach the model, the frozen word table and
the training token limit, resume refused across configs, rows without mined negatives trained as pairs, and the
static tokenizer's warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli, write_jsonl
from test_train import small_catalog  # noqa: F401 (fixture)

from compass.catalog.db import Catalog


def tiny_bert(path: Path, texts: list[str], prompts: dict | None, hidden: int = 32) -> Path:
    """A 2-layer random BERT whose WordPiece vocabulary is learnt from `texts` (+ the prompt words), saved as a
    sentence-transformers folder with the given prompts and a 48-token limit (tests/support/tiny_encoder)."""
    from support.tiny_encoder import build

    build(path, texts, hidden=hidden, normalize=False, prompts=prompts, vocab_size=400)
    return path


def _catalog_texts(catalog: Path) -> list[str]:
    with Catalog(catalog, read_only=True) as cat:
        return [t for r in cat.query("SELECT anchor, positive FROM kept_examples") for t in r.values()]


def _prepare(catalog, **kw):
    from compass.train.trainer import TrainConfig, prepare

    cfg = TrainConfig(**{"max_steps": 2, "batch_size": 8, "save_steps": 100, "logging_steps": 1, "vocab_size": 400,
                         "embedding_dim": 32, **kw})
    with Catalog(catalog) as cat:
        return prepare(cat, cfg, run_id="test", echo=lambda line: None)


@pytest.mark.slow
def test_prompts_reach_the_model_and_word_table_stays_frozen(tmp_path, small_catalog):  # noqa: F811
    from safetensors.torch import load_file

    from compass.train.trainer import build_trainer, fit

    texts = _catalog_texts(small_catalog)
    with_prompts = tiny_bert(tmp_path / "e5like", texts, {"query": "query: ", "document": "passage: "})
    plain = tiny_bert(tmp_path / "plain", texts, None)

    spec = _prepare(small_catalog, base=str(with_prompts), out=str(tmp_path / "out"), max_seq_length=16)
    trainer, info = build_trainer(spec)
    assert info["prompts"] == {"anchor": "query: ", "positive": "passage: "}
    assert info["train_max_seq_length"] == 16 and info["frozen_parameters"] > 0
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)  # the library's collator, as the trainer feeds the model
    tok = trainer.model.tokenizer
    for i, row in enumerate(rows):
        anchor = tok.convert_ids_to_tokens(batch["anchor_input_ids"][i])
        positive = tok.convert_ids_to_tokens(batch["positive_input_ids"][i])
        assert anchor[1:3] == ["query", ":"] and positive[1:3] == ["passage", ":"], (anchor, positive)
        assert anchor[3:5] == tok.tokenize(row["anchor"])[:2]
    assert batch["anchor_input_ids"].shape[1] <= 16  # the training token limit

    plain_spec = _prepare(small_catalog, base=str(plain), out=str(tmp_path / "plain-out"))
    plain_trainer, plain_info = build_trainer(plain_spec)
    assert plain_info["prompts"] is None
    ids = plain_trainer.data_collator(rows)["anchor_input_ids"][0]
    assert plain_trainer.model.tokenizer.convert_ids_to_tokens(ids)[1:3] == tok.tokenize(rows[0]["anchor"])[:2]

    result = fit(spec)
    assert result["global_step"] == 2 and result["prompts"]["anchor"] == "query: "
    # the folder serves in vLLM as it embeds here: token limit and pooling written where vLLM reads them
    assert result["vllm"]["command"].startswith("vllm serve ") and result["vllm"]["problems"] == []
    st_cfg = json.loads((tmp_path / "out" / "sentence_bert_config.json").read_text())
    assert st_cfg["max_seq_length"] > 0
    before = load_file(str(Path(str(with_prompts) + "-hf") / "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "model.safetensors"))
    word = next(k for k in after if k.endswith("word_embeddings.weight"))
    torch.testing.assert_close(after[word], before[word.split(".", 1)[-1] if word not in before else word])
    layer = next(k for k in after if k.endswith("layer.0.attention.self.query.weight"))
    assert not torch.equal(after[layer], before[layer.split(".", 1)[-1] if layer not in before else layer])
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(tmp_path / "out"), device="cpu").max_seq_length == 48  # 16 was for training only
    cfg = json.loads((tmp_path / "out" / "config_sentence_transformers.json").read_text())
    assert cfg["prompts"]["query"] == "query: "  # and its prompts, for encode_query / encode_document


class _Kill(Exception):
    pass


@pytest.mark.slow
def test_resume_refuses_checkpoints_of_another_config(tmp_path, small_catalog):  # noqa: F811
    from transformers import TrainerCallback

    from compass.train.trainer import fit

    class KillAfterStep4(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 4:  # checkpoint-3 is written after step 3's on_step_end
                raise _Kill()

    out = tmp_path / "model"
    spec = _prepare(small_catalog, out=str(out), save_steps=3)
    spec["config"]["max_steps"] = 6
    with pytest.raises(_Kill):
        fit(spec, callbacks=[KillAfterStep4()])
    assert (out / "checkpoints" / "checkpoint-3").is_dir()
    common = ["--out", str(out), "--max-steps", "2", "--batch-size", "8", "--save-steps", "100",
              "--vocab-size", "400", "--embedding-dim", "32"]
    bad = run_cli("train", *common, "--loss", "infonce", "--lr", "0.1", catalog=small_catalog, check=False)
    assert bad.returncode == 1
    msg = " ".join(bad.stderr.split())
    assert "made with another config" in msg and "loss ('cam' -> 'infonce')" in msg and "lr (None -> 0.1)" in msg
    assert "--overwrite" in msg and "new --out" in msg
    assert (out / "checkpoints" / "checkpoint-3").is_dir()  # refused: nothing touched
    ok = run_cli("train", *common, "--loss", "infonce", "--lr", "0.1", "--overwrite", catalog=small_catalog)
    assert "discarded the checkpoints of another config" in ok.stderr
    info = json.loads((out / "compass_train.json").read_text(encoding="utf-8"))
    assert info["fit"]["resumed_from"] is None and info["fit"]["global_step"] == 2
    assert info["fit"]["loss_class"] == "MultipleNegativesRankingLoss"


@pytest.mark.slow
def test_rows_without_mined_negatives_train_as_pairs(tmp_path, small_catalog):  # noqa: F811
    from compass.train.data import LanguageBalancedBatchSampler, NegativeGroupCollator
    from compass.train.trainer import build_trainer, fit

    run_cli("split", catalog=small_catalog)
    run_cli("mine", "--model", "minilm", catalog=small_catalog)
    with Catalog(small_catalog, read_only=True) as cat:
        n_train = cat.scalar("SELECT count(*) FROM splits WHERE split = 'train'")

    spec = _prepare(small_catalog, out=str(tmp_path / "pairs"), num_negatives=2)
    counts, groups = spec["counts"], spec["groups"]
    assert counts["examples"] == n_train and counts["dropped_missing_negatives"] == 0
    assert counts["fewer_negatives"] > 0 and min(groups) < 2 and 2 in groups, counts
    trainer, _ = build_trainer(spec)
    sampler = trainer.get_train_dataloader().batch_sampler
    batches = list(sampler)
    assert isinstance(sampler, LanguageBalancedBatchSampler) and len(batches) == len(sampler)
    assert all(len({groups[i] for i in b}) == 1 for b in batches)  # a batch never mixes negative counts
    assert sorted(i for b in batches for i in b) != []
    g = min(groups)  # 0 when some row has no mined negative at all: a pair
    short_batch = next(b for b in batches if groups[b[0]] == g)
    feats = trainer.data_collator([trainer.train_dataset[i] for i in short_batch])
    assert f"negative_{g + 1}_input_ids" not in feats and feats["label"].shape == (len(short_batch), 3 + 2 * g)
    with pytest.raises(Exception, match="mixes rows"):
        NegativeGroupCollator(preprocess_fn=trainer.model.preprocess)(
            [trainer.train_dataset[i] for i in (short_batch[0], next(b for b in batches if groups[b[0]] == 2)[0])])
    assert fit(spec)["global_step"] == 2

    dropped = _prepare(small_catalog, out=str(tmp_path / "drop"), num_negatives=2, missing_negatives="drop")
    assert dropped["counts"]["dropped_missing_negatives"] == counts["fewer_negatives"]
    assert dropped["counts"]["examples"] == n_train - counts["fewer_negatives"]

    proc = run_cli("train", "--out", str(tmp_path / "cli"), "--max-steps", "1", "--batch-size", "8",
                   "--num-negatives", "2", "--vocab-size", "400", "--embedding-dim", "32", catalog=small_catalog)
    said = " ".join(proc.stderr.split())
    assert f"{counts['fewer_negatives']} of {n_train} rows have fewer than 2 mined negatives" in said
    for task, n in counts["fewer_negatives_per_task"].items():  # and which tasks they come from
        assert f"{task} {n}" in said


def test_sampler_blocks_keep_processes_on_one_group():
    """With N processes, process r takes batches r, r+N, ...: N consecutive batches must share a group."""
    from datasets import Dataset

    from compass.train.data import LanguageBalancedBatchSampler

    n = 300
    langs = ["id"] * 200 + ["th"] * 100
    groups = [i % 3 for i in range(n)]  # 0, 1 or 2 negatives
    ds = Dataset.from_dict({"anchor": [f"a{i}" for i in range(n)], "positive": [f"p{i}" for i in range(n)],
                            "label": [[0, 0, 0]] * n})
    s = LanguageBalancedBatchSampler(ds, batch_size=8, drop_last=True, seed=2, langs=langs, groups=groups, block=2)
    batches = list(s)
    assert len(batches) == len(s) and len(batches) % 2 == 0 and len(batches) >= 30
    for i in range(0, len(batches), 2):
        assert len({groups[j] for b in batches[i:i + 2] for j in b}) == 1
    assert len({groups[b[0]] for b in batches}) == 3  # every group trains
    first = [groups[b[0]] for b in batches[:12:2]]
    assert first != sorted(first)  # groups take turns, not one after the other


def test_static_tokenizer_notes_name_unseen_eval_languages(tmp_path):
    from compass.train.static_base import build_static_model, tokenizer_notes

    texts = ["giày thể thao nam trắng", "túi da nữ đen", "sepatu olahraga pria putih"] * 20
    base = tmp_path / "base"
    build_static_model(texts, embedding_dim=8, vocab_size=5000).save(str(base))
    km = tmp_path / "tasks" / "km_shoes"
    km.mkdir(parents=True)
    write_jsonl(km / "train.jsonl", [{"text": "ស្បែកជើងកីឡាពណ៌ស", "label": "a"}] * 4)
    write_jsonl(km / "test.jsonl", [{"text": "ស្បែកជើងកីឡា", "label": "a"}, {"text": "កាបូបស្បែក", "label": "b"}])
    vi = tmp_path / "tasks" / "vi_shoes"
    vi.mkdir(parents=True)
    write_jsonl(vi / "train.jsonl", [{"text": "giày nam", "label": "a"}] * 4)
    write_jsonl(vi / "test.jsonl", [{"text": "giày thể thao", "label": "a"}, {"text": "túi da", "label": "b"}])
    notes = tokenizer_notes(base, 5000, {"vi", "id"}, str(tmp_path / "tasks"))
    assert any("fewer than --vocab-size 5000" in n for n in notes)
    unk = [n for n in notes if "[UNK]" in n]
    assert len(unk) == 1 and "km_shoes (km)" in unk[0] and "no training examples" in unk[0]


def test_card_usage_example_is_in_a_trained_language():
    from compass.train.card import usage_texts

    assert usage_texts({"id": 50, "vi": 20, "th": 5}) == ["sepatu olahraga putih", "giày thể thao trắng"]
    assert usage_texts({"km": 3}) == ["ស្បែកជើងកីឡាពណ៌ស"]
    assert usage_texts({}) == ["white sports shoes"]


def test_length_sorted_chunks_give_the_padded_forward_loss_and_gradients(tmp_path):
    from sentence_transformers import SentenceTransformer

    from compass.train.bucketing import enable
    from compass.train.cam_loss import CAMLoss, encode_cam_label

    words = ["giày", "thể", "thao", "nam", "túi", "da", "đen", "trắng", "sepatu", "putih", "kemeja", "batik"]
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + (i * 5) % 23)) for i in range(40)]
    path = tiny_bert(tmp_path / "m", texts, None)
    anchors, positives = texts[:20], texts[20:]
    labels = torch.tensor([encode_cam_label(f"c{i}", "query2title", p, []) for i, p in enumerate(positives)])

    def loss_and_grads(chunk: int):
        model = SentenceTransformer(str(path), device="cpu").eval()  # eval: no dropout, so runs are comparable
        enable(model, chunk)
        widths = []  # the token width of each transformer call
        model[0].register_forward_pre_hook(lambda mod, args: widths.append(args[0]["input_ids"].shape[1]))
        feats = [model.preprocess(anchors), model.preprocess(positives)]
        loss = CAMLoss(model)(feats, labels)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, widths

    ref_loss, ref_grads, ref_widths = loss_and_grads(0)
    loss, grads, widths = loss_and_grads(4)
    assert len(widths) >= 10 and min(widths) < max(ref_widths) and len(ref_widths) <= 2  # chunks, trimmed
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_freeze_layers_trains_only_the_top_layers(tmp_path, small_catalog):  # noqa: F811
    from safetensors.torch import load_file

    from compass.errors import CompassError
    from compass.train.trainer import TrainConfig, build_trainer, fit

    base = tiny_bert(tmp_path / "bert", _catalog_texts(small_catalog), None)
    spec = _prepare(small_catalog, base=str(base), out=str(tmp_path / "out"), freeze_layers=1, lr=1e-3)
    _, info = build_trainer(spec)
    assert info["frozen_layers"] == 1 and info["frozen_parameters"] > 0 and info["trainable_parameters"] > 0
    fit(spec)
    before = load_file(str(Path(str(base) + "-hf") / "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "model.safetensors"))
    strip = {k.split(".", 1)[-1] if k.split(".", 1)[-1] in before else k: v for k, v in after.items()}
    frozen = [k for k in before if k.startswith("embeddings.") or k.startswith("encoder.layer.0.")]
    trained = [k for k in before if k.startswith("encoder.layer.1.") and k.endswith("weight")]
    assert frozen and trained
    for k in frozen:  # the embedding block and the lowest layer stay as the base left them
        torch.testing.assert_close(strip[k], before[k], rtol=0, atol=0)
    assert any(not torch.equal(strip[k], before[k]) for k in trained)

    with pytest.raises(CompassError, match="has only 2 layers"):
        build_trainer(_prepare(small_catalog, base=str(base), out=str(tmp_path / "o2"), freeze_layers=3))
    with pytest.raises(CompassError, match="needs a transformer base"):
        build_trainer(_prepare(small_catalog, base="static", out=str(tmp_path / "o3"), freeze_layers=1))
    with pytest.raises(CompassError, match="--freeze-layers -1"):
        TrainConfig(base="static", out=str(tmp_path / "o4"), freeze_layers=-1)
