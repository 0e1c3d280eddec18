"""The IVF index for large mining pools (compass.filters.mine_ann) against the exact search it replaces.

Real parts: faiss-cpu, the bundled all-MiniLM-L6-v2 and a real DuckDB catalog for the stage test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compass.errors import CompassError
from compass.filters.mine_ann import ann_topk, build_index, n_lists, read_index
from compass.filters.mine_search import chunked_topk

pytest.importorskip("faiss")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, d: int = 32, centres: int = 60, seed: int = 0) -> np.ndarray:
    """Unit vectors around `centres` random directions: a pool of product texts is clustered like this."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    return _unit(c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d)))


def _exact(q: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s, i = chunked_topk(torch.from_numpy(q), torch.from_numpy(c), k)
    return s.numpy(), i.numpy()


def test_every_list_probed_equals_the_exact_search(tmp_path):
    pool = _clustered(3000)
    q = _clustered(200, seed=1)
    index = read_index(build_index(pool, str(tmp_path / "ivf.faiss"), chunk=1000))   # several add() chunks
    assert index.ntotal == 3000 and index.nlist == n_lists(3000) == 219
    s, i = ann_topk(index, q, 51, nprobe=index.nlist)
    es, ei = _exact(q, pool, 51)
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_allclose(s, es, atol=1e-5)


def test_default_probe_finds_most_of_the_exact_top_k_with_exact_scores(tmp_path):
    pool = _clustered(20000, seed=2)
    q = _clustered(300, seed=3)
    s, i = ann_topk(read_index(build_index(pool, str(tmp_path / "ivf.faiss"))), q, 101, nprobe=32)
    _, ei = _exact(q, pool, 101)
    recall = np.mean([len(set(a) & set(b)) / 101 for a, b in zip(i, ei)])
    assert recall >= 0.9, recall
    # what is found carries its exact score: the margin guard reads it
    np.testing.assert_allclose(s, np.einsum("qd,qkd->qk", q, pool[i]), atol=1e-5)
    assert (np.diff(s, axis=1) <= 0).all()                      # best first


def test_two_builds_of_a_pool_search_alike(tmp_path):
    pool, q = _clustered(5000, seed=4), _clustered(100, seed=5)
    a = ann_topk(read_index(build_index(pool, str(tmp_path / "a.faiss"))), q, 20, nprobe=4)
    b = ann_topk(read_index(build_index(pool, str(tmp_path / "b.faiss"))), q, 20, nprobe=4)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_fewer_texts_found_than_asked_are_padded_and_never_candidates(tmp_path):
    from compass.filters.mine_search import GuardConfig, select_negatives

    pool = _clustered(400, centres=4, seed=6)
    s, i = ann_topk(read_index(build_index(pool, str(tmp_path / "ivf.faiss"))), pool[:5], 400, nprobe=1)
    assert (i == -1).any() and np.isneginf(s[i == -1]).all()
    m = select_negatives(s, i, np.arange(5), s[:, 0].astype(np.float64),
                         GuardConfig(depth=399, lo=0, hi=400, margin=None, per_example=400))
    assert (m.cand >= 0).all() and (m.examined == (i[:, 1:] >= 0).sum(1)).all()


@pytest.mark.slow
def test_the_stage_with_every_list_probed_mines_what_the_exact_search_mines(tmp_path):
    from test_mine import FIXED_CONFIGS, MODEL, _cfg, _dump_set, _fixed_catalog

    from compass.filters.mine import mine
    from compass.filters.mine_cache import load_encoder

    model = load_encoder(MODEL)
    cat = _fixed_catalog(tmp_path / "c.duckdb")
    for name, kw in FIXED_CONFIGS.items():
        exact = mine(cat, _cfg(**kw, ann_min=0), model=model)["set_id"]
        ivf = mine(cat, _cfg(**kw, ann_min=1, nprobe=10_000), model=model)["set_id"]
        assert exact != ivf, "the search belongs to the set's identity"
        assert _dump_set(cat, exact) == _dump_set(cat, ivf), name


def test_faiss_missing_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)                # `import faiss` raises ImportError
    with pytest.raises(CompassError, match=r"pip install 'compass-embed\[train\]'.*--ann-min 0"):
        build_index(_clustered(100), str(tmp_path / "ivf.faiss"))


def test_bad_ann_settings_say_the_fix():
    from compass.filters.mine import MineConfig

    with pytest.raises(CompassError, match="--ann-min -1 / --nprobe 32: need --ann-min >= 0"):
        MineConfig(ann_min=-1).validate()
    with pytest.raises(CompassError, match="--nprobe >= 1"):
        MineConfig(nprobe=0).validate()


@pytest.mark.slow
def test_cli_names_the_pools_searched_approximately_and_refuses_bad_settings(tmp_path):
    from conftest import run_cli
    from test_mine import MODEL, _catalog

    path = tmp_path / "c.duckdb"
    _catalog(path).close()
    args = ("mine", "--model", MODEL, "--top-k", "10", "--rank-window", "0:10", "--cross-lingual", "--quiet")
    proc = run_cli(*args, "--ann-min", "5", catalog=path)
    assert "approximate search (IVF, --nprobe 32) in the pools of at least 5 texts: */query2title (11)" in proc.stderr
    exact = run_cli(*args, "--ann-min", "0", catalog=path)
    assert "approximate search" not in exact.stderr and "11 examples mined" in exact.stderr   # another set
    assert "approximate search" not in run_cli(*args, catalog=path).stderr                   # the default: exact
    bad = run_cli(*args, "--ann-min", "5", "--nprobe", "0", catalog=path, check=False)
    assert bad.returncode == 1 and "--nprobe >= 1" in bad.stderr and "Traceback" not in bad.stderr
