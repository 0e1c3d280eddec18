"""Zawgyi detection with Google's myanmartools model, vectorised.

myanmartools scores a string with a Markov chain over character pairs, one Python call per character; on a
Burmese corpus that was 40% of the whole language-ID stage. This evaluates the same model (its own character
table and log-likelihood ratios, loaded through the library) with numpy lookups: same probabilities up to
float summation order (tested against `ZawgyiDetector.get_zawgyi_probability`).
"""

from __future__ import annotations

import math

import numpy as np

from compass.errors import CompassError


class FastZawgyiDetector:
    def __init__(self) -> None:
        try:
            from myanmartools import ZawgyiDetector
        except ImportError:
            raise CompassError("myanmartools is not installed (Zawgyi detection for Burmese): "
                               "`pip install myanmartools`") from None
        ref = ZawgyiDetector()
        chars = ref._chars  # sorted model alphabet; state i+1, 0 = foreign
        self.size = len(chars) + 1
        self.params = np.asarray(ref._params, dtype=np.float64)  # (size * size,) log-likelihood ratios
        top = max(ord(c) for c in chars) + 1
        self.lut = np.zeros(top, dtype=np.int64)
        self.lut[[ord(c) for c in chars]] = np.arange(1, self.size)

    def get_zawgyi_probability(self, text: str) -> float:
        """P(Zawgyi) of `text`; -inf when it has no character the model knows (as myanmartools returns)."""
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        states = np.where(cps < len(self.lut), self.lut[np.minimum(cps, len(self.lut) - 1)], 0)
        padded = np.concatenate(([0], states, [0]))  # None before the first and after the last character
        llr = self.params[padded[:-1] * self.size + padded[1:]]
        llr = llr[~np.isnan(llr)]
        if llr.size == 0:
            return -math.inf
        total = float(llr.sum())
        if total >= 0:
            z = math.exp(-total)
            return z / (z + 1)
        return 1 / (1 + math.exp(total))
