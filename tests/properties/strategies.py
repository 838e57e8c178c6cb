"""Hypothesis strategies shared by the property tests: valid beta schedules as numpy arrays.

``schedules(min_T)``: linear schedules (endpoints drawn in [BETA_MIN, BETA_MAX]) or arbitrary
betas in that range, T from ``min_T`` to 1000.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

BETA_MIN, BETA_MAX = 1e-5, 0.05


@st.composite
def _linear(draw, min_T: int):
    T = draw(st.integers(min_T, 1000))
    lo = draw(st.floats(BETA_MIN, BETA_MAX))
    hi = draw(st.floats(BETA_MIN, BETA_MAX))
    return np.linspace(lo, hi, T)


def schedules(min_T: int = 1):
    arbitrary = st.integers(min_T, 1000).flatmap(
        lambda T: arrays(np.float64, T, elements=st.floats(BETA_MIN, BETA_MAX, allow_subnormal=False)))
    return st.one_of(_linear(min_T), arbitrary)
