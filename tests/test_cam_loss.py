"""CAMLoss: equals MultipleNegativesRankingLoss when nothing is masked, masks exactly what a plain loop says,
and the cached (GradCache) variant equals the plain one. Real sentence-transformers models built locally."""

from __future__ import annotations

import copy
import hashlib
import math

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.modules import Pooling, StaticEmbedding, Transformer
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, BertTokenizerFast

from compass.errors import CompassError
from compass.train.cam_loss import (
    DEFAULT_TASK_IDS,
    NO_CLASS,
    CachedCAMLoss,
    CAMLoss,
    cam_mask,
    encode_cam_label,
    stable_int64,
)

T = DEFAULT_TASK_IDS
WORDS = (
    "kemeja batik pria lengan panjang sepatu lari wanita tas kulit ponsel murah casing áo thun nam quần jean "
    "giày thể thao túi xách baju kurung tudung bawal kasut sukan beg galas damit pambabae sapatos bag relo "
    "headphone wireless bluetooth kabel charger fast case iphone samsung xiaomi red blue black white size"
).split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out, seen = [], set()
    while len(out) < n:
        length = int(torch.randint(3, 8, (1,), generator=g))
        t = " ".join(WORDS[i] for i in torch.randint(len(WORDS), (length,), generator=g))
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def static_model(dim: int = 24, seed: int = 0) -> SentenceTransformer:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    torch.manual_seed(seed)
    return SentenceTransformer(modules=[StaticEmbedding(tok, embedding_dim=dim)], device="cpu")


