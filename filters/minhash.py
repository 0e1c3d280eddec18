"""MinHash signatures in bulk, bit-identical to datasketch's, and the first-seen near-duplicate rule.

datasketch's `MinHash.update` hashes one shingle at a time through numpy (a few microseconds each), and
building a `MinHash()` regenerates its permutations from a RandomState every time; on 100,000 short texts
that is most of the run. Here every shingle of a whole batch is hashed once (datasketch's `sha1_hash32`: the first 4
bytes of SHA-1, little-endian), pre-mixed with datasketch's `_fmix` and permuted with the permutations of
one `MinHash(num_perm, seed)`, as a (shingles x num_perm) uint32 matrix reduced per text with
`np.minimum.reduceat`. The arithmetic is datasketch 2.x's "affine32" scheme (a * fmix(h) + b mod 2^32), so
the signatures equal `MinHash.update` ones bit for bit (checked in tests and in benchmarks/dedup.py).

Candidates come from the bands datasketch's `MinHashLSH` picks for (threshold, num_perm), grouped with
numpy (`first_seen`), so compass and the plain datasketch way see the same candidates.
"""

from __future__ import annotations

from functools import lru_cache
from hashlib import sha1

import numpy as np
from datasketch import MinHash, MinHashLSH
from datasketch.minhash import _fmix

SCHEME = "affine32"
EMPTY = np.uint32(0xFFFFFFFF)  # datasketch's value for a permutation that saw no shingle
_CHUNK = 1 << 15  # shingles per permutation block: (32768 x 128) uint32 = 16 MiB
_MIX = np.random.default_rng(0x5EA).integers(1, 2**63, size=512, dtype=np.uint64) | np.uint64(1)


def permutations(num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """(2, num_perm) uint32: datasketch's (a, b) for this seed, taken from a real MinHash."""
    return MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations


def signatures(shingle_sets: list[set[str] | list[str]], num_perm: int = 128, seed: int = 1,
               perms: np.ndarray | None = None) -> np.ndarray:
    """(n, num_perm) uint32 signatures; row i equals MinHash(num_perm, seed) updated with shingle_sets[i].

    An empty set gives an all-EMPTY row, as an un-updated MinHash has.
    """
    a, b = permutations(num_perm, seed) if perms is None else perms
    n = len(shingle_sets)
    out = np.full((n, num_perm), EMPTY, dtype=np.uint32)
    lens = np.fromiter((len(s) for s in shingle_sets), dtype=np.int64, count=n)
    flat = [sh for s in shingle_sets for sh in s]
    if not flat:
        return out
    # datasketch's sha1_hash32 (first 4 digest bytes, little-endian), without a Python call per shingle.
    digests = b"".join([sha1(sh.encode("utf-8")).digest()[:4] for sh in flat])
    hv = _fmix(np.frombuffer(digests, dtype="<u4").astype(np.uint32), 32)
    own = np.repeat(np.arange(n, dtype=np.int64), lens)
    # Shingles arrive grouped by text (owners is non-decreasing), so each block reduces with reduceat.
    for start in range(0, hv.size, _CHUNK):
        sl = slice(start, start + _CHUNK)
        phv = hv[sl, None] * a[None, :] + b[None, :]          # (chunk, num_perm) uint32, wraps mod 2^32
        o = own[sl]
        cut = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])       # first row of each text in the block
        mins = np.minimum.reduceat(phv, cut, axis=0)               # (texts in block, num_perm)
        rows = o[cut]
        out[rows] = np.minimum(out[rows], mins)
    return out


@lru_cache(maxsize=16)
def bands(threshold: float, num_perm: int) -> list[tuple[int, int]]:
    """The (start, end) slot ranges of the LSH bands datasketch's MinHashLSH picks for these parameters."""
    return MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges


def estimate(a: np.ndarray, b: np.ndarray) -> float:
    """MinHash Jaccard estimate: the share of equal slots (what `MinHash.jaccard` computes)."""
    return float(np.count_nonzero(a == b)) / a.size


