"""Language-ID stage vs a bare loop of the fastText model's predict over the same texts.

    python benchmarks/langid.py [--n 100000] [--latin-only] [--rounds 2]

Texts: 100,000 distinct strings cut from the bundled sample catalogs (catalog/samples/*.jsonl, nine
languages): random word spans of titles and descriptions, each with a random number so no two repeat. The
stage judges n/2 examples (anchor + positive = n texts) with everything it does (script counts, Zawgyi
check on Burmese, id/ms lexicon, per-language rules); the baseline calls `model.predict(text)` once per text.
Ratio = baseline time / stage time (target >= 0.8). The stage skips the model when the script decides
(th/lo/km/my in their own script), so --latin-only also reports the five Latin-script languages alone.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import polars as pl

from compass.filters.langid import LangId, LidModel

SAMPLES = Path(__file__).resolve().parents[1] / "catalog" / "samples"
LATIN = {"vi", "id", "ms", "fil", "en"}


def make_texts(n: int, latin_only: bool, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pool: dict[str, list[list[str]]] = {}
    for f in sorted(SAMPLES.glob("*.jsonl")):
        lang = f.stem
        if latin_only and lang not in LATIN:
            continue
        for line in f.open(encoding="utf-8"):
            r = json.loads(line)
            for t in (r["title"], r.get("description") or ""):
                if t:
                    pool.setdefault(lang, []).append(t.split())
    if not pool:
        raise SystemExit(f"no sample catalogs in {SAMPLES}: run python catalog/samples/build_samples.py")
    out = []
    langs = sorted(pool)
    for i in range(n):
        if i % 2 == 0:
            lang = rng.choice(langs)  # anchor and positive of one example share a language
        words = rng.choice(pool[lang])
        k = rng.randint(min(2, len(words)), len(words))
        s = rng.randint(0, len(words) - k)
        out.append((lang, " ".join(words[s:s + k] + [str(i)])))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--latin-only", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    items = make_texts(a.n - a.n % 2, a.latin_only)
    texts = [t for _, t in items]
    frame = pl.DataFrame({"id": [str(i) for i in range(len(items) // 2)],
                          "lang": [items[2 * i][0] for i in range(len(items) // 2)],
                          "task": ["desc2title"] * (len(items) // 2),
                          "anchor": [items[2 * i][1] for i in range(len(items) // 2)],
                          "positive": [items[2 * i + 1][1] for i in range(len(items) // 2)]})
    model = LidModel().model
    stage = LangId()
    stage.setup()  # model loads are not timed on either side

    def bare() -> None:
        for t in texts:
            model.predict(t)

    def run_stage() -> list:
        out = []
        for start in range(0, frame.height, LangId.batch_size):
            out += stage.judge_batch(frame.slice(start, LangId.batch_size))
        return out

    # Alternate the two and keep each one's best round: the machine is shared, so single runs are noisy.
    t_bare = t_stage = float("inf")
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        bare()
        t_bare = min(t_bare, time.perf_counter() - t0)
        t0 = time.perf_counter()
        verdicts = run_stage()
        t_stage = min(t_stage, time.perf_counter() - t0)

    kept = sum(v[0] for v in verdicts)
    print(f"texts: {len(texts)} ({'Latin-script languages' if a.latin_only else 'nine languages'}), "
          f"{frame.height} examples")
    print(f"bare fastText predict loop : {t_bare:7.2f} s  {len(texts) / t_bare:9.0f} texts/s")
    print(f"compass langid stage       : {t_stage:7.2f} s  {len(texts) / t_stage:9.0f} texts/s")
    print(f"ratio (bare / stage)       : {t_bare / t_stage:7.2f}   (target >= 0.8)")
    print(f"examples kept by the stage : {kept}/{frame.height} (random spans, mixed pairs within a language)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
