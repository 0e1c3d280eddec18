"""SLERP merge: the maths against independent references, and real sentence-transformers folders end to end."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from compass.errors import CompassError
from compass.train.merge import merge_models, slerp, sweep_merge

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "shoes", "áo", "thun", "kasut", "bag", "phone",
         "case", "cotton", "shirt", "blue", "women", "men", "sale", "free"]


def _angle(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.reshape(-1).double(), y.reshape(-1).double()
    return math.acos(max(-1.0, min(1.0, float(x @ y / (x.norm() * y.norm())))))


def _rotation_reference(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Independent of the sin-ratio formula: rotate a's direction by t*theta in the plane of a and b (Gram-Schmidt),
    norm interpolated linearly."""
    x, y = a.reshape(-1).double(), b.reshape(-1).double()
    e1 = x / x.norm()
    perp = y / y.norm() - (y / y.norm() @ e1) * e1
    e2 = perp / perp.norm()
    theta = _angle(x, y)
    d = math.cos(t * theta) * e1 + math.sin(t * theta) * e2
    return (((1 - t) * x.norm() + t * y.norm()) * d).reshape(a.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_endpoints_are_exact(dtype):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g).to(dtype), torch.randn(7, 5, generator=g).to(dtype)
    assert torch.equal(slerp(a, b, 0.0), a) and slerp(a, b, 0.0).dtype == dtype
    assert torch.equal(slerp(a, b, 1.0), b)
    assert slerp(a, b, 0.3).dtype == dtype


@pytest.mark.parametrize("t", [0.1, 0.25, 0.5, 0.9])
def test_angle_is_t_times_theta_and_norm_linear(t):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(64, 32, generator=g, dtype=torch.float64)
    b = 3 * torch.randn(64, 32, generator=g, dtype=torch.float64)
    m = slerp(a, b, t)
    theta = _angle(a, b)
    assert theta > 0.5  # random high-dimensional vectors are far from colinear: the spherical path is taken
    assert _angle(m, a) == pytest.approx(t * theta, abs=1e-9)
    assert _angle(m, b) == pytest.approx((1 - t) * theta, abs=1e-9)
    assert float(m.norm()) == pytest.approx((1 - t) * float(a.norm()) + t * float(b.norm()), rel=1e-12)
    # a plain average would shorten the vector; slerp keeps it on the arc
    assert float(m.norm()) > float(((1 - t) * a + t * b).norm())


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_matches_rotation_reference(t):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(300, generator=g, dtype=torch.float64), torch.randn(300, generator=g, dtype=torch.float64) * 0.5
    torch.testing.assert_close(slerp(a, b, t), _rotation_reference(a, b, t), rtol=1e-10, atol=1e-12)


def test_colinear_takes_linear_path():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(40, 8, generator=g)
    for b in (2.5 * a, 2.5 * a + 1e-5 * torch.randn(40, 8, generator=g), -a, torch.zeros_like(a)):
        torch.testing.assert_close(slerp(a, b, 0.3), 0.7 * a + 0.3 * b, rtol=0, atol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="one shape"):
        slerp(torch.zeros(3), torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        slerp(torch.ones(3), torch.ones(3), 1.5)


def test_same_as_mergekit_on_equal_norms():
    """mergekit slerps each row of a 2-D tensor on the raw tensors; on one row with equal norms it must coincide."""
    mk = pytest.importorskip("mergekit.merge_methods.slerp")
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(1, 500, generator=g, dtype=torch.float64), torch.randn(1, 500, generator=g, dtype=torch.float64)
    b = b * a.norm() / b.norm()
    for t in (0.25, 0.5, 0.75):
        torch.testing.assert_close(slerp(a, b, t), mk.slerp(torch.tensor(t), a, b), rtol=1e-10, atol=1e-12)


# --- real sentence-transformers folders -------------------------------------------------------------------------

def _bert(tmp_path, name, seed, hidden=32, vocab=WORDS):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import BertConfig, BertModel, BertTokenizerFast

    raw = tmp_path / f"{name}_hf"
    raw.mkdir()
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(raw)
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=2 * hidden, max_position_embeddings=64)).save_pretrained(raw)
    tr = Transformer(str(raw))
    st = SentenceTransformer(modules=[tr, Pooling(tr.get_embedding_dimension())], device="cpu")
    st.save(str(tmp_path / name))
    return tmp_path / name


