"""The clustering stage's state, one language in memory at a time (issue 15: peak RSS that does not grow with the
catalog).

Every dedup scope lies within one language (anchors: lang/task, positives: lang), and the stage's selection comes
ordered by language first, so a language's state is needed only while its batches pass. `LangState` holds, for
the languages of the current batch only:

- the `NearDupIndex` of each of their scopes (what earlier texts a new one is compared with);
- their `SigStore`: the stored signature of every distinct text the pending examples of the language carry, read
  by `prepare` (the selection carries text hashes, not 512-byte signatures: DuckDB keeps a streamed sort's
  payload in memory, so a selection with signatures held them all, 600 MB at 100k products).

Other languages wait in files in a temporary folder: a store is written once by `prepare`; a language's indexes
are written when it leaves memory and read back if it comes again (only when a caller feeds batches out of
language order: the runner never does).
"""

from __future__ import annotations

import os
import pickle
import tempfile

import numpy as np


class SigStore:
    """Signatures of one language's distinct texts, by text hash: (n,) S20 sorted, (n, num_perm) uint32."""

    def __init__(self, hashes: np.ndarray, sigs: np.ndarray):
        if len(hashes) > 1 and not (hashes[:-1] <= hashes[1:]).all():   # spooled unordered (prepare)
            order = np.argsort(hashes, kind="stable")
            hashes, sigs = hashes[order], sigs[order]
        self.hashes, self.sigs = hashes, sigs

    def get(self, hashes: list[str]) -> np.ndarray:
        """(len(hashes), num_perm) signatures; every hash must be in the store."""
        h = np.array(hashes, dtype="S20")
        pos = np.searchsorted(self.hashes, h).clip(max=max(len(self.hashes) - 1, 0))
        if not len(self.hashes) or not (self.hashes[pos] == h).all():
            missing = next(x for x, p in zip(hashes, pos) if not len(self.hashes) or self.hashes[p] != x.encode())
            raise RuntimeError(f"dedup: the signature of text {missing} was not read by prepare() (the catalog "
                               "changed during the run?): run the stage again")
        return self.sigs[pos]

    def save(self, path: str) -> str:
        with open(path, "wb") as fh:
            np.save(fh, self.hashes)
            np.save(fh, self.sigs)
        return path

    @classmethod
    def load(cls, path: str) -> SigStore:
        with open(path, "rb") as fh:
            return cls(np.load(fh), np.load(fh))


class LangState:
    """Indexes and signature stores of the languages in memory; the rest parked in files."""

    def __init__(self):
        self.indexes: dict[tuple[str, str], object] = {}   # (field, scope) -> NearDupIndex
        self.stores: dict[str, SigStore] = {}
        self._live: set[str] = set()
        self._parked: dict[str, str] = {}         # language -> file of its indexes
        self._store_files: dict[str, str] = {}    # language -> file of its SigStore
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._files = 0

    def _path(self, kind: str) -> str:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="compass-dedup-")
        # A counter, not the folder's file count: a reloaded language's file is removed, and a count would
        # then name the next file after one still parked, overwriting it.
        self._files += 1
        return os.path.join(self._tmp.name, f"{kind}{self._files}")

    def add_store(self, lang: str, store: SigStore) -> None:
        """Keep `lang`'s store in a file until the language comes (prepare builds one language at a time)."""
        self._store_files[lang] = store.save(self._path("store"))
        self.stores.pop(lang, None)

    def spool(self, num_perm: int) -> StoreSpool:
        """Append files for building every language's store from one unordered stream of signatures."""
        return StoreSpool(self, num_perm)

    def park_indexes(self, lang: str, indexes: dict) -> None:
        """Keep the indexes `prepare` rebuilt from stored members in a file until the language comes."""
        self.indexes.update(indexes)
        self.park(lang)

    def park(self, lang: str) -> None:
        """Move `lang`'s indexes to a file and drop its store (its file stays)."""
        keys = [k for k in self.indexes if lang_of(k) == lang]
        if keys:
            path = self._path("indexes")
            with open(path, "wb") as fh:
                pickle.dump({k: self.indexes.pop(k) for k in keys}, fh, protocol=pickle.HIGHEST_PROTOCOL)
            self._parked[lang] = path
        self.stores.pop(lang, None)
        self._live.discard(lang)

    def activate(self, langs: set[str]) -> None:
        """Hold in memory the state of `langs` only."""
        for lang in sorted(self._live - langs):
            self.park(lang)
        for lang in sorted(langs - self._live):
            path = self._parked.pop(lang, None)
            if path is not None:
                with open(path, "rb") as fh:
                    self.indexes.update(pickle.load(fh))
                os.remove(path)
            if lang in self._store_files:
                self.stores[lang] = SigStore.load(self._store_files[lang])
            self._live.add(lang)

    def close(self) -> None:
        self.indexes, self.stores, self._live, self._parked, self._store_files = {}, {}, set(), {}, {}
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class StoreSpool:
    """Signatures streamed once for all languages, appended to a file pair per language, then each language's
    store built (sorted) and kept by its `LangState`, one language in memory at a time."""

    def __init__(self, state: LangState, num_perm: int):
        self.state, self.num_perm = state, num_perm
        self._files: dict[str, tuple[str, str]] = {}

    def add(self, lang: str, hashes: np.ndarray, sigs: np.ndarray) -> None:
        """Append (n,) S20 hashes and their (n, num_perm) uint32 signatures to `lang`'s files."""
        if lang not in self._files:
            self._files[lang] = (self.state._path("hashes"), self.state._path("sigs"))
        for path, arr in zip(self._files[lang], (hashes.astype("S20"), sigs.astype(np.uint32))):
            with open(path, "ab") as fh:
                fh.write(np.ascontiguousarray(arr).tobytes())

    def finish(self, langs: list[str]) -> None:
        """Give every language of `langs` its store (empty for one whose pending texts have none stored)."""
        for lang in langs:
            hpath, spath = self._files.pop(lang, (None, None))
            if hpath is None:
                self.state.add_store(lang, SigStore(np.empty(0, "S20"), np.empty((0, self.num_perm), np.uint32)))
                continue
            hashes = np.fromfile(hpath, dtype="S20")
            sigs = np.fromfile(spath, dtype=np.uint32).reshape(len(hashes), self.num_perm)
            os.remove(hpath)
            os.remove(spath)
            self.state.add_store(lang, SigStore(hashes, sigs))    # sorts: two copies of one language at most
            del hashes, sigs


def lang_of(key: tuple[str, str]) -> str:
    """The language of an index key: (anchor, 'lang/task') or (positive, 'lang')."""
    return key[1].split("/", 1)[0]
