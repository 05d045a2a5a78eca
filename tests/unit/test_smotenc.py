"""SMOTE-NC on category codes (tasks.smotenc) against imbalanced-learn's SMOTENC: the same rows,
exactly, whenever the neighbours are the same (no distance ties), and the same rows from its
dense and sparse neighbour searches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imblearn.over_sampling import SMOTENC

from tasks import smotenc
from tasks.smotenc import CodedSMOTENC


def mixed(seed: int, rows: int, levels: list[int], positives: float) -> tuple:
    """Continuous columns (no two rows at the same distance) interleaved with code columns, one
    level of each left unused; labels with `positives` of ones (at least 8)."""
    rng = np.random.default_rng(seed)
    columns = []
    for k in levels:
        columns.append(rng.normal(size=rows))
        codes = rng.integers(0, k, rows)
        codes[codes == k // 2] = k - 1 if k > 2 else codes[codes == k // 2]
        columns.append(codes)
    x = np.stack(columns, axis=1).astype(np.float64)
    y = (rng.random(rows) < positives).astype(np.int64)
    y[:8] = 1
    return x, y, list(range(1, 2 * len(levels), 2))


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**20),
    rows=st.integers(60, 400),
    levels=st.lists(st.integers(2, 40), min_size=1, max_size=3),
    positives=st.floats(0.05, 0.4),
    k=st.integers(1, 6),
)
def test_the_rows_are_imbalanced_learn_s_smotenc_rows(seed, rows, levels, positives, k):
    x, y, categorical = mixed(seed, rows, levels, positives)
    want_x, want_y = SMOTENC(categorical, random_state=seed, k_neighbors=k).fit_resample(x, y)
    got_x, got_y = CodedSMOTENC(categorical, random_state=seed, k_neighbors=k).fit_resample(x, y)
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_array_equal(got_x, want_x)


def test_the_sparse_neighbour_search_gives_the_dense_one_s_rows(monkeypatch):
    x, y, categorical = mixed(3, 500, [3, 60], 0.2)
    dense = CodedSMOTENC(categorical, random_state=1).fit_resample(x, y)[0]
    monkeypatch.setattr(smotenc, "DENSE_ENCODED_BYTES", 0)
    assert not isinstance(smotenc.one_hot(np.zeros((4, 1)), [3], 1.0), np.ndarray)
    np.testing.assert_array_equal(
        CodedSMOTENC(categorical, random_state=1).fit_resample(x, y)[0], dense
    )


def test_codes_must_be_codes():
    x, y, categorical = mixed(0, 100, [4], 0.2)
    x[5, 1] = -1
    with pytest.raises(ValueError, match="0 or more"):
        CodedSMOTENC(categorical).fit_resample(x, y)
