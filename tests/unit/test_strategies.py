import dataclasses

import numpy as np
import pytest

from tasks.model import network_inputs
from tasks.strategies import STRATEGIES, resolve_strategies
from tasks.train import SAMPLER_WORKING_MB, Part, resample, select, synthetic_copy_bytes


@pytest.fixture
def part():
    rng = np.random.default_rng(1)
    n_pos, n_neg = 20, 180
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    numeric = rng.normal(size=(200, 3)).astype(np.float32) + y[:, None]
    codes = np.c_[rng.integers(0, 3, 200), rng.integers(0, 4, 200)].astype(np.int32)
    inputs = network_inputs(numeric, codes)
    return Part(numeric=numeric, codes=codes, y=y, ids=np.arange(200), inputs=inputs)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("baseline", (20, 180)),
        ("class_weight", (20, 180)),
        ("balanced_batches", (20, 180)),
        ("focal_loss", (20, 180)),
        ("undersample", (20, 20)),
        ("ensemble", (20, 20)),
        ("oversample", (180, 180)),
        ("smote", (180, 180)),
    ],
)
def test_class_counts_after_each_strategy(part, name, expected):
    sample = resample(STRATEGIES[name], part, seed=0)
    y = sample.y if sample.rows is None else part.y[sample.rows]
    assert (int(y.sum()), int((y == 0).sum())) == expected


def test_row_picking_samplers_return_positions_not_copies(part):
    under = resample(STRATEGIES["undersample"], part, seed=0)
    over = resample(STRATEGIES["oversample"], part, seed=0)
    assert under.numeric is None and over.numeric is None
    assert set(under.rows[part.y[under.rows] == 1]) == set(range(20))  # every positive kept once
    assert len(set(under.rows)) == len(under.rows) == 40
    assert np.bincount(over.rows[part.y[over.rows] == 1]).min() >= 1  # positives repeated
    assert set(over.rows[part.y[over.rows] == 0]) == set(range(20, 200))


def test_only_synthesising_samplers_need_a_copy(part):
    assert [n for n, s in STRATEGIES.items() if synthetic_copy_bytes(s, part) > 0] == ["smote"]
    # 360 rows x (two float64 matrices of 5 columns + 5 float32 inputs: numerics and codes), and
    # the neighbour search's working memory
    assert synthetic_copy_bytes(STRATEGIES["smote"], part) == 360 * (2 * 8 * 5 + 4 * 5) + (
        SAMPLER_WORKING_MB * 2**20
    )


def test_the_neighbour_search_works_in_small_chunks(part):
    """Regression: SMOTE's neighbour search ran with scikit-learn's default working memory
    (1 GB of distance chunks) and took the insurance run's peak memory from ~1.4 to ~3.5 GB.
    The sampler now runs under SAMPLER_WORKING_MB (the figure is in `make bench`)."""
    import sklearn

    seen = []
    strategy = STRATEGIES["smote"]

    def recording(seed, categorical, width):
        sampler = strategy.sampler(seed, categorical, width)
        fit_resample = sampler.fit_resample

        def fit(*args):
            seen.append(sklearn.get_config()["working_memory"])
            return fit_resample(*args)

        sampler.fit_resample = fit
        return sampler

    resample(dataclasses.replace(strategy, sampler=recording), part, seed=0)
    assert seen == [SAMPLER_WORKING_MB] and SAMPLER_WORKING_MB <= 128
    assert sklearn.get_config()["working_memory"] == 1024  # restored afterwards


def test_smotenc_keeps_exactly_one_real_level_per_categorical(part):
    sample = resample(STRATEGIES["smote"], part, seed=0)
    numeric, codes = sample.numeric, sample.codes
    assert codes.dtype == np.int32 and codes.shape == (360, 2)
    assert set(np.unique(codes[:, 0])) <= {0, 1, 2} and set(np.unique(codes[:, 1])) <= {0, 1, 2, 3}
    synthetic = numeric[200:]
    assert not np.isin(synthetic[:, 0], part.numeric[:, 0]).all()  # numerics are interpolated


def test_samplers_are_seeded(part):
    a = resample(STRATEGIES["undersample"], part, seed=3)
    b = resample(STRATEGIES["undersample"], part, seed=3)
    c = resample(STRATEGIES["undersample"], part, seed=4)
    assert np.array_equal(a.rows, b.rows) and not np.array_equal(a.rows, c.rows)


def test_class_weights_and_effective_priors():
    y = np.r_[np.ones(10, int), np.zeros(90, int)]
    weights = STRATEGIES["class_weight"].class_weights(y)
    assert weights == pytest.approx({0: 100 / (2 * 90), 1: 100 / (2 * 10)})
    assert STRATEGIES["baseline"].class_weights(y) is None
    assert STRATEGIES["baseline"].effective_prior(y) == pytest.approx(0.1)
    for name in ("class_weight", "balanced_batches", "focal_loss"):
        assert STRATEGIES[name].effective_prior(y) == pytest.approx(0.5), name
    assert STRATEGIES["focal_loss"].focal_alpha(y) == pytest.approx(0.9)


def test_registry_order_and_unknown_names():
    assert resolve_strategies(None) == list(STRATEGIES)
    assert resolve_strategies(["smote", "baseline", "smote"]) == ["smote", "baseline"]
    with pytest.raises(ValueError, match="unknown strategies: a, b; valid names are: baseline"):
        resolve_strategies(["a", "baseline", "b"])


def _record(name, validation_pr_auc, test_pr_auc, eligible=True):
    return {
        "strategy": name,
        "status": "ok",
        "eligible": eligible,
        "validation": {"pr_auc": validation_pr_auc},
        "pr_auc": test_pr_auc,
    }


def test_selection_uses_the_tuning_half_not_test():
    records = [
        _record("a", 0.90, 0.70),  # best on the tuning half, worse on test
        _record("b", 0.80, 0.95),
        _record("reference", 0.99, 0.99, eligible=False),
        {"strategy": "smote", "status": "failed", "eligible": True, "error": "ValueError: boom"},
    ]
    ranked, selected = select(records, "pr_auc")
    assert selected == "a"
    assert [(r["strategy"], r["rank"]) for r in ranked] == [
        ("reference", 1),
        ("a", 2),
        ("b", 3),
        ("smote", None),
    ]
