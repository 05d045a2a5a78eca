"""The paired bootstrap's chunking: bounded memory on large test sets, identical intervals."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_resample_counts_are_the_drawn_rows_counted_per_resample():
    """The vectorised counts are exactly np.bincount of each resample's draws, from the same
    random stream, in the float type and memory layout the metrics expect."""
    n, size = 1_000, 7
    counts = compare.resample_counts(np.random.default_rng(3), n, size)
    draws = np.random.default_rng(3).integers(0, n, size=(size, n), dtype=np.int32)
    expected = np.stack([np.bincount(row, minlength=n) for row in draws])
    assert counts.shape == (size, n) and counts.dtype == np.float32
    assert counts.flags.c_contiguous  # the metrics' running sums go along each resample's row
    assert np.array_equal(counts, expected)
    assert (counts.sum(axis=1) == n).all()


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 300),
    prevalence=st.sampled_from([0.02, 0.2, 0.7]),
    decimals=st.sampled_from([1, 2, 6]),
    seed=st.integers(0, 2**16),
)
def test_resampled_metrics_are_scikit_learns_on_the_resampled_rows(n, prevalence, decimals, seed):
    """Average precision and the objective of every resample, in either memory layout, equal
    scikit-learn's on the rows the resample drew (ties, rare and common positives)."""
    from sklearn.metrics import average_precision_score, f1_score

    from tasks.evaluate import SortedScores

    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(float)
    scores = np.round(np.clip(0.3 * y + rng.normal(0.4, 0.2, n), 0, 1), decimals)
    counts = compare.resample_counts(rng, n, 5)
    sorted_scores, objective = SortedScores(y, scores), parse_objective("f1")
    predicted = (scores >= 0.5).astype(float)
    for weights in (counts, np.asfortranarray(counts, dtype=np.float64)):
        aps = sorted_scores.average_precision(weights)
        f1s = compare.weighted_objective(weights, y, predicted, objective)
        for w, ap, f1 in zip(weights, aps, f1s, strict=True):
            rows = np.repeat(np.arange(n), w.astype(int))
            if y[rows].sum() == 0:
                assert np.isnan(ap)
                continue
            assert ap == pytest.approx(average_precision_score(y[rows], scores[rows]), abs=1e-12)
            assert f1 == pytest.approx(f1_score(y[rows], predicted[rows], zero_division=0.0))


def test_resampling_whole_groups_of_copies_is_resampling_the_rows_they_copy():
    """Each row copied three times and grouped with its copies: a group resample draws the
    original rows, each copy weighing as its group's draw count, so every resample's metrics
    (both invariant to weighting all rows alike) and hence the intervals are those of resampling
    the original rows."""
    rng = np.random.default_rng(4)
    n = 400
    y = (rng.random(n) < 0.2).astype(int)
    a, b = np.round(rng.random(n) + 0.3 * y, 2), rng.random(n) + 0.1 * y
    objective = parse_objective("f1")
    rows = compare.paired_bootstrap(y, a, b, 0.6, 0.7, objective, 200, 9)
    # groups are numbered in order of first appearance: row i's copies make group i
    copies = np.concatenate([np.arange(n), rng.permutation(np.tile(np.arange(n), 2))])
    grouped = compare.paired_bootstrap(
        y[copies], a[copies], b[copies], 0.6, 0.7, objective, 200, 9, groups=copies + 1000
    )
    assert grouped["resampled"] == f"{n} groups" and grouped["n_rows"] == 3 * n
    for key in ("objective_interval", "pr_auc_interval"):
        assert grouped[key] == pytest.approx(rows[key], abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 200),
    prevalence=st.sampled_from([0.01, 0.2, 0.7]),
    decimals=st.sampled_from([1, 2, 6]),
    threshold=st.floats(0.0, 1.0),
    grouped=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_model_against_itself_differs_by_exactly_zero(
    n, prevalence, decimals, threshold, grouped, seed
):
    """The shortcut for identical scores at one threshold gives exactly what resampling gives."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[0] = 1  # at least one positive
    scores = np.round(rng.random(n), decimals)
    groups = rng.integers(0, max(1, n // 3), n) if grouped else None
    args = (y, scores, scores.copy(), threshold, threshold, parse_objective("f1"), 1000, seed)
    quick = compare.paired_bootstrap(*args, groups=groups)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare, "same_decisions", lambda *a: False)
        resampled = compare.paired_bootstrap(*args, groups=groups)
    assert quick == resampled
    assert quick["pr_auc_interval"] == quick["objective_interval"] == {"low": 0.0, "high": 0.0}


def test_a_comparison_of_the_same_predictions_is_computed_once_and_kept(tmp_path, monkeypatch):
    """A second run whose branches were reused compares the same predictions again: the paired
    bootstrap is kept in the store by a hash of all its inputs and read back; any change to an
    input, or a damaged file, computes it again."""
    import pandas as pd

    from tasks import compare
    from tasks.config import TrainConfig
    from tasks.ingest import ID_COLUMN

    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.2).astype(int)
    rows = {
        name: pd.DataFrame(
            {ID_COLUMN: np.arange(400), "y": y, "probability": rng.random(400) * 0.5 + 0.4 * y}
        )
        for name in ("a", "b")
    }
    by_name = {"a": {"threshold": 0.5}, "b": {"threshold": 0.45}}
    config = TrainConfig(store=str(tmp_path / "store"), bootstrap=1000)
    computed = []
    real = compare.paired_bootstrap
    monkeypatch.setattr(
        compare, "paired_bootstrap", lambda *a, **k: computed.append(1) or real(*a, **k)
    )

    first = compare.branch_bootstrap("test", rows, "a", "b", by_name, config, None)
    again = compare.branch_bootstrap("test", rows, "a", "b", by_name, config, None)
    assert again == first and len(computed) == 1
    assert first == real(
        y,
        rows["a"].probability.to_numpy(),
        rows["b"].probability.to_numpy(),
        0.5,
        0.45,
        compare.parse_objective(config.objective),
        1000,
        config.seed,
    )
    moved = {"a": {"threshold": 0.5}, "b": {"threshold": 0.4}}
    compare.branch_bootstrap("test", rows, "a", "b", moved, config, None)
    assert len(computed) == 2
    for kept in (tmp_path / "store" / compare.COMPARISONS).glob("*.json"):
        kept.write_text("{not json")
    assert compare.branch_bootstrap("test", rows, "a", "b", by_name, config, None) == first
    assert len(computed) == 3


def test_keeping_a_comparison_never_fails_the_run(tmp_path, monkeypatch):
    """Keeping a comparison is an optimisation, as keeping a trained branch is: a store whose
    files cannot be listed by age (a key error from its stat) costs a warning, not the run."""
    import pandas as pd

    from tasks import compare
    from tasks.config import TrainConfig
    from tasks.ingest import ID_COLUMN

    rng = np.random.default_rng(4)
    y = (rng.random(300) < 0.3).astype(int)
    rows = {
        name: pd.DataFrame({ID_COLUMN: np.arange(300), "y": y, "probability": rng.random(300)})
        for name in ("a", "b")
    }
    by_name = {"a": {"threshold": 0.5}, "b": {"threshold": 0.4}}
    config = TrainConfig(store=str(tmp_path / "store"), bootstrap=1000)

    def unlistable(directory):
        raise KeyError("st_mtime")

    monkeypatch.setattr(compare, "_prune_comparisons", unlistable)
    result = compare.branch_bootstrap("test", rows, "a", "b", by_name, config, None)
    assert result["n_boot"] == 1000 and result["n_rows"] == 300
