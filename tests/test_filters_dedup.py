"""Dedup: bulk signatures equal datasketch's, first-seen matching equals the plain MinHashLSH loop, and the
stage on a real catalog (promo-word and tone-mark near-duplicates, exact duplicates, incremental reruns)."""

from __future__ import annotations

import datetime as dt
import random

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash, MinHashLSH

from compass.catalog.db import Catalog
from compass.filters.base import run_filter
from compass.filters.dedup import Dedup, DedupConfig, dedup_texts, positive_cluster_ids
from compass.filters.minhash import LSHIndex, first_seen, signatures
from compass.ids import content_id
from compass.stage import insert_frame
from compass.text import shingles

TEXTS = [
    ("th", "รองเท้าผ้าใบผู้ชาย Nike Air Max 90 สีดำ ของแท้"), ("vi", "Giày thể thao nam Nike chính hãng"),
    ("id", "sepatu lari pria"), ("ms", "kasut"), ("fil", "Sapatos na pang-lalaki"), ("my", "ဖိနပ် အနက်ရောင်"),
    ("km", "ស្បែកជើង ពណ៌ខ្មៅ"), ("lo", "ເກີບ ສີດຳ"), ("en", "running shoes for men"), ("en", "!!!"),
]


def plain(texts_shingles, threshold=0.8, num_perm=128):
    """The plain datasketch way: one MinHash per text, update per shingle, MinHashLSH query then insert."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    mins, out = [], []
    for i, sh in enumerate(texts_shingles):
        m = MinHash(num_perm=num_perm)
        for s in sh:
            m.update(s.encode("utf-8"))
        mins.append(m)
        cands = [j for j in lsh.query(m) if mins[j].jaccard(m) >= threshold]
        out.append(min(cands) if cands else -1)
        lsh.insert(i, m)
    return mins, out


def test_bulk_signatures_equal_datasketch():
    sh = [shingles(t, lang) for lang, t in TEXTS]
    mins, _ = plain(sh)
    assert np.array_equal(signatures(sh), np.stack([m.hashvalues for m in mins]))
    assert np.array_equal(signatures(sh, num_perm=64, seed=7),
                          np.stack([_mh(s, 64, 7).hashvalues for s in sh]))


def _mh(sh, num_perm, seed):
    m = MinHash(num_perm=num_perm, seed=seed)
    for s in sh:
        m.update(s.encode("utf-8"))
    return m


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_first_seen_equals_plain_lsh_loop(threshold):
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(300)]
    texts: list[list[str]] = []
    for _ in range(400):
        if texts and rng.random() < 0.5:  # edit an earlier text: similarities on both sides of the threshold
            t = list(rng.choice(texts))
            for _ in range(rng.randint(0, 2)):
                t[rng.randrange(len(t))] = rng.choice(vocab)
            if rng.random() < 0.5:
                t.append(rng.choice(vocab))
        else:
            t = [rng.choice(vocab) for _ in range(rng.randint(8, 20))]
        texts.append(t)
    sh = [shingles(" ".join(t), "en") for t in texts]
    _, expect = plain(sh, threshold)
    got = first_seen(signatures(sh), threshold)
    assert sum(e >= 0 for e in expect) > 50
    assert got.tolist() == expect
    # Judging the tail after indexing the head gives the same answers for the tail.
    assert first_seen(signatures(sh), threshold, start=250).tolist()[250:] == expect[250:]
    # The incremental index, fed in batches of any size (and a head restored unjudged), answers the same.
    sigs = signatures(sh)
    for sizes in ([400], [1] * 40 + [360], [7, 93, 150, 150], [250, 150]):
        lsh, got, at = LSHIndex(threshold), [], 0
        for m in sizes:
            got += lsh.add(sigs[at:at + m]).tolist()
            at += m
        assert got == expect, sizes
    lsh = LSHIndex(threshold)
    lsh.index(sigs[:250])
    assert lsh.add(sigs[250:260]).tolist() + lsh.add(sigs[260:]).tolist() == expect[250:]
    assert not lsh.exact


def _edits(n: int = 300, seed: int = 5) -> np.ndarray:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(200)]
    texts: list[list[str]] = []
    for _ in range(n):
        t = list(rng.choice(texts)) if texts and rng.random() < 0.6 else [rng.choice(vocab) for _ in range(12)]
        if texts and rng.random() < 0.7:
            t[rng.randrange(len(t))] = rng.choice(vocab)
        texts.append(t)
    return signatures([shingles(" ".join(t), "en") for t in texts])


def test_lsh_index_walks_a_bucket_past_a_failing_head_in_any_batches():
    """Row 2 shares band 0 with rows 0 and 1 and no other band with anyone; row 0, the bucket's head, is far from
    it, row 1 is its near-duplicate (120 of 128 slots): only the walk along band 0's bucket finds row 1, and the
    bucket's chain must link rows across batches."""
    from compass.filters.minhash import bands

    ranges = bands(0.8, 128)
    sigs = np.random.default_rng(0).integers(0, 2**32 - 1, size=(5, 128), dtype=np.uint32)   # rows 3, 4: others
    sigs[1] = sigs[2]
    (lo, hi), rest = ranges[0], ranges[1:]
    sigs[0, lo:hi] = sigs[2, lo:hi]
    for a, _ in rest:
        sigs[1, a] ^= 1                       # one slot off in every other band: no other bucket is shared
    expect = first_seen(sigs, 0.8).tolist()
    assert expect == [-1, -1, 1, -1, -1]
    for sizes in ([5], [1] * 5, [2, 3], [1, 1, 3], [1, 2, 2]):
        lsh, got, at = LSHIndex(0.8), [], 0
        for m in sizes:
            got += lsh.add(sigs[at:at + m]).tolist()
            at += m
        assert got == expect, sizes