def bert_model(path, hidden: int = 32, seed: int = 0) -> SentenceTransformer:
    """A 2-layer BERT with random weights and a WordPiece tokenizer trained here; no dropout so that
    the merged forward of the plain loss and the mini-batches of the cached one see the same network."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator([" ".join(WORDS)] * 3, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    BertTokenizerFast(tokenizer_object=tok).save_pretrained(path)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    return SentenceTransformer(modules=[Transformer(str(path)), Pooling(hidden, "mean")], device="cpu")


def features_and_labels(model, columns: list[list[str]], labels: list[list[int]]):
    return [model.preprocess(col) for col in columns], torch.tensor(labels, dtype=torch.long)


def loss_and_grads(model, loss_fn, features, labels):
    model.zero_grad()
    loss = loss_fn(features, labels)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(a, b, atol=1e-6, rtol=1e-4):
    (la, ga), (lb, gb) = a, b
    assert torch.allclose(la, lb, atol=atol, rtol=rtol), (la, lb)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=atol, rtol=rtol), name


def distinct_batch(n: int, num_neg: int, seed: int = 0):
    """n examples, all class ids and texts distinct: nothing for CAM to mask."""
    texts = make_texts(n * (2 + num_neg), seed)
    anchors, positives = texts[:n], texts[n : 2 * n]
    negs = [texts[(2 + k) * n : (3 + k) * n] for k in range(num_neg)]
    labels = [
        encode_cam_label(f"class-{i}", "query2title", positives[i],
                         [(negs[k][i], f"neg-{i}-{k}") for k in range(num_neg)])
        for i in range(n)
    ]
    return [anchors, positives, *negs], labels


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return bert_model(tmp_path_factory.mktemp("tiny-bert"))


# --- 1. CAM == MNRL when nothing is masked --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["static", "bert"])
@pytest.mark.parametrize("num_neg", [0, 2])
@pytest.mark.parametrize("symmetric", [False, True])
def test_equals_mnrl_without_shared_classes(kind, num_neg, symmetric, bert):
    # float64: in float32 the embedding backward's scatter-add sums in a thread-dependent order, which moved
    # word-embedding gradients by ~1e-7 between two runs of the SAME loss (seen in CI).
    model = (static_model() if kind == "static" else copy.deepcopy(bert)).double()
    columns, labels = distinct_batch(8, num_neg)
    features, labels = features_and_labels(model, columns, labels)
    directions = ("query_to_doc", "doc_to_query") if symmetric else ("query_to_doc",)
    mnrl = MultipleNegativesRankingLoss(model, scale=20.0, directions=directions, partition_mode="per_direction")
    # A task policy that names tasks absent from the batch must change nothing either.
    cam = CAMLoss(model, temperature=0.05, symmetric=symmetric, task_policy={"title2category": {"title2title"}})
    ref, got = loss_and_grads(model, mnrl, features, labels), loss_and_grads(model, cam, features, labels)
    assert ref[0] > 0 and any(g.abs().sum() > 0 for g in ref[1].values())
    assert_same(got, ref, atol=1e-12, rtol=1e-10)


# --- 2. Masking against a plain reference ---------------------------------------------------------------


def reference_loss(anchors, cands, labels, num_neg, scale, symmetric, policy, same_class=True, same_text=True):
    """The rule of the issue, one (i, j) at a time."""
    n = anchors.size(0)
    a_cls, a_task, a_txt = labels[:, 0].tolist(), labels[:, 1].tolist(), labels[:, 2].tolist()
    c_cls, c_task, c_txt, c_own = [], [], [], []
    for block in range(1 + num_neg):  # candidate order: positives, then neg_1 of all examples, ...
        for e in range(n):
            c_cls.append(a_cls[e] if block == 0 else labels[e, 3 + block - 1].item())
            c_txt.append(a_txt[e] if block == 0 else labels[e, 3 + num_neg + block - 1].item())
            c_task.append(a_task[e])
            c_own.append(e)

    def masked(i, cls, task, txt, owner):
        if owner == i:
            return False
        return (
            (same_class and a_cls[i] != NO_CLASS and cls == a_cls[i])
            or (same_text and txt == a_txt[i])
            or (task in policy.get(a_task[i], set()))
        )

    a = torch.nn.functional.normalize(anchors, dim=-1)
    c = torch.nn.functional.normalize(cands, dim=-1)
    total = 0.0
    for i in range(n):
        row = [scale * (a[i] @ c[j]) for j in range(len(c_cls))
               if not masked(i, c_cls[j], c_task[j], c_txt[j], c_own[j])]
        fwd = torch.logsumexp(torch.stack(row), 0)
        if symmetric:  # positive i against every anchor j, anchor j dropped when positive i is masked for j
            back = [scale * (a[j] @ c[i]) for j in range(n) if not masked(j, a_cls[i], a_task[i], a_txt[i], i)]
            fwd = (fwd + torch.logsumexp(torch.stack(back), 0)) / 2
        total = total + fwd - scale * (a[i] @ c[i])
    return total / n


def tricky_labels():
    """8 examples, 1 hard negative each: shared classes, an identical positive text, a classless pair,
    a category-label task, and a hard negative that shares its own anchor's class."""
    rows = [
        ("cat/shirt", "query2title", "pos-a", ("neg-0", "cat/shoe")),
        ("cat/shirt", "title2category", "pos-b", ("neg-1", "cat/bag")),  # shares class with 0
        ("cat/phone", "query2title", "pos-a", ("neg-2", "cat/case")),  # same positive text as 0
        (None, "title2title", "pos-c", ("neg-3", None)),  # classless: masks nothing by class
        (None, "title2title", "pos-d", ("neg-4", "cat/phone")),  # hard negative valid for anchor 2
        ("cat/shoe", "query2title", "pos-e", ("neg-5", "cat/shoe")),  # own hard negative shares class: kept
        ("cat/bag", "title2category", "pos-f", ("neg-6", "cat/x")),
        ("cat/watch", "review2title", "pos-g", ("pos-f", "cat/y")),  # hard negative text == positive of 6
    ]
    return torch.tensor([encode_cam_label(c, t, p, [n]) for c, t, p, n in rows])


POLICY = {"query2title": {"title2category"}, "review2title": {"title2category"}}