def first_seen(sigs: np.ndarray, threshold: float = 0.8, start: int = 0) -> np.ndarray:
    """For each row i >= start, the earliest row j < i that is an LSH candidate of i with estimated Jaccard
    >= threshold, or -1. Rows are in first-seen order; rows < start are already judged (index only).

    Same answer as the plain way (for i in order: `lsh.query(minhash_i)`, keep candidates whose
    `jaccard` >= threshold, take the earliest, then `lsh.insert(i, minhash_i)`): a candidate is a row that
    equals i on every slot of at least one band of datasketch's banding. Why not MinHashLSH itself: its
    per-key Python insert/query (a byteswap and a dict update per band) costs more than the signatures;
    here each band is grouped once with numpy. For each band the earliest row of i's bucket is checked
    first (vectorised); only when such a head fails the Jaccard check are later bucket members walked.
    """
    n, num_perm = sigs.shape
    out = np.full(n, -1, dtype=np.int64)
    if n - start <= 0 or n < 2:
        return out
    ranks = np.arange(n, dtype=np.int64)
    members = []  # per band: the bucket of each row
    heads = []
    for lo, hi in bands(threshold, num_perm):
        band = sigs[:, lo:hi]
        # Bucket = exact band equality (as datasketch's byte keys). Sorting one uint64 mix of the band is
        # ~10x faster than np.unique(axis=0); a collision would merge two buckets, so buckets are checked
        # and the exact path taken if any merged. Rows are in rank order: a bucket's first index is its head.
        key = (band.astype(np.uint64) * _MIX[: hi - lo]).sum(axis=1, dtype=np.uint64)
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        if not np.array_equal(band, band[first[inv]]):
            _, first, inv = np.unique(band, axis=0, return_index=True, return_inverse=True)
        inv = inv.ravel()
        members.append(inv)
        heads.append(first[inv])
    H = np.stack(heads, axis=1)[start:]                        # (m, b) earliest row of each band's bucket
    rows = ranks[start:]
    has = H < rows[:, None]                                    # a candidate exists in that band
    same = (sigs[H.clip(max=n - 1)] == sigs[rows][:, None, :]).sum(axis=2)   # (m, b) equal slots
    ok = has & (same >= np.ceil(threshold * num_perm - 1e-9))
    best = np.where(ok, H, n).min(axis=1)
    # Heads that failed the check but precede the best match: walk their buckets in rank order.
    need = np.flatnonzero((has & ~ok & (H < best[:, None])).any(axis=1))
    for q in need:
        i = int(rows[q])
        for k, inv in enumerate(members):
            if not has[q, k] or ok[q, k] or H[q, k] >= best[q]:
                continue
            for j in np.flatnonzero(inv[: min(best[q], i)] == inv[i]):
                if estimate(sigs[j], sigs[i]) >= threshold:
                    best[q] = j
                    break
    out[start:] = np.where(best < n, best, -1)
    return out