def test_lsh_index_key_collisions_fall_back_to_the_exact_grouping(monkeypatch):
    import compass.filters.minhash as mh

    sigs = _edits()
    expect = first_seen(sigs, 0.8).tolist()
    monkeypatch.setattr(mh, "_MIX", np.zeros_like(mh._MIX))      # every band gets key 0: all collide
    lsh = LSHIndex(0.8)
    got = lsh.add(sigs[:100]).tolist() + lsh.add(sigs[100:]).tolist()
    assert lsh.exact and got == expect and sum(g >= 0 for g in got) > 20


def test_lsh_index_copies_are_independent_and_pickle_trimmed():
    import pickle

    sigs = _edits()
    lsh = LSHIndex(0.8)
    lsh.add(sigs[:150])
    twin = lsh.copy()
    a = lsh.add(sigs[150:]).tolist()
    assert twin.n == 150 and twin.add(sigs[150:]).tolist() == a
    back = pickle.loads(pickle.dumps(lsh))
    assert len(back._sigs) == back.n == 300 and np.array_equal(back.sigs, lsh.sigs)
    assert back.add(sigs[:10]).tolist() == lsh.add(sigs[:10]).tolist()


def test_dedup_texts_promo_word_and_tone_mark():
    vi = "Giày thể thao nam Nike Air Max 90 màu đen đế cao su êm chân chính hãng mới"
    assert dedup_texts([vi, vi.replace("mới", "mơi"), vi + " sale", "Áo thun nam cotton"], "vi") == [None, 0, 0, None]
    th = "รองเท้าผ้าใบผู้ชาย Nike Air Max 90 สีดำ พื้นยางนุ่ม ใส่สบาย ของแท้"
    assert dedup_texts([th, th + " ส่งฟรี", th.replace("นุ่ม", "นุม")], "th") == [None, 0, 0]


T0 = dt.datetime(2100, 1, 1)  # after anything a test inserts through compass itself


def add(cat: Catalog, rows: list[tuple], start: int = 0) -> list[str]:
    """Insert examples (lang, task, anchor, positive) with increasing created_at; returns their ids."""
    recs = []
    for n, (lang, task, anchor, positive) in enumerate(rows):
        recs.append({"id": content_id("example", "grounded", lang, task, anchor, positive), "route": "grounded",
                     "lang": lang, "task": task, "anchor": anchor, "positive": positive, "class_id": f"c:{positive}",
                     "created_at": T0 + dt.timedelta(seconds=start + n)})
    with cat.transaction() as con:
        insert_frame(con, "examples", pl.DataFrame(recs), ["id"])
    return [r["id"] for r in recs]


