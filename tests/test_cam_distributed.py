"""Two CPU processes (gloo), each with half the batch and gather_across_devices=True, give the loss and the
gradients of one process on the whole batch, and class masking crosses ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, StaticEmbedding, Transformer
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, BertTokenizerFast

from compass.errors import CompassError
from compass.train.cam_loss import CachedCAMLoss, CAMLoss, encode_cam_label
from compass.train.distributed import launch

VOCAB = ("kemeja batik pria sepatu lari wanita tas kulit ponsel casing "
         "áo thun quần giày baju kasut beg relo case").split()
POLICY = {"query2title": {"title2category"}}
# 8 examples, rank 0 gets 0-3 and rank 1 gets 4-7. Cross-rank masks: 1 and 6 share a class, 2 and 5 have the same
# positive text, example 7's hard negative carries anchor 0's class, example 4 is a category-label task.
ROWS = [
    ("prod/1", "query2title", "kemeja batik pria", ("sepatu lari", "prod/9")),
    ("cat/shirt", "title2category", "baju", ("tas kulit", "cat/bag")),
    ("prod/2", "query2title", "ponsel casing", ("relo case", "prod/8")),
    ("prod/3", "title2title", "áo thun", ("quần", "prod/7")),
    ("cat/shoe", "title2category", "kasut", ("beg", "cat/bag2")),
    ("prod/4", "query2title", "ponsel casing", ("giày", "prod/6")),
    ("cat/shirt", "title2category", "kemeja", ("wanita", "cat/dress")),
    ("prod/5", "title2title", "thun áo", ("batik kulit", "prod/1")),
]
ANCHORS = ["kemeja pria", "batik kemeja", "casing ponsel", "thun áo", "sepatu kasut", "ponsel", "kemeja wanita", "áo"]


def columns_and_labels():
    columns = [ANCHORS, [r[2] for r in ROWS], [r[3][0] for r in ROWS]]
    labels = torch.tensor([encode_cam_label(c, t, p, [n]) for c, t, p, n in ROWS])
    return columns, labels


def build_models(root) -> dict[str, str]:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(VOCAB)], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    torch.manual_seed(0)
    SentenceTransformer(modules=[StaticEmbedding(tok, embedding_dim=16)], device="cpu").save(str(root / "static"))

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp.train_from_iterator([" ".join(VOCAB)] * 3, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", wp.token_to_id("[CLS]")), ("[SEP]", wp.token_to_id("[SEP]"))]
    )
    hf = root / "bert-hf"
    BertTokenizerFast(tokenizer_object=wp).save_pretrained(hf)
    cfg = BertConfig(vocab_size=wp.get_vocab_size(), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(hf)
    bert = SentenceTransformer(modules=[Transformer(str(hf)), Pooling(16, "mean")], device="cpu")
    bert.save(str(root / "bert"))
    return {"static": str(root / "static"), "bert": str(root / "bert")}


CONFIGS = [  # (model, loss class, kwargs)
    ("static", "CAMLoss", {}),
    ("static", "CAMLoss", {"symmetric": True}),
    ("bert", "CachedCAMLoss", {"symmetric": True, "mini_batch_size": 3}),
]
LOSSES = {"CAMLoss": CAMLoss, "CachedCAMLoss": CachedCAMLoss}


def step(model, loss_fn, columns, labels):
    model.zero_grad()
    loss = loss_fn([model.preprocess(col) for col in columns], labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def rank_steps(model_dirs: dict[str, str]) -> list[dict]:
    """One rank: its half of the batch, gathered loss; gradients averaged over ranks as DDP does."""
    rank, world = dist.get_rank(), dist.get_world_size()
    columns, labels = columns_and_labels()
    half = len(labels) // world
    mine = slice(rank * half, (rank + 1) * half)
    out = []
    for kind, loss_name, kw in CONFIGS:
        model = SentenceTransformer(model_dirs[kind], device="cpu").double()  # see the test for why float64
        loss_fn = LOSSES[loss_name](model, task_policy=POLICY, gather_across_devices=True, **kw)
        loss, grads = step(model, loss_fn, [c[mine] for c in columns], labels[mine])
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
        mean_loss = loss.clone()
        dist.all_reduce(mean_loss)
        out.append({"local_loss": loss, "loss": mean_loss / world, "grads": grads})
    return out


@pytest.mark.slow
def test_two_processes_equal_one_on_union_batch(tmp_path):
    model_dirs = build_models(tmp_path)
    # fork: the children reuse this process's imports instead of re-importing torch and transformers (tens of
    # seconds on a busy 2-core box); the spawn path is covered by test_launch_spawn below.
    results = launch(rank_steps, 2, model_dirs, threads_per_proc=1, start_method="fork")
    columns, labels = columns_and_labels()
    for index, (kind, loss_name, kw) in enumerate(CONFIGS):
        # float64, so that summing the ranks' gradients in another order leaves ~1e-12, not float32 noise
        model = SentenceTransformer(model_dirs[kind], device="cpu").double()
        loss_fn = LOSSES[loss_name](model, task_policy=POLICY, **kw)
        ref_loss, ref_grads = step(model, loss_fn, columns, labels)
        r0, r1 = results[0][index], results[1][index]
        assert not torch.allclose(r0["local_loss"], r1["local_loss"])  # the ranks really held different halves
        for r in (r0, r1):
            assert torch.allclose(r["loss"], ref_loss, atol=1e-10), (kind, loss_name, r["loss"], ref_loss)
            assert r["grads"].keys() == ref_grads.keys() and ref_grads
            for name, g in ref_grads.items():
                assert torch.allclose(r["grads"][name], g, atol=1e-10, rtol=1e-8), (kind, loss_name, name)
        # masking was active across ranks: anchors of rank 0 lose candidates that live on rank 1 and vice versa
        cam = CAMLoss(model, task_policy=POLICY)
        mask = cam._mask(cam._prepare([torch.zeros(8, 2, dtype=torch.float64)] * 3, labels), torch.arange(8))
        rank_of_candidate = (torch.arange(16) % 8) // 4
        assert mask[:4][:, rank_of_candidate == 1].any() and mask[4:][:, rank_of_candidate == 0].any()
        unmasked = LOSSES[loss_name](model, mask_same_class=False, mask_same_text=False, **kw)
        assert not torch.allclose(step(model, unmasked, columns, labels)[0], ref_loss)


@pytest.mark.slow
def test_launch_spawn():
    # torch.distributed.get_rank is module-level, so the spawned children only import torch and compass
    assert launch(dist.get_rank, 2, threads_per_proc=1) == [0, 1]


def test_launch_rejects_local_function():
    def local(x):
        return x

    with pytest.raises(CompassError, match="module-level"):
        launch(local, 2, 1)


def _rank_then_abort_at_exit() -> int:
    # os.abort in the child's exit handlers: the process dies by SIGABRT after its result is saved and the
    # process group is torn down, as a crash in the teardown did once in CI
    import multiprocessing.util
    import os

    multiprocessing.util.Finalize(None, os.abort, exitpriority=100)
    return dist.get_rank()


def _abort_before_result() -> int:
    import os

    if dist.get_rank() == 1:
        os.abort()
    return dist.get_rank()


def test_launch_keeps_results_saved_before_a_teardown_crash_and_fails_without_them():
    with pytest.warns(RuntimeWarning, match="after every rank had saved its result"):
        assert launch(_rank_then_abort_at_exit, 2, threads_per_proc=1, start_method="fork") == [0, 1]
    with pytest.raises(mp.ProcessExitedException, match="SIGABRT"):
        launch(_abort_before_result, 2, threads_per_proc=1, start_method="fork", timeout_s=20)
