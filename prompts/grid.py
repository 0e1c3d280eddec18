"""The quota grid: N requests spread over (language, persona, task) cells and over products.

Deterministic from the seed, and flat: every cell gets floor(N / cells) requests and the remainder goes to
cells picked by a seeded shuffle (so no cell gets more than one extra); inside a language, products are
dealt round-robin from seeded permutations, so no product gets more than one request more than another.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One planned request: a cell, the item it is about, and its occurrence number for that pair."""

    cell: tuple[str, str, str]  # (lang, persona, task)
    item: str                   # product id (grounded) or source example id (translate)
    k: int                      # 0 for the first request of this (cell, item), 1 for the second...


def spread(n: int, cells: list[tuple[str, str, str]], seed: int) -> dict[tuple[str, str, str], int]:
    """Requests per cell: as equal as integers allow, the remainder placed by the seed."""
    if not cells:
        return {}
    base, rest = divmod(n, len(cells))
    order = sorted(cells)
    random.Random(f"spread:{seed}").shuffle(order)
    extra = set(order[:rest])
    return {c: base + (1 if c in extra else 0) for c in sorted(cells)}


def assign(counts: dict[tuple[str, str, str], int], items_by_lang: dict[str, list[str]], seed: int) -> list[Slot]:
    """Deal each language's items to that language's requests, round-robin over cells and items."""
    slots: list[Slot] = []
    by_lang: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for cell in sorted(counts):
        by_lang[cell[0]].append(cell)
    for lang, cells in sorted(by_lang.items()):
        items = sorted(items_by_lang.get(lang) or [])
        if not items:
            continue
        rng = random.Random(f"assign:{seed}:{lang}")
        random.Random(f"cells:{seed}:{lang}").shuffle(cells)
        # Interleave the cells' requests so every cell draws from the whole product list.
        left = {c: counts[c] for c in cells}
        sequence = []
        while any(left.values()):
            for c in cells:
                if left[c]:
                    sequence.append(c)
                    left[c] -= 1
        perm: list[str] = []
        seen: dict[tuple, int] = defaultdict(int)
        for i, cell in enumerate(sequence):
            if i % len(items) == 0:
                perm = items[:]
                rng.shuffle(perm)
            item = perm[i % len(items)]
            slots.append(Slot(cell, item, seen[(cell, item)]))
            seen[(cell, item)] += 1
    return slots
