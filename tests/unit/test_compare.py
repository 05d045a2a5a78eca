"""The paired bootstrap's chunking: bounded memory on large test sets, identical intervals."""

import numpy as np

import tasks.compare as compare
from tasks.thresholds import parse_objective


def test_chunks_shrink_with_the_test_set():
    assert compare.bootstrap_chunk(114) == 64
    assert compare.bootstrap_chunk(1_000_000) == 4
    assert compare.bootstrap_chunk(50_000_000) == 1


def test_chunk_size_does_not_change_the_intervals(monkeypatch):
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.2).astype(int)
    a, b = rng.random(500) + 0.3 * y, rng.random(500) + 0.1 * y
    args = (y, a, b, 0.6, 0.6, parse_objective("f1"), 200, 7)
    wide = compare.paired_bootstrap(*args)
    monkeypatch.setattr(compare, "BOOTSTRAP_CELLS", 3 * 500)  # 3 resamples per chunk
    assert compare.bootstrap_chunk(500) == 3
    assert compare.paired_bootstrap(*args) == wide