VI_Q = "giày thể thao nam nike air max 90 màu đen đế cao su êm chân chính hãng mới"
ID_Q = "sepatu lari pria nike air zoom pegasus 40 original murah"


def test_stage_on_catalog_incremental(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb", create=True)
    ids = add(cat, [
        ("vi", "query2title", VI_Q, "Giày Nike Air Max 90"),
        ("vi", "query2title", VI_Q.replace("mới", "mơi"), "Giày Nike Air Max 90 Đen"),         # tone mark
        ("vi", "query2title", "  Giày THỂ THAO nam Nike Air Max 90 màu đen đế cao su êm chân chính hãng mới",
         "Giày Nike Air Max 90 (2)"),                                                        # case/spacing
        ("vi", "desc2title", VI_Q, "Giày Nike Air Max 90"),                                   # other task: kept
        ("id", "query2title", ID_Q, "Sepatu Nike Pegasus 40"),
        ("id", "query2title", ID_Q + " promo", "Sepatu Nike Pegasus 40 Hitam"),               # promo word
        ("id", "query2title", "tas wanita kulit asli", "Sepatu Nike Pegasus 40"),           # same positive
    ])
    res = run_filter(cat, Dedup(), "run-1", progress=False)
    assert res["judged"] == 7 and res["rejected"] == 3
    got = {r["example_id"]: (r["keep"], r["reason"]) for r in cat.query("SELECT * FROM decisions")}
    assert got[ids[0]] == (True, "ok")
    assert got[ids[1]] == (False, f"dedup:near_dup_of:{ids[0]}")
    assert got[ids[2]] == (False, f"dedup:exact_dup_of:{ids[0]}")
    assert got[ids[3]] == (True, "ok")
    assert got[ids[5]] == (False, f"dedup:near_dup_of:{ids[4]}")
    assert got[ids[6]] == (True, "ok")
    clusters = positive_cluster_ids(cat)
    assert clusters[ids[4]] == clusters[ids[6]] == f"positive:{ids[4]}"   # one title, one cluster
    assert clusters[ids[4]] != clusters[ids[5]]                            # "Hitam" added: 4 vs 5 bigrams
    assert positive_cluster_ids(cat, [ids[6]]) == {ids[6]: f"positive:{ids[4]}"}
    sigs = cat.scalar("SELECT count(*) FROM minhash_signatures")
    # Rerun: nothing pending, nothing added.
    assert run_filter(cat, Dedup(), "run-2", progress=False)["judged"] == 0
    # A later example is compared with the stored catalog (old signatures read, not recomputed).
    new = add(cat, [("vi", "query2title", VI_Q + " sale", "Giày Nike Air Max 90 mới"),
                    ("vi", "query2title", "áo thun nam cotton cổ tròn", "Áo thun nam")], start=100)
    res = run_filter(cat, Dedup(), "run-3", progress=False)
    assert res == {"judged": 2, "rejected": 1, "reasons": {"dedup:near_dup_of:*": 1}}
    assert cat.scalar("SELECT reason FROM decisions WHERE example_id = ?", [new[0]]) == f"dedup:near_dup_of:{ids[0]}"
    assert cat.scalar("SELECT cluster_id FROM dedup_members WHERE example_id = ? AND field = 'anchor'", [new[0]]) \
        == f"anchor:{ids[0]}"
    # 4 new texts (2 anchors, 2 positives) -> at most 4 new signatures; the old ones were not rewritten.
    assert cat.scalar("SELECT count(*) FROM minhash_signatures") == sigs + 4
    assert cat.scalar("SELECT count(DISTINCT run_id) FROM minhash_signatures") == 2
    cat.close()


def test_label_only_records_without_excluding(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb", create=True)
    add(cat, [("id", "query2title", ID_Q, "A"), ("id", "query2title", ID_Q + " promo", "B")])
    run_filter(cat, Dedup(DedupConfig(threshold=0.7)), "r", label_only=True, progress=False)
    assert cat.scalar("SELECT count(*) FROM decisions WHERE NOT keep AND NOT enforced") == 1
    assert cat.scalar("SELECT count(*) FROM kept_examples") == 2
    cat.close()


def test_signature_stage_then_clustering_reads_stored_signatures(tmp_path):
    """`dedup_signatures` (shardable) then `dedup` (global) gives what `dedup` alone gives; the clustering stage
    then signs nothing itself: its selection joins the stored signatures."""
    import compass
    from compass.filters.dedup_signatures import DedupSignatures

    rows = [("vi", "query2title", VI_Q, "Giày Nike Air Max 90"),
            ("vi", "query2title", VI_Q.replace("mới", "mơi"), "Giày Nike Air Max 90 Đen"),
            ("id", "query2title", ID_Q, "Sepatu Nike Pegasus 40"),
            ("id", "query2title", ID_Q + " promo", "Sepatu Nike Pegasus 40")]
    results = []
    for split in (False, True):
        cat = Catalog(tmp_path / f"c{split}.duckdb", create=True)
        add(cat, rows)
        if split:
            s = compass.run(cat, DedupSignatures, progress=False)
            assert s.written == {"minhash_signatures": 7, "example_signatures": 8}  # one positive twice
            assert compass.run(cat, DedupSignatures, progress=False).nothing_to_do
        d = compass.run(cat, Dedup, progress=False)
        assert d.info["rejected"] == 2
        assert ("minhash_signatures" in d.written) != split   # signed by the clustering stage only when alone
        results.append((cat.query("SELECT example_id, keep, reason FROM decisions ORDER BY example_id"),
                        cat.query("SELECT example_id, field, cluster_id, seq FROM dedup_members ORDER BY ALL"),
                        cat.query("SELECT text_hash, shingling, signature FROM minhash_signatures ORDER BY ALL")))
        cat.close()
    assert results[0] == results[1]


def test_stored_signatures_reach_each_language_with_its_own_shingling(tmp_path):
    """Texts carried by a Thai and a Vietnamese example have two stored signatures each (character trigrams,
    word bigrams); `prepare` reads all languages' stored signatures in one unordered scan and must give each
    language its own. The two texts are near copies as character trigrams (65 of 72 shared) and not as word
    bigrams (2 of 4): their Thai positives cluster, their Vietnamese ones do not, whichever signature the scan
    meets first. Signed first by `dedup_signatures` or by `dedup` alone: the same clusters and decisions, also
    when every text hash shares its 64-bit prefix (`prepare` searches prefixes, then the bytes on a clash)."""
    import compass
    from compass.filters import dedup as dedup_module
    from compass.filters.dedup_signatures import DedupSignatures

    shared = "รองเท้าผ้าใบผู้ชายสีดำของแท้ใส่สบายพื้นยางกันลื่นน้ำหนักเบา Nike Air Max"
    near = shared.replace("เบา Nike", "เบามาก Nike")
    rows = [("vi", "query2title", VI_Q, shared), ("th", "query2title", "รองเท้า Nike Air Max 90 สีดำ", shared),
            ("vi", "query2title", "giày nike đen chính hãng", near), ("th", "query2title", "รองเท้าผ้าใบ Nike", near)]
    results = []
    for split, clash in ((False, False), (True, False), (True, True)):
        cat = Catalog(tmp_path / f"c{split}{clash}.duckdb", create=True)
        add(cat, rows)
        if split:
            compass.run(cat, DedupSignatures, progress=False)
            assert cat.scalar("SELECT count(DISTINCT shingling) FROM minhash_signatures") == 2
        with pytest.MonkeyPatch.context() as mp:
            if clash:
                mp.setattr(dedup_module, "hash_prefix64", lambda h: np.zeros(len(h), np.uint64))
            compass.run(cat, Dedup, progress=False)
        results.append((cat.query("SELECT example_id, keep, reason FROM decisions ORDER BY example_id"),
                        cat.query("SELECT e.lang, m.field, m.cluster_id, m.dup_of FROM dedup_members m JOIN examples e "
                                  "ON e.id = m.example_id ORDER BY ALL")))
        cat.close()
    assert results[0] == results[1] == results[2]
    positives = {}
    for r in results[1][1]:
        if r["field"] == "positive":
            positives.setdefault(r["lang"], set()).add(r["cluster_id"])
    assert {lang: len(c) for lang, c in positives.items()} == {"th": 1, "vi": 2}


def test_an_example_dedup_signed_in_part_is_left_to_dedup_and_each_link_is_written_once(tmp_path):
    """Without --cluster-positives `dedup` signs anchors only; `dedup_signatures` (which appends its links without
    checking the table, `Stage.appends`) then leaves those examples alone, and a later `dedup` with positives
    signs the rest itself: the same clusters as signing everything first, each link once."""
    import compass
    from compass.filters.dedup_signatures import LINK_KEY, DedupSignatures

    rows = [("vi", "query2title", VI_Q, "Giày Nike Air Max 90"),        # no near-copies among these three
            ("vi", "query2title", "áo thun nam cotton cổ tròn", "Áo thun nam"),
            ("id", "query2title", ID_Q, "Sepatu Nike Pegasus 40")]
    results = []
    for partly in (True, False):
        cat = Catalog(tmp_path / f"c{partly}.duckdb", create=True)
        ids = add(cat, rows)
        if partly:
            compass.run(cat, Dedup, {"cluster_positives": False}, progress=False)
            assert cat.scalar("SELECT count(*) FROM example_signatures") == 3          # anchors only
            add(cat, [("id", "query2title", ID_Q + " promo", "Sepatu Nike Pegasus 40")], start=10)
            s = compass.run(cat, DedupSignatures, progress=False)
            assert s.read == 1 and s.written["example_signatures"] == 2            # the new example only
        else:
            add(cat, [("id", "query2title", ID_Q + " promo", "Sepatu Nike Pegasus 40")], start=10)
            compass.run(cat, DedupSignatures, progress=False)
        compass.run(cat, Dedup, progress=False)
        keys = ", ".join(LINK_KEY)
        assert cat.scalar(f"SELECT count(*) FROM (SELECT {keys} FROM example_signatures GROUP BY ALL "
                          "HAVING count(*) > 1)") == 0
        assert cat.scalar("SELECT count(*) FROM example_signatures") == 8
        h = Dedup().params_hash
        results.append((cat.query("SELECT example_id, field, cluster_id FROM dedup_members WHERE params_hash = ? "
                                  "ORDER BY ALL", [h]),
                        cat.query("SELECT example_id, reason FROM decisions WHERE params_hash = ? ORDER BY ALL", [h])))
        assert {r["example_id"] for r in results[-1][1]} >= set(ids)
        cat.close()
    assert results[0] == results[1] and len(results[0][0]) == 8
    assert sum(r["reason"].startswith("dedup:near_dup_of:") for r in results[0][1]) == 1   # the promo copy


def test_a_changed_threshold_clusters_again_what_is_kept(tmp_path):
    """Decisions and members are keyed by the clustering parameters: a lower threshold judges the kept examples
    again with its own clusters (an example is never its own duplicate), and rejects the looser near-copy."""
    cat = Catalog(tmp_path / "c.duckdb", create=True)
    base = "sepatu lari pria nike air zoom pegasus 40 original murah warna hitam ukuran 42"
    ids = add(cat, [("id", "query2title", base, "A"),
                    ("id", "query2title", base.replace("hitam", "putih"), "B"),   # 2 of 13 bigrams differ
                    ("id", "query2title", "tas wanita kulit asli", "C")])
    first = run_filter(cat, Dedup(DedupConfig(threshold=0.9)), "r1", progress=False)
    assert first["rejected"] == 0
    res = run_filter(cat, Dedup(DedupConfig(threshold=0.5)), "r2", progress=False)
    assert res["judged"] == 3 and res["rejected"] == 1
    h = Dedup(DedupConfig(threshold=0.5)).params_hash
    got = dict(cat.con.execute("SELECT example_id, reason FROM decisions WHERE params_hash = ?", [h]).fetchall())
    assert got == {ids[0]: "ok", ids[1]: f"dedup:near_dup_of:{ids[0]}", ids[2]: "ok"}
    assert cat.scalar("SELECT count(*) FROM dedup_members WHERE params_hash = ?", [h]) == 6
    assert run_filter(cat, Dedup(DedupConfig(threshold=0.5)), "r3", progress=False)["judged"] == 0
    cat.close()