def _static(tmp_path, name, seed, vocab=WORDS, dim=16):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(len(vocab), dim, generator=g)
    st = SentenceTransformer(modules=[StaticEmbedding(tok, embedding_weights=weights)], device="cpu")
    st.save(str(tmp_path / name))
    return tmp_path / name


TEXTS = ["red shoes women", "áo thun cotton", "kasut men sale", "phone case blue"]


@pytest.mark.parametrize("kind", ["bert", "static"])
def test_merge_real_models(tmp_path, kind):
    from sentence_transformers import SentenceTransformer

    make = _bert if kind == "bert" else _static
    a, b = make(tmp_path, "a", 1), make(tmp_path, "b", 2)
    info = merge_models(a, b, 0.3, tmp_path / "m")
    assert info["counts"]["slerp"] > 0
    ma, mb, mm = (SentenceTransformer(str(p), device="cpu") for p in (a, b, tmp_path / "m"))
    sa, sb, sm = ma.state_dict(), mb.state_dict(), mm.state_dict()
    assert sa.keys() == sm.keys()
    buffers = {n for n, _ in ma.named_buffers()}
    for k in sa:
        if k in buffers or not sa[k].is_floating_point():
            assert torch.equal(sm[k], sa[k]), k
        else:
            torch.testing.assert_close(sm[k], slerp(sa[k], sb[k], 0.3), rtol=0, atol=0)
            assert not torch.equal(sm[k], sa[k]) or torch.equal(sa[k], sb[k]), k
    emb = mm.encode(TEXTS, convert_to_tensor=True)
    assert emb.shape[0] == len(TEXTS) and torch.isfinite(emb).all()
    # t=0 reproduces A's embeddings exactly
    merge_models(a, b, 0.0, tmp_path / "m0")
    m0 = SentenceTransformer(str(tmp_path / "m0"), device="cpu")
    assert torch.equal(m0.encode(TEXTS, convert_to_tensor=True), ma.encode(TEXTS, convert_to_tensor=True))
    card = (tmp_path / "m" / "README.md").read_text()
    assert "| chosen t | 0.3 |" in card


def test_mismatches_are_named(tmp_path):
    a = _bert(tmp_path, "a", 1)
    wide = _bert(tmp_path, "wide", 2, hidden=48)
    with pytest.raises(CompassError, match=r"config\.json differs"):
        merge_models(a, wide, 0.5, tmp_path / "x")
    other_vocab = _bert(tmp_path, "ov", 2, vocab=WORDS[:-1] + ["gratis"])
    with pytest.raises(CompassError, match=r"(vocab\.txt|tokenizer\.json) differs"):
        merge_models(a, other_vocab, 0.5, tmp_path / "x")
    with pytest.raises(CompassError, match=r"modules\.json differs"):
        merge_models(a, _static(tmp_path, "s", 1), 0.5, tmp_path / "x")
    # same interface files, different tensor shape: the first mismatching tensor is named
    with pytest.raises(CompassError, match=r"tensor '0\.embedding\.weight' is \(20, 16\)"):
        merge_models(_static(tmp_path, "s16", 1), _static(tmp_path, "s24", 1, dim=24), 0.5, tmp_path / "x")
    # a checkpoint whose weights contradict its config: a one-line error naming the folder
    from safetensors.torch import load_file, save_file
    b = _bert(tmp_path, "b", 2)
    sd = load_file(str(b / "model.safetensors"))
    key = sorted(k for k in sd if k.endswith("intermediate.dense.bias"))[0]
    sd[key] = torch.zeros(sd[key].shape[0] + 1)
    save_file(sd, str(b / "model.safetensors"))
    with pytest.raises(CompassError, match=f"{b}: sentence-transformers cannot load it"):
        merge_models(a, b, 0.5, tmp_path / "x")
    with pytest.raises(CompassError, match="out of range"):
        merge_models(a, a, 2.0, tmp_path / "x")