class LSHIndex:
    """`first_seen` fed batch by batch: a batch costs O(batch + rows seen) memory copies, not a regrouping of every
    row seen (which made the dedup stage quadratic: n log n per batch, 13.9x its CPU from 100k to 1M products).

    Per band it keeps the sorted distinct keys of the rows seen with each key's head (earliest row) and tail
    (latest row), and for each row the next row with its key (the bucket as a chain, for the walk past a head that
    fails the Jaccard check: a scan of every earlier row's key there made that walk O(rows seen) per text, 7% of
    `dedup` at 1M products). A key is the uint64 mix `first_seen` sorts by;
    every new row's band is compared with its head's, and the first collision (two different bands, one key)
    turns the index exact for good: from then on each batch is judged by `first_seen` over every row, which is
    always right, only slower. Same answers as `first_seen` (tests feed it in batches against the plain loop).
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128):
        self.threshold, self.num_perm = threshold, num_perm
        self.ranges = bands(threshold, num_perm)
        self.n = 0
        self._sigs = np.empty((0, num_perm), np.uint32)                      # (capacity, num_perm), rows [:n]
        self._next = np.empty((0, len(self.ranges)), np.int64)               # (capacity, bands): next row, same key
        self.uk = [np.empty(0, np.uint64) for _ in self.ranges]              # per band: distinct keys, sorted
        self.head = [np.empty(0, np.int64) for _ in self.ranges]             # per band: earliest row of each key
        self.tail = [np.empty(0, np.int64) for _ in self.ranges]             # per band: latest row of each key
        self.exact = False

    @property
    def sigs(self) -> np.ndarray:
        return self._sigs[: self.n]

    def _append(self, sigs: np.ndarray) -> None:
        n1 = self.n + len(sigs)
        if n1 > len(self._sigs):               # grow by doubling: each row is copied O(1) times on average
            cap = max(n1, 2 * len(self._sigs), 1024)
            self._sigs = np.concatenate([self._sigs[: self.n], np.empty((cap - self.n, self.num_perm), np.uint32)])
            self._next = np.concatenate([self._next[: self.n], np.empty((cap - self.n, len(self.ranges)), np.int64)])
        self._sigs[self.n:n1] = sigs
        self._next[self.n:n1] = -1             # the end of its chain until a later row shares the key
        self.n = n1

    def _heads(self, sigs: np.ndarray) -> np.ndarray | None:
        """Append `sigs` (m, num_perm); (m, bands) the head of each new row's bucket in each band (itself when
        it opens the bucket), or None after a key collision (the index is exact from then on)."""
        n0, m = self.n, len(sigs)
        keys = np.stack([(sigs[:, lo:hi].astype(np.uint64) * _MIX[: hi - lo]).sum(axis=1, dtype=np.uint64)
                         for lo, hi in self.ranges], axis=1) if m else np.empty((0, len(self.ranges)), np.uint64)
        self._append(sigs)
        if self.exact:
            return None
        H = np.empty((m, len(self.ranges)), np.int64)
        if not m:
            return H
        for k, (lo, hi) in enumerate(self.ranges):
            kb, uk, head, tail = keys[:, k], self.uk[k], self.head[k], self.tail[k]
            pos = np.searchsorted(uk, kb)
            found = pos < len(uk)
            found[found] = uk[pos[found]] == kb[found]
            H[found, k] = head[pos[found]]
            new = np.flatnonzero(~found)
            u, first, inv = np.unique(kb[new], return_index=True, return_inverse=True)
            H[new, k] = n0 + new[first[inv.ravel()]]      # the earliest row of the batch with that key
            # chains: the batch's rows of one key in row order, the first linked after the key's old tail
            order = np.argsort(kb, kind="stable")
            ks, rs = kb[order], n0 + order
            link = ks[1:] == ks[:-1]
            self._next[rs[:-1][link], k] = rs[1:][link]
            starts, ends = np.r_[True, ~link], np.r_[~link, True]
            g, g_first, g_last = ks[starts], rs[starts], rs[ends]           # per distinct key of the batch
            gp = np.searchsorted(uk, g)
            old = gp < len(uk)
            old[old] = uk[gp[old]] == g[old]
            self._next[tail[gp[old]], k] = g_first[old]
            tail = tail.copy()                                 # copies share the old arrays (`copy`)
            tail[gp[old]] = g_last[old]
            at = np.searchsorted(uk, u)                        # u: the keys of g not seen before, sorted as g
            self.uk[k], self.head[k] = np.insert(uk, at, u), np.insert(head, at, n0 + new[first])
            self.tail[k] = np.insert(tail, at, g_last[~old])
            if not np.array_equal(self._sigs[H[:, k], lo:hi], sigs[:, lo:hi]):
                self.exact = True                        # a collision: two different bands share a key
                return None
        return H

    def index(self, sigs: np.ndarray) -> None:
        """Add rows without judging them (an earlier run's rows, restored in their order)."""
        self._heads(sigs)

    def add(self, sigs: np.ndarray) -> np.ndarray:
        """Add rows (m, num_perm) after those seen; (m,) each one's earliest matching row (row numbers count every
        row added), or -1: what `first_seen(all rows, threshold, start=rows seen before)` returns for them."""
        n0 = self.n
        H = self._heads(sigs)
        if H is None:
            return first_seen(self.sigs, self.threshold, start=n0)[n0:]
        n = self.n
        rows = np.arange(n0, n, dtype=np.int64)
        has = H < rows[:, None]
        same = (self._sigs[H] == sigs[:, None, :]).sum(axis=2)                 # (m, b) equal slots
        ok = has & (same >= np.ceil(self.threshold * self.num_perm - 1e-9))
        best = np.where(ok, H, n).min(axis=1)
        for q in np.flatnonzero((has & ~ok & (H < best[:, None])).any(axis=1)):
            i = int(rows[q])
            for k, (lo, hi) in enumerate(self.ranges):
                if not has[q, k] or ok[q, k] or H[q, k] >= best[q]:
                    continue
                limit = min(int(best[q]), i)
                chain, j = [], int(H[q, k])                    # the bucket's rows in order, from its head
                while 0 <= j < limit:
                    chain.append(j)
                    j = int(self._next[j, k])
                # one comparison of the whole chain with row i: a bucket grows with the scope, and two numpy calls
                # a member cost 27 s of `dedup` at 1M products (0.2 s at 100k)
                eq = self._sigs[chain] == self._sigs[i]                                 # (len(chain), num_perm)
                hit = np.flatnonzero(eq[:, lo:hi].all(axis=1) & (eq.sum(axis=1) / self.num_perm >= self.threshold))
                if len(hit):
                    best[q] = chain[hit[0]]
        return np.where(best < n, best, -1)

    def copy(self) -> LSHIndex:
        new = LSHIndex.__new__(LSHIndex)
        new.__dict__.update({**self.__dict__, "_sigs": self.sigs.copy(), "_next": self._next[: self.n].copy()})
        # np.insert and the tail's copy make new arrays: sharing them is safe (`_next` is written in place)
        new.uk, new.head, new.tail = list(new.uk), list(new.head), list(new.tail)
        return new

    def __getstate__(self) -> dict:
        # the buffers trimmed to the rows held, as views: pickle writes a contiguous array's buffer as it is, so
        # parking a language's indexes (dedup_state) holds no second copy of its signatures
        return {**self.__dict__, "_sigs": self.sigs, "_next": self._next[: self.n]}


def clusters(dup_of: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """Cluster representative (row index) of every row: itself, or its match's cluster (matches point back)."""
    c = np.where(dup_of >= 0, dup_of, np.arange(dup_of.size))
    if known is not None:
        c[: known.size] = known
    while True:  # pointer jumping: dup_of[i] < i, so this converges in O(log depth) passes
        nxt = c[c]
        if np.array_equal(nxt, c):
            return c
        c = nxt
