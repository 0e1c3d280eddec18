"""The vectorised Zawgyi detector gives myanmartools' own probabilities."""

from __future__ import annotations

import math

import pytest

myanmartools = pytest.importorskip("myanmartools")

from compass.filters.zawgyi import FastZawgyiDetector  # noqa: E402

TEXTS = [
    "မင်္ဂလာပါ",                                   # Unicode Burmese
    "ဖုန်းအသစ် Samsung Galaxy A55 အရောင် အနက်",       # Unicode with Latin brand words
    "ေက်ာင္းသား",                                  # Zawgyi: vowel sign E typed before the consonant
    "ျမန္မာစာ",                                      # Zawgyi
    "Samsung Galaxy A55",                           # no Myanmar letters at all
    "",
    "ၾကက္သားဟင္း ႏွင့္ ထမင္း",                           # Zawgyi with stacked forms
]


def test_same_probabilities_as_myanmartools():
    ref, fast = myanmartools.ZawgyiDetector(), FastZawgyiDetector()
    for t in TEXTS:
        a, b = ref.get_zawgyi_probability(t), fast.get_zawgyi_probability(t)
        if math.isinf(a):
            assert math.isinf(b) and a == b, t
        else:
            assert b == pytest.approx(a, rel=1e-9, abs=1e-12), t
    assert fast.get_zawgyi_probability("ေက်ာင္းသား") > 0.95 > fast.get_zawgyi_probability("မင်္ဂလာပါ")