@pytest.mark.parametrize("symmetric", [False, True])
def test_masking_matches_plain_loop(symmetric):
    torch.manual_seed(1)
    labels = tricky_labels()
    anchors = torch.randn(8, 16, requires_grad=True)
    docs = [torch.randn(8, 16, requires_grad=True) for _ in range(2)]
    cam = CAMLoss(static_model(), temperature=0.05, symmetric=symmetric, task_policy=POLICY)
    got = cam.compute_loss_from_embeddings([anchors, *docs], labels)
    got_grads = torch.autograd.grad(got, [anchors, *docs])
    policy = {T[a]: {T[c] for c in cs} for a, cs in POLICY.items()}
    ref = reference_loss(anchors, torch.cat(docs), labels, 1, 20.0, symmetric, policy)
    ref_grads = torch.autograd.grad(ref, [anchors, *docs])
    assert torch.allclose(got, ref, atol=1e-5)
    for g, r in zip(got_grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)
    # and the ablations of each rule agree with the reference too
    for same_class, same_text in [(False, True), (True, False), (False, False)]:
        cam = CAMLoss(static_model(), symmetric=symmetric, mask_same_class=same_class, mask_same_text=same_text)
        got = cam.compute_loss_from_embeddings([anchors, *docs], labels)
        ref = reference_loss(anchors, torch.cat(docs), labels, 1, 20.0, symmetric, {}, same_class, same_text)
        assert torch.allclose(got, ref, atol=1e-5)


def test_mask_entries():
    labels = tricky_labels()
    n, k = 8, 1
    c_class = torch.cat([labels[:, 0], labels[:, 3]])
    c_text = torch.cat([labels[:, 2], labels[:, 4]])
    policy = torch.zeros(len(T), len(T), dtype=torch.bool)
    policy[T["query2title"], T["title2category"]] = policy[T["review2title"], T["title2category"]] = True
    idx = torch.arange(n)
    m = cam_mask(
        labels[:, 0], labels[:, 1], labels[:, 2], idx,
        c_class, labels[:, 1].repeat(1 + k), c_text, idx.repeat(1 + k), policy=policy,
    )  # fmt: skip
    assert m.shape == (8, 16)
    assert not m[idx, idx].any() and not m[idx, idx + n].any()  # own positive, own hard negative
    assert m[0, 1] and m[1, 0]  # same class across examples
    assert m[0, 2] and m[2, 0]  # identical positive text
    assert not m[3, 4] and not m[4, 3]  # both classless
    assert m[2, n + 4]  # another example's hard negative carrying anchor 2's class
    assert not m[5, n + 5]  # own hard negative with the anchor's own class stays
    assert m[5, n + 0] and not m[1, n + 0]  # example 0's hard negative (cat/shoe) is valid for anchor 5 only
    assert m[6, n + 7]  # a hard negative whose text is anchor 6's positive
    assert m[0, 6] and m[5, 6] and m[7, 6]  # policy: category-label candidates for query/review anchors
    assert not m[3, 6]  # title2title anchors have no policy here
    big = torch.zeros(70, 70, dtype=torch.bool)  # past 62 tasks the policy is looked up by a 2-D gather instead
    big[: len(T), : len(T)] = policy
    m_big = cam_mask(
        labels[:, 0], labels[:, 1], labels[:, 2], idx,
        c_class, labels[:, 1].repeat(1 + k), c_text, idx.repeat(1 + k), policy=big,
    )  # fmt: skip
    assert torch.equal(m, m_big)


def test_masking_lowers_loss_only_on_affected_rows():
    torch.manual_seed(0)
    labels = tricky_labels()
    emb = [torch.randn(8, 16) for _ in range(3)]
    model = static_model()
    plain = CAMLoss(model, mask_same_class=False, mask_same_text=False)
    cam = CAMLoss(model, task_policy=POLICY)
    rows_plain = plain._per_anchor_loss(plain._prepare(emb, labels), 0, 8)
    rows_cam = cam._per_anchor_loss(cam._prepare(emb, labels), 0, 8)
    affected = cam._mask(cam._prepare(emb, labels), torch.arange(8)).any(dim=1)
    assert affected.sum() >= 5 and not affected[3]
    assert (rows_cam[affected] < rows_plain[affected]).all()  # fewer terms in the log-sum-exp
    assert torch.equal(rows_cam[~affected], rows_plain[~affected])
    # the MNRL formulation on the same embeddings gives the unmasked value
    mnrl = MultipleNegativesRankingLoss(model, scale=20.0)
    assert torch.allclose(mnrl.compute_loss_from_embeddings(emb, labels), rows_plain.mean(), atol=1e-6)