def test_sweep_keeps_best_t(tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    a, b = _static(tmp_path, "a", 1), _static(tmp_path, "b", 2)
    merge_models(a, b, 0.75, tmp_path / "target")
    target = SentenceTransformer(str(tmp_path / "target"), device="cpu").encode(TEXTS, convert_to_tensor=True)
    seen = []

    def evaluator(model, tasks_dir):  # a real score: agreement of the model's embeddings with a reference model's
        seen.append(tasks_dir)
        emb = model.encode(TEXTS, convert_to_tensor=True)
        return {"macro": float(torch.nn.functional.cosine_similarity(emb, target).mean()), "tasks": {}}

    info = sweep_merge(a, b, [0, 0.25, 0.5, 0.75, 1], tmp_path / "tasks", tmp_path / "best", evaluator=evaluator)
    assert info["t"] == 0.75 and len(seen) == 5
    assert [r["t"] for r in info["sweep"]] == [0, 0.25, 0.5, 0.75, 1]
    out = capsys.readouterr().out
    assert re.search(r"^0\.75\s+1\.0000\s.*<- best$", out, re.M)
    card = (tmp_path / "best" / "README.md").read_text()
    assert "| chosen t | 0.75 |" in card and "(chosen)" in card
    assert json.loads((tmp_path / "best" / "compass_merge.json").read_text())["t"] == 0.75
    best = SentenceTransformer(str(tmp_path / "best"), device="cpu").encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(best, target)


def test_sweep_with_evaluate_model_scores_a_cast_copy(tmp_path, capsys):
    """The default evaluator (compass eval) scores each t in the asked precision; the saved model stays float32 and
    equals a plain merge at the chosen t; the sweep reports retrieval and classification macros apart."""
    from sentence_transformers import SentenceTransformer

    from compass.train.merge import _local

    a, b = _static(tmp_path, "a", 1), _static(tmp_path, "b", 2)
    task = tmp_path / "tasks" / "en_toy"
    (task / "qrels").mkdir(parents=True)
    (task / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                               for i, t in enumerate(TEXTS)))
    (task / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t.split()[0]}) + "\n"
                                                for i, t in enumerate(TEXTS)))
    (task / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                             "".join(f"q{i}\td{i}\t1\n" for i in range(len(TEXTS))))
    info = sweep_merge(a, b, [0, 0.5, 1], tmp_path / "tasks", tmp_path / "best", device="cpu", precision="bf16")
    assert all(r["classification"] is None and 0 <= r["retrieval"] <= 1 and r["macro"] == r["retrieval"]
               for r in info["sweep"])
    assert "retrieval" in capsys.readouterr().out
    merge_models(a, b, info["t"], tmp_path / "plain")
    best, plain = (SentenceTransformer(str(tmp_path / n), device="cpu") for n in ("best", "plain"))
    assert all(p.dtype == torch.float32 for p in best.parameters())
    for k, v in plain.state_dict().items():
        assert torch.equal(best.state_dict()[k], v), k
    assert "| retrieval macro |" in (tmp_path / "best" / "README.md").read_text()
    with pytest.raises(CompassError, match="--precision"):
        sweep_merge(a, b, [0], tmp_path / "tasks", tmp_path / "x", precision="fp8")
    from compass.models import minilm_path

    assert _local("minilm") == minilm_path() and _local(a) == a  # model names resolve, folders stay


def test_cli(tmp_path):
    import typer
    from typer.testing import CliRunner

    from compass.train.cli_merge import register

    app = typer.Typer()
    register(app)
    a, b = _static(tmp_path, "a", 1), _static(tmp_path, "b", 2)
    r = CliRunner().invoke(app, ["merge", str(a), str(b), "--t", "0.5", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "merged t=0.5" in r.output and (tmp_path / "m" / "modules.json").is_file()
    r = CliRunner().invoke(app, ["merge", str(a), str(b), "--sweep", "0,1", "--out", str(tmp_path / "n")])
    assert isinstance(r.exception, CompassError) and "--eval" in str(r.exception)
    r = CliRunner().invoke(app, ["merge", str(a), str(b), "--out", str(tmp_path / "n")])
    assert isinstance(r.exception, CompassError) and "--t" in str(r.exception)
    r = CliRunner().invoke(app, ["merge", str(a), str(b), "--sweep", "0,1", "--eval", str(tmp_path), "--device", "tpu",
                                 "--out", str(tmp_path / "n")])
    assert isinstance(r.exception, CompassError) and "--device 'tpu'" in str(r.exception)
