"""Clipping bounds every customer's contribution; the reported sensitivity really bounds the sum."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.dp.clip import Sensitivity, clip_coordinates, clip_l2
from tessera.core.dp.errors import DpParameterError


def test_coordinate_clip_values_and_sensitivity():
    rows = np.array([[-5.0, 0.5], [2.0, 9.0], [0.0, -0.25]])
    out = clip_coordinates(rows, lower=-1.0, upper=3.0)
    np.testing.assert_array_equal(out.values, [[-1.0, 0.5], [2.0, 3.0], [0.0, -0.25]])
    assert out.sensitivity == Sensitivity(l1=6.0, l2=math.sqrt(18.0), linf=3.0, rows_changed=1)
    replaced = clip_coordinates(rows, lower=-1.0, upper=3.0, neighbouring="replace")
    assert replaced.sensitivity.l1 == 8.0 and replaced.sensitivity.linf == 4.0
    assert replaced.sensitivity.rows_changed == 2


def test_coordinate_clip_per_column_bounds():
    out = clip_coordinates([[10.0, 10.0, -10.0]], lower=[0.0, -2.0, -1.0], upper=[1.0, 5.0, 0.0])
    np.testing.assert_array_equal(out.values, [[1.0, 5.0, -1.0]])
    assert out.sensitivity.l1 == 1.0 + 5.0 + 1.0


def test_l2_clip_shrinks_long_rows_only():
    rows = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = clip_l2(rows, bound=1.0)
    np.testing.assert_allclose(out.values, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    assert out.sensitivity.l2 == 1.0
    assert out.sensitivity.l1 == pytest.approx(math.sqrt(2.0))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32),
    customers=st.integers(1, 20),
    dim=st.integers(1, 6),
    bound=st.floats(0.1, 10.0),
    neighbouring=st.sampled_from(["add_remove", "replace"]),
)
def test_neighbouring_sums_differ_by_at_most_the_sensitivity(seed, customers, dim, bound, neighbouring):
    gen = np.random.Generator(np.random.PCG64DXSM(seed))
    rows = gen.normal(0, 5 * bound, size=(customers, dim))
    other = gen.normal(0, 5 * bound, size=(1, dim))
    for clip in (
        lambda r: clip_l2(r, bound=bound, neighbouring=neighbouring),
        lambda r: clip_coordinates(r, lower=-bound, upper=bound / 2, neighbouring=neighbouring),
    ):
        full = clip(np.vstack([rows, other]))
        if neighbouring == "add_remove":
            diff = full.values.sum(axis=0) - full.values[:-1].sum(axis=0)
        else:
            swapped = clip(np.vstack([rows, -other * 3]))
            diff = full.values.sum(axis=0) - swapped.values.sum(axis=0)
        sens = full.sensitivity
        slack = 1 + 1e-9
        assert np.abs(diff).sum() <= sens.l1 * slack
        assert np.linalg.norm(diff) <= sens.l2 * slack
        assert np.abs(diff).max() <= sens.linf * slack


@pytest.mark.parametrize(
    "call",
    [
        lambda: clip_l2([[float("nan"), 1.0]], bound=1.0),
        lambda: clip_l2([[1.0]], bound=0.0),
        lambda: clip_coordinates([[1.0]], lower=2.0, upper=1.0),
        lambda: clip_coordinates(np.zeros((2, 2, 2)), lower=0.0, upper=1.0),
        lambda: clip_coordinates([[1.0]], lower=0.0, upper=1.0, neighbouring="swap"),
        lambda: Sensitivity(l1=1.0, l2=2.0, linf=1.0),
        lambda: clip_coordinates([[1.0, 2.0]], lower=[0.0, 0.0, 0.0], upper=1.0),
    ],
)
def test_bad_inputs_fail_closed(call):
    with pytest.raises(DpParameterError):
        call()