# --- 3. GradCache variant --------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [False, True])
def test_cached_equals_plain(bert, symmetric):
    # float64: the cached pass sums the gradient of the shared embedding tables (token types, positions) in another
    # order, which in float32 leaves ~1e-4 relative noise on near-zero entries; in float64 the two agree to ~1e-12.
    bert = copy.deepcopy(bert).double()
    texts = make_texts(24, seed=3)
    columns = [texts[:8], texts[8:16], texts[16:]]
    labels = tricky_labels()
    features, labels = features_and_labels(bert, columns, labels.tolist())
    kw = dict(temperature=0.05, symmetric=symmetric, task_policy=POLICY)
    plain = loss_and_grads(bert, CAMLoss(bert, **kw), features, labels)
    cached = loss_and_grads(bert, CachedCAMLoss(bert, mini_batch_size=3, **kw), features, labels)
    assert_same(cached, plain, atol=1e-10, rtol=1e-8)
    unmasked = loss_and_grads(bert, CAMLoss(bert, symmetric=symmetric, mask_same_class=False, mask_same_text=False),
                              features, labels)
    assert not torch.allclose(plain[0], unmasked[0])  # the masks were active


def test_cached_refuses_static():
    with pytest.raises(CompassError, match="StaticEmbedding"):
        CachedCAMLoss(static_model())


# --- labels: encoding, collator path, errors ------------------------------------------------------------


def test_stable_int64_and_label_layout():
    expect = int.from_bytes(hashlib.sha256(b"kemeja").digest()[:8], "big", signed=True)
    assert stable_int64("kemeja") == expect == stable_int64("kemeja")
    assert -(2**63) <= stable_int64("x") < 2**63
    lab = encode_cam_label("c", "title2title", "p", [("n1", "c1"), ("n2", None)], task_ids=T)
    assert lab == [stable_int64("c"), T["title2title"], stable_int64("p"), stable_int64("c1"), NO_CLASS,
                   stable_int64("n1"), stable_int64("n2")]  # fmt: skip
    assert encode_cam_label("", "query2title", "p", [])[0] == NO_CLASS
    with pytest.raises(CompassError, match="task_ids"):
        encode_cam_label("c", "nope", "p", [])
    with pytest.raises(CompassError, match="task_ids"):
        CAMLoss(static_model(), task_policy={"nope": {"query2title"}})


def test_label_column_through_library_collator():
    """The `label` column of lists becomes the (B, 3 + 2K) int64 tensor the loss reads."""
    from datasets import Dataset

    model = static_model()
    columns, labels = distinct_batch(6, 1, seed=5)
    labels[1][0] = labels[0][0]  # one shared class
    ds = Dataset.from_dict({"anchor": columns[0], "positive": columns[1], "negative": columns[2], "label": labels})
    batch = SentenceTransformerDataCollator(preprocess_fn=model.preprocess)(list(ds))
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (6, 5)
    features = [{k[len(c) + 1 :]: v for k, v in batch.items() if k.startswith(c + "_")} for c in ds.column_names[:3]]
    loss = CAMLoss(model)(features, batch["label"])
    unmasked = CAMLoss(model, mask_same_class=False)(features, batch["label"])
    assert math.isfinite(loss.item()) and loss < unmasked
    with pytest.raises(CompassError, match="label column"):
        CAMLoss(model)(features, batch["label"][:, :3])
    cfg = CAMLoss(model, task_policy=POLICY).get_config_dict()
    assert cfg["temperature"] == 0.05 and cfg["task_policy"]["query2title"] == ["title2category"]
